package redisbus

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/channel"
)

const (
	defaultVisibility = 30 * time.Second
	// consumerBlock is the longest one XREADGROUP waits: between waits a
	// consumer looks for new namespaces and for events to take over.
	consumerBlock = time.Second
	// refreshEvery is how often a consumer of a wildcard pattern looks for
	// namespaces that appeared.
	refreshEvery = time.Second
)

// consumer implements bus.Consumer with a Redis consumer group on each
// stream (each partition of each namespace) its patterns cover.
//
// New events are read by one blocking XREADGROUP per partition, each in a
// goroutine of its own, covering every namespace of the partition (on one
// slot): what any of them brings lands in ahead, which Fetch hands out,
// so an event in one partition is not held up by another's wait. A
// partition has one read in flight at most; Fetch starts the reads, and
// one may still be in flight when Fetch returns (it lands in ahead for
// the next).
type consumer struct {
	b           *Bus
	group, name string
	patterns    []string
	visibility  time.Duration
	fromOldest  bool
	wildcard    bool // a pattern covers namespaces yet to appear

	ownFirst  bool              // own unacknowledged events, after a restart, not all read yet
	ownFrom   map[string]string // stream key → where reading them goes on from
	ownDone   map[int]bool      // partitions whose own events this pass has read
	refreshed time.Time
	claimed   time.Time
	claimFrom map[string]string // stream key → where XAUTOCLAIM goes on from

	reads  chan struct{}   // a partition's read ended: its results are in ahead, or readErr
	ctx    context.Context // the reads'; cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // the reads in flight

	mu      sync.Mutex
	streams []stream          // joined, sorted by key
	epochs  map[string]string // stream key → epoch
	// ahead holds events delivered to this member in Redis and not yet
	// returned: what the partitions' reads brought, and what one read of
	// several streams brought beyond the n asked for (XREADGROUP's COUNT
	// bounds each stream, not the read). The next Fetch returns it first;
	// Extend keeps it from going to another member.
	ahead   []bus.Delivery
	given   map[string]time.Time // "<stream key> <offset>" → when Fetch handed it out; until Ack
	reading map[int]bool         // partitions with a read in flight
	closed  bool                 // by Close: no read starts any more
	readErr error                // the first error of a read, for the next Fetch
}

// Consume implements bus.Consumers.
func (b *Bus) Consume(ctx context.Context, group, name string, patterns []string, opts bus.ConsumerOptions) (bus.Consumer, error) {
	for what, v := range map[string]string{"group": group, "member": name} {
		if err := channel.Validate(v); err != nil || strings.Contains(v, ":") {
			return nil, fmt.Errorf("consumer %s %q: want one token of [a-z0-9_-]", what, v)
		}
	}
	if len(patterns) == 0 {
		return nil, errors.New("consume: no patterns")
	}
	if err := validatePatterns(patterns); err != nil {
		return nil, err
	}
	c := &consumer{
		b: b, group: group, name: name, patterns: slices.Clone(patterns),
		visibility: cmp.Or(opts.Visibility, defaultVisibility), fromOldest: opts.FromOldest,
		ownFirst: true, ownFrom: make(map[string]string), ownDone: make(map[int]bool), claimFrom: make(map[string]string),
		reads: make(chan struct{}, 1), epochs: make(map[string]string), reading: make(map[int]bool), given: make(map[string]time.Time),
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	for _, p := range patterns {
		if _, wild := reach(p); wild {
			c.wildcard = true
		}
	}
	if err := c.refresh(ctx, true); err != nil {
		c.cancel()
		return nil, err
	}
	return c, nil
}

// ConsumeOrLive is Consume on a bus that keeps history. On one that keeps
// none (HistoryMaxLen zero) there is nothing to consume, and it returns a
// live subscription to patterns standing in for a member (bus.Live): at
// most once, what arrives while it is not listening is lost.
func (b *Bus) ConsumeOrLive(ctx context.Context, group, name string, patterns []string, opts bus.ConsumerOptions) (bus.Consumer, error) {
	if b.opts.HistoryMaxLen > 0 {
		return b.Consume(ctx, group, name, patterns, opts)
	}
	b.log.Warn("the bus keeps no history (BUS_HISTORY=off): reading live only, so what arrives while this service is down is lost", "group", group)
	sub, err := b.Subscribe(ctx, patterns...)
	if err != nil {
		return nil, err
	}
	return bus.Live(sub), nil
}

// joinWildcardGroups makes, on a stream where a namespace has just
// appeared, every registered group whose patterns cover it, starting at
// its first event: the trimming then waits for them even if none of their
// members has looked for new namespaces yet. Failures are logged: a
// member joins the stream itself when it finds it.
func (b *Bus) joinWildcardGroups(ctx context.Context, st stream) {
	groups, err := b.client.HGetAll(ctx, b.groupsKey()).Result()
	if err != nil {
		b.log.Warn("read the consumer groups", "error", err)
		return
	}
	for group, patterns := range groups {
		for _, p := range strings.Split(patterns, ",") {
			if prefix, wild := reach(p); wild && strings.HasPrefix(st.ns, prefix) {
				err := b.client.XGroupCreateMkStream(ctx, st.key, group, "0").Err()
				if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
					b.log.Warn("make a consumer group on a new namespace", "group", group, "stream", st.name, "error", err)
				}
				break
			}
		}
	}
}

