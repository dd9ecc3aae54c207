// Package hub is the core of the edge: it shares one Redis subscription
// among every connected client, subscribes a pattern in Redis when the first
// client wants it and unsubscribes it when the last one leaves, and fans
// each event out to the clients whose subscriptions match, once per client.
package hub

import (
	"context"
	"crypto/rand"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/channel"
	"github.com/eventbus-suite/eventbus/pkg/presence"
)

// Errors a caller reports to its client.
var (
	ErrClosed             = errors.New("the edge is shutting down")
	ErrUnavailable        = errors.New("the event bus (Redis) is unavailable")
	ErrTooManyPatterns    = errors.New("too many distinct patterns for this user")
	ErrTooManyConnections = errors.New("too many connections for this user")
)

// Options bound what the hub holds. Zero values are not allowed.
type Options struct {
	// QueueBytes is how many bytes of frames may wait for a client before
	// it is dropped as too slow.
	QueueBytes int
	// QueueDelay is how long the oldest frame waiting for a client may
	// wait before the client is dropped as too slow, checked as the next
	// frame is queued; 0 for no bound in time.
	QueueDelay time.Duration
	// MaxUserPatterns bounds the distinct patterns one identity holds
	// across its connections.
	MaxUserPatterns int
	// MaxUserConnections bounds the connections of one identity.
	MaxUserConnections int
	// MaxAddressConnections bounds the connections that count against an
	// address rather than a user ("addr:<ip>": without a token, or before
	// they authenticate; an MQTT socket before its CONNECT), over every
	// address together; 0 for no bound.
	MaxAddressConnections int
	// MaxRedisPatterns bounds the wildcard patterns the hub subscribes in
	// Redis; past it, covering patterns serve the rest.
	MaxRedisPatterns int
	// History is the record subscriptions resume from; nil when the bus
	// keeps none, and then none recovers.
	History bus.History
	// RecoverMax bounds the missed events one subscription recovers.
	RecoverMax int
	// Presence, when set, is told of every subscription to a channel (not
	// a pattern) as it is taken and dropped.
	Presence Presence
	// Pacer, when set, is told how far behind the bus the dispatch is
	// (Pacer.Behind), and strains when it falls behind.
	Pacer *Pacer

	now func() time.Time // the clock of the queues' delay bound; nil for time.Now (tests set it)
}

// Presence records who is on which channel. The hub calls it with its
// lock held: its methods must return without blocking.
type Presence interface {
	// Keeps reports whether channel ch keeps presence.
	Keeps(ch string) bool
	// Joined and Left say that m took or dropped its subscription to ch;
	// watching, whether that subscription wants ch's joins and leaves.
	Joined(ch string, m presence.Member, watching bool)
	Left(ch string, m presence.Member)
}

// SubscribeTimeout is how long a transport gives Subscribe to have Redis
// confirm a subscription before it answers the client unavailable.
const SubscribeTimeout = 5 * time.Second

// maxRecovering bounds the subscriptions reading the record at once, so
// that a crowd reconnecting after an edge failed is served a few at a
// time rather than holding the record of all of them in memory at once.
const maxRecovering = 16

