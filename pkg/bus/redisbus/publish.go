package redisbus

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/channel"
)

// States of a request: the pipeline takes a queued request unless its
// caller abandoned it first, so exactly one of them decides its fate.
const (
	queued int32 = iota
	taken
	abandoned
)

// request is one Publish or PublishBatch waiting for the pipeline.
type request struct {
	ctx       context.Context
	state     atomic.Int32
	msgs      []bus.Publication
	receivers []int64
	errs      []error
	done      chan struct{}
}

var requestPool = sync.Pool{New: func() any { return &request{done: make(chan struct{}, 1)} }}

// Publish implements bus.Publisher.
func (b *Bus) Publish(ctx context.Context, ch string, payload []byte) (int64, error) {
	if err := channel.Validate(ch); err != nil {
		return 0, err
	}
	r := requestPool.Get().(*request)
	r.msgs = append(r.msgs[:0], bus.Publication{Channel: ch, Payload: payload})
	if err := b.submit(ctx, r); err != nil {
		return 0, err
	}
	n, err := r.receivers[0], r.errs[0]
	b.release(r)
	return n, err
}

// PublishBatch implements bus.Publisher. The messages go out in one
// pipeline, in order, whatever else is being published.
func (b *Bus) PublishBatch(ctx context.Context, msgs []bus.Publication) ([]int64, []error, error) {
	for i, m := range msgs {
		if err := channel.Validate(m.Channel); err != nil {
			return nil, nil, fmt.Errorf("message %d: %w", i, err)
		}
	}
	if len(msgs) == 0 {
		return nil, nil, nil
	}
	r := &request{msgs: msgs, done: make(chan struct{}, 1)}
	if err := b.submit(ctx, r); err != nil {
		return nil, nil, err
	}
	return r.receivers, r.errs, nil
}

// notSent wraps err in bus.ErrNotSent.
func notSent(err error) error { return fmt.Errorf("%w: %w", bus.ErrNotSent, err) }

// submit hands r to the pipeline and waits for its answer. An error means
// r was not answered and must not be reused; it wraps bus.ErrNotSent when
// r's messages were not sent.
func (b *Bus) submit(ctx context.Context, r *request) error {
	if err := ctx.Err(); err != nil {
		return notSent(err)
	}
	r.ctx = ctx
	r.state.Store(queued)
	select {
	case b.reqs <- r:
	case <-b.stop:
		return notSent(bus.ErrClosed)
	case <-ctx.Done():
		return notSent(ctx.Err())
	}
	select {
	case <-r.done:
		return nil
	case <-ctx.Done():
		if r.state.CompareAndSwap(queued, abandoned) {
			return notSent(ctx.Err())
		}
		// The pipeline took r. It bounds each round trip by the earliest
		// deadline among its requests, so with a deadline the answer is
		// moments away and tells what happened; a context cancelled
		// without one leaves that open.
		if _, ok := ctx.Deadline(); ok {
			<-r.done
			return nil
		}
		return fmt.Errorf("await redis's reply: %w", ctx.Err())
	case <-b.stop:
		// Close may have stopped the pipeline before it took r; if it
		// took r, it answers before it stops.
		if r.state.CompareAndSwap(queued, abandoned) {
			return notSent(bus.ErrClosed)
		}
		<-r.done
		return nil
	}
}

func (b *Bus) release(r *request) {
	clear(r.msgs)
	r.ctx = nil
	r.msgs, r.receivers, r.errs = r.msgs[:0], r.receivers[:0], r.errs[:0]
	requestPool.Put(r)
}

// answer gives every message of r the same error and hands r back.
func answer(r *request, err error) {
	for range r.msgs {
		r.receivers = append(r.receivers, 0)
		r.errs = append(r.errs, err)
	}
	r.done <- struct{}{}
}

// pipeline sends queued requests to Redis: it takes every request waiting
// now, up to MaxBatch messages, sends them as one pipeline and answers them,
// so the batch grows by itself with the load and costs nothing when idle.
// A request whose context has ended by then is answered without being
// sent, and the round trip ends by the earliest deadline of the rest.
func (b *Bus) pipeline() {
	var batch []*request
	cmds := make([]*redis.IntCmd, 0, b.opts.MaxBatch)
	for {
		select {
		case r := <-b.reqs:
			batch = append(batch[:0], r)
		case <-b.stop:
			b.drain()
			return
		}
		size := len(batch[0].msgs)
	fill:
		for size < b.opts.MaxBatch {
			select {
			case r := <-b.reqs:
				batch = append(batch, r)
				size += len(r.msgs)
			default:
				break fill
			}
		}
		live := batch[:0]
		var deadline time.Time
		for _, r := range batch {
			if !r.state.CompareAndSwap(queued, taken) {
				continue // abandoned: its caller has returned
			}
			if err := r.ctx.Err(); err != nil {
				b.m.publishErrors.Add(float64(len(r.msgs)))
				answer(r, notSent(err))
				continue
			}
			if d, ok := r.ctx.Deadline(); ok && (deadline.IsZero() || d.Before(deadline)) {
				deadline = d
			}
			live = append(live, r)
		}
		clear(batch[len(live):])
		if len(live) == 0 {
			continue
		}
		ctx, cancel := context.Background(), context.CancelFunc(func() {})
		if !deadline.IsZero() {
			ctx, cancel = context.WithDeadline(ctx, deadline)
		}
		pipe := b.pub.Pipeline()
		cmds = cmds[:0]
		size = 0
		for _, r := range live {
			for _, m := range r.msgs {
				cmds = append(cmds, pipe.Publish(ctx, b.key(m.Channel), m.Payload))
			}
			size += len(r.msgs)
		}
		_, _ = pipe.Exec(ctx) // each command carries its own error
		cancel()
		i := 0
		for _, r := range live {
			for range r.msgs {
				n, err := cmds[i].Result()
				switch {
				case err == nil:
					b.m.published.Inc()
				case unsent(err):
					err = notSent(fmt.Errorf("publish to redis: %w", err))
					b.m.publishErrors.Inc()
				default:
					err = fmt.Errorf("publish to redis: %w", err)
					b.m.publishErrors.Inc()
				}
				r.receivers = append(r.receivers, n)
				r.errs = append(r.errs, err)
				i++
			}
			r.done <- struct{}{}
		}
		clear(live)
		clear(cmds)
		b.m.batchSize.Observe(float64(size))
	}
}

// unsent reports whether go-redis failed a command before writing it: no
// connection could be had (a dial error, the pool closed or exhausted), or
// the context ended while it waited for one. go-redis reports a deadline
// that passes while it reads or writes as an i/o timeout from the
// connection, never as the context's error, so a context error means
// nothing was written. Anything else may have reached Redis.
func unsent(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial" ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) ||
		errors.Is(err, redis.ErrClosed) || errors.Is(err, redis.ErrPoolTimeout)
}

// drain answers requests that raced with Close.
func (b *Bus) drain() {
	for {
		select {
		case r := <-b.reqs:
			if r.state.CompareAndSwap(queued, taken) {
				answer(r, notSent(bus.ErrClosed))
			}
		default:
			return
		}
	}
}
