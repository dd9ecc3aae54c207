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
// namespace stream its patterns cover.
type consumer struct {
	b           *Bus
	group, name string
	patterns    []string
	visibility  time.Duration
	fromOldest  bool
	wildcard    bool // a pattern covers namespaces yet to appear

	streams   []string          // stream keys joined, sorted; written under mu, as Lag reads it
	epochs    map[string]string // stream key → epoch
	nsOf      map[string]string // stream key → namespace
	ownFirst  bool              // own unacknowledged events, after a restart, not all read yet
	ownFrom   map[string]string // stream key → where reading them goes on from
	refreshed time.Time
	claimed   time.Time
	claimFrom map[string]string // stream key → where XAUTOCLAIM goes on from

	mu sync.Mutex
	// ahead holds what one read of several streams brought beyond the n
	// asked for (XREADGROUP's COUNT bounds each stream, not the read):
	// delivered to this member in Redis, not yet returned. The next Fetch
	// returns it first; Extend keeps it from going to another member.
	ahead []bus.Delivery
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
		epochs: make(map[string]string), nsOf: make(map[string]string), ownFirst: true, ownFrom: make(map[string]string), claimFrom: make(map[string]string),
	}
	for _, p := range patterns {
		if _, wild := reach(p); wild {
			c.wildcard = true
		}
	}
	if err := c.refresh(ctx, true); err != nil {
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

// joinWildcardGroups makes, on the stream of a namespace that has just
// appeared, every registered group whose patterns cover it, starting at
// its first event: the trimming then waits for them even if none of their
// members has looked for new namespaces yet. Failures are logged: a
// member joins the namespace itself when it finds it.
func (b *Bus) joinWildcardGroups(ctx context.Context, ns string) {
	groups, err := b.client.HGetAll(ctx, b.groupsKey()).Result()
	if err != nil {
		b.log.Warn("read the consumer groups", "error", err)
		return
	}
	for group, patterns := range groups {
		for _, p := range strings.Split(patterns, ",") {
			if prefix, wild := reach(p); wild && strings.HasPrefix(ns, prefix) {
				err := b.client.XGroupCreateMkStream(ctx, b.streamKey(ns), group, "0").Err()
				if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
					b.log.Warn("make a consumer group on a new namespace", "group", group, "namespace", ns, "error", err)
				}
				break
			}
		}
	}
}

// refresh joins the group on the stream of every namespace the patterns
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
		key := c.b.streamKey(ns)
		if _, joined := c.epochs[key]; !joined {
			start := "0"
			if starting && !c.fromOldest {
				start = "$"
			}
			if err := c.join(ctx, key, start); err != nil {
				return err
			}
			c.mu.Lock()
			c.streams = append(c.streams, key)
			slices.Sort(c.streams)
			c.mu.Unlock()
			c.nsOf[key] = ns
		}
		epoch, err := c.b.client.HGet(ctx, c.b.metaKey(ns), "epoch").Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return fmt.Errorf("read the epoch of %s: %w", ns, err)
		}
		c.epochs[key] = epoch
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

