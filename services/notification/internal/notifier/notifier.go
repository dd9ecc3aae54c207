// Package notifier is the core of the notification service: it reads the
// record through the consumer group "notification" and turns events into
// emails and browser notifications, acknowledging an event only once its
// effects are done. Each notification is sent once, however often its
// event is delivered: a replica holds a lease on it while it sends and
// records it as sent only once the send succeeded.
package notifier

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	eventbusv1 "github.com/eventbus-suite/eventbus/proto/gen/eventbus/v1"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/envelope"
	"github.com/eventbus-suite/eventbus/services/notification/internal/claims"
	"github.com/eventbus-suite/eventbus/services/notification/internal/deadletter"
	"github.com/eventbus-suite/eventbus/services/notification/internal/mailer"
	"github.com/eventbus-suite/eventbus/services/notification/internal/rules"
	"github.com/eventbus-suite/eventbus/services/notification/internal/templates"
)

// DrainTimeout bounds how long a shutdown waits for the sends in flight.
const DrainTimeout = 8 * time.Second

// Options configure a Notifier.
type Options struct {
	// Consumer is this replica's member of the group "notification".
	Consumer  bus.Consumer
	Publisher bus.Publisher
	Redis     *redis.Client
	// Prefix is put before every Redis key, like the bus's channel prefix.
	Prefix string
	// Claims make each notification go once; dead-letter retries take
	// the same ones.
	Claims *claims.Store
	// DeadLetters keep the emails that finally failed.
	DeadLetters *deadletter.Store
	Mailer      mailer.Mailer
	Templates   *templates.Set
	Logger      *slog.Logger
	// Workers handle events concurrently; the events of one user always go
	// to the same worker, in order.
	Workers int
	// ClaimTTL is how long a sent notification is remembered, and so how
	// long a redelivered event is recognised.
	ClaimTTL time.Duration
	// SendTimeout bounds one notification's send, retries included; the
	// lease a replica holds while it sends lasts twice that, so no other
	// replica sends it meanwhile, and a replica that died mid-send holds
	// it up no longer.
	SendTimeout time.Duration
	// ContactWait is how long after its event an email waits for the
	// user's contact: the group hands a user's events to any replica, so
	// one may see order.shipped before another has recorded user.created.
	// Until then the event is left for a redelivery; after it, the email
	// is given up and the user counted as unknown.
	ContactWait time.Duration
}

// Notifier handles events.
type Notifier struct {
	Options
	m     *metrics
	taken atomic.Int64 // events queued or being handled
}

// New returns a Notifier registering its metrics on reg.
func New(opts Options, reg prometheus.Registerer) *Notifier {
	return &Notifier{Options: opts, m: newMetrics(reg)}
}

// metrics of the notifier; CountRetry feeds the mailer's retries in.
type metrics struct {
	events        *prometheus.CounterVec
	emailsSent    prometheus.Counter
	emailsFailed  prometheus.Counter
	emailsRetried prometheus.Counter
	published     prometheus.Counter
	publishFailed prometheus.Counter
	conflicts     prometheus.Counter
	unknownUsers  prometheus.Counter
	malformed     prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	c := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: "eventbus_notification_" + name, Help: help})
	}
	m := &metrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "eventbus_notification_events_total", Help: "Events handled, by type."}, []string{"type"}),
		emailsSent:    c("emails_sent_total", "Emails sent (or logged, in dry-run mode)."),
		emailsFailed:  c("emails_failed_total", "Emails that finally failed and went to the dead-letter list."),
		emailsRetried: c("emails_retried_total", "Retries of emails after a 429 or 5xx."),
		published:     c("notifications_published_total", "Browser notifications published."),
		publishFailed: c("notifications_failed_total", "Browser notifications that could not be published."),
		conflicts:     c("claim_conflicts_total", "Notifications skipped because another replica had claimed them."),
		unknownUsers:  c("unknown_users_total", "Emails not sent because the user's contact is unknown."),
		malformed:     c("malformed_total", "Messages that were no envelope, ignored."),
	}
	reg.MustRegister(m.events, m.emailsSent, m.emailsFailed, m.emailsRetried, m.published, m.publishFailed, m.conflicts, m.unknownUsers, m.malformed)
	return m
}

// CountRetry is a mailer retry hook.
func (n *Notifier) CountRetry(int, time.Duration) { n.m.emailsRetried.Inc() }

type job struct {
	delivery bus.Delivery
	env      *envelope.Envelope
	plan     rules.Plan
}

