package redisbus

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/channel"
)

// On a Redis Cluster a subscription cannot PSUBSCRIBE: classic pub/sub
// sends every message to every node, and sharded pub/sub (SPUBLISH,
// SSUBSCRIBE) has no pattern form. So the publish script SPUBLISHes each
// event on its stream's shard channel (live:{tag}:<namespace>, one per
// partition of a namespace, each message naming its channel), and a
// sharded subscription SSUBSCRIBEs the shard channels its patterns can
// touch, matching channels itself:
//
//   - order:placed, an exact channel: the one shard channel of its
//     partition;
//   - order:*, a pattern within one namespace: the namespace's shard
//     channel in every partition;
//   - *, or ord*, whose first token has a wildcard: those of every
//     namespace it can match, and, in every partition, the partition's
//     announcement channel (live:{tag}), where the publish script names a
//     namespace the first time it records one there, so the subscription
//     follows new namespaces.
//
// Each partition has a connection of its own: go-redis resubscribes a
// connection's shard channels in one SSUBSCRIBE, which Redis refuses
// across slots, and a partition is one slot. A partition whose connection
// is lost, whose slot moved (Redis then unsubscribes it unasked, and says
// nothing more), or whose node answers MOVED, is connected again to the
// slot's master as the cluster now says, resubscribed, and followed by a
// Gap: the record has what went by meanwhile.

// announceChannel is partition part's channel for namespaces new to it.
func (b *Bus) announceChannel(part int) string {
	return b.opts.Prefix + "live:{" + b.tags[part] + "}"
}

// shardedSubscription implements bus.Subscription on a cluster.
type shardedSubscription struct {
	b     *Bus
	cc    *redis.ClusterClient
	msgs  chan bus.Message
	done  chan struct{} // closed by Close
	once  sync.Once
	parts []*partitionSub
	wg    sync.WaitGroup // the partitions' receive loops

	change sync.Mutex // one Add or Remove at a time

	mu         sync.RWMutex
	patterns   []string        // subscribed, sorted
	namespaces map[string]bool // known namespaces that a pattern with a wild first token reaches
}

// partitionSub is one partition's connection of a sharded subscription.
type partitionSub struct {
	s    *shardedSubscription
	part int
	live atomic.Bool

	wake chan struct{} // a change wants the disconnected loop to connect

	mu      sync.Mutex
	ps      *redis.PubSub              // nil while disconnected
	want    map[string]bool            // shard channels the patterns need
	waiters map[string][]chan struct{} // "ssubscribe <ch>" or "sunsubscribe <ch>" → who awaits it
	// gapOn holds the shard channels whose confirmation owes a Gap: a
	// namespace announced before this partition listened to it, whose
	// first events went by. The Gap goes out as the confirmation comes,
	// before anything the channel brings.
	gapOn map[string]bool
}

func (b *Bus) subscribeSharded(ctx context.Context, patterns []string) (bus.Subscription, error) {
	s := &shardedSubscription{
		b: b, cc: b.client.(*redis.ClusterClient),
		msgs: make(chan bus.Message, b.opts.Buffer), done: make(chan struct{}),
		namespaces: make(map[string]bool),
	}
	for i := range b.parts {
		p := &partitionSub{s: s, part: i, wake: make(chan struct{}, 1), want: make(map[string]bool), waiters: make(map[string][]chan struct{}), gapOn: make(map[string]bool)}
		s.parts = append(s.parts, p)
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil, bus.ErrClosed
	}
	b.subs[s] = struct{}{}
	b.mu.Unlock()
	for _, p := range s.parts {
		s.wg.Go(p.run)
	}
	if err := s.Add(ctx, patterns...); err != nil {
		_ = s.Close()
		return nil, err
	}
	return s, nil
}

// Messages implements bus.Subscription.
func (s *shardedSubscription) Messages() <-chan bus.Message { return s.msgs }

// Live implements bus.Subscription: every partition it needs is connected
// and subscribed.
func (s *shardedSubscription) Live() bool {
	select {
	case <-s.done:
		return false
	default:
	}
	for _, p := range s.parts {
		p.mu.Lock()
		needed := len(p.want) > 0
		p.mu.Unlock()
		if needed && !p.live.Load() {
			return false
		}
	}
	return true
}