// Fetch implements bus.Consumer.
func (c *consumer) Fetch(ctx context.Context, n int) ([]bus.Delivery, error) {
	if n < 1 {
		return nil, fmt.Errorf("fetch %d events: want at least 1", n)
	}
	if ds := c.takeAhead(n); len(ds) > 0 {
		return ds, nil
	}
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if c.wildcard && time.Since(c.refreshed) > refreshEvery {
			if err := c.refresh(ctx, false); err != nil {
				return nil, err
			}
		}
		if len(c.streams) == 0 {
			// Nothing to read yet: wait for namespaces to appear.
			select {
			case <-time.After(consumerBlock):
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		if c.ownFirst {
			// One pass over what this member had not acknowledged when it
			// (re)started, each event once: what stays unacknowledged after
			// it comes again through the visibility timeout.
			ds, err := c.read(ctx, n, "0", 0)
			if err != nil || len(ds) > 0 {
				return c.upTo(n, ds), err
			}
			c.ownFirst = false
		}
		if time.Since(c.claimed) > min(c.visibility/2, time.Second) {
			ds, err := c.claim(ctx, n)
			if err != nil || len(ds) > 0 {
				return c.upTo(n, ds), err
			}
		}
		block := consumerBlock
		if d, ok := ctx.Deadline(); ok {
			block = min(block, max(time.Until(d), time.Millisecond))
		}
		ds, err := c.read(ctx, n, ">", block)
		if err != nil || len(ds) > 0 {
			return c.upTo(n, ds), err
		}
	}
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

// takeAhead returns up to n of the events read ahead.
func (c *consumer) takeAhead(n int) []bus.Delivery {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := min(n, len(c.ahead))
	ds := slices.Clone(c.ahead[:k])
	c.ahead = slices.Delete(c.ahead, 0, k)
	return ds
}

// read reads the group: new events (">") or this member's unacknowledged
// ones ("0").
func (c *consumer) read(ctx context.Context, n int, from string, block time.Duration) ([]bus.Delivery, error) {
	if len(c.streams) == 0 {
		return nil, nil
	}
	args := make([]string, 0, 2*len(c.streams))
	args = append(args, c.streams...)
	for _, key := range c.streams {
		if from == "0" {
			args = append(args, cmp.Or(c.ownFrom[key], "0"))
		} else {
			args = append(args, from)
		}
	}
	if block == 0 {
		block = -1 // go-redis: no BLOCK
	}
	res, err := c.b.client.XReadGroup(ctx, &redis.XReadGroupArgs{
		Group: c.group, Consumer: c.name, Streams: args, Count: int64(n), Block: block,
	}).Result()
	switch {
	case errors.Is(err, redis.Nil):
		return nil, nil
	case err != nil && (strings.HasPrefix(err.Error(), "NOGROUP") || strings.HasPrefix(err.Error(), "UNBLOCKED")):
		// A stream was lost (Redis flushed, or restarted without its
		// data; UNBLOCKED when it went while the read waited): join
		// again, from its first event.
		c.epochs = make(map[string]string)
		c.mu.Lock()
		c.streams = nil
		c.mu.Unlock()
		return nil, c.refresh(ctx, false)
	case err != nil:
		return nil, fmt.Errorf("read group %s: %w", c.group, err)
	}
	var ds []bus.Delivery
	for _, s := range res {
		if from == "0" && len(s.Messages) > 0 {
			c.ownFrom[s.Stream] = s.Messages[len(s.Messages)-1].ID
		}
		ds = c.deliveries(ctx, ds, s.Stream, s.Messages, from != ">")
	}
	return ds, nil
}

// claim takes over events other members left unacknowledged for longer
// than the visibility timeout.
func (c *consumer) claim(ctx context.Context, n int) ([]bus.Delivery, error) {
	c.claimed = time.Now()
	var ds []bus.Delivery
	for _, key := range c.streams {
		msgs, next, err := c.b.client.XAutoClaim(ctx, &redis.XAutoClaimArgs{
			Stream: key, Group: c.group, Consumer: c.name, MinIdle: c.visibility,
			Start: cmp.Or(c.claimFrom[key], "0-0"), Count: int64(n - len(ds)),
		}).Result()
		if err != nil && !strings.HasPrefix(err.Error(), "NOGROUP") {
			return nil, fmt.Errorf("claim events of group %s: %w", c.group, err)
		}
		c.claimFrom[key] = next
		ds = c.deliveries(ctx, ds, key, msgs, true)
		if len(ds) >= n {
			break
		}
	}
	return ds, nil
}

// deliveries turns stream entries into deliveries, acknowledging at once
// those on channels no pattern of the group matches.
func (c *consumer) deliveries(ctx context.Context, ds []bus.Delivery, key string, msgs []redis.XMessage, again bool) []bus.Delivery {
	if c.epochs[key] == "" && len(msgs) > 0 {
		// The group made the stream before any event did: its epoch came
		// with the first event.
		if epoch, err := c.b.client.HGet(ctx, c.b.metaKey(c.nsOf[key]), "epoch").Result(); err == nil {
			c.epochs[key] = epoch
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
			Event:       bus.Event{Channel: ch, Payload: []byte(p), Position: bus.Position{Offset: m.ID, Epoch: c.epochs[key]}},
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
	ids := make(map[string][]string)
	for _, d := range ds {
		key := c.b.streamKey(namespaceOf(d.Channel))
		ids[key] = append(ids[key], d.Position.Offset)
	}
	pipe := c.b.client.Pipeline()
	for key, batch := range ids {
		pipe.XAck(ctx, key, c.group, batch...)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("acknowledge %d events of group %s: %w", len(ds), c.group, err)
	}
	return nil
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
	c.mu.Unlock()
	ids := make(map[string][]string)
	for _, d := range all {
		key := c.b.streamKey(namespaceOf(d.Channel))
		ids[key] = append(ids[key], d.Position.Offset)
	}
	pipe := c.b.client.Pipeline()
	for key, batch := range ids {
		for chunk := range slices.Chunk(batch, extendBatch) {
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
	var lag int64
	for _, key := range streams {
		groups, err := c.b.client.XInfoGroups(ctx, key).Result()
		if err != nil {
			return 0, fmt.Errorf("read the lag of group %s: %w", c.group, err)
		}
		for _, g := range groups {
			if g.Name == c.group {
				if g.Lag < 0 {
					return 0, fmt.Errorf("read the lag of group %s: Redis does not know it on %s", c.group, key)
				}
				lag += g.Lag
			}
		}
	}
	return lag, nil
}

// Close implements bus.Consumer. The member stays known to Redis with its
// unacknowledged events, which others take over after the visibility
// timeout, or which it gets first when it comes back under its name.
func (c *consumer) Close() error { return nil }
