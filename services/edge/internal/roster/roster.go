// Package roster is the edge's side of presence: it records in Redis
// (package presence) every connection of this edge on a channel of the
// namespaces that keep presence, renews them while the edge lives, and
// announces joins and leaves on the channel itself, as "presence.join" and
// "presence.leave" events published live, which the hub gives only to the
// subscriptions that asked for them.
//
// The hub tells the roster of subscriptions as they are taken and dropped
// (Joined, Left), under its lock; the roster writes to Redis from its own
// goroutine (Run), in the order it was told, so a channel's join and leave
// of one connection are announced in that order. A write that fails is
// tried again on the next beat, with what came after it, so an outage of
// Redis delays presence and loses none of it. Every beat (a third of the
// TTL) renews this edge's connections and sweeps their channels: a lost
// edge's connections expire within the TTL, and the first edge to sweep
// one announces its leave.
package roster

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	eventbusv1 "github.com/eventbus-suite/eventbus/proto/gen/eventbus/v1"

	"github.com/eventbus-suite/eventbus/pkg/channel"
	"github.com/eventbus-suite/eventbus/pkg/envelope"
	"github.com/eventbus-suite/eventbus/pkg/presence"
)

// Publisher publishes live only: a join or leave matters to the
// subscriptions open now (redisbus.Bus.PublishLive).
type Publisher interface {
	PublishLive(ctx context.Context, ch string, payload []byte) (int64, error)
}

// Options configure a Roster.
type Options struct {
	Store *presence.Store
	Bus   Publisher
	// Namespaces keep presence; "*" among them: every namespace.
	Namespaces []string
	Logger     *slog.Logger
}

// Roster records this edge's connections. Its methods are safe for
// concurrent use.
type Roster struct {
	opts Options
	m    *metrics

	mu       sync.Mutex
	here     map[string]map[string]presence.Member // channel → client id → member, as joined
	watching map[string]map[string]bool            // channel → the client ids here that want its news
	pending  []op                                  // changes not yet written, in order
	wake     chan struct{}
}

// op is one change to write: a join, or a leave.
type op struct {
	ch   string
	m    presence.Member
	join bool
}

type metrics struct {
	members prometheus.GaugeFunc
	events  *prometheus.CounterVec
	errors  prometheus.Counter
}

// New returns a roster registering its metrics on reg.
func New(opts Options, reg prometheus.Registerer) *Roster {
	r := &Roster{opts: opts, here: make(map[string]map[string]presence.Member), watching: make(map[string]map[string]bool),
		wake: make(chan struct{}, 1)}
	r.m = &metrics{
		members: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "eventbus_edge_presence_members", Help: "Connections of this edge recorded in presence, one per channel."},
			func() float64 { return float64(r.size()) }),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "eventbus_edge_presence_events_total", Help: "Joins and leaves this edge announced, by kind (join, leave)."},
			[]string{"kind"}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "eventbus_edge_presence_errors_total", Help: "Presence writes to Redis that failed and wait for the next beat."}),
	}
	reg.MustRegister(r.m.members, r.m.events, r.m.errors)
	return r
}

// Keeps reports whether channel ch keeps presence: its namespace is one
// of Namespaces, and it is no channel of the bus's own.
func (r *Roster) Keeps(ch string) bool {
	if channel.Reserved(ch) {
		return false
	}
	ns, _, _ := strings.Cut(ch, ":")
	return slices.Contains(r.opts.Namespaces, "*") || slices.Contains(r.opts.Namespaces, ns)
}

// Joined records m on ch, if ch keeps presence; watching says that m
// wants ch's joins and leaves, so this edge sweeps ch. Told again of a
// member it has (a subscription made anew), it changes only whether m
// watches. It does not block.
func (r *Roster) Joined(ch string, m presence.Member, watching bool) {
	if !r.Keeps(ch) {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.here[ch] == nil {
		r.here[ch] = make(map[string]presence.Member)
	}
	_, again := r.here[ch][m.Client]
	if !again {
		r.here[ch][m.Client] = m
	}
	if watching {
		if r.watching[ch] == nil {
			r.watching[ch] = make(map[string]bool)
		}
		r.watching[ch][m.Client] = true
	} else if delete(r.watching[ch], m.Client); len(r.watching[ch]) == 0 {
		delete(r.watching, ch)
	}
	if !again {
		r.queue(op{ch: ch, m: m, join: true})
	}
}

// Left takes m off ch. The member leaves as it joined, whatever its
// connection became since (a token of a user given later). It does not
// block.
func (r *Roster) Left(ch string, m presence.Member) {
	r.mu.Lock()
	defer r.mu.Unlock()
	joined, ok := r.here[ch][m.Client]
	if !ok {
		return
	}
	delete(r.here[ch], m.Client)
	if len(r.here[ch]) == 0 {
		delete(r.here, ch)
	}
	if delete(r.watching[ch], m.Client); len(r.watching[ch]) == 0 {
		delete(r.watching, ch)
	}
	r.queue(op{ch: ch, m: joined})
}

// queue adds o to the changes to write. A leave whose join is still
// pending takes it back instead: both are no news, and what waits while
// Redis is away stays bounded by the connections. Call with mu held.
func (r *Roster) queue(o op) {
	if !o.join {
		for i := len(r.pending) - 1; i >= 0; i-- {
			if p := r.pending[i]; p.ch == o.ch && p.m.Client == o.m.Client {
				if p.join {
					r.pending = slices.Delete(r.pending, i, i+1)
					return
				}
				break
			}
		}
	}
	r.pending = append(r.pending, o)
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

func (r *Roster) size() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, ms := range r.here {
		n += len(ms)
	}
	return n
}

// drainTimeout bounds how long a stopping edge spends announcing the
// leaves of its connections.
const drainTimeout = 5 * time.Second

// Run writes the changes as they come and beats every third of the TTL
// until ctx ends; then it writes what is still pending (the leaves of the
// connections the edge closed on its way down), for at most drainTimeout.
func (r *Roster) Run(ctx context.Context) error {
	tick := time.NewTicker(max(r.opts.Store.TTL()/3, time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-r.wake:
			r.flush(ctx)
		case <-tick.C:
			r.flush(ctx)
			r.beat(ctx)
		case <-ctx.Done():
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), drainTimeout)
			r.flush(dctx)
			cancel()
			return nil
		}
	}
}