// Add implements bus.Subscription.
func (s *shardedSubscription) Add(ctx context.Context, patterns ...string) error {
	if err := validatePatterns(patterns); err != nil {
		return err
	}
	s.change.Lock()
	defer s.change.Unlock()
	next := slices.Clone(s.current())
	for _, p := range patterns {
		if !slices.Contains(next, p) {
			next = append(next, p)
		}
	}
	slices.Sort(next)
	if slices.ContainsFunc(next, wildNamespace) {
		// The announcements first, then the namespaces known now: one
		// that appears in between is announced.
		if err := s.apply(ctx, next, s.known()); err != nil {
			return err
		}
		known, err := s.b.knownNamespaces(ctx)
		if err != nil {
			return err
		}
		s.mu.Lock()
		for _, ns := range known {
			s.namespaces[ns] = true
		}
		s.mu.Unlock()
	}
	return s.apply(ctx, next, s.known())
}

// Remove implements bus.Subscription. When a partition's connection is
// down, its channels are dropped from what the reconnect subscribes, and
// Remove succeeds.
func (s *shardedSubscription) Remove(ctx context.Context, patterns ...string) error {
	if err := validatePatterns(patterns); err != nil {
		return err
	}
	s.change.Lock()
	defer s.change.Unlock()
	next := slices.DeleteFunc(slices.Clone(s.current()), func(p string) bool { return slices.Contains(patterns, p) })
	return s.apply(ctx, next, s.known())
}

func (s *shardedSubscription) current() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.patterns
}

func (s *shardedSubscription) known() map[string]bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return maps.Clone(s.namespaces)
}

// wildNamespace reports whether p's first token has a wildcard, so that it
// reaches namespaces yet to appear.
func wildNamespace(p string) bool {
	_, wild := reach(p)
	return wild
}

// wanted returns the shard channels patterns need, by partition, given
// the namespaces known.
func (s *shardedSubscription) wanted(patterns []string, known map[string]bool) []map[string]bool {
	out := make([]map[string]bool, s.b.parts)
	for i := range out {
		out[i] = make(map[string]bool)
	}
	all := func(ns string) {
		for i := range out {
			out[i][s.b.streamOf(ns, i).live] = true
		}
	}
	for _, p := range patterns {
		prefix, wild := reach(p)
		switch {
		case !channel.IsPattern(p):
			st := s.b.streamFor(p)
			out[st.part][st.live] = true
		case !wild:
			all(prefix)
		default:
			for i := range out {
				out[i][s.b.announceChannel(i)] = true
			}
			for ns := range known {
				if strings.HasPrefix(ns, prefix) {
					all(ns)
				}
			}
		}
	}
	return out
}

// apply makes the subscription's patterns next: it subscribes the shard
// channels they need and unsubscribes those they no longer do, in every
// partition, and waits for Redis to confirm each.
func (s *shardedSubscription) apply(ctx context.Context, next []string, known map[string]bool) error {
	want := s.wanted(next, known)
	var adds, drops [][]string
	for i, p := range s.parts {
		p.mu.Lock()
		var add, drop []string
		for ch := range want[i] {
			if !p.want[ch] {
				add = append(add, ch)
			}
		}
		for ch := range p.want {
			if !want[i][ch] {
				drop = append(drop, ch)
			}
		}
		p.mu.Unlock()
		adds, drops = append(adds, add), append(drops, drop)
	}
	// The patterns change first for a channel added, so that what it
	// brings is matched, and last for one dropped.
	s.mu.Lock()
	before := s.patterns
	grown := slices.Clone(s.patterns)
	for _, p := range next {
		if !slices.Contains(grown, p) {
			grown = append(grown, p)
		}
	}
	slices.Sort(grown)
	s.patterns = grown
	s.mu.Unlock()
	var errs []error
	for i, p := range s.parts {
		errs = append(errs, p.change(ctx, adds[i], true))
	}
	if err := errors.Join(errs...); err != nil {
		// Undone, as on one server: the caller is told the change failed,
		// so neither the patterns nor a reconnect may keep what it added.
		s.mu.Lock()
		s.patterns = before
		s.mu.Unlock()
		undo, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		for i, p := range s.parts {
			_ = p.change(undo, adds[i], false)
		}
		return err
	}
	for i, p := range s.parts {
		errs = append(errs, p.change(ctx, drops[i], false))
	}
	s.mu.Lock()
	s.patterns = next
	s.mu.Unlock()
	return errors.Join(errs...)
}