// refresh joins the group on every stream of every namespace the patterns
// cover and reads their epochs. A group made on a stream that existed when
// the consumer started begins after its last event, unless fromOldest; on
// a stream that appeared later, at its first event.
func (c *consumer) refresh(ctx context.Context, starting bool) error {
	if c.wildcard {
		// Publishers make the group on namespaces that appear later, at
		// their first event, before this member has looked for them. Kept
		// up to date, as a flush loses it.
		if err := c.b.client.HSet(ctx, c.b.groupsKey(), c.group, strings.Join(c.patterns, ",")).Err(); err != nil {
			return fmt.Errorf("register group %s: %w", c.group, err)
		}
	}
	var namespaces []string
	for _, p := range c.patterns {
		ns, err := c.b.namespacesOf(ctx, p)
		if err != nil {
			return err
		}
		namespaces = append(namespaces, ns...)
	}
	slices.Sort(namespaces)
	for _, ns := range slices.Compact(namespaces) {
		for _, st := range c.b.streamsOf(ns) {
			c.mu.Lock()
			_, joined := c.epochs[st.key]
			c.mu.Unlock()
			if !joined {
				start := "0"
				if starting && !c.fromOldest {
					start = "$"
				}
				if err := c.join(ctx, st.key, start); err != nil {
					return err
				}
			}
			epoch, err := c.b.client.HGet(ctx, st.meta, "epoch").Result()
			if err != nil && !errors.Is(err, redis.Nil) {
				return fmt.Errorf("read the epoch of %s: %w", st.name, err)
			}
			c.mu.Lock()
			if !joined {
				c.streams = append(c.streams, st)
				slices.SortFunc(c.streams, func(a, b stream) int { return strings.Compare(a.key, b.key) })
			}
			c.epochs[st.key] = epoch
			c.mu.Unlock()
		}
	}
	c.refreshed = time.Now()
	return nil
}

// join makes the group on a stream, and the stream if need be; a group
// that exists keeps its position.
func (c *consumer) join(ctx context.Context, key, start string) error {
	err := c.b.client.XGroupCreateMkStream(ctx, key, c.group, start).Err()
	if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
		return fmt.Errorf("join group %s on %s: %w", c.group, key, err)
	}
	return nil
}

// joined returns the streams joined, by partition.
func (c *consumer) joined() map[int][]stream {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[int][]stream)
	for _, st := range c.streams {
		out[st.part] = append(out[st.part], st)
	}
	return out
}

// forget drops every stream joined, so that the next refresh joins them
// again: a stream was lost (Redis flushed, or restarted without its
// data), and with it the group.
func (c *consumer) forget() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.streams = nil
	clear(c.epochs)
}

// Fetch implements bus.Consumer.
func (c *consumer) Fetch(ctx context.Context, n int) ([]bus.Delivery, error) {
	if n < 1 {
		return nil, fmt.Errorf("fetch %d events: want at least 1", n)
	}
	ds, err := c.fetch(ctx, n)
	if err != nil && !errors.Is(err, ctx.Err()) {
		// A read whose answer was lost with the connection delivered its
		// events to this member all the same: read the member's own
		// again, past those handed out, rather than wait for the
		// visibility timeout to bring them.
		c.ownFirst = true
		clear(c.ownFrom)
		clear(c.ownDone)
	}
	c.handedOut(ds)
	return ds, err
}

