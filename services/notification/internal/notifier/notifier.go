// Package notifier is the core of the notification service: it reads the
// record through the consumer group "notification" and turns events into
// emails and browser notifications, acknowledging an event only once its
// effects are done. Each notification is sent once, however often its
// event is delivered: a replica holds a lease on it while it sends and
// records it as sent only once the send succeeded.
//
// A browser notification is routed by presence (route.go): in the page
// when its user is online, else a Web Push, else an email; one sent in the
// page and not acknowledged within the ack timeout falls back to a push
// or an email (receipt.go).
package notifier

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/envelope"
	"github.com/eventbus-suite/eventbus/pkg/presence"
	"github.com/eventbus-suite/eventbus/pkg/retry"
	"github.com/eventbus-suite/eventbus/services/notification/internal/claims"
	"github.com/eventbus-suite/eventbus/services/notification/internal/contacts"
	"github.com/eventbus-suite/eventbus/services/notification/internal/deadletter"
	"github.com/eventbus-suite/eventbus/services/notification/internal/mailer"
	"github.com/eventbus-suite/eventbus/services/notification/internal/push"
	"github.com/eventbus-suite/eventbus/services/notification/internal/routes"
	"github.com/eventbus-suite/eventbus/services/notification/internal/rules"
	"github.com/eventbus-suite/eventbus/services/notification/internal/templates"
)

// DrainTimeout bounds how long a shutdown waits for the sends in flight and
// their acknowledgements.
const DrainTimeout = 8 * time.Second

// Options configure a Notifier.
type Options struct {
	// Consumer is this replica's member of the group "notification".
	Consumer  bus.Consumer
	Publisher bus.Publisher
	// Contacts are the users' email addresses, as user.created said them.
	Contacts *contacts.Store
	// Claims make each notification go once; dead-letter retries take
	// the same ones. The heartbeat extends every lease they hold.
	Claims *claims.Store
	// DeadLetters keep the emails that finally failed.
	DeadLetters *deadletter.Store
	Mailer      mailer.Mailer
	Templates   *templates.Set
	Logger      *slog.Logger
	// Workers handle events concurrently; the events of one user always go
	// to the same worker, in order.
	Workers int
	// ClaimTTL is how long a sent or dead-lettered notification is
	// remembered, and so how long a redelivered event is recognised.
	ClaimTTL time.Duration
	// SendTimeout bounds one notification's send, retries included. A
	// send cut by it is left to a redelivery of its event.
	SendTimeout time.Duration
	// Visibility is the consumer's visibility timeout. Every third of it,
	// a heartbeat restarts the visibility timeout of every event taken and
	// not acknowledged (queued for a worker, being handled, waiting for
	// its acknowledgement) and extends the leases of the notifications
	// being sent, so that no event in this replica's hands goes to
	// another replica, however long it waits or its send takes.
	Visibility time.Duration
	// ContactWait is how long after its event an email waits for the
	// user's contact: the group hands a user's events to any replica, so
	// one may see order.shipped before another has recorded user.created.
	// Until then the event is left for a redelivery; after it, the email
	// is given up and the user counted as unknown.
	ContactWait time.Duration
	// Push, when set, sends a browser notification whose user is not
	// online as a Web Push to each of the user's Subscriptions; nil means
	// Web Push is off.
	Push          *push.Sender
	Subscriptions *push.Store
	// Presence says whether a user is online: a live connection on
	// notify:user:<id> at some edge.
	Presence *presence.Store
	// Routes remember each browser notification's route, its receipts and
	// the receipts awaited.
	Routes *routes.Store
	// AckTimeout is how long a browser notification sent in the page may
	// go unacknowledged before it falls back to a push or an email; 0
	// turns the fallback off.
	AckTimeout time.Duration
}

// Notifier handles events.
type Notifier struct {
	Options
	m *metrics

	mu    sync.Mutex
	taken map[string]*takenDelivery // events fetched and not yet acknowledged or given up, by deliveryKey
	// fallbacks in this replica's hands, by notification id: taken from
	// the awaited receipts and not yet done with.
	fallbacks map[string]bool

	badReceiptLogged atomic.Bool // the first invalid receipt is logged as a warning, the others at debug level
}