// Hub fans events out to clients. Its methods are safe for concurrent use.
type Hub struct {
	sub             bus.Subscription
	opts            Options
	log             *slog.Logger
	m               *metrics
	recovering      chan struct{} // a token per subscription reading the record
	warnedMalformed atomic.Bool
	caughtUp        time.Time // when Run last ended a catch-up after a Gap; Run's own

	// change serialises changes of the Redis subscription, so that the
	// first-in and last-out of one pattern never race.
	change sync.Mutex

	mu         sync.RWMutex
	closed     bool
	clients    map[*Client]struct{}
	identities map[string]*identity
	addrConns  int                             // connections of the identities of an address
	subs       map[string]map[*Client]struct{} // channel or pattern → clients subscribed to it
	joined     sync.WaitGroup

	// The Redis side (redisset.go, batch.go), changed with change and mu
	// held, or with mu held as a change Redis confirmed is applied.
	ops        chan redisOp           // changes on their way to Redis, in order
	adding     map[string]*pendingAdd // names on their way into Redis
	addingWild int                    // how many of them have a wildcard
	redis      map[string]struct{}    // names subscribed in Redis
	wild       map[string]struct{}    // those with a wildcard
	covers     map[string]*patternSet // Redis name → client patterns it serves besides its own
	coveredBy  map[string][]string    // client pattern → the names whose covers hold it

	// seen is where each namespace stood at its last event dispatched,
	// written by the dispatching goroutine only (with mu read-held): after
	// a gap in the Redis subscription the hub reads on from there, and a
	// live event at or before it came from the record already. floor is
	// where a namespace without a dispatched event stands for the hub's
	// clients, from what subscriptions learned of it (the latest position
	// a fresh one saw, the last a resumed one read from the record), kept
	// with mu held: a gap reads such a namespace from there.
	seen  map[string]bus.Position
	floor bus.Cursor

	// Only the dispatching goroutine touches these.
	wanted []string             // the client patterns a message is for
	dedupe map[*Client]struct{} // clients given the message being dispatched
	frames map[frameKey]encoded
}

// encoded is an event's frame for one encoding and set of matching
// subscriptions, with that set, which the frames share.
type encoded struct {
	data []byte
	subs []string
}

// identity is who a connection is for the hub's bounds: a user, or the
// address of connections without a user.
type identity struct {
	name     string
	conns    int
	patterns map[string]int // pattern → connections holding it
}

// New returns a hub fanning out what sub receives, within opts.
func New(sub bus.Subscription, opts Options, log *slog.Logger, reg prometheus.Registerer) *Hub {
	h := &Hub{
		sub:        sub,
		opts:       opts,
		recovering: make(chan struct{}, maxRecovering),
		ops:        make(chan redisOp, 4096),
		adding:     make(map[string]*pendingAdd),
		log:        log,
		clients:    make(map[*Client]struct{}),
		identities: make(map[string]*identity),
		subs:       make(map[string]map[*Client]struct{}),
		redis:      make(map[string]struct{}),
		wild:       make(map[string]struct{}),
		covers:     make(map[string]*patternSet),
		coveredBy:  make(map[string][]string),
		seen:       make(map[string]bus.Position),
		floor:      make(bus.Cursor),
		dedupe:     make(map[*Client]struct{}),
		frames:     make(map[frameKey]encoded),
	}
	if h.opts.now == nil {
		h.opts.now = time.Now
	}
	h.m = newMetrics(h, reg)
	return h
}

// Join registers a new connection of identity who (see Identify), which
// came over transport ("ws", "sse", "mqtt", "mqtt-tcp") and whose events
// are written in enc. The hub calls onReady when frames wait for it and no writer runs; the writer
// then calls Take until it returns nothing. It calls onKick once, when it
// wants the connection closed. Both must return without blocking; neither
// is called after Leave returns. Every Join that returns a client is
// followed by one Leave.
func (h *Hub) Join(who, transport string, enc Encoding, onReady func(), onKick func(Disconnect)) (*Client, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, ErrClosed
	}
	c := &Client{id: rand.Text(), transport: transport, enc: enc, gone: make(chan struct{}), onReady: onReady, onKick: onKick,
		maxBytes: h.opts.QueueBytes, maxDelay: h.opts.QueueDelay, now: h.opts.now, slow: h.m.slowCloses.Inc}
	if err := h.identify(c, who); err != nil {
		return nil, err
	}
	h.clients[c] = struct{}{}
	h.joined.Add(1)
	return c, nil
}

// Identify makes who the identity c counts against: "user:<id>" once it
// authenticated, "addr:<ip>" before. Its subscriptions go along. It
// changes nothing and returns ErrTooManyConnections when who has
// MaxUserConnections already, or ErrTooManyPatterns when c's patterns
// would take who past MaxUserPatterns.
func (h *Hub) Identify(c *Client, who string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.identify(c, who)
}

