// Package hub is the core of the edge: it shares one Redis subscription
// among every connected client, subscribes a pattern in Redis when the first
// client wants it and unsubscribes it when the last one leaves, and fans
// each event out to the clients whose subscriptions match, once per client.
package hub

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/channel"
	"github.com/eventbus-suite/eventbus/pkg/envelope"
	"github.com/eventbus-suite/eventbus/services/edge/internal/protocol"
)

// Errors a caller reports to its client.
var (
	ErrClosed      = errors.New("the edge is shutting down")
	ErrUnavailable = errors.New("the event bus (Redis) is unavailable")
)

// Client is one connection as the hub sees it. Its send queue costs
// nothing until a frame waits, and no writer runs while none does: an idle
// connection holds no buffer and no goroutine for sending.
type Client struct {
	onReady func()
	onKick  func(code websocket.StatusCode, reason string)
	max     int
	once    sync.Once
	kicked  atomic.Bool
	subs    map[string]struct{} // guarded by Hub.mu; nil until the first subscription

	mu      sync.Mutex
	queue   [][]byte // frames waiting, in order
	writing bool     // onReady was called and Take has not found the queue empty since
	pausing bool     // the writer is in Pause

	// Made on the writer's first Pause. push signals hurry, with mu held,
	// to end a Pause early when the queue is half full.
	hurry chan struct{}
	timer *time.Timer // only the writer uses it
}

// push queues frame, calling onReady if no writer runs. It reports false,
// queueing nothing, when max frames wait already.
func (c *Client) push(frame []byte) bool {
	c.mu.Lock()
	if len(c.queue) >= c.max {
		c.mu.Unlock()
		return false
	}
	c.queue = append(c.queue, frame)
	start := !c.writing
	c.writing = true
	if c.pausing && len(c.queue) >= c.max/2 {
		c.pausing = false
		c.hurry <- struct{}{}
	}
	c.mu.Unlock()
	if start {
		c.onReady()
	}
	return true
}

// Take appends the waiting frames to dst, in order, and empties the queue.
// When none wait it returns dst as it is, and the writer that called it must
// stop: the next frame calls onReady again.
func (c *Client) Take(dst [][]byte) [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.queue) == 0 {
		c.writing = false
		if cap(c.queue) > 16 {
			c.queue = nil // a burst is over: give its memory back
		}
		return dst
	}
	dst = append(dst, c.queue...)
	clear(c.queue)
	c.queue = c.queue[:0]
	return dst
}

// Pause waits d, or less if the queue fills to half meanwhile: a writer
// pausing to pack more events into its next write must not let the queue
// overflow, which would close a client that reads fast enough.
func (c *Client) Pause(d time.Duration) {
	c.mu.Lock()
	if len(c.queue) >= c.max/2 {
		c.mu.Unlock()
		return
	}
	if c.hurry == nil {
		c.hurry = make(chan struct{}, 1)
		c.timer = time.NewTimer(d)
	} else {
		c.timer.Reset(d)
	}
	c.pausing = true
	c.mu.Unlock()
	select {
	case <-c.timer.C:
	case <-c.hurry:
		c.timer.Stop()
	}
	c.mu.Lock()
	c.pausing = false
	select {
	case <-c.hurry: // sent as the timer fired: not for the next Pause
	default:
	}
	c.mu.Unlock()
}

func (c *Client) queued() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.queue)
}

// Kick asks for the connection to be closed with code. The first call wins:
// it calls the Join's onKick, which must not block, and the hub stops
// queueing frames for c.
func (c *Client) Kick(code websocket.StatusCode, reason string) {
	c.once.Do(func() {
		c.kicked.Store(true)
		c.onKick(code, reason)
	})
}

// Hub fans events out to clients. Its methods are safe for concurrent use.
type Hub struct {
	sub   bus.Subscription
	queue int
	log   *slog.Logger
	m     *metrics

	// change serialises changes of the Redis subscription, so that the
	// first-in and last-out of one pattern never race.
	change sync.Mutex

	mu      sync.RWMutex
	closed  bool
	clients map[*Client]struct{}
	exact   map[string]map[*Client]struct{} // channel → clients subscribed to it exactly
	wild    map[string]map[*Client]struct{} // pattern with '*' → clients
	joined  sync.WaitGroup

	// Only the dispatching goroutine touches these.
	last    lastEvent
	matched []string // wildcard patterns matching the current channel
	seen    map[*Client]struct{}
	frames  map[string][]byte
}

