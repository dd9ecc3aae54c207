package notifier

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"time"

	"github.com/eventbus-suite/eventbus/services/notification/internal/push"
)

// pushOutcomes are the values of eventbus_notification_push_sent_total's
// outcome label.
var pushOutcomes = []string{string(push.Sent), string(push.Gone), string(push.Rejected), string(push.Failed), "timed_out"}

// CountPushRetry is a push retry hook.
func (n *Notifier) CountPushRetry(int, time.Duration) { n.m.pushRetried.Inc() }

// pushes sends browser notification nt as a Web Push to each of its
// user's push subscriptions, and reports whether they are all done with.
// Each subscription's push is a notification of its own to the claims,
// "<name>:push:<subscription id>", so it goes once however often its event
// comes, whichever route (first or fallback) sends it, and however many
// replicas run, and a push that went is not sent again because another
// failed. The first push a call gets accepted is observed as the
// notification's delivery.
func (w *worker) pushes(ctx context.Context, log *slog.Logger, nt note) bool {
	n := w.n
	if n.Push == nil {
		return true // turned off since the route was chosen (a restart without the keys)
	}
	var subs []push.Subscription
	err := w.redis(ctx, func() (err error) {
		subs, err = n.Subscriptions.List(ctx, nt.UserID)
		return err
	})
	if err != nil {
		log.Error("read push subscriptions", "error", err)
		return false
	}
	if len(subs) == 0 {
		log.Info("no push subscription left to push to")
		return true
	}
	payload, err := json.Marshal(nt.pushMessage())
	if err != nil {
		log.Error("encode push", "error", err)
		return false
	}
	// The id's 32 hex digits: a repeat of this push still waiting at the
	// push service replaces it.
	topic := strings.TrimPrefix(nt.NotificationID, "n-")
	done, observed := true, false
	for _, s := range subs {
		ok, sent := w.pushOne(ctx, log.With("subscription", s.ID()), nt, s, payload, topic)
		done = ok && done
		if sent && !observed {
			n.m.delivery.WithLabelValues(routePush).Observe(time.Since(nt.EventTime).Seconds())
			observed = true
		}
	}
	return done
}

// pushOne sends one push unless it went already or another replica is
// sending it, and reports whether it is done with. A push is done with
// whatever the push service answered, and its claim records "sent": one it
// refused, or failed to take every attempt, is logged, counted and given
// up, not dead-lettered, since a push is worth something only while it is
// news. Only a push cut by SendTimeout or a shutdown is left for a
// redelivery of its event. sent says the push service accepted it.
func (w *worker) pushOne(ctx context.Context, log *slog.Logger, nt note, s push.Subscription, payload []byte, topic string) (done, sent bool) {
	n := w.n
	eventID, name := nt.EventID, nt.Name+":push:"+s.ID()
	if taken, done := w.take(ctx, log, eventID, name); !taken {
		return done, false
	}
	sendCtx, cancel := context.WithTimeout(ctx, n.SendTimeout)
	outcome, err := n.Push.Send(sendCtx, s, payload, topic)
	cut := sendCtx.Err()
	cancel()
	bg := context.WithoutCancel(ctx)
	if outcome == "" {
		if errors.Is(cut, context.DeadlineExceeded) && ctx.Err() == nil {
			n.m.pushSent.WithLabelValues("timed_out").Inc()
			log.Warn("push cut by NOTIFICATION_SEND_TIMEOUT; left for a redelivery, which sends it again", "timeout", n.SendTimeout.String(), "error", err)
		}
		if err := w.redis(ctx, func() error { return n.Claims.Release(bg, eventID, name) }); err != nil {
			log.Error("release claim; it runs out by itself", "error", err)
		}
		return false, false
	}
	n.m.pushSent.WithLabelValues(string(outcome)).Inc()
	switch outcome {
	case push.Sent:
		log.Info("push sent")
	case push.Gone:
		// Removed whoever asked: a subscription the push service forgot
		// never comes back.
		if rerr := w.redis(ctx, func() error { _, err := n.Subscriptions.Remove(bg, nt.UserID, s.Endpoint); return err }); rerr != nil {
			log.Error("push subscription gone; could not remove it, the next push tries again", "error", err, "remove_error", rerr)
		} else {
			log.Info("push subscription gone; removed", "error", err)
		}
	default:
		log.Warn("push not sent; given up", "outcome", string(outcome), "error", err)
	}
	if err := w.redis(ctx, func() error { return n.Claims.MarkSent(bg, eventID, name, n.ClaimTTL) }); err != nil {
		log.Error("record push as done", "error", err)
	}
	return true, outcome == push.Sent
}