func (h *Hub) identify(c *Client, who string) error {
	if c.who != nil && c.who.name == who {
		return nil
	}
	to := h.identities[who]
	if to == nil {
		to = &identity{name: who, patterns: make(map[string]int)}
	}
	if to.conns >= h.opts.MaxUserConnections {
		h.m.refusals.WithLabelValues("user_connections").Inc()
		return ErrTooManyConnections
	}
	if isAddress(who) && (c.who == nil || !isAddress(c.who.name)) && h.opts.MaxAddressConnections > 0 && h.addrConns >= h.opts.MaxAddressConnections {
		h.m.refusals.WithLabelValues("address_connections").Inc()
		return ErrTooManyConnections
	}
	added := 0
	for p := range c.subs {
		if to.patterns[p] == 0 {
			added++
		}
	}
	if added > 0 && len(to.patterns)+added > h.opts.MaxUserPatterns {
		h.m.refusals.WithLabelValues("user_patterns").Inc()
		return ErrTooManyPatterns
	}
	h.identities[who] = to
	h.unidentify(c)
	to.conns++
	if isAddress(who) {
		h.addrConns++
	}
	for p := range c.subs {
		to.patterns[p]++
	}
	c.who = to
	return nil
}

// isAddress reports whether identity who is an address's, not a user's.
func isAddress(who string) bool { return strings.HasPrefix(who, "addr:") }

// SetEncoding makes enc the encoding of c's events, for a transport that
// learns it only after Join (MQTT's protocol level, from CONNECT). Call
// it before c's first subscription.
func (h *Hub) SetEncoding(c *Client, enc Encoding) {
	h.mu.Lock()
	c.enc = enc
	h.mu.Unlock()
}

// unidentify takes c's connection and subscriptions off its identity.
// Call with mu held.
func (h *Hub) unidentify(c *Client) {
	from := c.who
	if from == nil {
		return
	}
	from.conns--
	if isAddress(from.name) {
		h.addrConns--
	}
	for p := range c.subs {
		if from.patterns[p]--; from.patterns[p] == 0 {
			delete(from.patterns, p)
		}
	}
	if from.conns == 0 {
		delete(h.identities, from.name)
	}
	c.who = nil
}

// Leave unregisters c and drops its subscriptions, unsubscribing in Redis
// the patterns no one else wants.
func (h *Hub) Leave(c *Client) {
	defer h.joined.Done()
	c.end()
	h.change.Lock()
	defer h.change.Unlock()
	h.mu.Lock()
	var orphans []string
	for p := range c.subs {
		orphans = append(orphans, h.drop(c, p)...)
	}
	h.unidentify(c)
	delete(h.clients, c)
	h.mu.Unlock()
	h.release(orphans)
}

// release unsubscribes in Redis the names no client wants any more, in the
// background. Call with change held.
func (h *Hub) release(orphans []string) { h.remove(orphans) }

// Count returns how many subscriptions c has.
func (h *Hub) Count(c *Client) int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(c.subs)
}

