package hub

import (
	"context"
	"fmt"
	"time"

	"github.com/eventbus-suite/eventbus/pkg/channel"
)

// Changes of the Redis subscription go through one goroutine
// (applyChanges), in the order they were decided: consecutive additions
// go out as one SUBSCRIBE/PSUBSCRIBE of many names, consecutive removals
// as one UNSUBSCRIBE, so a storm of subscriptions costs a few round trips,
// and no subscription waits on another's while holding a lock.

// redisOpTimeout bounds one batch's round trip.
const redisOpTimeout = 5 * time.Second

// redisOp is a change of the Redis subscription waiting its turn.
type redisOp struct {
	remove  bool
	name    string
	add     *pendingAdd   // the addition's waiters; nil for a removal
	applied chan struct{} // set instead of a name: closed once what came before is applied
}

// pendingAdd is a name on its way into the Redis subscription. The
// clients subscribing to it wait on done; err says how it went.
type pendingAdd struct {
	done    chan struct{}
	err     error
	waiters int // guarded by Hub.mu; those that gave up are not counted
}

// add queues name for the Redis subscription and returns what its
// subscribers wait on; a name already on its way is not queued twice.
// Call with change held.
func (h *Hub) add(name string) *pendingAdd {
	h.mu.Lock()
	if pa := h.adding[name]; pa != nil {
		pa.waiters++
		h.mu.Unlock()
		return pa
	}
	pa := &pendingAdd{done: make(chan struct{}), waiters: 1}
	h.adding[name] = pa
	if channel.IsPattern(name) {
		h.addingWild++
	}
	h.mu.Unlock()
	h.ops <- redisOp{name: name, add: pa} // change keeps the queue in decision order
	return pa
}

// remove queues names for removal from the Redis subscription. Call with
// change held.
func (h *Hub) remove(names []string) {
	for _, name := range names {
		h.ops <- redisOp{remove: true, name: name}
	}
}

// wait waits for pa; a subscriber that gives up is no longer counted, so
// that a name nobody waits for any more is taken out again.
func (h *Hub) wait(ctx context.Context, pa *pendingAdd) error {
	select {
	case <-pa.done:
		if pa.err != nil {
			return fmt.Errorf("%w: %w", ErrUnavailable, pa.err)
		}
		return nil
	case <-ctx.Done():
		h.mu.Lock()
		pa.waiters--
		h.mu.Unlock()
		return fmt.Errorf("%w: %w", ErrUnavailable, ctx.Err())
	}
}

// applyChanges sends the queued changes to Redis until ctx ends.
func (h *Hub) applyChanges(ctx context.Context) {
	var batch []redisOp
	for {
		select {
		case op := <-h.ops:
			batch = append(batch[:0], op)
		case <-ctx.Done():
			return
		}
	more:
		for {
			select {
			case op := <-h.ops:
				batch = append(batch, op)
			default:
				break more
			}
		}
		for i := 0; i < len(batch); {
			if batch[i].applied != nil {
				close(batch[i].applied)
				i++
				continue
			}
			j := i
			var names []string
			for ; j < len(batch) && batch[j].applied == nil && batch[j].remove == batch[i].remove; j++ {
				names = append(names, batch[j].name)
			}
			h.apply(ctx, batch[i].remove, names, batch[i:j])
			i = j
		}
		clear(batch)
	}
}

// apply sends one command's worth of changes and settles them.
func (h *Hub) apply(ctx context.Context, remove bool, names []string, ops []redisOp) {
	ctx, cancel := context.WithTimeout(ctx, redisOpTimeout)
	defer cancel()
	if remove {
		// Only logged: a name left subscribed costs a little traffic that
		// the hub drops, and the next subscription to it repairs it.
		if err := h.sub.Remove(ctx, names...); err != nil {
			h.log.Warn("unsubscribe in redis", "patterns", names, "error", err)
		}
		return
	}
	err := h.sub.Add(ctx, names...)
	h.mu.Lock()
	var unwanted []string
	for _, op := range ops {
		delete(h.adding, op.name)
		if channel.IsPattern(op.name) {
			h.addingWild--
		}
		if op.add.err = err; err == nil {
			h.subscribed(op.name)
			if op.add.waiters == 0 && len(h.subs[op.name]) == 0 && h.covers[op.name].len() == 0 {
				h.unsubscribed(op.name) // everyone gave up on it
				unwanted = append(unwanted, op.name)
			}
		}
		close(op.add.done)
	}
	h.mu.Unlock()
	if len(unwanted) > 0 {
		go func() { // not from here: the queue may be full, and this goroutine empties it
			h.change.Lock()
			defer h.change.Unlock()
			h.remove(unwanted)
		}()
	}
}

// settle waits until the changes queued so far are applied.
func (h *Hub) settle() {
	applied := make(chan struct{})
	h.ops <- redisOp{applied: applied}
	<-applied
}
