package hub

import (
	"errors"
	"strings"
	"sync"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/channel"
	"github.com/eventbus-suite/eventbus/pkg/envelope"
)

// Event is one event as the hub hands it to clients: shared by every
// recipient, decoded once, and encoded by each transport in its own way.
type Event struct {
	Channel string
	// Stream names the stream Position is in (bus.History.StreamOf): the
	// key of the event's position in cursors.
	Stream string
	// Position of the event in its stream; zero when the bus keeps no
	// history.
	Position bus.Position
	Envelope *envelope.Envelope

	presence bool // a join or leave, for the subscriptions that want them

	jsonOnce sync.Once
	json     []byte
	jsonErr  error

	topicOnce sync.Once
	topic     string
}

// NewEvent decodes an event as the bus delivered it, recorded in stream.
func NewEvent(ch, stream string, pos bus.Position, payload []byte) (*Event, error) {
	env, err := envelope.Unmarshal(payload)
	if err != nil {
		return nil, err
	}
	return &Event{Channel: ch, Stream: stream, Position: pos, Envelope: env, presence: IsPresence(env.GetType())}, nil
}

// JSON returns the envelope in protojson, made on the first call and
// shared by every transport that sends JSON.
func (e *Event) JSON() ([]byte, error) {
	e.jsonOnce.Do(func() { e.json, e.jsonErr = envelope.MarshalJSON(e.Envelope) })
	return e.json, e.jsonErr
}

// Topic returns the event's channel as an MQTT topic (channel.Topic),
// made on the first call and shared by every MQTT client it goes to.
func (e *Event) Topic() string {
	e.topicOnce.Do(func() { e.topic = channel.Topic(e.Channel) })
	return e.topic
}

// ErrSkip is an Encoding's error for an event that goes to none of its
// clients (an MQTT message whose expiry has passed): not sent, and not
// counted as malformed.
var ErrSkip = errors.New("not for this encoding's clients")

// Encoding is how a transport writes events. The hub asks it for the frame
// of an event once per event and distinct set of matching subscriptions
// among the recipients that share the encoding, so a frame is made once
// however many clients it goes to. Encodings are compared as map keys:
// use a comparable value, one per distinct output.
type Encoding interface {
	// Encode returns the frame of ev for a client whose subscriptions
	// matched it (sorted, at least one).
	Encode(ev *Event, subscriptions []string) ([]byte, error)
}

// FrameKind says what a frame is, so that no transport reads a frame's
// bytes to learn it.
type FrameKind uint8

const (
	// FrameReply is a reply or notice of the transport's own.
	FrameReply FrameKind = iota
	// FrameEvent is an event in the client's encoding: Event is set.
	FrameEvent
	// FrameSubscribed is a subscription's reply, saying how it began:
	// Channel and Recovery are set.
	FrameSubscribed
	// FrameDropped is the notice of a subscription the edge dropped
	// (Revoke): Channel is set, and a transport that cannot send the
	// notice (MQTT) acts on it without reading Data.
	FrameDropped
)

// Frame is what waits in a client's queue, in the client's encoding, with
// what a transport needs to know of it without reading Data: an event's
// frame comes with the event, so that a transport that numbers what it
// writes (SSE ids) can follow the positions.
type Frame struct {
	Kind  FrameKind
	Data  []byte
	Event *Event
	// Channel is the subscription a FrameSubscribed or FrameDropped is
	// about.
	Channel string
	// Recovery is how a FrameSubscribed's subscription began.
	Recovery *Recovery
	// Subs are, for an event, the client's subscriptions it matched: a
	// transport that keeps positions per subscription follows them. Read
	// only: frames share it.
	Subs []string
}

// IsPresence reports whether events of type typ are a channel's joins and
// leaves, which go only to the subscriptions that ask for them.
func IsPresence(typ string) bool { return strings.HasPrefix(typ, "presence.") }