// change (un)subscribes chs on the partition's connection and waits for
// the confirmations. While the connection is down, the wanted set alone
// changes: the reconnect subscribes it.
func (p *partitionSub) change(ctx context.Context, chs []string, add bool) error {
	if len(chs) == 0 {
		return nil
	}
	kind := "ssubscribe"
	if !add {
		kind = "sunsubscribe"
	}
	p.mu.Lock()
	var waits []chan struct{}
	for _, ch := range chs {
		if add {
			p.want[ch] = true
		} else {
			delete(p.want, ch)
		}
		w := make(chan struct{})
		p.waiters[kind+" "+ch] = append(p.waiters[kind+" "+ch], w)
		waits = append(waits, w)
	}
	ps := p.ps
	if ps == nil && add {
		// The first channels of this partition, or a connection lost:
		// the receive loop connects with everything wanted.
		p.mu.Unlock()
		p.kick()
	} else {
		p.mu.Unlock()
	}
	if ps != nil {
		var err error
		if add {
			err = ps.SSubscribe(ctx, chs...)
		} else {
			err = ps.SUnsubscribe(ctx, chs...)
		}
		if err != nil {
			// The connection is going: its receive loop reconnects with
			// the wanted set, which has the change.
			p.s.b.log.Debug("sharded (un)subscribe on a lost connection", "partition", p.part, "error", err)
		}
	}
	if !add && ps == nil {
		p.forget(kind, chs, waits)
		return nil
	}
	for i, w := range waits {
		select {
		case <-w:
		case <-ctx.Done():
			p.forget(kind, chs[i:], waits[i:])
			return fmt.Errorf("await confirmation of %s of partition %d: %w", kind, p.part, ctx.Err())
		case <-p.s.done:
			return bus.ErrClosed
		}
	}
	return nil
}

// forget drops waiters that will not wait any more.
func (p *partitionSub) forget(kind string, chs []string, waits []chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, ch := range chs {
		k := kind + " " + ch
		p.waiters[k] = slices.DeleteFunc(p.waiters[k], func(w chan struct{}) bool { return w == waits[i] })
		if len(p.waiters[k]) == 0 {
			delete(p.waiters, k)
		}
	}
}

// confirmed wakes the oldest waiter of a confirmation, and reports whether
// there was one: an sunsubscribe nobody asked for means the slot moved.
func (p *partitionSub) confirmed(kind, ch string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	k := kind + " " + ch
	ws := p.waiters[k]
	if len(ws) == 0 {
		return false
	}
	close(ws[0])
	if len(ws) == 1 {
		delete(p.waiters, k)
	} else {
		p.waiters[k] = ws[1:]
	}
	return true
}

// kick wakes a receive loop waiting for something to subscribe.
func (p *partitionSub) kick() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// lost ends what waits on the connection that went: unsubscriptions are
// done (the next connection subscribes only what is wanted), and
// subscriptions wait for the next connection's confirmations.
func (p *partitionSub) lost() (wasLive bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ps != nil {
		_ = p.ps.Close()
		p.ps = nil
	}
	for k, ws := range p.waiters {
		if strings.HasPrefix(k, "sunsubscribe ") {
			for _, w := range ws {
				close(w)
			}
			delete(p.waiters, k)
		}
	}
	return p.live.Swap(false)
}