// handedOut records ds as given to the caller until acknowledged, and
// forgets what was given, or last extended, longer ago than two
// visibility timeouts (taken over by then, and acknowledged by another
// member if at all).
func (c *consumer) handedOut(ds []bus.Delivery) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	for k, at := range c.given {
		if now.Sub(at) > 2*c.visibility {
			delete(c.given, k)
		}
	}
	for _, d := range ds {
		c.given[c.b.streamFor(d.Channel).key+" "+d.Position.Offset] = now
	}
}

// fetch is Fetch without the bookkeeping of what it hands out.
func (c *consumer) fetch(ctx context.Context, n int) ([]bus.Delivery, error) {
	// A deadline bounds the reads as it bounds Fetch: they end by it, and
	// Fetch waits for them, so none takes events after Fetch returned
	// without them.
	deadline, bounded := ctx.Deadline()
	ended := func() ([]bus.Delivery, error) {
		if bounded {
			c.wg.Wait()
			if ds := c.takeAhead(n); len(ds) > 0 {
				return ds, nil
			}
		}
		return nil, ctx.Err()
	}
	for {
		if ds := c.takeAhead(n); len(ds) > 0 {
			return ds, nil
		}
		if c.ctx.Err() != nil {
			// Closed: the reads it would start end at once.
			return nil, bus.ErrClosed
		}
		if ctx.Err() != nil {
			return ended()
		}
		if err := c.takeReadErr(); err != nil {
			if !lostGroup(err) {
				return nil, fmt.Errorf("read group %s: %w", c.group, err)
			}
			// A stream was lost (NOGROUP; UNBLOCKED when it went while
			// the read waited): join again, from its first event.
			c.forget()
			if err := c.refresh(ctx, false); err != nil {
				return nil, err
			}
		}
		if c.wildcard && time.Since(c.refreshed) > refreshEvery {
			if err := c.refresh(ctx, false); err != nil {
				return nil, err
			}
		}
		parts := c.joined()
		if len(parts) == 0 {
			// Nothing to read yet: wait for namespaces to appear.
			select {
			case <-time.After(consumerBlock):
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		reads := parts
		if c.ownFirst {
			// One pass over what this member had not acknowledged when it
			// (re)started, or lost on the way after a failed read, each
			// event once and none it holds now: what stays unacknowledged
			// after it comes again through the visibility timeout. Not
			// over a partition whose read is in flight: what that read
			// took is pending for this member but not yet ahead, and
			// would be handed out twice. Its turn comes when it lands,
			// and it starts no read until then.
			if todo := c.ownToDo(parts); len(todo) > 0 {
				ds, err := c.readOwn(ctx, n, todo)
				if err != nil || len(ds) > 0 {
					return c.upTo(n, ds), err
				}
				for part := range todo {
					c.ownDone[part] = true
				}
			}
			reads = make(map[int][]stream)
			for part, streams := range parts {
				if c.ownDone[part] {
					reads[part] = streams
				}
			}
			if len(reads) == len(parts) {
				c.ownFirst = false
				clear(c.ownDone)
			}
		}
		if time.Since(c.claimed) > min(c.visibility/2, time.Second) {
			ds, err := c.claim(ctx, n)
			if err != nil || len(ds) > 0 {
				return c.upTo(n, ds), err
			}
		}
		block := consumerBlock
		if bounded {
			block = min(block, max(time.Until(deadline), time.Millisecond))
		}
		c.startReads(n, block, reads)
		select {
		case <-c.reads:
		case <-ctx.Done():
			return ended()
		}
	}
}

// lostGroup reports whether err says the group or its stream is gone.
func lostGroup(err error) bool {
	return strings.HasPrefix(err.Error(), "NOGROUP") || strings.HasPrefix(err.Error(), "UNBLOCKED")
}

// startReads starts a read of new events, blocking up to block, for each
// partition without one in flight.
func (c *consumer) startReads(n int, block time.Duration, parts map[int][]stream) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return // Close waits for the reads it knows of; none may start after
	}
	for part, streams := range parts {
		if c.reading[part] {
			continue
		}
		c.reading[part] = true
		c.wg.Go(func() { c.readNew(n, block, part, streams) })
	}
}

