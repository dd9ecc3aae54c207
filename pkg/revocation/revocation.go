// Package revocation cuts users off across every edge: revoked tokens, and
// commands to disconnect a user or drop one of its subscriptions. The API
// records a revocation in Redis, where an edge checks every token it is
// shown, including an edge started later, and publishes every command on
// the control channel, where every running edge acts on it at once.
package revocation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/eventbus-suite/eventbus/pkg/channel"
	"github.com/eventbus-suite/eventbus/pkg/envelope"
)

// ControlChannel carries commands to the edges. Its namespace, eventbus,
// is reserved: the API refuses events on it from outside.
const ControlChannel = "eventbus:control"

// ControlType is the event type of a command on the control channel.
const ControlType = "eventbus.control"

// Actions of a Command.
const (
	ActionRevoke      = "revoke"      // JTI, or Sub with IssuedBefore
	ActionDisconnect  = "disconnect"  // Sub
	ActionUnsubscribe = "unsubscribe" // Sub, Pattern
	// ActionTakeover: an MQTT client connected with ClientID as Identity
	// on connection Conn at ConnectedBefore; every connection of that
	// client id and identity made before, on any edge, is closed.
	ActionTakeover = "mqtt_takeover" // Identity, ClientID, Conn, ConnectedBefore
)

// Command is what the edges are told to do.
type Command struct {
	Action       string    `json:"action"`
	JTI          string    `json:"jti,omitempty"`
	Sub          string    `json:"sub,omitempty"`
	IssuedBefore time.Time `json:"issued_before,omitzero"`
	Pattern      string    `json:"pattern,omitempty"`
	Identity     string    `json:"identity,omitempty"`
	ClientID     string    `json:"client_id,omitempty"`
	Conn         string    `json:"conn,omitempty"`
	// ConnectedBefore: connections made before this time.
	ConnectedBefore time.Time `json:"connected_before,omitzero"`
}

// ErrInvalid is wrapped by Validate's errors.
var ErrInvalid = errors.New("invalid command")

// maxID bounds a jti, as stored in a Redis key.
const maxID = 255

// Validate checks c as it comes from a caller.
func (c Command) Validate() error {
	validSub := func() error {
		if err := channel.Validate(c.Sub); err != nil || strings.Contains(c.Sub, ":") || len(c.Sub) > 64 {
			return fmt.Errorf("%w: sub: want a user id, 1-64 characters of a-z, 0-9, _ and -", ErrInvalid)
		}
		return nil
	}
	switch c.Action {
	case ActionRevoke:
		switch {
		case c.JTI != "" && (c.Sub != "" || !c.IssuedBefore.IsZero()):
			return fmt.Errorf("%w: give jti, or sub with issued_before, not both", ErrInvalid)
		case c.JTI != "":
			if len(c.JTI) > maxID || strings.ContainsFunc(c.JTI, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
				return fmt.Errorf("%w: jti: want 1-%d printable characters", ErrInvalid, maxID)
			}
			return nil
		case c.IssuedBefore.IsZero():
			return fmt.Errorf("%w: give jti, or sub with issued_before (RFC 3339)", ErrInvalid)
		}
		return validSub()
	case ActionDisconnect:
		return validSub()
	case ActionUnsubscribe:
		if err := validSub(); err != nil {
			return err
		}
		if err := channel.ValidatePattern(c.Pattern); err != nil {
			return fmt.Errorf("%w: pattern: %w", ErrInvalid, err)
		}
		return nil
	case ActionTakeover:
		for _, f := range []struct{ name, v string }{{"identity", c.Identity}, {"client_id", c.ClientID}, {"conn", c.Conn}} {
			if f.v == "" || len(f.v) > maxID || !utf8.ValidString(f.v) || strings.ContainsFunc(f.v, unicode.IsControl) {
				return fmt.Errorf("%w: %s: want 1-%d bytes of printable UTF-8", ErrInvalid, f.name, maxID)
			}
		}
		if c.ConnectedBefore.IsZero() {
			return fmt.Errorf("%w: connected_before: want a time (RFC 3339)", ErrInvalid)
		}
		return nil
	}
	return fmt.Errorf("%w: action %q: want revoke, disconnect, unsubscribe or mqtt_takeover", ErrInvalid, c.Action)
}