// Subscribe adds pattern p (already validated and authorised) to c and
// queues reply(how it went) for c at the moment the subscription takes
// effect: before any event it delivers. It returns once Redis delivers p,
// so no event published afterwards is missed; on an error nothing was
// queued. A pattern new to c's identity past MaxUserPatterns is
// ErrTooManyPatterns.
//
// With since, the client resumes: what p delivered after since (read from
// the record, in the background) comes before p's live events, which the
// hub holds back meanwhile, with none twice; or, when that cannot be
// done, the reply says why and the live events follow it. Without since,
// the reply gives where each namespace of p stood, for the client to
// resume from later.
func (h *Hub) Subscribe(ctx context.Context, c *Client, p string, since bus.Cursor, reply func(Recovery) []byte) error {
	var latest bus.Cursor
	if since == nil && h.opts.History != nil {
		// Read before the subscription begins: an event published in
		// between comes again to a later resumption, and none is missed.
		var err error
		if latest, err = h.opts.History.Latest(ctx, p); err != nil {
			h.log.Debug("read where a pattern's namespaces stand", "pattern", p, "error", err)
		}
	}
	var has bool
	for {
		h.change.Lock()
		h.mu.RLock()
		_, has = c.subs[p]
		first := len(h.subs[p]) == 0
		closed := h.closed
		full := !has && c.who.patterns[p] == 0 && len(c.who.patterns) >= h.opts.MaxUserPatterns
		h.mu.RUnlock()
		var err error
		var pending *pendingAdd
		switch {
		case closed:
			err = ErrClosed
		case full:
			h.m.refusals.WithLabelValues("user_patterns").Inc()
			err = ErrTooManyPatterns
		case first:
			pending, err = h.serve(ctx, p)
		}
		if err != nil {
			h.change.Unlock()
			return err
		}
		if pending == nil {
			break // with change held
		}
		// Redis takes p with others waiting their turn; then look again.
		h.change.Unlock()
		if err := h.wait(ctx, pending); err != nil {
			return err
		}
	}
	h.mu.Lock()
	// Presence hears of the subscription, and again of one subscribed
	// anew, whose wish for the channel's news may have changed (the
	// member stays; only whether this edge sweeps the channel follows).
	if h.opts.Presence != nil && !channel.IsPattern(p) {
		_, watching := c.presence[p]
		h.opts.Presence.Joined(p, c.member(), watching)
	}
	var r *replay
	if !has {
		if h.subs[p] == nil {
			h.subs[p] = make(map[*Client]struct{})
		}
		h.subs[p][c] = struct{}{}
		if c.subs == nil {
			c.subs = make(map[string]struct{})
		}
		c.subs[p] = struct{}{}
		c.who.patterns[p]++
		h.m.subscriptions.Inc()
		if since != nil {
			r = &replay{}
			if c.replays == nil {
				c.replays = make(map[string]*replay)
			}
			c.replays[p] = r
		}
	}
	h.raiseFloor(latest)
	if r == nil {
		// Subscribed already, it missed nothing; else it is new.
		c.sendSubscribed(p, Recovery{Resumed: since != nil, Recovered: since != nil, Positions: latest}, reply)
	}
	h.mu.Unlock()
	h.change.Unlock()
	if r != nil {
		go h.recover(c, p, since, r, reply)
	}
	return nil
}

// KeepsPresence reports whether channel ch keeps presence: its
// subscriptions are recorded, and may ask for its joins and leaves.
func (h *Hub) KeepsPresence(ch string) bool {
	return h.opts.Presence != nil && !channel.IsPattern(ch) && h.opts.Presence.Keeps(ch)
}

// WantPresence says whether c's subscription to channel ch delivers the
// joins and leaves of ch's presence ("presence.join" and "presence.leave"
// events), which other subscriptions never do. Call it before Subscribe,
// so that none is missed, and again with false if Subscribe fails;
// dropping the subscription forgets it.
func (h *Hub) WantPresence(c *Client, ch string, want bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !want {
		delete(c.presence, ch)
		return
	}
	if c.presence == nil {
		c.presence = make(map[string]struct{})
	}
	c.presence[ch] = struct{}{}
}

// Unsubscribe removes p from c, if c has it, and queues ok for c at the
// moment it takes effect: after every event p delivered to c.
func (h *Hub) Unsubscribe(c *Client, p string, ok []byte) {
	h.change.Lock()
	defer h.change.Unlock()
	h.mu.Lock()
	orphans := h.drop(c, p)
	c.Send(ok)
	h.mu.Unlock()
	h.release(orphans)
}

// Revoke drops every subscription of c that keep refuses, queueing
// notice(p) for c as each one takes effect, and returns how many it
// dropped. The transport calls it whenever the connection's grants change.
func (h *Hub) Revoke(c *Client, keep func(p string) bool, notice func(p string) []byte) int {
	if h.Count(c) == 0 {
		return 0 // a connection authenticating for the first time
	}
	h.change.Lock()
	defer h.change.Unlock()
	h.mu.Lock()
	var orphans []string
	n := 0
	for p := range c.subs {
		if keep(p) {
			continue
		}
		n++
		orphans = append(orphans, h.drop(c, p)...)
		if d, ok := c.push(Frame{Kind: FrameDropped, Data: notice(p), Channel: p}, c.now()); !ok {
			c.tooSlow(d)
		}
	}
	h.mu.Unlock()
	h.release(orphans)
	return n
}