// Run handles events until ctx ends, then finishes the events already
// taken, giving the sends in flight at most DrainTimeout. An event is
// acknowledged once its effects are done; one fetched but not handled
// when Run returns is delivered again, to this replica when it comes back
// or to another after the visibility timeout.
func (n *Notifier) Run(ctx context.Context) error {
	// Sends outlive ctx by DrainTimeout, so a shutdown does not cut an
	// email in half.
	sendCtx, cancelSends := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelSends()
	queues := make([]chan job, n.Workers)
	var wg sync.WaitGroup
	for i := range queues {
		queues[i] = make(chan job, 64)
		wg.Go(func() {
			for j := range queues[i] {
				if n.handle(sendCtx, j) {
					n.ack(sendCtx, j.delivery)
				}
				n.taken.Add(-1)
			}
		})
	}
	stop := func() {
		n.Logger.Info("stopping: finishing the events already taken", "events", n.taken.Load())
		for _, q := range queues {
			close(q)
		}
		drained := make(chan struct{})
		go func() {
			wg.Wait()
			close(drained)
		}()
		select {
		case <-drained:
		case <-time.After(DrainTimeout):
			n.Logger.Warn("sends still running after the drain timeout; cancelling them")
			cancelSends()
			<-drained
		}
	}
	for {
		ds, err := n.Consumer.Fetch(ctx, 64)
		if ctx.Err() != nil {
			stop()
			return nil
		}
		if err != nil {
			stop()
			return fmt.Errorf("read the record: %w", err)
		}
		for _, d := range ds {
			j, ok := n.plan(d)
			if !ok {
				n.ack(ctx, d) // nothing to do for it
				continue
			}
			n.taken.Add(1)
			select {
			case queues[shard(j.plan.UserID, len(queues))] <- j:
			case <-ctx.Done():
				n.taken.Add(-1)
				stop()
				return nil
			}
		}
	}
}

// ack acknowledges d; a failure only means d comes again, and its
// notifications are recognised as sent.
func (n *Notifier) ack(ctx context.Context, d bus.Delivery) {
	if err := n.Consumer.Ack(context.WithoutCancel(ctx), d); err != nil {
		n.Logger.Warn("acknowledge event", "offset", d.Position.Offset, "error", err)
	}
}

func shard(key string, n int) int {
	h := fnv.New32a()
	h.Write([]byte(key))
	return int(h.Sum32() % uint32(n))
}

// plan decodes an event and asks the rules what to do.
func (n *Notifier) plan(d bus.Delivery) (job, bool) {
	env, err := envelope.Unmarshal(d.Payload)
	if err != nil {
		n.m.malformed.Inc()
		n.Logger.Warn("message is not an envelope; ignored", "channel", d.Channel, "error", err)
		return job{}, false
	}
	if env.GetData() == nil {
		return job{}, false
	}
	msg, err := env.GetData().UnmarshalNew()
	if err != nil {
		n.Logger.Warn("event data does not decode; ignored", "event_id", env.GetId(), "type", env.GetType(), "error", err)
		return job{}, false
	}
	p := rules.For(env.GetType(), msg)
	if len(p.Actions) == 0 && p.SaveContact == nil {
		return job{}, false
	}
	n.m.events.WithLabelValues(env.GetType()).Inc()
	return job{delivery: d, env: env, plan: p}, true
}

func (n *Notifier) contactKey(userID string) string { return n.Prefix + "contact:" + userID }

// handle does what the plan says and reports whether the event is done
// with: false leaves it to a redelivery (a failure that may pass, or a
// notification another replica is sending).
func (n *Notifier) handle(ctx context.Context, j job) bool {
	log := n.Logger.With("event_id", j.env.GetId(), "type", j.env.GetType(), "user_id", j.plan.UserID)
	if c := j.plan.SaveContact; c != nil {
		err := n.Redis.HSet(ctx, n.contactKey(j.plan.UserID), "email", c.Email, "name", c.Name).Err()
		if err != nil {
			log.Error("record contact", "error", err)
			return false
		}
	}
	done := true
	for _, a := range j.plan.Actions {
		done = n.do(ctx, log.With("notification", a.Name), j.env, a) && done
	}
	return done
}