// run is a partition's receive loop: it connects when the partition has
// channels to subscribe, delivers what they carry, and connects again
// (to the slot's master as the cluster now says) when the connection is
// lost, the slot moved or the node answers with a redirection.
func (p *partitionSub) run() {
	ctx := context.Background()
	var (
		backoff   time.Duration
		restoring map[string]bool // channels whose confirmation the (re)connect awaits
		held      []bus.Message   // received while restoring
		again     bool            // a reconnect, which owes a Gap
		lastStall time.Time
	)
	deliver := func(m bus.Message) bool { return p.s.b.deliver(p.s.msgs, p.s.done, m, &lastStall) }
	drop := func(err error) {
		if p.lost() {
			// Once live, it owes a Gap when it is back.
			again = true
			p.s.b.log.Warn("redis shard subscription lost; reconnecting", "partition", p.part, "error", err)
		}
		if len(held) > 0 {
			again = true // what it held is gone: a Gap says so
		}
		restoring, held = nil, nil
		p.s.cc.ReloadState(ctx)
		backoff = min(max(2*backoff, 50*time.Millisecond), maxBackoff)
		select {
		case <-time.After(backoff):
		case <-p.s.done:
		}
	}
	for {
		if p.closing() {
			return
		}
		p.mu.Lock()
		if p.closing() {
			// Close ran since the check above, and closed what p.ps was
			// then: a connection made now would be left open.
			p.mu.Unlock()
			return
		}
		ps := p.ps
		if ps == nil && len(p.want) > 0 {
			chs := slices.Sorted(maps.Keys(p.want))
			ps = p.s.cc.SSubscribe(ctx, chs...)
			p.ps = ps
			restoring = make(map[string]bool, len(chs))
			for _, ch := range chs {
				restoring[ch] = true
			}
		}
		p.mu.Unlock()
		if ps == nil {
			select {
			case <-p.wake:
				continue
			case <-p.s.done:
				return
			}
		}
		msg, err := ps.ReceiveTimeout(ctx, healthInterval)
		if p.closing() {
			return
		}
		if err != nil {
			if ne := net.Error(nil); errors.As(err, &ne) && ne.Timeout() {
				if err = ps.Ping(ctx); err == nil {
					continue
				}
			}
			if isRedisError(err) && !redirected(err) {
				// An error reply (-BUSY to the ping while a script runs,
				// say) on a connection that keeps its subscriptions.
				p.s.b.log.Warn("redis answered the shard subscription with an error", "partition", p.part, "error", err)
				continue
			}
			drop(err) // lost, or the slot elsewhere: go to the slot's master again
			continue
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			switch m.Kind {
			case "ssubscribe":
				p.confirmed(m.Kind, m.Channel)
				if p.owesGap(m.Channel) {
					if restoring != nil {
						again = true // the Gap goes out once restored
					} else if !deliver(bus.Message{Gap: true}) {
						return
					}
				}
				if restoring != nil {
					delete(restoring, m.Channel)
					if len(restoring) == 0 {
						restoring, backoff = nil, 0
						p.live.Store(true)
						if again {
							p.s.b.m.reconnects.Inc()
							p.s.b.log.Info("redis shard subscription restored: reconnected and resubscribed", "partition", p.part)
							held = append([]bus.Message{{Gap: true}}, held...)
						}
						// Published after their channel's subscription:
						// delivered, on a first connection too.
						for _, m := range held {
							if !deliver(m) {
								return
							}
						}
						held = nil
					}
				}
			case "sunsubscribe":
				if !p.confirmed(m.Kind, m.Channel) {
					// Redis unsubscribed us unasked: the slot moved.
					drop(fmt.Errorf("slot of %s moved", m.Channel))
				}
			}
		case *redis.Message:
			out, announced, ok := p.s.message(p.part, m)
			if announced != "" {
				p.s.announced(p.part, announced)
				continue
			}
			if !ok {
				continue
			}
			p.s.b.m.received.Inc()
			if restoring != nil {
				if len(held) < maxHeld {
					held = append(held, out)
				} else {
					again = true // beyond what it holds: left to the record, as a Gap says
				}
				continue
			}
			if !deliver(out) {
				return
			}
		}
	}
}

// redirected reports whether err says the slot is served elsewhere, or not
// served at all now: a subscription must go to the slot's master again.
func redirected(err error) bool {
	for _, prefix := range []string{"MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN"} {
		if redis.HasErrorPrefix(err, prefix) {
			return true
		}
	}
	return false
}

