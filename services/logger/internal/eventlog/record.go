// Package eventlog is the logger's record of events: the JSON line format,
// size-rotated files, and the in-memory window of recent events that tails
// read from.
package eventlog

import (
	"encoding/base64"
	"encoding/json"
	"time"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/envelope"
)

// Record is one logged event.
type Record struct {
	// ID is the envelope id, or "" for a payload that was no envelope.
	ID string
	// Channel the event travelled on.
	Channel string
	// Position of the event in its stream; zero when it has none (the bus
	// keeps no history, or the line was written before lines had
	// positions).
	Position bus.Position
	// Stream names the stream Position is in (bus.History.StreamOf), the
	// key of its position in marks: the namespace, unless the bus spreads
	// namespaces over partitions. Set by whoever made the record (the
	// recorder, LoadRecent, a replay); not in the line.
	Stream string
	// Line is the JSON line as written, without the newline.
	Line []byte
	// Time is the event's own time; zero when unknown.
	Time time.Time
}

// line is the shape of a log line, for reading one back.
type line struct {
	Channel string `json:"channel"`
	Offset  string `json:"offset"`
	Epoch   string `json:"epoch"`
	Event   struct {
		ID string `json:"id"`
	} `json:"event"`
}

// Format renders a message as a log line:
//
//	{"logged_at":"…","channel":"order:placed","pattern":"order:*","offset":"1732290000000-0","epoch":"9f…","event":{…envelope in protojson…}}
//
// pattern is the first, in sort order, of the logger's patterns that
// matched: an event is logged once however many match. offset and epoch
// are the message's position in the record, left out when it has none;
// logged_at is left out when now is zero (an event read back from the
// record rather than logged now).
// A payload that is not an envelope is logged all the same, as
// "payload_base64" with the decoding "error", so that nothing vanishes.
func Format(m bus.Message, now time.Time) (Record, error) {
	b := make([]byte, 0, 256+2*len(m.Payload))
	b = append(b, '{')
	if !now.IsZero() {
		b = append(b, `"logged_at":"`...)
		b = now.UTC().AppendFormat(b, time.RFC3339Nano)
		b = append(b, `",`...)
	}
	b = append(b, `"channel":`...)
	b = appendJSONString(b, m.Channel)
	b = append(b, `,"pattern":`...)
	b = appendJSONString(b, m.Patterns[0])
	if !m.Position.IsZero() {
		b = append(b, `,"offset":`...)
		b = appendJSONString(b, m.Position.Offset)
		b = append(b, `,"epoch":`...)
		b = appendJSONString(b, m.Position.Epoch)
	}
	b = append(b, `,"event":`...)
	env, err := envelope.Unmarshal(m.Payload)
	if err == nil {
		b, err = envelope.AppendJSON(b, env)
	}
	if err != nil {
		b = b[:len(b)-len(`,"event":`)]
		b = append(b, `,"error":`...)
		b = appendJSONString(b, err.Error())
		b = append(b, `,"payload_base64":"`...)
		b = base64.StdEncoding.AppendEncode(b, m.Payload)
		b = append(b, `"}`...)
		return Record{Channel: m.Channel, Position: m.Position, Line: b}, err
	}
	b = append(b, '}')
	return Record{ID: env.GetId(), Channel: m.Channel, Position: m.Position, Line: b, Time: env.GetTime().AsTime()}, nil
}

// appendJSONString appends s as a JSON string. Channels and patterns are
// plain printable ASCII and are copied as they are; anything else goes
// through encoding/json.
func appendJSONString(b []byte, s string) []byte {
	for i := range len(s) {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			js, _ := json.Marshal(s) // a string always marshals
			return append(b, js...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// Parse reads a log line back into a Record. A position that is not one
// (the line was edited by hand) is left out.
func Parse(l []byte) (Record, error) {
	var v line
	if err := json.Unmarshal(l, &v); err != nil {
		return Record{}, err
	}
	r := Record{ID: v.Event.ID, Channel: v.Channel, Line: l}
	if bus.IsOffset(v.Offset) && validEpoch(v.Epoch) {
		r.Position = bus.Position{Offset: v.Offset, Epoch: v.Epoch}
	}
	return r, nil
}

// validEpoch reports whether s can be an epoch: hex digits, as
// bus.ParseCursor wants them.
func validEpoch(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := range len(s) {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