// Drained reports whether every change told so far is written.
func (r *Roster) Drained() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.pending) == 0
}

// flush writes the pending changes in order, stopping at the first that
// fails: it and those after it wait for the next beat.
func (r *Roster) flush(ctx context.Context) {
	r.mu.Lock()
	ops := r.pending
	r.pending = nil
	r.mu.Unlock()
	for i, o := range ops {
		if err := r.write(ctx, o); err != nil {
			r.m.errors.Inc()
			r.opts.Logger.Debug("write presence; tried again on the next beat", "channel", o.ch, "error", err)
			r.mu.Lock()
			r.pending = append(ops[i:len(ops):len(ops)], r.pending...)
			r.mu.Unlock()
			return
		}
	}
}

// write records one change, and announces it when it is news.
func (r *Roster) write(ctx context.Context, o op) error {
	var news bool
	var err error
	if o.join {
		news, err = r.opts.Store.Join(ctx, o.ch, o.m)
	} else {
		news, err = r.opts.Store.Leave(ctx, o.ch, o.m)
	}
	if err != nil {
		return err
	}
	if news {
		r.announce(ctx, o.ch, o.m, o.join)
	}
	return nil
}

// beat renews this edge's connections, announcing again those that had
// expired meanwhile (this edge was cut off from Redis for longer than the
// TTL, and another swept them), and sweeps the channels whose news a
// connection here wants, announcing the leaves of the connections of lost
// edges. A channel nobody watches is not swept: its lost members stop
// counting all the same, and leave with its key.
func (r *Roster) beat(ctx context.Context) {
	r.mu.Lock()
	var es []presence.Entry
	for ch, ms := range r.here {
		for _, m := range ms {
			es = append(es, presence.Entry{Channel: ch, Member: m})
		}
	}
	watched := make([]string, 0, len(r.watching))
	for ch := range r.watching {
		watched = append(watched, ch)
	}
	r.mu.Unlock()
	back, err := r.opts.Store.Renew(ctx, es)
	if err != nil {
		r.m.errors.Inc()
		r.opts.Logger.Debug("renew presence", "error", err)
	}
	for _, e := range back {
		if r.holds(e) {
			r.announce(ctx, e.Channel, e.Member, true)
			continue
		}
		// It left while this beat renewed it: another edge swept and
		// announced it, so its own leave, queued, must find nothing.
		if _, err := r.opts.Store.Leave(ctx, e.Channel, e.Member); err != nil {
			r.opts.Logger.Debug("take back a renewal", "channel", e.Channel, "error", err)
		}
	}
	for _, ch := range watched {
		gone, err := r.opts.Store.Sweep(ctx, ch)
		if err != nil {
			r.m.errors.Inc()
			r.opts.Logger.Debug("sweep presence", "channel", ch, "error", err)
			continue
		}
		for _, m := range gone {
			r.announce(ctx, ch, m, false)
		}
	}
}

// holds reports whether e is still one of this edge's connections.
func (r *Roster) holds(e presence.Entry) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	m, ok := r.here[e.Channel][e.Member.Client]
	return ok && m == e.Member
}

// announce publishes m's join or leave on ch. A publish that fails is
// logged and not tried again: presence itself is right in Redis, and
// the subscriptions that missed the news read it there.
func (r *Roster) announce(ctx context.Context, ch string, m presence.Member, join bool) {
	kind := "leave"
	if join {
		kind = "join"
	}
	payload, err := Event(ch, m, join, time.Now())
	if err == nil {
		_, err = r.opts.Bus.PublishLive(ctx, ch, payload)
	}
	if err != nil {
		r.opts.Logger.Warn("announce presence "+kind, "channel", ch, "client", m.Client, "error", err)
		return
	}
	r.m.events.WithLabelValues(kind).Inc()
}

// Event returns the envelope of m's join (or leave) of ch at t.
func Event(ch string, m presence.Member, join bool, t time.Time) ([]byte, error) {
	data, err := envelope.PackData(&eventbusv1.Presence{ClientId: m.Client, UserId: m.User, Transport: m.Transport})
	if err != nil {
		return nil, err
	}
	typ := "presence.leave"
	if join {
		typ = "presence.join"
	}
	env := &envelope.Envelope{Type: typ, Channel: ch, Subject: m.User, Data: data}
	if err := envelope.Fill(env, "eventbus/edge", t); err != nil {
		return nil, err
	}
	return envelope.Marshal(env)
}