// Envelope wraps c as the event published on ControlChannel, which the
// logger records like any other: its fields that are set, as a Struct.
func (c Command) Envelope() (*envelope.Envelope, error) {
	fields := make(map[string]*structpb.Value, 5)
	for _, f := range [...]struct{ k, v string }{{"action", c.Action}, {"jti", c.JTI}, {"sub", c.Sub}, {"pattern", c.Pattern},
		{"identity", c.Identity}, {"client_id", c.ClientID}, {"conn", c.Conn}} {
		switch {
		case f.v == "" && f.k != "action":
		case !utf8.ValidString(f.v):
			return nil, fmt.Errorf("%w: %s is not valid UTF-8", ErrInvalid, f.k)
		default:
			fields[f.k] = structpb.NewStringValue(f.v)
		}
	}
	for _, f := range [...]struct {
		k string
		t time.Time
	}{{"issued_before", c.IssuedBefore}, {"connected_before", c.ConnectedBefore}} {
		if !f.t.IsZero() {
			fields[f.k] = structpb.NewStringValue(f.t.UTC().Format(time.RFC3339Nano))
		}
	}
	data, err := envelope.PackData(&structpb.Struct{Fields: fields})
	if err != nil {
		return nil, err
	}
	return &envelope.Envelope{Type: ControlType, Channel: ControlChannel, Subject: c.Sub, Data: data}, nil
}

// Payload is c as published on ControlChannel: its envelope, from source,
// made now.
func (c Command) Payload(source string, now time.Time) ([]byte, error) {
	env, err := c.Envelope()
	if err != nil {
		return nil, err
	}
	if err := envelope.Fill(env, source, now); err != nil {
		return nil, err
	}
	return envelope.Marshal(env)
}

// Parse reads a command from the payload of a message on ControlChannel.
func Parse(payload []byte) (Command, error) {
	env, err := envelope.Unmarshal(payload)
	if err != nil {
		return Command{}, err
	}
	if env.GetType() != ControlType || env.GetData() == nil {
		return Command{}, fmt.Errorf("%w: event type %q", ErrInvalid, env.GetType())
	}
	var s structpb.Struct
	if err := env.GetData().UnmarshalTo(&s); err != nil {
		return Command{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	b, err := protojson.Marshal(&s)
	if err != nil {
		return Command{}, err
	}
	var c Command
	if err := json.Unmarshal(b, &c); err != nil {
		return Command{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return c, c.Validate()
}

// Store keeps revocations in Redis for MaxAge, the longest a token lives:
// past it, every token it revoked has expired anyway.
type Store struct {
	Redis  redis.UniversalClient
	Prefix string // the bus's key prefix, "" or "name:"
	MaxAge time.Duration
}

func (s Store) idKey(jti string) string  { return s.Prefix + "revoked:jti:" + jti }
func (s Store) subKey(sub string) string { return s.Prefix + "revoked:sub:" + sub }

// keepLatest sets KEYS[1] to ARGV[1] unless it holds a later time, with a
// time to live of ARGV[2] ms.
var keepLatest = redis.NewScript(`
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > cur then
	redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return 1
`)

// Record records a revocation (c.Action revoke).
func (s Store) Record(ctx context.Context, c Command) error {
	if c.JTI != "" {
		return s.Redis.Set(ctx, s.idKey(c.JTI), "1", s.MaxAge).Err()
	}
	return keepLatest.Run(ctx, s.Redis, []string{s.subKey(c.Sub)},
		strconv.FormatInt(c.IssuedBefore.UnixNano(), 10), s.MaxAge.Milliseconds()).Err()
}

// Revoked reports whether a token with id jti, of user sub, issued at iat
// is revoked.
//
// The two keys are read with GETs in one pipeline, not one MGET: on a Redis
// Cluster they are on different slots, which MGET refuses (CROSSSLOT).
func (s Store) Revoked(ctx context.Context, jti, sub string, iat time.Time) (bool, error) {
	pipe := s.Redis.Pipeline()
	bySub := pipe.Get(ctx, s.subKey(sub))
	var byID *redis.StringCmd
	if jti != "" {
		byID = pipe.Get(ctx, s.idKey(jti))
	}
	_, _ = pipe.Exec(ctx) // each command carries its own error
	if byID != nil {
		switch err := byID.Err(); {
		case err == nil:
			return true, nil
		case !errors.Is(err, redis.Nil):
			return false, fmt.Errorf("read revocations: %w", err)
		}
	}
	before, err := bySub.Result()
	switch {
	case errors.Is(err, redis.Nil):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("read revocations: %w", err)
	}
	ns, _ := strconv.ParseInt(before, 10, 64)
	return iat.Before(time.Unix(0, ns)), nil
}
