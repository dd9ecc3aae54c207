// Package bus is the contract between eventbus services and the transport
// that carries their events. Payloads are opaque bytes here: the envelope
// package gives them meaning. redisbus implements the contract on Redis
// pub/sub; bustest is the conformance suite every implementation passes.
//
// Channels and patterns follow package channel: "*" matches any run of
// characters, ':' included.
package bus

import (
	"context"
	"errors"
	"time"
)

// ErrClosed is returned by operations on a closed Bus or Subscription.
var ErrClosed = errors.New("bus closed")

// ErrNotSent is wrapped by a publish error when the message certainly was
// not published: it never reached the transport (the context ended first,
// no connection could be made, the bus was closed), or the transport
// answered that it did not run it (a cluster redirecting it). Without it,
// an error leaves open whether the message was published.
var ErrNotSent = errors.New("not sent")

// Position is where an event stands in the record of its namespace, the
// first token of its channel ("order" for "order:placed"). The record of a
// namespace is one stream, or, where the bus spreads a namespace over
// partitions, several: the events of one channel always go to the same
// stream. History.StreamOf names it.
type Position struct {
	// Offset is the event's id in its stream, such as "1732290000000-0":
	// offsets of one stream grow with every event, so those of one
	// channel do.
	Offset string
	// Epoch names the stream the offset belongs to. It changes when the
	// stream is lost (Redis flushed, or restarted without its data), so a
	// consumer can tell "nothing missed" from "history gone".
	Epoch string
}

// IsZero reports whether p is no position: the message was published by
// a bus that keeps no history, or by hand with a plain PUBLISH.
func (p Position) IsZero() bool { return p.Offset == "" }

// Receipt says what became of a published message.
type Receipt struct {
	// Position of the message in its namespace's stream; zero when the bus
	// keeps no history.
	Position
	// Receivers is how many subscriptions received it live (a message
	// matching several patterns of one subscriber counts once per pattern).
	Receivers int64
}

// Message is one delivery to a subscription.
type Message struct {
	// Channel the message was published on.
	Channel string
	// Patterns are the subscriptions that matched, sorted: patterns such as
	// "order:*", and the channel itself for a subscription to the exact
	// channel. There is at least one. They are the subscriptions as they
	// stood when the message was published, which may differ from what Add
	// and Remove have asked for since.
	Patterns []string
	// Payload as published. The receiver owns it.
	Payload []byte
	// Position of the message in its namespace's stream, zero when it has
	// none.
	Position Position
	// Gap marks a message that carries no event: the subscription lost its
	// connection and is whole again, and what was published in between
	// was not delivered (the record, if the bus keeps one, has it). Every
	// message after it was published after the subscription came back.
	Gap bool
	// Received is when the subscription read the message from the
	// broker, so a consumer can tell how far behind it is; zero when the
	// bus does not say.
	Received time.Time
}

// Publication is one message to publish.
type Publication struct {
	Channel string
	Payload []byte
}

// Publisher sends messages to channels. It is safe for concurrent use.
type Publisher interface {
	// Publish sends payload on channel and returns its receipt: its
	// position, when the bus keeps history, and how many subscriptions
	// received it live. With history, the message is recorded in its
	// namespace's stream and published live in one step, and the live
	// message carries the position. Live delivery is at most once: a
	// subscriber that is not listening now never sees it live (the record
	// is how it catches up), and a message whose reply was lost is not sent
	// again. An error wrapping ErrNotSent means the message was not
	// published; any other error leaves it open.
	//
	// The context's deadline bounds the whole publish: a message not sent
	// by then is not sent, and Publish returns by then give or take the
	// moment the transport needs to notice. A context cancelled without a
	// deadline stops the wait; if the message was already on its way, the
	// error (ctx.Err() wrapped) leaves open whether it was published.
	Publish(ctx context.Context, channel string, payload []byte) (Receipt, error)

	// PublishBatch publishes msgs in order, as one round trip where the
	// transport allows it, bounded by ctx as Publish is. It returns one
	// receipt and one error per message (nil where it was
	// published, with ErrNotSent's meaning as for Publish); the error is
	// non-nil only when the batch could not be attempted at all, and then
	// nothing was sent.
	PublishBatch(ctx context.Context, msgs []Publication) (receipts []Receipt, errs []error, err error)
}

// Subscriber registers interest in channels.
type Subscriber interface {
	// Subscribe starts listening on every channel matching any of patterns
	// (an exact channel is a pattern without '*'). It returns only after
	// the transport has confirmed every pattern, so a message published
	// after Subscribe returns is not missed. Each Subscription holds its own
	// connection: share one among many listeners rather than opening one per
	// listener.
	Subscribe(ctx context.Context, patterns ...string) (Subscription, error)
}

// Subscription is a live set of patterns on one connection. Its methods
// are safe for concurrent use.
type Subscription interface {
	// Messages delivers messages in the order the transport delivered them,
	// each publish once however many patterns of this subscription it
	// matches: Patterns names them all. When the consumer falls behind, delivery
	// blocks (and the implementation says so) rather than dropping
	// messages. The channel is closed after Close.
	Messages() <-chan Message

	// Add subscribes to more patterns and returns once they are confirmed.
	// Adding a pattern already present is harmless.
	Add(ctx context.Context, patterns ...string) error

	// Remove unsubscribes from patterns and returns once they are
	// confirmed; messages already in the Messages buffer for them stay there.
	Remove(ctx context.Context, patterns ...string) error

	// Live reports whether the connection is up and every pattern is
	// subscribed. After a lost connection the subscription reconnects and
	// resubscribes by itself; messages published meanwhile are lost, as
	// pub/sub keeps nothing, and Messages delivers a Gap message where
	// they would have been.
	Live() bool

	// Close ends the subscription and closes Messages. It does not wait for
	// the consumer to drain Messages.
	Close() error
}

