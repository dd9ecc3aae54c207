package redisbus

import (
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

// States of a request: the pipeline takes a queued request unless its
// caller abandoned it first, so exactly one of them decides its fate.
const (
	queued int32 = iota
	taken
	abandoned
)

// request is one Publish or PublishBatch waiting for the pipeline.
type request struct {
	ctx      context.Context
	state    atomic.Int32
	msgs     []bus.Publication
	receipts []bus.Receipt
	errs     []error
	done     chan struct{}
}

var requestPool = sync.Pool{New: func() any { return &request{done: make(chan struct{}, 1)} }}

// Publish implements bus.Publisher.
func (b *Bus) Publish(ctx context.Context, ch string, payload []byte) (bus.Receipt, error) {
	if err := channel.Validate(ch); err != nil {
		return bus.Receipt{}, err
	}
	payload = b.encode(payload)
	var receipt bus.Receipt
	err := b.again(ctx, staleUnsent, func() error {
		r := requestPool.Get().(*request)
		r.msgs = append(r.msgs[:0], bus.Publication{Channel: ch, Payload: payload})
		if err := b.submit(ctx, r); err != nil {
			return err
		}
		var err error
		receipt, err = r.receipts[0], r.errs[0]
		b.release(r)
		return err
	})
	return receipt, err
}

// staleRetries are the waits before a publish that a stale map of a
// cluster's slots failed unsent is sent again, while its context lasts:
// after a failover, a process's first publish on each slot the dead
// master held goes to it, and fails; the failure has the map read again
// (slotReloader). go-redis reads it in the background, at most once per
// 200 ms, and a read begun before the replica took over still names the
// dead master, so the waits reach past two of those (875 ms in all).
// Sent again, the publish reaches the new master, so a failover that is
// over costs no publish an error. While no master holds the slot, a
// publish fails that much later, or at its deadline.
var staleRetries = []time.Duration{25 * time.Millisecond, 100 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond}

// staleUnsent reports whether err, a message's publish error, says the
// message was not sent because the map of slots was stale.
func staleUnsent(err error) bool { return errors.Is(err, bus.ErrNotSent) && staleMap(err) }

// staleMap reports whether err is what a cluster client's stale map of
// slots gives: a connection refused (a dead master), or an answer
// redirecting the command. Either way the command did not run.
func staleMap(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial" || redirected(err)
}

// again runs op, and again after each of staleRetries while, on a
// cluster, it fails with an error stale says a stale map of slots caused
// (staleMap for a read, which is safe to repeat; staleUnsent for a
// publish, which did not run), within ctx. The failure had the map read
// again (slotReloader), so after a failover a publish or a history read
// through a client that has not seen the new map goes through instead of
// failing once.
func (b *Bus) again(ctx context.Context, stale func(error) bool, op func() error) error {
	for attempt := 0; ; attempt++ {
		err := op()
		if err == nil || attempt == len(staleRetries) || !b.cluster || ctx.Err() != nil || !stale(err) {
			return err
		}
		select {
		case <-time.After(staleRetries[attempt]):
		case <-ctx.Done():
			return err
		}
	}
}

// PublishBatch implements bus.Publisher. The messages go out in one
// pipeline, in order, whatever else is being published.
func (b *Bus) PublishBatch(ctx context.Context, msgs []bus.Publication) ([]bus.Receipt, []error, error) {
	for i, m := range msgs {
		if err := channel.Validate(m.Channel); err != nil {
			return nil, nil, fmt.Errorf("message %d: %w", i, err)
		}
	}
	if len(msgs) == 0 {
		return nil, nil, nil
	}
	if b.opts.Encode != nil {
		msgs = slices.Clone(msgs)
		for i := range msgs {
			msgs[i].Payload = b.encode(msgs[i].Payload)
		}
	}
	r := &request{msgs: msgs, done: make(chan struct{}, 1)}
	if err := b.submit(ctx, r); err != nil {
		return nil, nil, err
	}
	return r.receipts, r.errs, nil
}

// encode turns payload into its form on the wire (Options.Encode).
func (b *Bus) encode(payload []byte) []byte {
	if b.opts.Encode == nil {
		return payload
	}
	return b.opts.Encode(payload)
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
	r.msgs, r.receipts, r.errs = r.msgs[:0], r.receipts[:0], r.errs[:0]
	requestPool.Put(r)
}

// answer gives every message of r the same error and hands r back.
func answer(r *request, err error) {
	for range r.msgs {
		r.receipts = append(r.receipts, bus.Receipt{})
		r.errs = append(r.errs, err)
	}
	r.done <- struct{}{}
}

// pipeline sends queued requests to Redis: it takes every request waiting
// now, up to MaxBatch messages, sends them as one pipeline and answers them,
// so the batch grows by itself with the load and costs nothing when idle.
// A request whose context has ended by then is answered without being
// sent, and the round trip ends by the earliest deadline of the rest.
func (b *Bus) pipeline(trim *trimmer) {
	var batch []*request
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
		var receipts []bus.Receipt
		var errs []error
		if b.opts.HistoryMaxLen > 0 {
			receipts, errs = b.sendRecorded(ctx, trim, live, size)
		} else {
			receipts, errs = b.sendLive(ctx, live)
		}
		cancel()
		i := 0
		for _, r := range live {
			for range r.msgs {
				err := errs[i]
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
				r.receipts = append(r.receipts, receipts[i])
				r.errs = append(r.errs, err)
				i++
			}
			r.done <- struct{}{}
		}
		clear(live)
		b.m.batchSize.Observe(float64(size))
	}
}