// takenDelivery is an event in this replica's hands, fetched n times.
type takenDelivery struct {
	d bus.Delivery
	n int
}

// New returns a Notifier registering its metrics on reg.
func New(opts Options, reg prometheus.Registerer) *Notifier {
	return &Notifier{Options: opts, m: newMetrics(reg), taken: make(map[string]*takenDelivery), fallbacks: make(map[string]bool)}
}

// metrics of the notifier; CountRetry feeds the mailer's retries in.
type metrics struct {
	events        *prometheus.CounterVec
	emailsSent    prometheus.Counter
	emailsFailed  prometheus.Counter
	emailsRetried prometheus.Counter
	emailsCut     prometheus.Counter
	published     prometheus.Counter
	publishFailed prometheus.Counter
	conflicts     prometheus.Counter
	unknownUsers  prometheus.Counter
	malformed     prometheus.Counter
	pushSent      *prometheus.CounterVec
	pushRetried   prometheus.Counter
	routes        *prometheus.CounterVec
	delivery      *prometheus.HistogramVec
	receipts      *prometheus.CounterVec
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
		emailsCut: c("emails_timed_out_total",
			"Email sends cut by NOTIFICATION_SEND_TIMEOUT before SendGrid answered, left to a redelivery (which sends one SendGrid accepted late again)."),
		published:     c("notifications_published_total", "Browser notifications published."),
		publishFailed: c("notifications_failed_total", "Browser notifications that could not be published."),
		conflicts:     c("claim_conflicts_total", "Notifications skipped because another replica had claimed them."),
		unknownUsers:  c("unknown_users_total", "Emails not sent because the user's contact is unknown."),
		malformed:     c("malformed_total", "Messages that were no envelope, ignored."),
		pushSent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "eventbus_notification_push_sent_total",
			Help: "Web Push messages by outcome: sent, gone (404 or 410: subscription removed), rejected (another 4xx), failed (429, 5xx or no answer, every attempt), timed_out (cut by NOTIFICATION_SEND_TIMEOUT, left for a redelivery)."},
			[]string{"outcome"}),
		pushRetried: c("push_retried_total", "Retries of Web Push messages after a 429, 5xx or no answer."),
		routes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "eventbus_notification_routes_total",
			Help: "Browser notifications by the route chosen for them (realtime, push, email, none) and why; reasons ack_timeout_* are the fallbacks of notifications sent in the page and not acknowledged within NOTIFY_ACK_TIMEOUT."},
			[]string{"route", "reason"}),
		delivery: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "eventbus_notification_delivery_seconds",
			Help:    "Delivery of browser notifications, by route, once per notification and route: realtime from the edge's receipt (its latency_ms: the notification's publication to the client's acknowledgement, by the edge's clock); push and email from the cause event's time to the push service's or SendGrid's acceptance (not the user's reading).",
			Buckets: []float64{.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900}},
			[]string{"route"}),
		receipts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "eventbus_notification_receipts_total",
			Help: "notification.delivered events by result: delivered (a notification's first receipt), repeat, unknown (no notification of that id routed by this service for that user, or its state ran out), invalid (malformed, or not the edge's: ignored)."},
			[]string{"result"}),
	}
	for _, o := range pushOutcomes {
		m.pushSent.WithLabelValues(o)
	}
	for _, r := range []string{routeRealtime, routePush, routeEmail} {
		m.delivery.WithLabelValues(r)
	}
	for _, r := range receiptResults {
		m.receipts.WithLabelValues(r)
	}
	reg.MustRegister(m.events, m.emailsSent, m.emailsFailed, m.emailsRetried, m.emailsCut, m.published, m.publishFailed, m.conflicts, m.unknownUsers, m.malformed,
		m.pushSent, m.pushRetried, m.routes, m.delivery, m.receipts)
	return m
}

// CountRetry is a mailer retry hook.
func (n *Notifier) CountRetry(int, time.Duration) { n.m.emailsRetried.Inc() }

