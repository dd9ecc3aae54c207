// Package protocol is the edge's WebSocket protocol: JSON text frames from
// the browser (requests) and to it (replies and events), with the error
// codes and close codes documented in docs/protocol.md.
package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/services/edge/internal/hub"
)

// Actions a client may send.
const (
	ActionSubscribe   = "subscribe"
	ActionUnsubscribe = "unsubscribe"
	ActionPing        = "ping"
	ActionAuth        = "auth"
	// ActionAck acknowledges the notification whose id it carries.
	ActionAck = "ack"
)

// Error codes of replies.
const (
	CodeBadRequest           = "bad_request"
	CodeInvalidChannel       = "invalid_channel"
	CodeForbidden            = "forbidden"
	CodeUnauthorized         = "unauthorized"
	CodeTooManySubscriptions = "too_many_subscriptions"
	CodeTooManyPatterns      = "too_many_patterns"
	CodeTooManyConnections   = "too_many_connections"
	CodeRateLimited          = "rate_limited"
	CodeUnavailable          = "unavailable"
	CodePresenceOff          = "presence_off"         // presence asked of a channel that keeps none
	CodeUnknownNotification  = "unknown_notification" // an ack of a notification this connection was not given
)

// MaxCloseReason is the longest close reason a close frame carries: 125
// bytes of control frame payload less the 2-byte code.
const MaxCloseReason = 123

// CloseReason cuts reason to MaxCloseReason bytes, on a UTF-8 boundary, so
// the close frame that carries it can be sent.
func CloseReason(reason string) string {
	if len(reason) <= MaxCloseReason {
		return reason
	}
	cut := MaxCloseReason - len("…")
	for cut > 0 && !utf8.RuneStart(reason[cut]) {
		cut--
	}
	return reason[:cut] + "…"
}

// Request is a frame from the client. ID is optional and echoed in the
// reply.
type Request struct {
	Action  string `json:"action"`
	Channel string `json:"channel,omitempty"`
	ID      string `json:"id,omitempty"`
	Token   string `json:"token,omitempty"`
	// Since, with subscribe, resumes the subscription after these
	// positions: namespace → the last event's offset and epoch.
	Since map[string]Position `json:"since,omitempty"`
	// Presence, with subscribe to a channel, delivers the channel's joins
	// and leaves ("presence.join" and "presence.leave" events) too.
	Presence bool `json:"presence,omitempty"`
}

// Position is where a client stands in a namespace's stream.
type Position struct {
	Offset string `json:"offset"`
	Epoch  string `json:"epoch"`
}

// MaxSince bounds the namespaces of a since.
const MaxSince = 100

// Cursor returns r's since for the bus, nil without one.
func (r Request) Cursor() bus.Cursor {
	if r.Since == nil {
		return nil
	}
	c := make(bus.Cursor, len(r.Since))
	for ns, p := range r.Since {
		c[ns] = bus.Position{Offset: p.Offset, Epoch: p.Epoch}
	}
	return c
}

// Error is the error of a reply, and the edge's refusals in every
// transport, which each maps to its own form (Status for HTTP).
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	// Err is the cause, when there is one, for errors.Is and As.
	Err error `json:"-"`
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

func (e *Error) Unwrap() error { return e.Err }

// Errorf builds an Error.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Wrap builds an Error of code that says err and wraps it.
func Wrap(code string, err error) *Error {
	return &Error{Code: code, Message: err.Error(), Err: err}
}

// Status is the HTTP status of a refusal with code.
func Status(code string) int {
	switch code {
	case CodeUnauthorized:
		return http.StatusUnauthorized
	case CodeForbidden:
		return http.StatusForbidden
	case CodeTooManyPatterns, CodeTooManyConnections, CodeRateLimited:
		return http.StatusTooManyRequests
	case CodeUnavailable:
		return http.StatusServiceUnavailable
	case CodeUnknownNotification:
		return http.StatusNotFound
	}
	return http.StatusBadRequest // bad_request, invalid_channel, too_many_subscriptions (in one request), presence_off
}