func (p *partitionSub) closing() bool {
	select {
	case <-p.s.done:
		return true
	default:
		return false
	}
}

// message reads a message of a shard channel: an event of a channel the
// patterns match (ok), or a namespace announced new to the partition.
// A message that does not name a channel of its shard channel, or an
// announcement that is not a namespace, is dropped.
func (s *shardedSubscription) message(part int, m *redis.Message) (out bus.Message, announced string, ok bool) {
	if m.Channel == s.b.announceChannel(part) {
		if channel.Validate(m.Payload) != nil || strings.Contains(m.Payload, ":") {
			return bus.Message{}, "", false // not a namespace: not the publish script's
		}
		return bus.Message{}, m.Payload, false
	}
	rest, found := strings.CutPrefix(m.Payload, channelHeader)
	if !found {
		return bus.Message{}, "", false
	}
	line, payload, found := strings.Cut(rest, "\n")
	if !found {
		return bus.Message{}, "", false
	}
	// The channel a message names is believed only if it is one whose
	// events go out on the shard channel it came on: anything that can
	// SPUBLISH there could otherwise speak for any channel, past the
	// grants checked on the channel.
	ch, prefixed := strings.CutPrefix(line, s.b.opts.Prefix)
	if !prefixed || channel.Validate(ch) != nil || s.b.streamFor(ch).live != m.Channel {
		return bus.Message{}, "", false
	}
	s.mu.RLock()
	var matched []string
	for _, p := range s.patterns {
		if channel.Match(p, ch) {
			matched = append(matched, p)
		}
	}
	s.mu.RUnlock()
	if len(matched) == 0 {
		return bus.Message{}, "", false // another channel of a namespace subscribed for a pattern
	}
	pos, body := s.b.livePosition(payload)
	return bus.Message{Channel: ch, Patterns: matched, Payload: []byte(body), Position: pos, Received: time.Now()}, "", true
}

// announced takes in a namespace new to a partition. If a pattern with a
// wild first token reaches it, it is known from now on, and its shard
// channels are subscribed in every partition where they are not yet;
// unless the announcing partition was listening to it already, the
// events the announcement came with went by, and a Gap says so, ahead of
// everything the channel brings once subscribed (gapOn).
func (s *shardedSubscription) announced(part int, ns string) {
	s.mu.Lock()
	reached := slices.ContainsFunc(s.patterns, func(p string) bool {
		prefix, wild := reach(p)
		return wild && strings.HasPrefix(ns, prefix)
	})
	if reached {
		s.namespaces[ns] = true
	}
	s.mu.Unlock()
	if !reached {
		return
	}
	p, ch := s.parts[part], s.b.streamOf(ns, part).live
	p.mu.Lock()
	if !p.want[ch] || len(p.waiters["ssubscribe "+ch]) > 0 || !p.live.Load() {
		p.gapOn[ch] = true // not listening yet: the events it came with went by
	}
	p.mu.Unlock()
	// Not on this goroutine, which must go on receiving the
	// confirmations the change waits for.
	s.wg.Go(func() {
		s.change.Lock()
		defer s.change.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.apply(ctx, s.current(), s.known()); err != nil {
			s.b.log.Warn("subscribe a new namespace's shard channels", "namespace", ns, "error", err)
		}
	})
}

// owesGap reports whether the confirmation of ch owes a Gap, and forgets
// it.
func (p *partitionSub) owesGap(ch string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	owed := p.gapOn[ch]
	delete(p.gapOn, ch)
	return owed
}

// Close implements bus.Subscription.
func (s *shardedSubscription) Close() error {
	s.once.Do(func() {
		close(s.done)
		for _, p := range s.parts {
			p.mu.Lock()
			if p.ps != nil {
				_ = p.ps.Close()
			}
			p.mu.Unlock()
		}
		s.wg.Wait()
		close(s.msgs)
		s.b.mu.Lock()
		delete(s.b.subs, s)
		s.b.mu.Unlock()
	})
	return nil
}
