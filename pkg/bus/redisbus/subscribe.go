package redisbus

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/channel"
)

const (
	// healthInterval is how long a quiet connection waits before it pings.
	healthInterval = 15 * time.Second
	maxBackoff     = 2 * time.Second
	stallLogEvery  = 10 * time.Second
)

// Subscription implements bus.Subscription on one Redis pub/sub connection.
type Subscription struct {
	b      *Bus
	ps     *redis.PubSub
	msgs   chan bus.Message
	done   chan struct{} // closed by Close
	exited chan struct{} // closed when receive returns
	once   sync.Once
	live   atomic.Bool

	mu      sync.Mutex
	waiters map[string][]chan struct{} // "psubscribe <name>" → Adds awaiting Redis's confirmation
}

// Subscribe implements bus.Subscriber with a new connection.
func (b *Bus) Subscribe(ctx context.Context, patterns ...string) (bus.Subscription, error) {
	if err := validatePatterns(patterns); err != nil {
		return nil, err
	}
	if b.cluster {
		return b.subscribeSharded(ctx, patterns)
	}
	s := &Subscription{
		b:       b,
		ps:      b.client.Subscribe(ctx), // no channels yet: connects lazily
		msgs:    make(chan bus.Message, b.opts.Buffer),
		done:    make(chan struct{}),
		exited:  make(chan struct{}),
		waiters: make(map[string][]chan struct{}),
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		_ = s.ps.Close()
		return nil, bus.ErrClosed
	}
	b.subs[s] = struct{}{}
	b.mu.Unlock()
	go s.receive()
	if err := s.Add(ctx, patterns...); err != nil {
		_ = s.Close()
		return nil, err
	}
	s.live.Store(true)
	return s, nil
}

func validatePatterns(patterns []string) error {
	var errs []error
	for _, p := range patterns {
		errs = append(errs, channel.ValidatePattern(p))
	}
	return errors.Join(errs...)
}

// Messages implements bus.Subscription.
func (s *Subscription) Messages() <-chan bus.Message { return s.msgs }

// Live implements bus.Subscription.
func (s *Subscription) Live() bool { return s.live.Load() }

// Add implements bus.Subscription.
func (s *Subscription) Add(ctx context.Context, patterns ...string) error {
	return s.change(ctx, true, patterns)
}

// Remove implements bus.Subscription. When the connection is down, the
// patterns are dropped from what the reconnect will resubscribe, and
// Remove succeeds.
func (s *Subscription) Remove(ctx context.Context, patterns ...string) error {
	return s.change(ctx, false, patterns)
}

// change sends (P)SUBSCRIBE or (P)UNSUBSCRIBE for patterns and waits for
// Redis to confirm each of them.
func (s *Subscription) change(ctx context.Context, add bool, patterns []string) error {
	if err := validatePatterns(patterns); err != nil {
		return err
	}
	if len(patterns) == 0 {
		return nil // go-redis reads no arguments as "all"
	}
	exactKind, globKind := "subscribe", "psubscribe"
	if !add {
		exactKind, globKind = "unsubscribe", "punsubscribe"
	}
	var exact, globs []string
	keys := make([]string, 0, len(patterns))
	waits := make([]chan struct{}, 0, len(patterns))
	s.mu.Lock()
	for _, p := range patterns {
		kind := exactKind
		if channel.IsPattern(p) {
			kind = globKind
			globs = append(globs, s.b.key(p))
		} else {
			exact = append(exact, s.b.key(p))
		}
		k, w := kind+" "+s.b.key(p), make(chan struct{})
		s.waiters[k] = append(s.waiters[k], w)
		keys, waits = append(keys, k), append(waits, w)
	}
	s.mu.Unlock()

	err := s.send(ctx, add, exact, globs)
	if err != nil {
		s.forget(keys, waits)
		if !add {
			return nil // go-redis has dropped them from its set all the same
		}
		// go-redis remembers what we asked for even when the write failed;
		// undo it so a reconnect does not subscribe what the caller was told
		// failed.
		_ = s.send(ctx, false, exact, globs)
		return fmt.Errorf("subscribe to %q: %w", patterns, err)
	}
	for i, w := range waits {
		select {
		case <-w:
		case <-ctx.Done():
			s.forget(keys[i:], waits[i:])
			if add {
				// Undone, as after a failed write: the caller is told the
				// subscription failed, so Redis must not keep it.
				undo, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
				_ = s.send(undo, false, exact, globs)
				cancel()
			}
			return fmt.Errorf("await confirmation of %s %q: %w", exactKind, patterns, ctx.Err())
		case <-s.done:
			return bus.ErrClosed
		}
	}
	return nil
}

func (s *Subscription) send(ctx context.Context, add bool, exact, globs []string) error {
	var errs []error
	if len(exact) > 0 {
		if add {
			errs = append(errs, s.ps.Subscribe(ctx, exact...))
		} else {
			errs = append(errs, s.ps.Unsubscribe(ctx, exact...))
		}
	}
	if len(globs) > 0 {
		if add {
			errs = append(errs, s.ps.PSubscribe(ctx, globs...))
		} else {
			errs = append(errs, s.ps.PUnsubscribe(ctx, globs...))
		}
	}
	return errors.Join(errs...)
}

// forget drops waiters that will not wait any more, so that a later
// confirmation of the same pattern goes to whoever waits for it then.
func (s *Subscription) forget(keys []string, waits []chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, k := range keys {
		s.waiters[k] = slices.DeleteFunc(s.waiters[k], func(w chan struct{}) bool { return w == waits[i] })
		if len(s.waiters[k]) == 0 {
			delete(s.waiters, k)
		}
	}
}