// ParseRequest decodes a client frame strictly: unknown fields, unknown
// actions and missing arguments are errors that say so.
func ParseRequest(b []byte) (Request, *Error) {
	var r Request
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return r, Errorf(CodeBadRequest, "frame is not a request object: %s", strings.TrimPrefix(err.Error(), "json: "))
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return r, Errorf(CodeBadRequest, "frame has data after the request object")
	}
	if r.Since != nil {
		if err := checkSince(r); err != nil {
			return r, err
		}
	}
	if r.Presence && r.Action != ActionSubscribe {
		return r, Errorf(CodeBadRequest, "presence goes with subscribe only")
	}
	switch r.Action {
	case ActionSubscribe, ActionUnsubscribe:
		if r.Channel == "" {
			return r, Errorf(CodeBadRequest, "%s needs a channel", r.Action)
		}
	case ActionAck:
		if r.ID == "" {
			return r, Errorf(CodeBadRequest, "ack needs the id of the notification it acknowledges")
		}
	case ActionAuth:
		if r.Token == "" {
			return r, Errorf(CodeBadRequest, "auth needs a token")
		}
	case ActionPing:
	case "":
		return r, Errorf(CodeBadRequest, "action is missing; want subscribe, unsubscribe, ping, auth or ack")
	default:
		return r, Errorf(CodeBadRequest, "unknown action %q; want subscribe, unsubscribe, ping, auth or ack", r.Action)
	}
	return r, nil
}

// checkSince checks a request's since: subscribe only, at most MaxSince
// namespaces, each a namespace with an offset and an epoch.
func checkSince(r Request) *Error {
	if r.Action != ActionSubscribe {
		return Errorf(CodeBadRequest, "since goes with subscribe only")
	}
	if len(r.Since) > MaxSince {
		return Errorf(CodeBadRequest, "since has %d namespaces; at most %d", len(r.Since), MaxSince)
	}
	for ns, p := range r.Since {
		switch {
		case !bus.IsStream(ns):
			return Errorf(CodeBadRequest, "since: %q is not a stream (a namespace, a channel's first token, or a namespace's partition such as order.3)", ns)
		case !bus.IsOffset(p.Offset):
			return Errorf(CodeBadRequest, "since: the offset of %s is not one, such as 1732290000000-0", ns)
		case !bus.IsEpoch(p.Epoch):
			return Errorf(CodeBadRequest, "since: the epoch of %s is not one (hex digits)", ns)
		}
	}
	return nil
}

type reply struct {
	ID     string `json:"id,omitempty"`
	OK     bool   `json:"ok,omitempty"`
	Action string `json:"action,omitempty"`
	Error  *Error `json:"error,omitempty"`
}

// Begun says how a subscription began, as every transport tells it.
type Begun struct {
	Recovered *bool               `json:"recovered,omitempty"`
	Missed    *int                `json:"missed,omitempty"`
	Reason    string              `json:"reason,omitempty"`
	Positions map[string]Position `json:"positions,omitempty"`
}

// BegunOf is r as clients read it: recovered with missed, or not with a
// reason, for a subscription that resumed; positions when there are any.
func BegunOf(r hub.Recovery) Begun {
	var b Begun
	if r.Resumed {
		b.Recovered = &r.Recovered
		if r.Recovered {
			b.Missed = &r.Missed
		} else {
			b.Reason = r.Reason
		}
	}
	if len(r.Positions) > 0 {
		b.Positions = make(map[string]Position, len(r.Positions))
		for ns, p := range r.Positions {
			b.Positions[ns] = Position{Offset: p.Offset, Epoch: p.Epoch}
		}
	}
	return b
}