// unsent reports whether a command was not run: go-redis failed it before
// writing it (no connection could be had: a dial error, the pool closed
// or exhausted; or the context ended while it waited for one), or a
// cluster answered that it runs elsewhere (MOVED, ASK, TRYAGAIN,
// CLUSTERDOWN: a script call answered so ran none of its commands).
// go-redis reports a deadline that passes while it reads or writes as an
// i/o timeout from the connection, never as the context's error, so a
// context error means nothing was written. Anything else may have
// reached Redis.
func unsent(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial" || redirected(err) ||
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

// sendLive publishes the messages of reqs in one pipeline, the bus keeping
// no history: with PUBLISH on one server, with SPUBLISH on their streams'
// shard channels on a cluster.
func (b *Bus) sendLive(ctx context.Context, reqs []*request) ([]bus.Receipt, []error) {
	pipe := b.pub.Pipeline()
	var cmds []*redis.IntCmd
	for _, r := range reqs {
		for _, m := range r.msgs {
			cmds = append(cmds, b.publishLive(ctx, pipe, m.Channel, m.Payload))
		}
	}
	_, _ = pipe.Exec(ctx) // each command carries its own error
	receipts, errs := make([]bus.Receipt, len(cmds)), make([]error, len(cmds))
	for i, c := range cmds {
		receipts[i].Receivers, errs[i] = c.Result()
	}
	return receipts, errs
}

// publishLive queues payload's live publish on ch, unrecorded: a PUBLISH
// on the channel on one server, an SPUBLISH on its partition's shard
// channel, naming the channel, on a cluster.
func (b *Bus) publishLive(ctx context.Context, c redis.Cmdable, ch string, payload []byte) *redis.IntCmd {
	if st := b.streamFor(ch); st.live != "" {
		return c.SPublish(ctx, st.live, channelHeader+b.key(ch)+"\n"+string(payload))
	}
	return c.Publish(ctx, b.key(ch), payload)
}

// PublishLive sends payload on ch live only, unrecorded and outside the
// pipeline, whether the bus keeps history or not: no position, at most
// once, for messages that matter only to the subscriptions open now (an
// edge's control commands). It returns how many subscriptions heard it,
// counted as Receipt.Receivers is.
func (b *Bus) PublishLive(ctx context.Context, ch string, payload []byte) (int64, error) {
	if err := channel.Validate(ch); err != nil {
		return 0, err
	}
	n, err := b.publishLive(ctx, b.pub, ch, b.encode(payload)).Result()
	if err != nil {
		return 0, fmt.Errorf("publish live on %s: %w", ch, err)
	}
	return n, nil
}

// sendRecorded records and publishes the size messages of reqs in one
// pipeline: one run of the publish script per run of messages of one
// stream.
func (b *Bus) sendRecorded(ctx context.Context, trim *trimmer, reqs []*request, size int) ([]bus.Receipt, []error) {
	pipe := b.pub.Pipeline()
	now := time.Now()
	var (
		calls []recordCall
		run   []bus.Publication
		st    stream
	)
	flush := func() {
		if len(run) > 0 {
			calls = append(calls, b.record(ctx, pipe, trim, st, run, now))
			run = run[:0]
		}
	}
	for _, r := range reqs {
		for _, m := range r.msgs {
			if next := b.streamFor(m.Channel); next.key != st.key || len(run) == 0 {
				flush()
				st = next
			}
			run = append(run, m)
		}
	}
	flush()
	_, _ = pipe.Exec(ctx) // each command carries its own error
	if slices.ContainsFunc(calls, recordCall.unknownScript) {
		again := b.pub.Pipeline()
		for i := range calls {
			if calls[i].unknownScript() {
				calls[i].rerun(ctx, again)
			}
		}
		_, _ = again.Exec(ctx)
	}
	receipts, errs := make([]bus.Receipt, 0, size), make([]error, 0, size)
	for _, c := range calls {
		got, added, err := c.results()
		if err != nil {
			got = make([]bus.Receipt, c.n)
		}
		if added {
			b.joinWildcardGroups(ctx, c.stream)
		}
		receipts = append(receipts, got...)
		for range c.n {
			errs = append(errs, err)
		}
	}
	return receipts, errs
}
