package redisbus

import (
	"context"
	"fmt"
	"sync"

	"github.com/redis/go-redis/v9"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/channel"
)

// request is one Publish or PublishBatch waiting for the pipeline.
type request struct {
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

// submit hands r to the pipeline and waits for its reply. An error means
// r was not answered and must not be reused.
func (b *Bus) submit(ctx context.Context, r *request) error {
	select {
	case b.reqs <- r:
	case <-b.stop:
		return bus.ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-r.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (b *Bus) release(r *request) {
	clear(r.msgs)
	r.msgs, r.receivers, r.errs = r.msgs[:0], r.receivers[:0], r.errs[:0]
	requestPool.Put(r)
}

// pipeline sends queued requests to Redis: it takes every request waiting
// now, up to MaxBatch messages, sends them as one pipeline and answers them,
// so the batch grows by itself with the load and costs nothing when idle.
func (b *Bus) pipeline() {
	ctx := context.Background()
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
		pipe := b.client.Pipeline()
		cmds = cmds[:0]
		for _, r := range batch {
			for _, m := range r.msgs {
				cmds = append(cmds, pipe.Publish(ctx, b.key(m.Channel), m.Payload))
			}
		}
		_, _ = pipe.Exec(ctx) // each command carries its own error
		i := 0
		for _, r := range batch {
			for range r.msgs {
				n, err := cmds[i].Result()
				if err != nil {
					err = fmt.Errorf("publish to redis: %w", err)
					b.m.publishErrors.Inc()
				} else {
					b.m.published.Inc()
				}
				r.receivers = append(r.receivers, n)
				r.errs = append(r.errs, err)
				i++
			}
			r.done <- struct{}{}
		}
		clear(batch)
		b.m.batchSize.Observe(float64(size))
	}
}

// drain answers requests that raced with Close.
func (b *Bus) drain() {
	for {
		select {
		case r := <-b.reqs:
			for range r.msgs {
				r.receivers = append(r.receivers, 0)
				r.errs = append(r.errs, bus.ErrClosed)
			}
			r.done <- struct{}{}
		default:
			return
		}
	}
}