// Subscribed is the reply to a subscribe that succeeded, saying how it
// began:
//
//	{"id":"7","ok":true,"positions":{"order":{"offset":"…","epoch":"…"}}}
//	{"id":"7","ok":true,"recovered":true,"missed":12}
//	{"id":"7","ok":true,"recovered":false,"reason":"epoch_changed"}
func Subscribed(id string, r hub.Recovery) []byte {
	b, _ := json.Marshal(struct { // strings, bools and ints always marshal
		ID string `json:"id,omitempty"`
		OK bool   `json:"ok"`
		Begun
	}{id, true, BegunOf(r)})
	return b
}

// OK is the reply to a request that succeeded.
func OK(id string) []byte { return marshal(reply{ID: id, OK: true}) }

// Pong is the reply to a ping.
func Pong(id string) []byte { return marshal(reply{ID: id, OK: true, Action: "pong"}) }

// Unsubscribed tells a client that the edge removed one of its
// subscriptions, and why:
//
//	{"unsubscribed":"order:*","reason":"forbidden"}
func Unsubscribed(pattern, reason string) []byte {
	b, _ := json.Marshal(struct {
		Unsubscribed string `json:"unsubscribed"`
		Reason       string `json:"reason"`
	}{pattern, reason})
	return b
}

// Expiring tells a client its token expires in d, so that it sends a
// fresh one with auth before then:
//
//	{"expiring":{"in_s":30}}
func Expiring(d time.Duration) []byte {
	return fmt.Appendf(nil, `{"expiring":{"in_s":%d}}`, max(int(math.Ceil(d.Seconds())), 0))
}

// Fail is the reply to a request that failed.
func Fail(id string, e *Error) []byte { return marshal(reply{ID: id, Error: e}) }

func marshal(r reply) []byte {
	b, _ := json.Marshal(r) // plain strings and bools always marshal
	return b
}

// AppendEvent appends the frame of an event:
//
//	{"channel":"order:placed","subscriptions":["order:*"],"offset":"1732290000000-0","epoch":"9f…","event":{…}}
//
// event is the envelope in protojson; subscriptions are the client's
// patterns that matched; offset and epoch, the event's position in its
// stream, are left out when it has none. Where the bus spreads a namespace
// over partitions, "stream" names the one the position is in ("order.3"),
// the key of the position in a subscription's positions and since; it is
// left out where a namespace has one stream, named as the namespace.
func AppendEvent(b []byte, channel, stream string, subscriptions []string, pos bus.Position, event []byte) []byte {
	b = append(b, `{"channel":`...)
	b = appendString(b, channel)
	b = append(b, `,"subscriptions":[`...)
	for i, s := range subscriptions {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, s)
	}
	b = append(b, ']')
	if !pos.IsZero() {
		b = append(b, `,"offset":`...)
		b = appendString(b, pos.Offset)
		b = append(b, `,"epoch":`...)
		b = appendString(b, pos.Epoch)
		if ns, _, _ := strings.Cut(channel, ":"); stream != ns && stream != "" {
			b = append(b, `,"stream":`...)
			b = appendString(b, stream)
		}
	}
	b = append(b, `,"event":`...)
	b = append(b, event...)
	return append(b, '}')
}

// JSON is the encoding of event frames as AppendEvent writes them, which
// the WebSocket and SSE transports share.
var JSON hub.Encoding = jsonEncoding{}

type jsonEncoding struct{}

func (jsonEncoding) Encode(ev *hub.Event, subscriptions []string) ([]byte, error) {
	event, err := ev.JSON()
	if err != nil {
		return nil, err
	}
	n := len(event) + len(ev.Channel) + len(ev.Position.Offset) + len(ev.Position.Epoch) + len(ev.Stream) + 80
	for _, s := range subscriptions {
		n += len(s) + 3
	}
	return AppendEvent(make([]byte, 0, n), ev.Channel, ev.Stream, subscriptions, ev.Position, event), nil
}

// appendString appends a channel, pattern, offset or epoch as a JSON
// string; their grammars keep them free of characters JSON would escape.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}