// ownToDo returns the partitions of parts whose own events this pass has
// yet to read and which have no read in flight.
func (c *consumer) ownToDo(parts map[int][]stream) map[int][]stream {
	c.mu.Lock()
	defer c.mu.Unlock()
	todo := make(map[int][]stream)
	for part, streams := range parts {
		if !c.ownDone[part] && !c.reading[part] {
			todo[part] = streams
		}
	}
	return todo
}

// readNew reads up to n new events of each of streams, one partition's,
// waiting up to block for one, and puts them ahead.
func (c *consumer) readNew(n int, block time.Duration, part int, streams []stream) {
	args := make([]string, 0, 2*len(streams))
	for _, st := range streams {
		args = append(args, st.key)
	}
	for range streams {
		args = append(args, ">")
	}
	// On the client without retries: a read sent again after its answer
	// was lost would not bring back what the first one delivered, and
	// would hide the loss (Fetch reads its own events again after one).
	res, err := c.b.pub.XReadGroup(c.ctx, &redis.XReadGroupArgs{
		Group: c.group, Consumer: c.name, Streams: args, Count: int64(n), Block: block,
	}).Result()
	var ds []bus.Delivery
	if err == nil {
		for _, s := range res {
			ds = c.deliveries(c.ctx, ds, s.Stream, s.Messages, false)
		}
	}
	c.mu.Lock()
	c.reading[part] = false
	c.ahead = append(c.ahead, ds...)
	if err != nil && !errors.Is(err, redis.Nil) && c.ctx.Err() == nil && c.readErr == nil {
		c.readErr = err
	}
	c.mu.Unlock()
	select {
	case c.reads <- struct{}{}:
	default: // Fetch is told already
	}
}

// readOwn reads this member's unacknowledged events, up to n of each
// stream, one XREADGROUP per partition in one pipeline.
func (c *consumer) readOwn(ctx context.Context, n int, parts map[int][]stream) ([]bus.Delivery, error) {
	pipe := c.b.pub.Pipeline() // no retries, as readNew
	var cmds []*redis.XStreamSliceCmd
	for _, streams := range parts {
		args := make([]string, 0, 2*len(streams))
		for _, st := range streams {
			args = append(args, st.key)
		}
		for _, st := range streams {
			args = append(args, cmp.Or(c.ownFrom[st.key], "0"))
		}
		cmds = append(cmds, pipe.XReadGroup(ctx, &redis.XReadGroupArgs{
			Group: c.group, Consumer: c.name, Streams: args, Count: int64(n), Block: -1, // no BLOCK
		}))
	}
	_, _ = pipe.Exec(ctx)
	var ds []bus.Delivery
	for _, cmd := range cmds {
		res, err := cmd.Result()
		switch {
		case errors.Is(err, redis.Nil):
			continue
		case err != nil && lostGroup(err):
			c.forget()
			return nil, c.refresh(ctx, false)
		case err != nil:
			return nil, fmt.Errorf("read group %s: %w", c.group, err)
		}
		for _, s := range res {
			if len(s.Messages) > 0 {
				c.ownFrom[s.Stream] = s.Messages[len(s.Messages)-1].ID
			}
			ds = c.deliveries(ctx, ds, s.Stream, c.notHeld(s.Stream, s.Messages), true)
		}
	}
	return ds, nil
}

// notHeld returns msgs of stream key less those this member holds: handed
// out and not acknowledged, or held ahead.
func (c *consumer) notHeld(key string, msgs []redis.XMessage) []redis.XMessage {
	c.mu.Lock()
	defer c.mu.Unlock()
	ahead := make(map[string]bool, len(c.ahead))
	for _, d := range c.ahead {
		ahead[c.b.streamFor(d.Channel).key+" "+d.Position.Offset] = true
	}
	return slices.DeleteFunc(msgs, func(m redis.XMessage) bool {
		_, given := c.given[key+" "+m.ID]
		return given || ahead[key+" "+m.ID]
	})
}