// job is a worker's: an event's plan, a receipt, or a fallback (which
// has no delivery).
type job struct {
	delivery bus.Delivery
	env      *envelope.Envelope
	plan     rules.Plan
	receipt  *receipt
	fallback *fallback
}

// user is whose job it is: a user's jobs go to one worker, in order.
func (j job) user() string {
	if j.fallback != nil {
		return j.fallback.note.UserID
	}
	return j.plan.UserID
}

// Run handles events until ctx ends, then finishes the events already
// taken, giving the sends in flight and the acknowledgements at most
// DrainTimeout. An event is acknowledged once its effects are done; one
// fetched but not handled when Run returns is delivered again, to this
// replica when it comes back or to another after the visibility timeout.
//
// Redis going away does not end Run: reading the record, acknowledging,
// the heartbeat and each worker's Redis steps retry with a backoff of at
// most 5 s, each saying so once in the log, and Run goes on from the
// group's position when Redis is back. Only a closed bus ends it with an
// error.
func (n *Notifier) Run(ctx context.Context) error {
	// Sends outlive ctx by DrainTimeout, so a shutdown does not cut an
	// email in half.
	sendCtx, cancelSends := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelSends()
	beatCtx, stopBeat := context.WithCancel(sendCtx)
	var beat sync.WaitGroup
	beat.Go(func() { n.heartbeat(beatCtx) })
	acks := make(chan bus.Delivery, 256)
	var acker sync.WaitGroup
	acker.Go(func() { n.acknowledge(sendCtx, acks) })
	queues := make([]chan job, n.Workers)
	var wg sync.WaitGroup
	for i := range queues {
		queues[i] = make(chan job, 64)
		w := &worker{n: n}
		wg.Go(func() {
			for j := range queues[i] {
				if j.fallback != nil {
					w.fallBack(sendCtx, j.fallback)
					continue
				}
				if w.handle(sendCtx, j) {
					acks <- j.delivery
				} else {
					n.untrack(j.delivery) // left for a redelivery
				}
			}
		})
	}
	// The fallbacks go through the workers' queues, so that a user's
	// sends stay in one worker's order; it stops before they close.
	pollCtx, stopPoll := context.WithCancel(ctx)
	var poll sync.WaitGroup
	if n.AckTimeout > 0 {
		poll.Go(func() {
			n.pollReceipts(pollCtx, func(j job) bool {
				select {
				case queues[shard(j.user(), len(queues))] <- j:
					return true
				case <-pollCtx.Done():
					return false
				}
			})
		})
	}
	stop := func() {
		stopPoll()
		poll.Wait()
		n.Logger.Info("stopping: finishing the events already taken", "events", len(n.inFlight()))
		for _, q := range queues {
			close(q)
		}
		drain := time.AfterFunc(DrainTimeout, func() {
			n.Logger.Warn("sends or acknowledgements still running after the drain timeout; cancelling them")
			cancelSends()
		})
		wg.Wait()
		close(acks)
		acker.Wait()
		drain.Stop()
		stopBeat()
		beat.Wait()
	}
	outage := retry.Outage{What: "read the record", Log: n.Logger}
	for {
		ds, err := n.fetch(ctx, outage.Failing())
		if ctx.Err() != nil {
			stop()
			return nil
		}
		if errors.Is(err, bus.ErrClosed) {
			stop()
			return fmt.Errorf("read the record: %w", err)
		}
		if err != nil {
			n.Logger.Debug("read the record", "error", err)
			if outage.Failed(ctx, err) != nil {
				stop()
				return nil
			}
			continue
		}
		outage.Succeeded()
		if len(ds) == 0 {
			continue
		}
		n.track(ds)
		for i, d := range ds {
			var queued bool
			if j, ok := n.plan(d); ok {
				select {
				case queues[shard(j.user(), len(queues))] <- j:
					queued = true
				case <-ctx.Done():
				}
			} else {
				select {
				case acks <- d: // nothing to do for it
					queued = true
				case <-ctx.Done():
				}
			}
			if !queued {
				n.untrack(ds[i:]...)
				stop()
				return nil
			}
		}
	}
}

