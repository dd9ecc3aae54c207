package notifier

import (
	"context"
	"encoding/json"
	"log/slog"
	"time"

	eventbusv1 "github.com/eventbus-suite/eventbus/proto/gen/eventbus/v1"

	"github.com/eventbus-suite/eventbus/pkg/envelope"
	"github.com/eventbus-suite/eventbus/services/notification/internal/push"
	"github.com/eventbus-suite/eventbus/services/notification/internal/routes"
	"github.com/eventbus-suite/eventbus/services/notification/internal/rules"
)

// Routes of a browser notification: the values of the Notification's
// route field and of the metrics' route label.
const (
	routeRealtime = "realtime" // in the page: a connection of the user is on notify:user:<id>
	routePush     = "push"     // a Web Push to each of the user's push subscriptions
	routeEmail    = "email"    // an email (rules.EmailTemplate) to the user's contact
	routeNone     = "none"     // nothing more: another email of the event reaches the user
)

// Why a route was chosen: what the Notification's route_reason says,
// and the metrics' reason label. A fallback's reasons are the offline
// ones with "ack_timeout" in place of "offline".
const (
	reasonOnline = "online"
	whyOffline   = "offline"
	whyTimeout   = "ack_timeout"
	// whyOffline or whyTimeout, then one of these
	subscribed    = "_push_subscribed"
	notSubscribed = "_no_push_subscription"
	pushOff       = "_push_off"
	emailedAnyway = "_emailed_anyway"
)

// userChannel, followed by a user id, is the channel of the user's browser
// notifications, and of the user's presence.
const userChannel = "notify:user:"

// note is a browser notification as routing needs it, rendered: what a
// push or an email of it carries, and what a fallback takes from the
// awaited receipts (as JSON) when the page did not acknowledge it.
type note struct {
	NotificationID string    `json:"notification_id"`
	EventID        string    `json:"event_id"`
	EventType      string    `json:"event_type"`
	EventTime      time.Time `json:"event_time"`
	Name           string    `json:"name"`
	UserID         string    `json:"user_id"`
	Title          string    `json:"title"`
	Body           string    `json:"body"`
	Link           string    `json:"link,omitempty"`
	// Emailed: the event emails the user anyway (rules.Action.Emailed).
	Emailed bool `json:"emailed,omitempty"`
}

// browser sends browser notification a of event env by the route its
// user's presence says, and reports whether it is done with. It is
// published on notify:user:<id> whatever the route (the record of it,
// and the page's, should one open), carrying the route; then, by route,
// nothing more (realtime: in the page, its receipt awaited), a push, or
// an email. A rule that means "both" has an email action of its own
// beside it (Emailed). The route is chosen once: a redelivery of the
// event takes the same.
func (w *worker) browser(ctx context.Context, log *slog.Logger, env *envelope.Envelope, a rules.Action) bool {
	n := w.n
	title, body, err := n.Templates.Browser(a.Template, a.Data)
	if err != nil {
		n.m.publishFailed.Inc()
		log.Error("render browser notification", "error", err)
		return false
	}
	nt := note{
		NotificationID: notificationID(env.GetId(), a.Name), EventID: env.GetId(), EventType: env.GetType(),
		EventTime: env.GetTime().AsTime(), Name: a.Name, UserID: a.UserID, Title: title, Body: body, Link: a.Link,
		Emailed: a.Emailed,
	}
	c, ok := w.choose(ctx, log, nt, routes.First, whyOffline)
	if !ok {
		return false
	}
	log = log.With("route", c.Route, "route_reason", c.Reason)
	done := w.once(ctx, log, nt.EventID, nt.Name, func(ctx, sendCtx context.Context) error {
		return w.page(ctx, sendCtx, log, env, nt, c)
	})
	switch c.Route {
	case routePush:
		done = w.pushes(ctx, log, nt) && done
	case routeEmail:
		done = w.emailNote(ctx, log, nt) && done
	}
	return done
}

// choose chooses nt's route at stage (why: whyOffline for the first,
// whyTimeout for a fallback), or takes the one chosen before, and counts
// and logs it when it is this call's. ok is false when it could not, and
// the notification is left for later.
func (w *worker) choose(ctx context.Context, log *slog.Logger, nt note, stage routes.Stage, why string) (c routes.Choice, ok bool) {
	n := w.n
	err := w.redis(ctx, func() (err error) {
		c, err = w.decide(ctx, nt, stage, why)
		return err
	})
	if err != nil {
		log.Error("route notification", "error", err)
		return c, false
	}
	var won bool
	err = w.redis(ctx, func() (err error) {
		c, won, err = n.Routes.Choose(ctx, nt.NotificationID, nt.UserID, stage, c)
		return err
	})
	if err != nil {
		log.Error("record the notification's route", "error", err)
		return c, false
	}
	if won {
		n.m.routes.WithLabelValues(c.Route, c.Reason).Inc()
		msg := "notification routed"
		if stage == routes.Fallback {
			msg = "notification not acknowledged in time; falling back"
		}
		log.Info(msg, "notification_id", nt.NotificationID, "route", c.Route, "route_reason", c.Reason)
	}
	return c, true
}

