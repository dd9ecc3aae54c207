package notifier

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	eventbusv1 "github.com/eventbus-suite/eventbus/proto/gen/eventbus/v1"

	"github.com/eventbus-suite/eventbus/pkg/envelope"
	"github.com/eventbus-suite/eventbus/pkg/retry"
	"github.com/eventbus-suite/eventbus/services/notification/internal/push"
	"github.com/eventbus-suite/eventbus/services/notification/internal/routes"
)

// Receipts: the edge publishes one notification.delivered, from source
// receiptSource on channel receiptChannel, each time a client acknowledges
// a browser notification.
const (
	receiptType    = "notification.delivered"
	receiptChannel = "notification:delivered"
	receiptSource  = "eventbus/edge"
)

// Values of eventbus_notification_receipts_total's result label.
const (
	receiptDelivered = "delivered"
	receiptRepeat    = "repeat"
	receiptUnknown   = "unknown"
	receiptInvalid   = "invalid"
)

var receiptResults = []string{receiptDelivered, receiptRepeat, receiptUnknown, receiptInvalid}

// receipt is a client's acknowledgement of a browser notification.
type receipt struct {
	notificationID, userID, clientID, transport string
	latency                                     time.Duration
}

// maxReceiptLatency bounds the latency a receipt may claim: a browser
// notification's state is not kept that long anyway.
const maxReceiptLatency = 7 * 24 * time.Hour

// errNotOurs is parseReceipt's error for a receipt of a notification this
// service did not make (one published through the api, say): its id is
// not of notificationID's form, so it goes into no Redis key.
var errNotOurs = errors.New("a notification of another publisher")

// parseReceipt reads a notification.delivered that came on channel ch. It
// refuses one that is not the edge's (another source, another channel),
// data that is not an eventbus.v1.NotificationDelivered, a user id that
// is not a channel token, a latency below 0 or beyond maxReceiptLatency;
// and, with errNotOurs, a notification id not of notificationID's form.
func parseReceipt(env *envelope.Envelope, ch string) (receipt, error) {
	if env.GetSource() != receiptSource || ch != receiptChannel || env.GetChannel() != receiptChannel {
		return receipt{}, fmt.Errorf("not the edge's: source %q on channel %q, want %s on %s", env.GetSource(), ch, receiptSource, receiptChannel)
	}
	var m eventbusv1.NotificationDelivered
	if env.GetData() == nil {
		return receipt{}, errors.New("no data")
	}
	if err := env.GetData().UnmarshalTo(&m); err != nil {
		return receipt{}, fmt.Errorf("data is not an eventbus.v1.NotificationDelivered: %w", err)
	}
	if err := push.CheckUserID(m.GetUserId()); err != nil {
		return receipt{}, fmt.Errorf("user_id %q: %w", truncate(m.GetUserId(), 80), err)
	}
	latency := time.Duration(m.GetLatencyMs()) * time.Millisecond
	if m.GetLatencyMs() < 0 || m.GetLatencyMs() > maxReceiptLatency.Milliseconds() {
		return receipt{}, fmt.Errorf("latency_ms %d: want 0 to %d", m.GetLatencyMs(), maxReceiptLatency.Milliseconds())
	}
	if !validNotificationID(m.GetNotificationId()) {
		return receipt{}, fmt.Errorf("notification_id %q: %w", truncate(m.GetNotificationId(), 80), errNotOurs)
	}
	return receipt{
		notificationID: m.GetNotificationId(), userID: m.GetUserId(),
		clientID: truncate(m.GetClientId(), 200), transport: truncate(m.GetTransport(), 20), latency: latency,
	}, nil
}