// upTo returns the first n of ds in position order, merging the streams
// they were read from, and keeps the rest ahead for the next Fetch.
func (c *consumer) upTo(n int, ds []bus.Delivery) []bus.Delivery {
	slices.SortStableFunc(ds, func(a, b bus.Delivery) int { return bus.CompareOffsets(a.Position.Offset, b.Position.Offset) })
	if len(ds) <= n {
		return ds
	}
	c.mu.Lock()
	c.ahead = append(c.ahead, ds[n:]...)
	c.mu.Unlock()
	return ds[:n:n]
}

// takeAhead returns up to n of the events held ahead, in position order.
func (c *consumer) takeAhead(n int) []bus.Delivery {
	c.mu.Lock()
	defer c.mu.Unlock()
	slices.SortStableFunc(c.ahead, func(a, b bus.Delivery) int { return bus.CompareOffsets(a.Position.Offset, b.Position.Offset) })
	k := min(n, len(c.ahead))
	ds := slices.Clone(c.ahead[:k])
	c.ahead = slices.Delete(c.ahead, 0, k)
	return ds
}

// takeReadErr returns, and forgets, the first error of a read since the
// last call.
func (c *consumer) takeReadErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	err := c.readErr
	c.readErr = nil
	return err
}

// claim takes over events other members left unacknowledged for longer
// than the visibility timeout.
func (c *consumer) claim(ctx context.Context, n int) ([]bus.Delivery, error) {
	c.claimed = time.Now()
	c.mu.Lock()
	streams := slices.Clone(c.streams)
	c.mu.Unlock()
	var ds []bus.Delivery
	for _, st := range streams {
		// On the client the reads use: after an outage, a claim must not
		// fail on a pool still reporting the dial errors of the outage
		// (go-redis keeps the last one for a while) once a read has
		// worked, or the consumer would seem to fail again.
		msgs, next, err := c.b.pub.XAutoClaim(ctx, &redis.XAutoClaimArgs{
			Stream: st.key, Group: c.group, Consumer: c.name, MinIdle: c.visibility,
			Start: cmp.Or(c.claimFrom[st.key], "0-0"), Count: int64(n - len(ds)),
		}).Result()
		if err != nil && !strings.HasPrefix(err.Error(), "NOGROUP") {
			return nil, fmt.Errorf("claim events of group %s: %w", c.group, err)
		}
		c.claimFrom[st.key] = next
		ds = c.deliveries(ctx, ds, st.key, msgs, true)
		if len(ds) >= n {
			break
		}
	}
	return ds, nil
}

// deliveries turns stream entries into deliveries, acknowledging at once
// those on channels no pattern of the group matches. It may run in a
// partition's read as well as in Fetch.
func (c *consumer) deliveries(ctx context.Context, ds []bus.Delivery, key string, msgs []redis.XMessage, again bool) []bus.Delivery {
	if len(msgs) == 0 {
		return ds
	}
	c.mu.Lock()
	epoch := c.epochs[key]
	var st stream
	for _, s := range c.streams {
		if s.key == key {
			st = s
		}
	}
	c.mu.Unlock()
	if epoch == "" && st.meta != "" {
		// The group made the stream before any event did: its epoch came
		// with the first event.
		if e, err := c.b.client.HGet(ctx, st.meta, "epoch").Result(); err == nil {
			epoch = e
			c.mu.Lock()
			c.epochs[key] = e
			c.mu.Unlock()
		}
	}
	var skip []string
	for _, m := range msgs {
		ch, _ := m.Values["c"].(string)
		ch = c.b.unkey(ch)
		if !slices.ContainsFunc(c.patterns, func(p string) bool { return channel.Match(p, ch) }) {
			skip = append(skip, m.ID)
			continue
		}
		p, _ := m.Values["p"].(string)
		ds = append(ds, bus.Delivery{
			Event:       bus.Event{Channel: ch, Payload: []byte(p), Position: bus.Position{Offset: m.ID, Epoch: epoch}},
			Redelivered: again,
		})
	}
	if len(skip) > 0 {
		// Not the group's: acknowledged so they are not delivered again.
		// A failure only means they come back and are skipped again.
		_ = c.b.client.XAck(ctx, key, c.group, skip...).Err()
	}
	return ds
}