// fetchSlice is how long a fetch waits for events while Redis is failing,
// before Run asks Redis whether it answers again.
const fetchSlice = time.Second

// fetch fetches up to 64 events. While Redis is failing (probing), it
// waits at most fetchSlice for them, and then reads the group's lag
// instead, so that the end of an outage is known, and logged, even when no
// event comes: it returns no events and Lag's error then.
func (n *Notifier) fetch(ctx context.Context, probing bool) ([]bus.Delivery, error) {
	if !probing {
		return n.Consumer.Fetch(ctx, 64)
	}
	// Cancelled, not given a deadline: a deadline would also bound the
	// socket read of a blocking read of the group, whose answer could then
	// be lost, while a cancellation lets the read in flight finish.
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := time.AfterFunc(fetchSlice, cancel)
	defer stop.Stop()
	ds, err := n.Consumer.Fetch(fctx, 64)
	if len(ds) == 0 && fctx.Err() != nil && ctx.Err() == nil {
		lctx, cancel := context.WithTimeout(ctx, fetchSlice)
		defer cancel()
		_, err := n.Consumer.Lag(lctx)
		return nil, err
	}
	return ds, err
}

// deliveryKey names an event in the record: its channel (and so its
// namespace's stream) and offset.
func deliveryKey(d bus.Delivery) string { return d.Channel + "\x00" + d.Position.Offset }

// track counts ds as in this replica's hands: the heartbeat extends them
// until they are acknowledged or given up.
func (n *Notifier) track(ds []bus.Delivery) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, d := range ds {
		k := deliveryKey(d)
		if t := n.taken[k]; t != nil {
			t.n++ // fetched again while in hand: extended until both are done
		} else {
			n.taken[k] = &takenDelivery{d: d, n: 1}
		}
	}
}

// untrack ends what track began, once per fetch of each delivery.
func (n *Notifier) untrack(ds ...bus.Delivery) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, d := range ds {
		k := deliveryKey(d)
		if t := n.taken[k]; t != nil {
			if t.n--; t.n <= 0 {
				delete(n.taken, k)
			}
		}
	}
}

// inFlight returns the events in this replica's hands.
func (n *Notifier) inFlight() []bus.Delivery {
	n.mu.Lock()
	defer n.mu.Unlock()
	ds := make([]bus.Delivery, 0, len(n.taken))
	for _, t := range n.taken {
		ds = append(ds, t.d)
	}
	return ds
}

// heartbeat extends, every third of the visibility timeout until ctx
// ends, the events in this replica's hands and the consumer's events read
// ahead (Consumer.Extend), the leases of the notifications being sent
// (Claims.ExtendHeld) and those of the fallbacks in hand (Routes.Extend).
// While Redis is away it retries, sooner than the next beat, saying so
// once in the log.
func (n *Notifier) heartbeat(ctx context.Context) {
	every := max(n.Visibility/3, time.Millisecond)
	// Quiet: the record's reader speaks for an outage of Redis.
	backoff := retry.Backoff{Min: every / 8, Max: every}
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
		case <-ctx.Done():
			return
		}
		for {
			bctx, cancel := context.WithTimeout(ctx, every)
			err := errors.Join(n.Consumer.Extend(bctx, n.inFlight()...), n.Claims.ExtendHeld(bctx), n.Routes.Extend(bctx, n.Visibility, n.fallbacksInHand()...))
			cancel()
			if err == nil {
				backoff.Reset()
				break
			}
			n.Logger.Debug("extend the events in flight", "error", err)
			if ctx.Err() != nil || backoff.Wait(ctx) != nil {
				return
			}
		}
	}
}