// drop removes p from c and returns the Redis names no client wants any
// more. Call with mu held.
func (h *Hub) drop(c *Client, p string) []string {
	if _, ok := c.subs[p]; !ok {
		return nil
	}
	delete(c.subs, p)
	delete(c.presence, p)
	if h.opts.Presence != nil && !channel.IsPattern(p) {
		h.opts.Presence.Left(p, c.member())
	}
	if r := c.replays[p]; r != nil {
		r.cancelled.Store(true)
		delete(c.replays, p)
	}
	if c.who.patterns[p]--; c.who.patterns[p] == 0 {
		delete(c.who.patterns, p)
	}
	h.m.subscriptions.Dec()
	delete(h.subs[p], c)
	if len(h.subs[p]) > 0 {
		return nil
	}
	delete(h.subs, p)
	return h.forsake(p)
}

// Run fans out events until ctx ends, then closes every connection with
// DisconnectShutdown and waits (at most 5 s) for them to leave.
func (h *Hub) Run(ctx context.Context) error {
	changes, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel() // after the connections left, whose unsubscriptions it sends
	go h.applyChanges(changes)
	msgs := h.sub.Messages()
	for {
		select {
		case m, ok := <-msgs:
			if !ok {
				return errors.New("redis subscription closed")
			}
			if m.Gap {
				h.catchUp()
				h.caughtUp = h.opts.now()
				continue
			}
			h.behind(m)
			h.dispatch(m)
		case <-ctx.Done():
			h.shutdown()
			return nil
		}
	}
}

// behind notes how long m waited between the bus and the dispatch, for
// the Pacer and eventbus_edge_dispatch_lag_seconds: from when the bus read
// it, or from the end of the last catch-up after a Gap, which the
// messages held meanwhile waited for rather than for the CPU.
func (h *Hub) behind(m bus.Message) {
	if m.Received.IsZero() {
		return
	}
	now := h.opts.now()
	lag := now.Sub(m.Received)
	if m.Received.Before(h.caughtUp) {
		lag = now.Sub(h.caughtUp)
	}
	h.m.dispatchLag.Observe(lag.Seconds())
	if h.opts.Pacer != nil {
		h.opts.Pacer.Behind(lag, now)
	}
}

func (h *Hub) shutdown() {
	h.mu.Lock()
	h.closed = true
	for c := range h.clients {
		c.Kick(DisconnectShutdown)
	}
	h.mu.Unlock()
	done := make(chan struct{})
	go func() {
		h.joined.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		h.log.Warn("connections still open 5s after shutdown began")
	}
}

// dispatch sends one event to every client with a matching subscription,
// once per client however many of its subscriptions match: the bus
// delivers each publish once, naming every Redis pattern that matched,
// and recipients turns those into client patterns.
func (h *Hub) dispatch(m bus.Message) {
	if channel.Reserved(m.Channel) {
		// The bus's own channels (the edges' commands) reach the hub
		// through a client's "*" and go no further, whatever its grants.
		return
	}
	h.mu.RLock()
	defer h.mu.RUnlock()
	if !m.Position.IsZero() {
		st := h.streamOf(m.Channel)
		if last, ok := h.seen[st]; ok && last.Epoch == m.Position.Epoch && bus.CompareOffsets(m.Position.Offset, last.Offset) <= 0 {
			return // dispatched already, read from the record after a gap
		}
		h.seen[st] = m.Position
	}
	if len(h.recipients(m.Channel, m.Patterns)) == 0 {
		return // its subscribers left while it was on its way
	}
	ev, err := NewEvent(m.Channel, h.streamOf(m.Channel), m.Position, m.Payload)
	if err != nil {
		h.m.malformed.Inc()
		// Once at warning level, then at debug: a publisher writing plain
		// JSON on a bus channel would otherwise flood the log.
		level := slog.LevelDebug
		if h.warnedMalformed.CompareAndSwap(false, true) {
			level = slog.LevelWarn
		}
		h.log.Log(context.Background(), level, "message is not an envelope (see docs/consumers.md); not forwarded, counted in eventbus_edge_malformed_total",
			"channel", m.Channel, "error", err)
		return
	}
	clear(h.frames)
	now := h.opts.now() // once for every recipient: the delay bound needs no finer clock
	// The common case needs no per-client dedupe: every recipient came
	// through the same subscription.
	if len(h.wanted) == 1 {
		n := 0
		for c := range h.subs[h.wanted[0]] {
			if c.replays != nil && len(h.hold(c, ev, h.wanted)) == 0 {
				continue
			}
			if h.send(c, ev, h.wanted, now) {
				n++
			}
		}
		h.m.delivered.Add(float64(n))
		return
	}
	clear(h.dedupe)
	for _, p := range h.wanted {
		for c := range h.subs[p] {
			h.deliver(c, ev, now)
		}
	}
}

