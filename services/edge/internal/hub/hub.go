// Package hub is the core of the edge: it shares one Redis subscription
// among every connected client, subscribes a pattern in Redis when the first
// client wants it and unsubscribes it when the last one leaves, and fans
// each event out to the clients whose subscriptions match, once per client.
package hub

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/envelope"
	"github.com/eventbus-suite/eventbus/services/edge/internal/protocol"
)

// Errors a caller reports to its client.
var (
	ErrClosed      = errors.New("the edge is shutting down")
	ErrUnavailable = errors.New("the event bus (Redis) is unavailable")
)

// Hub fans events out to clients. Its methods are safe for concurrent use.
type Hub struct {
	sub        bus.Subscription
	queueBytes int
	log        *slog.Logger
	m          *metrics

	// change serialises changes of the Redis subscription, so that the
	// first-in and last-out of one pattern never race.
	change sync.Mutex

	mu      sync.RWMutex
	closed  bool
	clients map[*Client]struct{}
	subs    map[string]map[*Client]struct{} // channel or pattern → clients subscribed to it
	joined  sync.WaitGroup

	// Only the dispatching goroutine touches these.
	wanted []string // the message's patterns that some client wants
	seen   map[*Client]struct{}
	frames map[string][]byte
}

// New returns a hub fanning out what sub receives; each client may have
// queueBytes of frames waiting before it is dropped as too slow.
func New(sub bus.Subscription, queueBytes int, log *slog.Logger, reg prometheus.Registerer) *Hub {
	h := &Hub{
		sub:        sub,
		queueBytes: queueBytes,
		log:        log,
		clients:    make(map[*Client]struct{}),
		subs:       make(map[string]map[*Client]struct{}),
		seen:       make(map[*Client]struct{}),
		frames:     make(map[string][]byte),
	}
	h.m = newMetrics(h, reg)
	return h
}

// Join registers a new connection. The hub calls onReady when frames wait
// for it and no writer runs; the writer then calls Take until it returns
// nothing. It calls onKick once, when it wants the connection closed. Both
// must return without blocking; neither is called after Leave returns.
// Every Join is followed by one Leave.
func (h *Hub) Join(onReady func(), onKick func(Disconnect)) (*Client, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, ErrClosed
	}
	c := &Client{onReady: onReady, onKick: onKick, maxBytes: h.queueBytes, slow: h.m.slowCloses.Inc}
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
	h.release(orphans)
}

// release unsubscribes in Redis the patterns no client wants any more. It
// only logs a failure: a pattern left subscribed in Redis costs a little
// traffic that the hub drops, and the next subscription to it repairs it.
// Call with change held.
func (h *Hub) release(orphans []string) {
	if len(orphans) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := h.sub.Remove(ctx, orphans...); err != nil {
		h.log.Warn("unsubscribe in redis", "patterns", orphans, "error", err)
	}
}

// Count returns how many subscriptions c has.
func (h *Hub) Count(c *Client) int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(c.subs)
}

// Subscribe adds pattern p (already validated and authorised) to c and
// queues ok for c at the moment the subscription takes effect: before any
// event it delivers. It returns once Redis delivers p, so no event
// published afterwards is missed; on an error nothing was queued.
func (h *Hub) Subscribe(ctx context.Context, c *Client, p string, ok []byte) error {
	h.change.Lock()
	defer h.change.Unlock()
	h.mu.RLock()
	first := len(h.subs[p]) == 0
	closed := h.closed
	h.mu.RUnlock()
	switch {
	case closed:
		return ErrClosed
	case first:
		if err := h.sub.Add(ctx, p); err != nil {
			return fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, has := c.subs[p]; !has {
		if h.subs[p] == nil {
			h.subs[p] = make(map[*Client]struct{})
		}
		h.subs[p][c] = struct{}{}
		if c.subs == nil {
			c.subs = make(map[string]struct{})
		}
		c.subs[p] = struct{}{}
		h.m.subscriptions.Inc()
	}
	c.Send(ok)
	return nil
}

// Unsubscribe removes p from c, if c has it, and queues ok for c at the
// moment it takes effect: after every event p delivered to c.
func (h *Hub) Unsubscribe(c *Client, p string, ok []byte) {
	h.change.Lock()
	defer h.change.Unlock()
	h.mu.Lock()
	last := h.drop(c, p)
	c.Send(ok)
	h.mu.Unlock()
	if last {
		h.release([]string{p})
	}
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
		if h.drop(c, p) {
			orphans = append(orphans, p)
		}
		c.Send(notice(p))
	}
	h.mu.Unlock()
	h.release(orphans)
	return n
}

// drop removes p from c and reports whether no client wants p any more.
// Call with mu held.
func (h *Hub) drop(c *Client, p string) bool {
	if _, ok := c.subs[p]; !ok {
		return false
	}
	delete(c.subs, p)
	h.m.subscriptions.Dec()
	delete(h.subs[p], c)
	if len(h.subs[p]) > 0 {
		return false
	}
	delete(h.subs, p)
	return true
}

// Run fans out events until ctx ends, then closes every connection with
// DisconnectShutdown and waits (at most 5 s) for them to leave.
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
// delivers each publish once, naming every pattern that matched.
func (h *Hub) dispatch(m bus.Message) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	h.wanted = h.wanted[:0]
	for _, p := range m.Patterns {
		if len(h.subs[p]) > 0 {
			h.wanted = append(h.wanted, p)
		}
	}
	if len(h.wanted) == 0 {
		return // its subscribers left while it was on its way
	}
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
	// The common case needs no per-client dedupe: every recipient came
	// through the same subscription and gets the same frame.
	if len(h.wanted) == 1 {
		p := h.wanted[0]
		h.sendAll(h.subs[p], protocol.AppendEvent(make([]byte, 0, len(event)+64+len(m.Channel)+len(p)), m.Channel, h.wanted, event))
		return
	}
	clear(h.seen)
	clear(h.frames)
	for _, p := range h.wanted {
		for c := range h.subs[p] {
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
	if c.push(frame) {
		return true
	}
	c.tooSlow()
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
	for _, p := range h.wanted { // sorted, as the bus names them
		if _, ok := c.subs[p]; ok {
			subs = append(subs, p)
		}
	}
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