// do sends one notification unless it was sent already or another replica
// is sending it, and reports whether it is done with.
func (n *Notifier) do(ctx context.Context, log *slog.Logger, env *envelope.Envelope, a rules.Action) bool {
	to := a.To
	if a.Kind == rules.Email && to == nil {
		c, err := n.contact(ctx, a.UserID)
		if err != nil {
			log.Error("look up contact", "error", err)
			return false
		}
		if c == nil {
			if time.Since(env.GetTime().AsTime()) < n.ContactWait {
				log.Info("no contact recorded for the user yet; left for a redelivery")
				return false
			}
			n.m.unknownUsers.Inc()
			log.Warn("no contact recorded for the user: email not sent (was user.created ever published?)")
			return true
		}
		to = c
	}
	// A replica holds the claim while it sends, for at most twice
	// SendTimeout, and records the notification as sent for ClaimTTL.
	state, holder, err := n.Claims.Take(ctx, env.GetId(), a.Name, 2*n.SendTimeout)
	switch {
	case err != nil:
		log.Error("claim notification", "error", err)
		return false
	case state == claims.Sent:
		n.m.conflicts.Inc()
		log.Debug("sent already")
		return true
	case state == claims.Held:
		log.Info("another replica is sending it; left for a redelivery", "claim", holder)
		return false
	}
	sendCtx, cancel := context.WithTimeout(ctx, n.SendTimeout)
	var sendErr error
	if a.Kind == rules.Email {
		sendErr = n.email(sendCtx, log, env, a, to)
	} else {
		sendErr = n.browser(sendCtx, env, a)
	}
	cancel()
	// What follows outlives a shutdown: the send happened or not.
	ctx = context.WithoutCancel(ctx)
	if sendErr == nil {
		if err := n.Claims.MarkSent(ctx, env.GetId(), a.Name, n.ClaimTTL); err != nil {
			// The lease runs out and a redelivery sends it again: the one
			// way a notification goes twice.
			log.Error("record notification as sent", "error", err)
		}
		return true
	}
	// Release the lease, so that a redelivery, or a retry of the dead
	// letter, may send it.
	if err := n.Claims.Release(ctx, env.GetId(), a.Name); err != nil {
		log.Error("release claim", "error", err)
	}
	// An email that finally failed waits in the dead letters; anything
	// else is tried again with the event.
	return a.Kind == rules.Email && errors.Is(sendErr, errDeadLettered)
}

func (n *Notifier) contact(ctx context.Context, userID string) (*rules.Contact, error) {
	v, err := n.Redis.HGetAll(ctx, n.contactKey(userID)).Result()
	if err != nil {
		return nil, err
	}
	if v["email"] == "" {
		return nil, nil
	}
	return &rules.Contact{Email: v["email"], Name: v["name"]}, nil
}

func (n *Notifier) email(ctx context.Context, log *slog.Logger, env *envelope.Envelope, a rules.Action, to *rules.Contact) error {
	data := map[string]string{"Name": to.Name, "Email": to.Email, "UserID": a.UserID}
	for k, v := range a.Data {
		data[k] = v
	}
	key := deadletter.EmailKey(env.GetId(), a.Name)
	subject, text, html, err := n.Templates.Email(a.Template, data)
	if err == nil {
		err = n.Mailer.Send(ctx, mailer.Email{
			ToEmail: to.Email, ToName: to.Name, Subject: subject, Text: text, HTML: html, Key: key,
		})
	}
	if err != nil && ctx.Err() != nil {
		return err // cut short by a shutdown: tried again with the event
	}
	if err == nil {
		n.m.emailsSent.Inc()
		log.Info("email sent", "to", to.Email, "subject", subject)
		return nil
	}
	n.m.emailsFailed.Inc()
	log.Error("email failed; dead-lettered", "to", to.Email, "error", err)
	// Everything needed to send it again as it was tried, bodies included.
	dl := deadletter.Letter{
		ID: key, EventID: env.GetId(), Type: env.GetType(), Name: a.Name, UserID: a.UserID,
		To: to.Email, ToName: to.Name, Subject: subject, Text: text, HTML: html, Key: key,
		Attempts: 1, Reason: err.Error(), FailedAt: time.Now().UTC(),
	}
	if lerr := n.DeadLetters.Push(context.WithoutCancel(ctx), dl); lerr != nil {
		log.Error("write dead letter", "error", lerr, "key", key)
		return err // not kept anywhere: tried again with the event
	}
	return fmt.Errorf("%w: %w", errDeadLettered, err)
}

// errDeadLettered is wrapped by an email error when the email was kept in
// the dead letters.
var errDeadLettered = errors.New("dead-lettered")

func (n *Notifier) browser(ctx context.Context, env *envelope.Envelope, a rules.Action) error {
	title, body, err := n.Templates.Browser(a.Template, a.Data)
	if err != nil {
		n.m.publishFailed.Inc()
		return err
	}
	note := &eventbusv1.Notification{
		NotificationId: notificationID(env.GetId(), a.Name), UserId: a.UserID, Title: title, Body: body, Link: a.Link, CauseEventId: env.GetId(),
	}
	if err := n.publish(ctx, env, note); err != nil {
		n.m.publishFailed.Inc()
		n.Logger.Error("publish browser notification", "event_id", env.GetId(), "user_id", a.UserID, "error", err)
		return err
	}
	n.m.published.Inc()
	return nil
}

func (n *Notifier) publish(ctx context.Context, cause *envelope.Envelope, note *eventbusv1.Notification) error {
	data, err := envelope.PackData(note)
	if err != nil {
		return err
	}
	user := note.GetUserId()
	out := &envelope.Envelope{
		Id:   note.GetNotificationId(), // the same for every attempt: a repeat is recognisable
		Type: "notification.created", Channel: "notify:user:" + user, Subject: user, Data: data,
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

// notificationID derives a notification's id from its cause and name, so
// that every attempt at it carries the same id.
func notificationID(eventID, name string) string {
	h := sha256.Sum256([]byte(eventID + "\x00" + name))
	return "n-" + hex.EncodeToString(h[:16])
}