// frameKey names one frame of an event: clients with the same encoding and
// the same matching subscriptions share it.
type frameKey struct {
	enc  Encoding
	subs string
}

// send queues ev's frame for c at now, its subscriptions subs having
// matched, or kicks c if its queue is full or has waited too long. It
// reports whether the frame was queued. Call from dispatch, which owns
// h.frames.
func (h *Hub) send(c *Client, ev *Event, subs []string, now time.Time) bool {
	if c.withholds(ev.Channel) {
		return false
	}
	if subs = c.through(ev, subs); len(subs) == 0 {
		return false
	}
	key := frameKey{c.enc, strings.Join(subs, "\x00")}
	f, ok := h.frames[key]
	if !ok {
		data, err := c.enc.Encode(ev, subs)
		if errors.Is(err, ErrSkip) {
			return false
		}
		if err != nil {
			h.m.malformed.Inc()
			h.log.Debug("event does not encode; not forwarded", "channel", ev.Channel, "error", err)
			return false
		}
		f = encoded{data, slices.Clone(subs)}
		h.frames[key] = f
	}
	d, ok := c.push(Frame{Kind: FrameEvent, Data: f.data, Event: ev, Subs: f.subs}, now)
	if !ok {
		c.tooSlow(d)
	}
	return ok
}

// deliver queues ev for c unless c has it already, naming every
// subscription of c that matched.
func (h *Hub) deliver(c *Client, ev *Event, now time.Time) {
	if _, ok := h.dedupe[c]; ok {
		return
	}
	h.dedupe[c] = struct{}{}
	subs := make([]string, 0, 2)
	for _, p := range h.wanted { // sorted
		if _, ok := c.subs[p]; ok {
			subs = append(subs, p)
		}
	}
	if c.replays != nil {
		if subs = h.hold(c, ev, subs); len(subs) == 0 {
			return
		}
	}
	if h.send(c, ev, subs, now) {
		h.m.delivered.Inc()
	}
}

// KickMatching closes with d every connection whose token match reports
// true of, and returns how many.
func (h *Hub) KickMatching(match func(Token) bool, d Disconnect) int {
	h.mu.RLock()
	var hit []*Client
	for c := range h.clients {
		if t := c.token.Load(); t != nil && match(*t) {
			hit = append(hit, c)
		}
	}
	h.mu.RUnlock()
	for _, c := range hit {
		c.Kick(d)
	}
	return len(hit)
}

// DropCovered removes, from every connection of user sub, each
// subscription that pattern covers, queueing notice(p) for each as it
// takes effect, and returns how many it removed.
func (h *Hub) DropCovered(sub, pattern string, notice func(p string) []byte) int {
	h.mu.RLock()
	var hit []*Client
	for c := range h.clients {
		if t := c.token.Load(); t != nil && t.Sub == sub {
			hit = append(hit, c)
		}
	}
	h.mu.RUnlock()
	n := 0
	for _, c := range hit {
		n += h.Revoke(c, func(p string) bool { return !channel.Covers(pattern, p) }, notice)
	}
	return n
}

// raiseFloor moves the floor of each namespace of c forward to c's
// position. Call with mu held.
func (h *Hub) raiseFloor(c bus.Cursor) {
	for ns, pos := range c {
		if cur, ok := h.floor[ns]; !ok || cur.Epoch != pos.Epoch || bus.CompareOffsets(cur.Offset, pos.Offset) < 0 {
			h.floor[ns] = pos
		}
	}
}