// Ack implements bus.Consumer.
func (c *consumer) Ack(ctx context.Context, ds ...bus.Delivery) error {
	byStream := c.byStream(ds)
	pipe := c.b.client.Pipeline()
	for key, ids := range byStream {
		pipe.XAck(ctx, key, c.group, ids...)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("acknowledge %d events of group %s: %w", len(ds), c.group, err)
	}
	c.mu.Lock()
	for key, ids := range byStream {
		for _, id := range ids {
			delete(c.given, key+" "+id)
		}
	}
	c.mu.Unlock()
	return nil
}

// byStream returns the offsets of ds by the key of their stream.
func (c *consumer) byStream(ds []bus.Delivery) map[string][]string {
	ids := make(map[string][]string)
	for _, d := range ds {
		key := c.b.streamFor(d.Channel).key
		ids[key] = append(ids[key], d.Position.Offset)
	}
	return ids
}

// extendScript restarts the idle time of the entries of one stream that
// are pending for one member of a group, and only those: an entry another
// member has claimed meanwhile stays its. XCLAIM with JUSTID leaves the
// delivery count as it was. KEYS: stream. ARGV: group, member, ids. It
// returns how many entries it extended.
var extendScript = redis.NewScript(`
local args = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0}
for i = 3, #ARGV do
	if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2]) > 0 then
		args[#args + 1] = ARGV[i]
	end
end
local held = #args - 5
if held > 0 then
	args[#args + 1] = 'JUSTID'
	redis.call(unpack(args))
end
return held
`)

// extendBatch bounds the ids of one run of extendScript (Lua's unpack
// has a limit of its own).
const extendBatch = 1000

// Extend implements bus.Consumer: the events read ahead are extended
// with ds.
func (c *consumer) Extend(ctx context.Context, ds ...bus.Delivery) error {
	c.mu.Lock()
	all := append(slices.Clone(c.ahead), ds...)
	now := time.Now()
	for _, d := range ds {
		// Still held: not to be handed out again after a lost read, as
		// it would be once handedOut forgot it.
		if k := c.b.streamFor(d.Channel).key + " " + d.Position.Offset; !c.given[k].IsZero() {
			c.given[k] = now
		}
	}
	c.mu.Unlock()
	pipe := c.b.client.Pipeline()
	for key, ids := range c.byStream(all) {
		for chunk := range slices.Chunk(ids, extendBatch) {
			args := append([]any{c.group, c.name}, anys(chunk)...)
			// Eval, not EvalSha: a pipeline cannot fall back on NOSCRIPT.
			extendScript.Eval(ctx, pipe, []string{key}, args...)
		}
	}
	if pipe.Len() == 0 {
		return nil
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("extend %d events of group %s: %w", len(all), c.group, err)
	}
	return nil
}

func anys(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}

// Lag implements bus.Consumer with XINFO GROUPS, whose lag Redis keeps
// for each group on a stream.
func (c *consumer) Lag(ctx context.Context) (int64, error) {
	c.mu.Lock()
	streams := slices.Clone(c.streams)
	c.mu.Unlock()
	pipe := c.b.client.Pipeline()
	cmds := make([]*redis.XInfoGroupsCmd, len(streams))
	for i, st := range streams {
		cmds[i] = pipe.XInfoGroups(ctx, st.key)
	}
	_, _ = pipe.Exec(ctx)
	var lag int64
	for i, cmd := range cmds {
		groups, err := cmd.Result()
		if err != nil {
			return 0, fmt.Errorf("read the lag of group %s: %w", c.group, err)
		}
		for _, g := range groups {
			if g.Name == c.group {
				if g.Lag < 0 {
					return 0, fmt.Errorf("read the lag of group %s: Redis does not know it on %s", c.group, streams[i].key)
				}
				lag += g.Lag
			}
		}
	}
	return lag, nil
}

// Close implements bus.Consumer: it stops the reads in flight, and a
// Fetch after it returns bus.ErrClosed. The member stays known to Redis
// with its unacknowledged events (what a read in flight took among them),
// which others take over after the visibility timeout, or which it gets
// first when it comes back under its name.
func (c *consumer) Close() error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.cancel()
	c.wg.Wait()
	return nil
}