// ErrTruncated is wrapped by History's error when the history asked for is
// gone: the position is of another epoch (the stream was lost since), or
// the stream was trimmed past it. The caller reloads its state rather
// than take a partial answer.
var ErrTruncated = errors.New("history truncated")

// ErrEpochChanged is wrapped, with ErrTruncated, by History's error when
// the position asked for is of another epoch: the stream it was in is
// gone, so everything since is unknown, not merely trimmed.
var ErrEpochChanged = errors.New("epoch changed")

// Cursor is a position in every stream a pattern spans: the stream's name
// (History.StreamOf) → the position of the last event read there. A stream
// missing from a cursor is read from its oldest retained event.
type Cursor map[string]Position

// Event is one recorded event.
type Event struct {
	Channel  string
	Payload  []byte
	Position Position
}

// Page is one answer of History.
type Page struct {
	// Events, oldest first within a stream and merged across streams by
	// offset. Offsets are times to the millisecond: events of one
	// millisecond in several streams come in stream order, which need not
	// be the order they were published in.
	Events []Event
	// Next continues where this page stopped, in every stream the
	// pattern spans, including those with no event in the page.
	Next Cursor
	// More reports that events may remain after Next.
	More bool
}

// History reads the record.
type History interface {
	// History returns up to limit events on channels matching pattern,
	// after since. Whole namespaces are read, so the events of a pattern
	// whose first token has a wildcard ("*", "*:placed") come from every
	// namespace it can match, including ones that appear later. An error
	// wrapping ErrTruncated means the record no longer holds everything
	// after since in some stream; nothing partial is returned.
	History(ctx context.Context, pattern string, since Cursor, limit int) (Page, error)

	// Latest returns the position of the last event recorded in each
	// stream pattern spans: where a reader that wants only what comes
	// next starts. Streams with nothing recorded are left out.
	Latest(ctx context.Context, pattern string) (Cursor, error)

	// StreamOf names the stream the events of channel ch are recorded in,
	// as cursors name it: the namespace ("order"), or, where a namespace
	// is spread over partitions, the namespace and the partition
	// ("order.3"). A name is a namespace, maybe followed by '.' and a
	// number (IsStream).
	StreamOf(ch string) string
}

// Delivery is one event handed to a member of a consumer group.
type Delivery struct {
	Event
	// Redelivered reports that the event was delivered before, to this or
	// another member, and not acknowledged in time.
	Redelivered bool
}

// ConsumerOptions tune a consumer; the zero value works.
type ConsumerOptions struct {
	// Visibility is how long a delivered event may go unacknowledged
	// before it is delivered again, to any member. Default 30 s.
	Visibility time.Duration
	// FromOldest makes a group that does not exist yet start at the oldest
	// event recorded; by default it starts with the events published after
	// it is made. A namespace that appears later is always read from its
	// first event.
	FromOldest bool
}

// Consumer is a member of a durable consumer group. Fetch is not safe for
// concurrent use; Ack, Extend and Lag may be called from other goroutines,
// while Fetch runs.
type Consumer interface {
	// Fetch returns at least one and at most n events for this member,
	// however many namespaces they come from, waiting until there is one
	// or ctx ends (then it returns ctx's error). Each event recorded on a
	// channel matching the group's patterns goes to one member of the
	// group at least once: an event not acknowledged within the
	// visibility timeout, or whose member is gone, is delivered again.
	// Events of one namespace come in offset order, and the events of
	// one Fetch are merged across namespaces by offset; a redelivery comes
	// after the events delivered meanwhile. Events the implementation
	// read beyond n are held for this member and returned by the next
	// Fetch first.
	Fetch(ctx context.Context, n int) ([]Delivery, error)
	// Ack marks deliveries as done: they are not delivered again.
	Ack(ctx context.Context, ds ...Delivery) error
	// Extend restarts the visibility timeout of deliveries this member
	// holds and has not acknowledged, and of the events it holds for its
	// next Fetch, so that none goes to another member while this one is
	// still at work on it: call it more often than the visibility timeout
	// for as long as the work runs. A delivery another member took over
	// meanwhile stays that member's.
	Extend(ctx context.Context, ds ...Delivery) error
	// Lag returns how many recorded events no member of the group has
	// fetched yet, across its namespaces.
	Lag(ctx context.Context) (int64, error)
	// Close leaves the group: the member's unacknowledged events are
	// delivered to others after the visibility timeout.
	Close() error
}

// Consumers makes members of durable consumer groups.
type Consumers interface {
	// Consume joins group (made if need be) as member name, reading the
	// events recorded on channels matching patterns. A pattern covers the
	// streams of the namespaces it can match; one whose first token has a
	// wildcard covers every namespace, including ones that appear later.
	// Members of one group share its events; each group gets every event.
	// A member that restarts with its name gets its unacknowledged events
	// first.
	Consume(ctx context.Context, group, name string, patterns []string, opts ConsumerOptions) (Consumer, error)
}