// validNotificationID reports whether id is of notificationID's form:
// "n-" and 32 lower-case hex digits.
func validNotificationID(id string) bool {
	if len(id) != 34 || id[:2] != "n-" {
		return false
	}
	for _, c := range id[2:] {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// truncate cuts s to at most n bytes, for a log line.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// deliver records receipt r, and reports whether it is done with: false
// leaves its event for a redelivery (Redis refused). The first receipt of
// a notification marks it delivered, so that its fallback does not go, and
// is observed as its realtime delivery.
func (w *worker) deliver(ctx context.Context, log *slog.Logger, r receipt) bool {
	n := w.n
	log = log.With("notification_id", r.notificationID, "client_id", r.clientID, "transport", r.transport)
	var res routes.Receipt
	err := w.redis(ctx, func() (err error) {
		res, err = n.Routes.Deliver(ctx, r.notificationID, r.userID, time.Now())
		return err
	})
	if err != nil {
		log.Error("record receipt", "error", err)
		return false
	}
	switch res {
	case routes.Unknown:
		n.m.receipts.WithLabelValues(receiptUnknown).Inc()
		log.Debug("receipt of no notification routed for that user; ignored")
	case routes.Repeat:
		n.m.receipts.WithLabelValues(receiptRepeat).Inc()
		log.Debug("notification acknowledged again")
	case routes.FirstReceipt:
		n.m.delivery.WithLabelValues(routeRealtime).Observe(r.latency.Seconds())
		n.m.receipts.WithLabelValues(receiptDelivered).Inc()
		log.Info("notification delivered", "latency_ms", r.latency.Milliseconds())
		bg := context.WithoutCancel(ctx)
		if err := w.redis(ctx, func() error { return n.Routes.Done(bg, r.notificationID) }); err != nil {
			// A fallback that takes it finds it delivered.
			log.Warn("stop awaiting the receipt; the fallback finds it delivered", "error", err)
		}
	}
	return true
}

// fallback is an awaited receipt that did not come in time.
type fallback struct {
	due  routes.Due
	note note
}

// pollEvery is how often a replica looks for overdue receipts: a tenth of
// the ack timeout, between 10 ms and 1 s.
func pollEvery(ackTimeout time.Duration) time.Duration {
	return min(max(ackTimeout/10, 10*time.Millisecond), time.Second)
}

// pollReceipts takes, until ctx ends, the notifications whose receipt is
// overdue and hands each to queue, which reports false once it stops
// taking them. Every replica polls: each overdue notification is leased to
// one of them for a visibility timeout (extended by the heartbeat while in
// hand), and goes to another if that one dies with it. While Redis is away
// it retries, quietly: the record's reader speaks for the outage.
func (n *Notifier) pollReceipts(ctx context.Context, queue func(job) bool) {
	every := pollEvery(n.AckTimeout)
	backoff := retry.Backoff{Min: every, Max: 5 * time.Second}
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
		case <-ctx.Done():
			return
		}
		due, err := n.Routes.TakeDue(ctx, 64, n.Visibility)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			n.Logger.Debug("take the overdue receipts", "error", err)
			if backoff.Wait(ctx) != nil {
				return
			}
			continue
		}
		backoff.Reset()
		for _, d := range due {
			var nt note
			if err := json.Unmarshal(d.Payload, &nt); err != nil || nt.NotificationID != d.NotificationID {
				n.Logger.Error("an awaited receipt does not decode; dropped", "notification_id", d.NotificationID, "error", err)
				if err := n.Routes.Done(ctx, d.NotificationID); err != nil {
					n.Logger.Debug("drop an awaited receipt", "error", err)
				}
				continue
			}
			if !n.holdFallback(d.NotificationID) {
				continue // in this replica's hands already
			}
			if !queue(job{fallback: &fallback{due: d, note: nt}}) {
				n.releaseFallback(d.NotificationID)
				return
			}
		}
	}
}

// holdFallback records notification id's fallback as in this replica's
// hands, unless it is already.
func (n *Notifier) holdFallback(id string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.fallbacks[id] {
		return false
	}
	n.fallbacks[id] = true
	return true
}

func (n *Notifier) releaseFallback(id string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.fallbacks, id)
}

// fallbacksInHand returns the notification ids of the fallbacks in this
// replica's hands, for the heartbeat to extend.
func (n *Notifier) fallbacksInHand() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	ids := make([]string, 0, len(n.fallbacks))
	for id := range n.fallbacks {
		ids = append(ids, id)
	}
	return ids
}

// fallBack sends a notification whose receipt did not come in time by a
// push, else an email (unless its event emails the user anyway), and
// stops awaiting it once that is done with. One acknowledged meanwhile is
// left alone. What is not done with (a send cut short, a contact not yet
// known) stays awaited, and comes due again when its lease runs out.
func (w *worker) fallBack(ctx context.Context, f *fallback) {
	n := w.n
	defer n.releaseFallback(f.note.NotificationID)
	nt := f.note
	log := n.Logger.With("event_id", nt.EventID, "type", nt.EventType, "user_id", nt.UserID, "notification", nt.Name, "notification_id", nt.NotificationID)
	var delivered bool
	err := w.redis(ctx, func() (err error) {
		delivered, err = n.Routes.Delivered(ctx, nt.NotificationID)
		return err
	})
	if err != nil {
		log.Error("read whether the notification was delivered", "error", err)
		return
	}
	done := true
	if !delivered {
		c, ok := w.choose(ctx, log, nt, routes.Fallback, whyTimeout)
		if !ok {
			return
		}
		log = log.With("route", c.Route, "route_reason", c.Reason)
		switch c.Route {
		case routePush:
			done = w.pushes(ctx, log, nt)
		case routeEmail:
			done = w.emailNote(ctx, log, nt)
		}
	}
	if !done {
		return
	}
	bg := context.WithoutCancel(ctx)
	if err := w.redis(ctx, func() error { return n.Routes.Done(bg, nt.NotificationID) }); err != nil {
		// It comes due again, and finds its sends done.
		log.Warn("stop awaiting the receipt", "error", err)
	}
}