// lastEvent recognises the further deliveries of one publish: Redis sends
// a message once per matching subscription of the connection, back to
// back.
type lastEvent struct {
	channel string
	payload []byte
	pending int
}

// New returns a hub fanning out what sub receives; each client may have
// queue frames waiting before it is dropped as too slow.
func New(sub bus.Subscription, queue int, log *slog.Logger, reg prometheus.Registerer) *Hub {
	h := &Hub{
		sub:     sub,
		queue:   queue,
		log:     log,
		clients: make(map[*Client]struct{}),
		exact:   make(map[string]map[*Client]struct{}),
		wild:    make(map[string]map[*Client]struct{}),
		seen:    make(map[*Client]struct{}),
		frames:  make(map[string][]byte),
	}
	h.m = newMetrics(h, reg)
	return h
}

// Join registers a new connection. The hub calls onReady when frames wait
// for it and no writer runs; the writer then calls Take until it returns
// nothing. It calls onKick once, when it wants the connection closed. Both
// must return without blocking; neither is called after Leave returns.
// Every Join is followed by one Leave.
func (h *Hub) Join(onReady func(), onKick func(code websocket.StatusCode, reason string)) (*Client, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, ErrClosed
	}
	c := &Client{onReady: onReady, onKick: onKick, max: h.queue}
	h.clients[c] = struct{}{}
	h.joined.Add(1)
	return c, nil
}

// Leave unregisters c and drops its subscriptions, unsubscribing in Redis
// the patterns no one else wants.
func (h *Hub) Leave(c *Client) {
	defer h.joined.Done()
	h.change.Lock()
	defer h.change.Unlock()
	h.mu.Lock()
	var orphans []string
	for p := range c.subs {
		if h.drop(c, p) {
			orphans = append(orphans, p)
		}
	}
	delete(h.clients, c)
	h.mu.Unlock()
	if len(orphans) > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := h.sub.Remove(ctx, orphans...); err != nil {
			h.log.Warn("unsubscribe in redis", "patterns", orphans, "error", err)
		}
	}
}

// Count returns how many subscriptions c has.
func (h *Hub) Count(c *Client) int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(c.subs)
}

func (h *Hub) index(p string) map[string]map[*Client]struct{} {
	if channel.IsPattern(p) {
		return h.wild
	}
	return h.exact
}