// decide says how to reach nt's user now: in the page when online (for a
// first route only: a fallback's user did not acknowledge the page),
// else a push when Web Push is on and the user subscribed, else an email,
// unless the event emails the user anyway.
func (w *worker) decide(ctx context.Context, nt note, stage routes.Stage, why string) (routes.Choice, error) {
	n := w.n
	if stage == routes.First {
		online, err := n.Presence.Count(ctx, userChannel+nt.UserID)
		if err != nil {
			return routes.Choice{}, err
		}
		if online > 0 {
			return routes.Choice{Route: routeRealtime, Reason: reasonOnline}, nil
		}
	}
	c := routes.Choice{Route: routeEmail, Reason: why + pushOff}
	if n.Push != nil {
		subs, err := n.Subscriptions.List(ctx, nt.UserID)
		if err != nil {
			return routes.Choice{}, err
		}
		if len(subs) > 0 {
			return routes.Choice{Route: routePush, Reason: why + subscribed}, nil
		}
		c.Reason = why + notSubscribed
	}
	if nt.Emailed {
		c = routes.Choice{Route: routeNone, Reason: why + emailedAnyway}
	}
	return c, nil
}

// page publishes nt on notify:user:<id>, with its route c; when the route
// is realtime and the fallback is on, its receipt is awaited first, so
// that no receipt comes before the wait is recorded.
func (w *worker) page(ctx, sendCtx context.Context, log *slog.Logger, cause *envelope.Envelope, nt note, c routes.Choice) error {
	n := w.n
	if c.Route == routeRealtime && n.AckTimeout > 0 {
		payload, err := json.Marshal(nt)
		if err != nil {
			return err
		}
		err = w.redis(sendCtx, func() error { return n.Routes.Await(sendCtx, nt.NotificationID, payload, n.AckTimeout) })
		if err != nil {
			log.Error("await the notification's receipt", "error", err)
			return err
		}
	}
	msg := &eventbusv1.Notification{
		NotificationId: nt.NotificationID, UserId: nt.UserID, Title: nt.Title, Body: nt.Body, Link: nt.Link,
		CauseEventId: nt.EventID, Route: c.Route, RouteReason: c.Reason,
	}
	if err := n.publish(sendCtx, cause, msg); err != nil {
		n.m.publishFailed.Inc()
		log.Error("publish browser notification", "error", err)
		return err
	}
	n.m.published.Inc()
	return nil
}

// emailNote sends nt as an email (rules.EmailTemplate) to its user's
// contact, once whichever route or rule asks: its claim is
// "<notification>:email".
func (w *worker) emailNote(ctx context.Context, log *slog.Logger, nt note) bool {
	return w.mail(ctx, log.With("email", nt.Name+":email"), email{
		eventID: nt.EventID, eventType: nt.EventType, eventTime: nt.EventTime,
		name: nt.Name + ":email", template: rules.EmailTemplate, userID: nt.UserID,
		data:   map[string]string{"Title": nt.Title, "Body": nt.Body, "Link": nt.Link},
		routed: true,
	})
}

// pushMessage is nt as a push carries it.
func (nt note) pushMessage() push.Message {
	return push.Message{
		Type: "notification.created", NotificationID: nt.NotificationID, UserID: nt.UserID,
		Title: nt.Title, Body: nt.Body, Link: nt.Link, CauseEventID: nt.EventID,
	}
}

func (n *Notifier) publish(ctx context.Context, cause *envelope.Envelope, msg *eventbusv1.Notification) error {
	data, err := envelope.PackData(msg)
	if err != nil {
		return err
	}
	user := msg.GetUserId()
	out := &envelope.Envelope{
		Id:   msg.GetNotificationId(), // the same for every attempt: a repeat is recognisable
		Type: "notification.created", Channel: userChannel + user, Subject: user, Data: data,
		Attributes: map[string]string{"causationid": cause.GetId()},
	}
	if tp := cause.GetAttributes()["traceparent"]; tp != "" {
		out.Attributes["traceparent"] = tp
	}
	if err := envelope.Fill(out, "eventbus/notification", time.Now()); err != nil {
		return err
	}
	b, err := envelope.Marshal(out)
	if err != nil {
		return err
	}
	_, err = n.Publisher.Publish(ctx, out.GetChannel(), b)
	return err
}
