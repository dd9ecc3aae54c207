package mqttapi

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/eventbus-suite/eventbus/pkg/bus"
)

// Store keeps MQTT sessions that outlive their connection in Redis, one
// key a session: <prefix>mqtt:session:<identity>/<client id>, a JSON value
// with the time to live of the session's expiry.
type Store struct {
	Redis  redis.UniversalClient
	Prefix string // the bus's key prefix, "" or "name:"
	// Keys names the keys that must share a slot (the delayed wills').
	Keys GroupKeys
}

// GroupKeys names keys that a script touches together, in one slot
// (redisbus.Bus.GroupKey).
type GroupKeys interface {
	GroupKey(group, name string) string
}

// state is what a session keeps: its filters with their QoS, and where
// each namespace stands for it, so that it resumes with what it missed.
// The positions are those of the last event the client has for certain:
// a QoS 1 message not acknowledged yet is before them. Since is when the
// connection that wrote it connected (Unix ns): a connection taken over
// cannot overwrite what a newer one wrote. Ended marks a session a newer
// connection ended, for as long as an older one might still write.
type state struct {
	Filters map[string]byte `json:"filters,omitempty"`
	// Options are the 5.0 filters' options, of those that have any.
	Options map[string]filterOptions `json:"options,omitempty"`
	Cursor  bus.Cursor               `json:"cursor,omitempty"`
	Since   int64                    `json:"since"`
	Ended   bool                     `json:"ended,omitempty"`
	// Pubrel are the QoS 2 messages the client recorded (PUBREC) whose
	// PUBCOMP has not come: a resumed session sends their PUBREL again.
	Pubrel []uint16 `json:"pubrel,omitempty"`
}

func (s Store) key(name string) string { return s.Prefix + "mqtt:session:" + name }

// Load returns the session saved under key, and false when there is none.
func (s Store) Load(ctx context.Context, key string) (state, bool, error) {
	b, err := s.Redis.Get(ctx, s.key(key)).Bytes()
	if errors.Is(err, redis.Nil) {
		return state{}, false, nil
	}
	if err != nil {
		return state{}, false, err
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil || st.Ended {
		return state{}, false, nil // unreadable, or ended: as if none
	}
	return st, true, nil
}

// saveIfNewer writes ARGV[1] to KEYS[1] for ARGV[3] ms unless what is
// there was written by a connection newer than ARGV[2] (its since).
var saveIfNewer = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if cur then
	local ok, v = pcall(cjson.decode, cur)
	if ok and type(v) == 'table' and tonumber(v.since) and tonumber(v.since) > tonumber(ARGV[2]) then
		return 0
	end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
`)

// Save keeps st under key for ttl, unless a newer connection of the
// session has written it since.
func (s Store) Save(ctx context.Context, key string, st state, ttl time.Duration) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	return saveIfNewer.Run(ctx, s.Redis, []string{s.key(key)}, b, st.Since, ttl.Milliseconds()).Err()
}

// End ends the session saved under key for a connection that connected at
// since: what an older connection writes for the next endedFor is refused.
func (s Store) End(ctx context.Context, key string, since int64) error {
	return s.Save(ctx, key, state{Since: since, Ended: true}, endedFor)
}

// endedFor is how long an ended session refuses older connections' writes:
// longer than one takes to notice it was taken over and stop.
const endedFor = time.Minute

// sessionKey names a client's session: its identity ("user:<id>", or
// "addr:<ip>" without a token), which holds no '/', then its client id.
func sessionKey(identity, clientID string) string { return identity + "/" + clientID }