// Subscribe adds pattern p (already validated and authorised) to c. It
// returns once Redis delivers p, so no event published afterwards is missed.
func (h *Hub) Subscribe(ctx context.Context, c *Client, p string) error {
	h.change.Lock()
	defer h.change.Unlock()
	h.mu.RLock()
	_, has := c.subs[p]
	first := len(h.index(p)[p]) == 0
	closed := h.closed
	h.mu.RUnlock()
	switch {
	case closed:
		return ErrClosed
	case has:
		return nil
	case first:
		if err := h.sub.Add(ctx, p); err != nil {
			return fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
	}
	h.mu.Lock()
	idx := h.index(p)
	if idx[p] == nil {
		idx[p] = make(map[*Client]struct{})
	}
	idx[p][c] = struct{}{}
	if c.subs == nil {
		c.subs = make(map[string]struct{})
	}
	c.subs[p] = struct{}{}
	h.mu.Unlock()
	h.m.subscriptions.Inc()
	return nil
}

// Unsubscribe removes p from c; removing what c does not have is harmless.
func (h *Hub) Unsubscribe(ctx context.Context, c *Client, p string) error {
	h.change.Lock()
	defer h.change.Unlock()
	h.mu.Lock()
	last := h.drop(c, p)
	h.mu.Unlock()
	if last {
		if err := h.sub.Remove(ctx, p); err != nil {
			return fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
	}
	return nil
}

// drop removes p from c and reports whether no client wants p any more.
// Call with mu held.
func (h *Hub) drop(c *Client, p string) bool {
	if _, ok := c.subs[p]; !ok {
		return false
	}
	delete(c.subs, p)
	h.m.subscriptions.Dec()
	idx := h.index(p)
	delete(idx[p], c)
	if len(idx[p]) > 0 {
		return false
	}
	delete(idx, p)
	return true
}

// Run fans out events until ctx ends, then closes every connection with
// 1001 going away and waits (at most 5 s) for them to leave.
func (h *Hub) Run(ctx context.Context) error {
	msgs := h.sub.Messages()
	for {
		select {
		case m, ok := <-msgs:
			if !ok {
				return errors.New("redis subscription closed")
			}
			h.dispatch(m)
		case <-ctx.Done():
			h.shutdown()
			return nil
		}
	}
}

func (h *Hub) shutdown() {
	h.mu.Lock()
	h.closed = true
	for c := range h.clients {
		c.Kick(websocket.StatusGoingAway, "server shutting down")
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
// once per client however many of its subscriptions match.
func (h *Hub) dispatch(m bus.Message) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if h.repeat(m) {
		return
	}
	// The wildcard patterns matching the channel serve twice: to know how
	// many repeats of this message Redis will send and to find its recipients.
	h.matched = h.matched[:0]
	for p := range h.wild {
		if channel.Match(p, m.Channel) {
			h.matched = append(h.matched, p)
		}
	}
	exact, hasExact := h.exact[m.Channel]
	deliveries := len(h.matched)
	if hasExact {
		deliveries++
	}
	h.last = lastEvent{channel: m.Channel, payload: m.Payload, pending: deliveries - 1}
	env, err := envelope.Unmarshal(m.Payload)
	var event []byte
	if err == nil {
		event, err = envelope.MarshalJSON(env)
	}
	if err != nil {
		h.m.malformed.Inc()
		h.log.Debug("message is not an envelope; not forwarded", "channel", m.Channel, "error", err)
		return
	}
	// The common cases need neither per-client matching nor dedupe: only
	// subscribers of the channel itself, or of one pattern.
	switch {
	case len(h.matched) == 0:
		h.sendAll(exact, protocol.AppendEvent(make([]byte, 0, len(event)+64+2*len(m.Channel)), m.Channel, []string{m.Channel}, event))
		return
	case len(h.matched) == 1 && !hasExact:
		p := h.matched[0]
		h.sendAll(h.wild[p], protocol.AppendEvent(make([]byte, 0, len(event)+64+len(m.Channel)+len(p)), m.Channel, []string{p}, event))
		return
	}
	clear(h.seen)
	clear(h.frames)
	for c := range exact {
		h.deliver(c, m.Channel, event)
	}
	for _, p := range h.matched {
		for c := range h.wild[p] {
			h.deliver(c, m.Channel, event)
		}
	}
}

// sendAll queues frame for every client of cs.
func (h *Hub) sendAll(cs map[*Client]struct{}, frame []byte) {
	n := 0
	for c := range cs {
		if h.send(c, frame) {
			n++
		}
	}
	h.m.delivered.Add(float64(n))
}

// send queues frame for c, or kicks c if its queue is full. It reports
// whether the frame was queued.
func (h *Hub) send(c *Client, frame []byte) bool {
	if c.kicked.Load() {
		return false
	}
	if !c.push(frame) {
		h.m.slowCloses.Inc()
		c.Kick(protocol.CloseSlowConsumer, "too slow: the send queue overflowed")
		return false
	}
	return true
}

// repeat reports whether m is a further delivery of the event just
// dispatched: Redis delivers a message once per matching subscription of
// the connection, back to back. Call with mu held.
func (h *Hub) repeat(m bus.Message) bool {
	if h.last.pending > 0 && m.Channel == h.last.channel && bytes.Equal(m.Payload, h.last.payload) {
		h.last.pending--
		return true
	}
	return false
}

// deliver queues the event's frame for c unless c has it already. Clients
// with the same matching subscriptions share one frame.
func (h *Hub) deliver(c *Client, ch string, event []byte) {
	if _, ok := h.seen[c]; ok {
		return
	}
	h.seen[c] = struct{}{}
	subs := make([]string, 0, 2)
	for p := range c.subs {
		if channel.Match(p, ch) {
			subs = append(subs, p)
		}
	}
	slices.Sort(subs)
	key := strings.Join(subs, "\x00")
	frame, ok := h.frames[key]
	if !ok {
		frame = protocol.AppendEvent(make([]byte, 0, len(event)+64+len(key)), ch, subs, event)
		h.frames[key] = frame
	}
	if h.send(c, frame) {
		h.m.delivered.Inc()
	}
}