// acknowledge acknowledges the deliveries it receives, several at once
// when they come faster than Redis answers, until acks is closed. An
// acknowledgement that fails for want of an answer is tried again until
// it works (the heartbeat keeps its event meanwhile) or ctx ends; one that
// fails otherwise, or then, leaves its event to come again, recognised as
// sent.
func (n *Notifier) acknowledge(ctx context.Context, acks <-chan bus.Delivery) {
	var backoff retry.Backoff // quiet: the record's reader speaks for an outage of Redis
	batch := make([]bus.Delivery, 0, 64)
	for d := range acks {
		batch = append(batch[:0], d)
	more:
		for len(batch) < cap(batch) {
			select {
			case d, ok := <-acks:
				if !ok {
					break more
				}
				batch = append(batch, d)
			default:
				break more
			}
		}
		for {
			err := n.Consumer.Ack(ctx, batch...)
			if err == nil {
				backoff.Reset()
				break
			}
			if !transient(err) {
				n.Logger.Warn("acknowledge events; they come again and are recognised as sent", "events", len(batch), "error", err)
				break
			}
			n.Logger.Debug("acknowledge events", "error", err)
			if backoff.Wait(ctx) != nil {
				n.Logger.Warn("events not acknowledged before the drain timeout; they come again and are recognised as sent", "events", len(batch))
				break
			}
		}
		n.untrack(batch...)
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
	if env.GetType() == receiptType {
		r, err := parseReceipt(env, d.Channel)
		if errors.Is(err, errNotOurs) {
			n.m.receipts.WithLabelValues(receiptUnknown).Inc()
			n.Logger.Debug("receipt of a notification this service did not make; ignored", "event_id", env.GetId(), "error", err)
			return job{}, false
		}
		if err != nil {
			n.m.receipts.WithLabelValues(receiptInvalid).Inc()
			// A client names the id it acknowledges: the first is worth a
			// warning, a flood of them is not worth a log.
			level := slog.LevelDebug
			if !n.badReceiptLogged.Swap(true) {
				level = slog.LevelWarn
			}
			n.Logger.Log(context.Background(), level, "receipt ignored (further ones are logged at debug level)", "event_id", env.GetId(), "source", env.GetSource(), "error", err)
			return job{}, false
		}
		return job{delivery: d, env: env, receipt: &r, plan: rules.Plan{UserID: r.userID}}, true
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

// worker handles the jobs of one queue, one at a time.
type worker struct {
	n       *Notifier
	backoff retry.Backoff // of this worker's Redis steps; quiet, as the record's reader speaks for an outage
}

// redis runs f, one step of a job on Redis, until it works, fails for good
// (an answer refusing it rather than no answer: see transient) or ctx
// ends, and returns its last error. f's own context is up to the caller:
// a step that must outlive a shutdown is tried at least once.
func (w *worker) redis(ctx context.Context, f func() error) error {
	for {
		err := f()
		if err == nil {
			w.backoff.Reset()
			return nil
		}
		if !transient(err) {
			return err
		}
		w.n.Logger.Debug("a step on redis failed; retrying", "error", err)
		if w.backoff.Wait(ctx) != nil {
			return err
		}
	}
}

// transient reports whether a Redis error may pass by waiting: no answer
// (a lost connection, a restarting server) or an answer saying "not now",
// rather than one refusing the command, or a lost lease.
func transient(err error) bool {
	if errors.Is(err, claims.ErrLost) || errors.Is(err, context.Canceled) {
		return false
	}
	var reply redis.Error
	if errors.As(err, &reply) {
		for _, p := range []string{"LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "CLUSTERDOWN", "READONLY"} {
			if strings.HasPrefix(reply.Error(), p) {
				return true
			}
		}
		return false
	}
	return true
}

// handle does what the plan says and reports whether the event is done
// with: false leaves it to a redelivery (a failure that may pass, or a
// notification another replica is sending).
func (w *worker) handle(ctx context.Context, j job) bool {
	n := w.n
	log := n.Logger.With("event_id", j.env.GetId(), "type", j.env.GetType(), "user_id", j.plan.UserID)
	if j.receipt != nil {
		return w.deliver(ctx, log, *j.receipt)
	}
	if c := j.plan.SaveContact; c != nil {
		err := w.redis(ctx, func() error {
			return n.Contacts.Save(ctx, j.plan.UserID, *c)
		})
		if err != nil {
			log.Error("record contact", "error", err)
			return false
		}
	}
	done := true
	for _, a := range j.plan.Actions {
		alog := log.With("notification", a.Name)
		if a.Kind == rules.Browser {
			done = w.browser(ctx, alog, j.env, a) && done
			continue
		}
		done = w.mail(ctx, alog, email{
			eventID: j.env.GetId(), eventType: j.env.GetType(), eventTime: j.env.GetTime().AsTime(),
			name: a.Name, template: a.Template, userID: a.UserID, to: a.To, data: a.Data,
		}) && done
	}
	return done
}

// email is one email to send: a rule's own, or a browser notification
// routed to email.
type email struct {
	eventID, eventType string
	eventTime          time.Time
	// name is the notification's, with the event id the key of its claim.
	name, template, userID string
	// to is the recipient when the event carries it; else the user's
	// recorded contact.
	to   *rules.Contact
	data map[string]string
	// routed marks a browser notification sent as an email: its delivery
	// is observed (eventbus_notification_delivery_seconds).
	routed bool
}

// mail sends one email unless it was sent already or another replica is
// sending it, and reports whether it is done with.
func (w *worker) mail(ctx context.Context, log *slog.Logger, m email) bool {
	n := w.n
	to := m.to
	if to == nil {
		var c *rules.Contact
		err := w.redis(ctx, func() (err error) {
			c, err = n.Contacts.Get(ctx, m.userID)
			return err
		})
		if err != nil {
			log.Error("look up contact", "error", err)
			return false
		}
		if c == nil {
			if time.Since(m.eventTime) < n.ContactWait {
				log.Info("no contact recorded for the user yet; left for a redelivery")
				return false
			}
			n.m.unknownUsers.Inc()
			log.Warn("no contact recorded for the user: email not sent (was user.created ever published?)")
			return true
		}
		to = c
	}
	return w.once(ctx, log, m.eventID, m.name, func(ctx, sendCtx context.Context) error {
		return w.email(ctx, sendCtx, log, m, to)
	})
}

// once sends notification name of event eventID with send, unless it was
// sent already or another replica is sending it, and reports whether it is
// done with. send gets ctx and sendCtx, which bounds the send (by
// SendTimeout); its nil means sent, errDeadLettered that the email is kept
// in the dead letters, claims.ErrLost that the lease ran out meanwhile,
// anything else that the notification is left for a redelivery.
func (w *worker) once(ctx context.Context, log *slog.Logger, eventID, name string, send func(ctx, sendCtx context.Context) error) bool {
	n := w.n
	if taken, done := w.take(ctx, log, eventID, name); !taken {
		return done
	}
	sendCtx, cancel := context.WithTimeout(ctx, n.SendTimeout)
	sendErr := send(ctx, sendCtx)
	cancel()
	// What follows outlives a shutdown, tried once at least: the send
	// happened or not.
	bg := context.WithoutCancel(ctx)
	switch {
	case sendErr == nil:
		err := w.redis(ctx, func() error { return n.Claims.MarkSent(bg, eventID, name, n.ClaimTTL) })
		if err != nil {
			// The lease runs out and a redelivery sends it again: the one
			// way a notification goes twice without a replica dying.
			log.Error("record notification as sent", "error", err)
		}
		return true
	case errors.Is(sendErr, errDeadLettered):
		return true // the claim says dead-lettered
	case errors.Is(sendErr, claims.ErrLost):
		// The lease ran out before the email could be dead-lettered
		// (Redis was away longer than it): whoever holds it now sends.
		return false
	}
	// Release the lease, so that a redelivery may send it.
	if err := w.redis(ctx, func() error { return n.Claims.Release(bg, eventID, name) }); err != nil {
		log.Error("release claim; it runs out by itself", "error", err)
	}
	return false
}

// take takes the lease on notification name of event eventID, which the
// replica holds while it sends, kept by the heartbeat, and records as sent
// for ClaimTTL. When it is not taken, done says whether the notification
// is done with (sent, or dead-lettered) rather than left for a redelivery.
func (w *worker) take(ctx context.Context, log *slog.Logger, eventID, name string) (taken, done bool) {
	n := w.n
	var state claims.State
	var holder string
	err := w.redis(ctx, func() (err error) {
		state, holder, err = n.Claims.Take(ctx, eventID, name)
		return err
	})
	switch {
	case err != nil:
		log.Error("claim notification", "error", err)
		return false, false
	case state == claims.Sent:
		n.m.conflicts.Inc()
		log.Debug("sent already")
		return false, true
	case state == claims.DeadLettered:
		log.Debug("dead-lettered already: only a retry of its dead letter sends it")
		return false, true
	case state == claims.Held:
		log.Info("another replica is sending it; left for a redelivery", "claim", holder)
		return false, false
	}
	return true, false
}

// email sends one email and says how it went: nil when SendGrid accepted
// it; errDeadLettered wrapped when it finally failed and is kept in the
// dead letters (and its claim says so); claims.ErrLost wrapped when it
// failed but the lease ran out before it could be kept; else it was cut
// short (by SendTimeout or a drain timeout) or could not be kept, and is
// tried again with the event. sendCtx bounds the send, ctx the rest.
func (w *worker) email(ctx, sendCtx context.Context, log *slog.Logger, m email, to *rules.Contact) error {
	n := w.n
	data := map[string]string{"Name": to.Name, "Email": to.Email, "UserID": m.userID}
	for k, v := range m.data {
		data[k] = v
	}
	key := deadletter.EmailKey(m.eventID, m.name)
	subject, text, html, err := n.Templates.Email(m.template, data)
	if err == nil {
		err = n.Mailer.Send(sendCtx, mailer.Email{
			ToEmail: to.Email, ToName: to.Name, Subject: subject, Text: text, HTML: html, Key: key,
		})
	}
	if err != nil && sendCtx.Err() != nil {
		// No answer in time: SendGrid may have accepted it, so it is no
		// dead letter; its event comes again and sends it again.
		if errors.Is(sendCtx.Err(), context.DeadlineExceeded) && ctx.Err() == nil {
			n.m.emailsCut.Inc()
			log.Warn("email cut by NOTIFICATION_SEND_TIMEOUT; left for a redelivery, which sends it again", "to", to.Email, "timeout", n.SendTimeout.String(), "error", err)
		}
		return err
	}
	if err == nil {
		n.m.emailsSent.Inc()
		if m.routed {
			n.m.delivery.WithLabelValues(routeEmail).Observe(time.Since(m.eventTime).Seconds())
		}
		log.Info("email sent", "to", to.Email, "subject", subject)
		return nil
	}
	// Everything needed to send it again as it was tried, bodies included.
	dl := deadletter.Letter{
		ID: key, EventID: m.eventID, Type: m.eventType, Name: m.name, UserID: m.userID,
		To: to.Email, ToName: to.Name, Subject: subject, Text: text, HTML: html, Key: key,
		Attempts: 1, Reason: err.Error(), FailedAt: time.Now().UTC(),
	}
	bg := context.WithoutCancel(ctx)
	if lerr := w.redis(ctx, func() error { return n.DeadLetters.Push(bg, dl) }); lerr != nil {
		if errors.Is(lerr, claims.ErrLost) {
			log.Warn("email failed, and its lease ran out before it was dead-lettered; left to whoever holds it", "to", to.Email, "error", err)
			return lerr
		}
		log.Error("email failed; could not write its dead letter, so it is tried again with the event", "to", to.Email, "error", err, "dead_letter_error", lerr)
		return err
	}
	n.m.emailsFailed.Inc()
	log.Error("email failed; dead-lettered", "to", to.Email, "error", err)
	return fmt.Errorf("%w: %w", errDeadLettered, err)
}

// errDeadLettered is wrapped by an email error when the email was kept in
// the dead letters.
var errDeadLettered = errors.New("dead-lettered")

// notificationID derives a notification's id from its cause and name, so
// that every attempt at it carries the same id.
func notificationID(eventID, name string) string {
	h := sha256.Sum256([]byte(eventID + "\x00" + name))
	return "n-" + hex.EncodeToString(h[:16])
}
