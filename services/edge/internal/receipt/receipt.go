// Package receipt turns a connection's acknowledgement of a notification
// into a "notification.delivered" event on "notification:delivered", which
// tells the notification service that the user has it, and how long it
// took. A connection acknowledges only what it was given: each keeps a
// Window of the notifications written to it and not yet acknowledged, so
// no client can vouch for a notification it never received.
package receipt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	eventbusv1 "github.com/eventbus-suite/eventbus/proto/gen/eventbus/v1"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/envelope"
	"github.com/eventbus-suite/eventbus/services/edge/internal/hub"
)

// Channel is where receipts go.
const Channel = "notification:delivered"

// Timeout bounds the publish of one receipt.
const Timeout = 5 * time.Second

// ErrUnknown is returned by Ack for a notification the connection was not
// given, or acknowledged already.
var ErrUnknown = errors.New("no such notification was delivered on this connection, or it was acknowledged already")

// Note is a notification as a connection was given it.
type Note struct {
	ID   string
	User string
	At   time.Time // the notification's time
}

// Of returns the notification ev is: a "notification.created" on a
// user's channel, "notify:user:<id>".
func Of(ev *hub.Event) (Note, bool) {
	env := ev.Envelope
	user, ok := strings.CutPrefix(ev.Channel, "notify:user:")
	if !ok || env.GetType() != "notification.created" || env.GetId() == "" || user == "" {
		return Note{}, false
	}
	return Note{ID: env.GetId(), User: user, At: env.GetTime().AsTime()}, true
}

// WindowSize bounds the notes a connection keeps: past it, the oldest is
// forgotten and can no longer be acknowledged (its fallback comes).
const WindowSize = 256

// Window is what one connection was given and has not acknowledged. The
// zero value is ready; its methods are safe for concurrent use.
type Window struct {
	mu    sync.Mutex
	notes map[string]Note
	order []string // ids, oldest first; some may be acknowledged already
}

// Add keeps n, forgetting the oldest past WindowSize.
func (w *Window) Add(n Note) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.notes == nil {
		w.notes = make(map[string]Note)
	}
	if _, ok := w.notes[n.ID]; ok {
		return // given again (a redelivery): one receipt does for both
	}
	w.notes[n.ID] = n
	w.order = append(w.order, n.ID)
	for len(w.notes) > WindowSize || len(w.order) > 2*WindowSize {
		oldest := w.order[0]
		w.order = w.order[1:]
		delete(w.notes, oldest)
	}
}

// AddEvent keeps ev if it is a notification.
func (w *Window) AddEvent(ev *hub.Event) {
	if ev == nil {
		return
	}
	if n, ok := Of(ev); ok {
		w.Add(n)
	}
}

// Take removes and returns the note of notification id.
func (w *Window) Take(id string) (Note, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n, ok := w.notes[id]
	delete(w.notes, id)
	return n, ok
}

// Receipts publishes receipts.
type Receipts struct {
	bus  bus.Publisher
	log  *slog.Logger
	sent *prometheus.CounterVec
}

// New returns a Receipts publishing on b and registering its metrics on
// reg.
func New(b bus.Publisher, log *slog.Logger, reg prometheus.Registerer) *Receipts {
	r := &Receipts{bus: b, log: log, sent: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "eventbus_edge_receipts_total",
		Help: "Acknowledgements of notifications, by transport and outcome (published; unknown: not given to that connection; failed: Redis did not take it).",
	}, []string{"transport", "outcome"})}
	reg.MustRegister(r.sent)
	return r
}

// Ack takes notification id off w and publishes its receipt, from client
// over transport, at now. It returns ErrUnknown when w does not hold it;
// when the publish fails, the note goes back into w, for the client to
// acknowledge again.
func (r *Receipts) Ack(ctx context.Context, w *Window, id, client, transport string, now time.Time) error {
	n, ok := w.Take(id)
	if !ok {
		r.sent.WithLabelValues(transport, "unknown").Inc()
		return ErrUnknown
	}
	payload, err := Event(n, client, transport, now)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	if _, err := r.bus.Publish(ctx, Channel, payload); err != nil {
		r.sent.WithLabelValues(transport, "failed").Inc()
		w.Add(n)
		return fmt.Errorf("publish the receipt: %w", err)
	}
	r.sent.WithLabelValues(transport, "published").Inc()
	r.log.Debug("notification delivered", "notification_id", n.ID, "user_id", n.User, "transport", transport)
	return nil
}

// Event returns the envelope of n's receipt from client over transport at
// now.
func Event(n Note, client, transport string, now time.Time) ([]byte, error) {
	data, err := envelope.PackData(&eventbusv1.NotificationDelivered{
		NotificationId: n.ID, UserId: n.User, ClientId: client, Transport: transport,
		LatencyMs: max(now.Sub(n.At).Milliseconds(), 0),
	})
	if err != nil {
		return nil, err
	}
	env := &envelope.Envelope{Type: "notification.delivered", Channel: Channel, Subject: n.User, Data: data,
		Attributes: map[string]string{"causationid": n.ID}}
	if err := envelope.Fill(env, "eventbus/edge", now); err != nil {
		return nil, err
	}
	return envelope.Marshal(env)
}