// confirmed wakes the oldest Add waiting for this confirmation.
func (s *Subscription) confirmed(kind, name string) {
	k := kind + " " + name
	s.mu.Lock()
	defer s.mu.Unlock()
	ws := s.waiters[k]
	if len(ws) == 0 {
		return // a resubscription after reconnect, or an Add that gave up
	}
	close(ws[0])
	if len(ws) == 1 {
		delete(s.waiters, k)
	} else {
		s.waiters[k] = ws[1:]
	}
}

// Close implements bus.Subscription.
func (s *Subscription) Close() error {
	s.once.Do(func() {
		close(s.done)
		_ = s.ps.Close()
		<-s.exited
		s.live.Store(false)
		s.b.mu.Lock()
		delete(s.b.subs, s)
		s.b.mu.Unlock()
	})
	return nil
}

func (s *Subscription) closing() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// deliver hands m to a subscriber's msgs, waiting while it falls behind
// (counted, and said at most every stallLogEvery, as lastStall keeps); it
// reports false when done closes meanwhile.
func (b *Bus) deliver(msgs chan<- bus.Message, done <-chan struct{}, m bus.Message, lastStall *time.Time) bool {
	select {
	case msgs <- m:
		return true
	default:
	}
	b.m.stalls.Inc()
	if time.Since(*lastStall) > stallLogEvery {
		*lastStall = time.Now()
		b.log.Warn("subscriber is falling behind: delivery from redis blocks until it catches up", "buffer", cap(msgs))
	}
	select {
	case msgs <- m:
		return true
	case <-done:
		return false
	}
}

// While a subscription is being restored, it holds at most maxHeld of the
// messages that arrive, and pings again every restorePing until Redis
// answers.
const (
	maxHeld     = 10_000
	restorePing = 200 * time.Millisecond
)

// receive reads the connection until Close: it delivers each publish once,
// wakes Adds on confirmations, pings a quiet connection and, after a lost one,
// reconnects with backoff. go-redis resubscribes everything on the new
// connection; the pong that follows the resubscription in Redis's reply
// order tells that the subscription is whole again.
func (s *Subscription) receive() {
	defer close(s.exited)
	defer close(s.msgs)
	ctx := context.Background()
	var (
		restoring bool          // reconnected, waiting for the pong after the resubscription
		held      []bus.Message // received while restoring: they follow the Gap
		lastPing  time.Time     // of the restoring
		backoff   time.Duration
		lastStall time.Time
		live      = newLiveSet()
	)
	// deliver hands m to the subscriber, waiting while it falls behind; it
	// reports false when the subscription is closed meanwhile.
	deliver := func(m bus.Message) bool { return s.b.deliver(s.msgs, s.done, m, &lastStall) }
	for {
		msg, err := s.ps.ReceiveTimeout(ctx, healthInterval)
		if s.closing() {
			return
		}
		if err != nil {
			if ne := net.Error(nil); errors.As(err, &ne) && ne.Timeout() {
				err = s.ps.Ping(ctx)
				if err == nil {
					continue
				}
			}
			if isRedisError(err) {
				// An error reply (-BUSY to the ping while a script runs, say)
				// on a connection that keeps its subscriptions.
				s.b.log.Warn("redis answered the subscription with an error", "error", err)
				continue
			}
			live.reset()
			held = nil // the Gap that comes with the next connection covers them
			restoring = true
			if s.live.Swap(false) {
				s.b.log.Warn("redis subscription lost; reconnecting", "error", err)
			}
			backoff = min(max(2*backoff, 50*time.Millisecond), maxBackoff)
			select {
			case <-time.After(backoff):
			case <-s.done:
				return
			}
			// Ping dials a new connection if there is none, and go-redis
			// resubscribes everything on it before the ping goes out; the
			// pong that answers it ends the restoring. If the dial fails,
			// the next receive dials again, and messages that come then
			// ping again.
			_ = s.ps.Ping(ctx)
			lastPing = time.Now()
			continue
		}
		backoff = 0
		switch m := msg.(type) {
		case *redis.Message:
			s.b.m.received.Inc()
			ch := s.b.unkey(m.Channel)
			patterns := live.deliver(ch, s.b.unkey(cmp.Or(m.Pattern, m.Channel)), m.Payload)
			if patterns == nil {
				continue // a further delivery of the publish just delivered
			}
			pos, payload := s.b.livePosition(m.Payload)
			out := bus.Message{Channel: ch, Patterns: patterns, Payload: []byte(payload), Position: pos, Received: time.Now()}
			if restoring {
				// Published after the resubscription began: it comes
				// after the Gap, once the subscription is whole. Beyond
				// maxHeld they are left to the record, as the Gap says.
				if len(held) < maxHeld {
					held = append(held, out)
				}
				if time.Since(lastPing) > restorePing {
					// The ping may have gone unanswered (to a Redis still
					// loading its data, say): ask again.
					_ = s.ps.Ping(ctx)
					lastPing = time.Now()
				}
				continue
			}
			if !deliver(out) {
				return
			}
		case *redis.Subscription:
			live.confirm(m.Kind, s.b.unkey(m.Channel))
			s.confirmed(m.Kind, m.Channel)
		case *redis.Pong:
			if restoring {
				restoring = false
				s.live.Store(true)
				s.b.m.reconnects.Inc()
				s.b.log.Info("redis subscription restored: reconnected and resubscribed")
				for _, m := range append([]bus.Message{{Gap: true}}, held...) {
					if !deliver(m) {
						return
					}
				}
				held = nil
			}
		}
	}
}
