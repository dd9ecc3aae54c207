package redisbus

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/channel"
)

// MaxHistoryLimit is the most events one History call returns.
const MaxHistoryLimit = 10_000

// History implements bus.History. Each namespace is read in batches and
// filtered by pattern; a page stops after scanning ten times limit entries
// of a namespace even if fewer events matched, with More set and Next past
// what it scanned, so a rare pattern over a busy namespace costs bounded
// work per call.
func (b *Bus) History(ctx context.Context, pattern string, since bus.Cursor, limit int) (bus.Page, error) {
	if err := channel.ValidatePattern(pattern); err != nil {
		return bus.Page{}, err
	}
	if limit < 1 || limit > MaxHistoryLimit {
		return bus.Page{}, fmt.Errorf("history limit %d: want 1 to %d", limit, MaxHistoryLimit)
	}
	var page bus.Page
	err := b.again(ctx, staleMap, func() (err error) {
		page, err = b.history(ctx, pattern, since, limit)
		return err
	})
	return page, err
}

func (b *Bus) history(ctx context.Context, pattern string, since bus.Cursor, limit int) (bus.Page, error) {
	namespaces, err := b.namespacesOf(ctx, pattern)
	if err != nil {
		return bus.Page{}, err
	}
	var reads []nsRead
	for _, ns := range namespaces {
		for _, st := range b.streamsOf(ns) {
			r, err := b.readStream(ctx, st, pattern, since[st.name], limit)
			if err != nil {
				return bus.Page{}, err
			}
			reads = append(reads, r)
		}
	}
	return mergePages(reads, limit), nil
}

// namespacesOf returns the namespaces whose channels pattern can match:
// its first token when that has no wildcard, else every known namespace
// that starts with the pattern's text before its first '*'.
func (b *Bus) namespacesOf(ctx context.Context, pattern string) ([]string, error) {
	prefix, wild := reach(pattern)
	if !wild {
		return []string{prefix}, nil
	}
	all, err := b.knownNamespaces(ctx)
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(all, func(ns string) bool { return !strings.HasPrefix(ns, prefix) }), nil
}

// NamespacesOf returns the namespaces pattern reaches: its first token
// when that has no wildcard, else every recorded namespace it may match.
func (b *Bus) NamespacesOf(ctx context.Context, pattern string) ([]string, error) {
	if err := channel.ValidatePattern(pattern); err != nil {
		return nil, err
	}
	return b.namespacesOf(ctx, pattern)
}

// knownNamespaces returns every namespace recorded, sorted: the union of
// the partitions' sets.
func (b *Bus) knownNamespaces(ctx context.Context) ([]string, error) {
	pipe := b.client.Pipeline()
	sets := b.namespaceSets()
	cmds := make([]*redis.StringSliceCmd, len(sets))
	for i, key := range sets {
		cmds[i] = pipe.SMembers(ctx, key)
	}
	_, _ = pipe.Exec(ctx)
	var all []string
	for _, c := range cmds {
		ns, err := c.Result()
		if err != nil {
			return nil, fmt.Errorf("read the known namespaces: %w", err)
		}
		all = append(all, ns...)
	}
	slices.Sort(all)
	return slices.Compact(all), nil
}

// Latest implements bus.History.
func (b *Bus) Latest(ctx context.Context, pattern string) (bus.Cursor, error) {
	if err := channel.ValidatePattern(pattern); err != nil {
		return nil, err
	}
	var out bus.Cursor
	err := b.again(ctx, staleMap, func() (err error) {
		out, err = b.latest(ctx, pattern)
		return err
	})
	return out, err
}

func (b *Bus) latest(ctx context.Context, pattern string) (bus.Cursor, error) {
	namespaces, err := b.namespacesOf(ctx, pattern)
	if err != nil {
		return nil, err
	}
	var streams []stream
	for _, ns := range namespaces {
		streams = append(streams, b.streamsOf(ns)...)
	}
	pipe := b.client.Pipeline()
	epochs := make([]*redis.StringCmd, len(streams))
	lasts := make([]*redis.XMessageSliceCmd, len(streams))
	for i, st := range streams {
		epochs[i] = pipe.HGet(ctx, st.meta, "epoch")
		lasts[i] = pipe.XRevRangeN(ctx, st.key, "+", "-", 1)
	}
	_, _ = pipe.Exec(ctx)
	out := make(bus.Cursor, len(streams))
	for i, st := range streams {
		epoch, err := epochs[i].Result()
		if errors.Is(err, redis.Nil) {
			continue // nothing recorded
		}
		last, lerr := lasts[i].Result()
		if err = cmp.Or(err, lerr); err != nil {
			return nil, fmt.Errorf("read the last position of %s: %w", st.name, err)
		}
		if len(last) == 1 {
			out[st.name] = bus.Position{Offset: last[0].ID, Epoch: epoch}
		}
	}
	return out, nil
}

// nsRead is what one stream gave a History call.
type nsRead struct {
	stream  string // its name
	events  []bus.Event
	scanned bus.Position // the last entry read, matching or not; zero if none
	from    bus.Position // where the read started
	more    bool
}

// readStream reads the events of st after from that match pattern, up to
// limit of them, scanning at most ten times limit entries.
func (b *Bus) readStream(ctx context.Context, st stream, pattern string, from bus.Position, limit int) (nsRead, error) {
	key, ns := st.key, st.name
	r := nsRead{stream: st.name, from: from}
	pipe := b.client.Pipeline()
	epochCmd := pipe.HGet(ctx, st.meta, "epoch")
	infoCmd := pipe.XInfoStream(ctx, key)
	_, _ = pipe.Exec(ctx)
	epoch, err := epochCmd.Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return r, fmt.Errorf("read the epoch of %s: %w", ns, err)
	}
	info, err := infoCmd.Result()
	switch {
	case err != nil && strings.Contains(err.Error(), "no such key"):
		if from.Epoch != "" {
			return r, fmt.Errorf("%w: %w: the stream of %s is gone (epoch %s)", bus.ErrTruncated, bus.ErrEpochChanged, ns, from.Epoch)
		}
		return r, nil // nothing recorded yet
	case err != nil:
		return r, fmt.Errorf("read the stream of %s: %w", ns, err)
	}
	start := "-"
	if from.Offset != "" {
		switch {
		case from.Epoch != epoch:
			return r, fmt.Errorf("%w: %w: %s has epoch %s, not %s", bus.ErrTruncated, bus.ErrEpochChanged, ns, epoch, from.Epoch)
		case trimmedPast(info, from.Offset):
			return r, fmt.Errorf("%w: %s is trimmed past %s", bus.ErrTruncated, ns, from.Offset)
		}
		start = from.Offset // read with the page: still there, nothing after it was trimmed
	}
	batch := int64(min(max(limit, 100), 1000))
	for scanned := 0; scanned < 10*limit; {
		entries, err := b.client.XRangeN(ctx, key, start, "+", batch).Result()
		if err != nil {
			return r, fmt.Errorf("read the stream of %s: %w", ns, err)
		}
		full := int64(len(entries)) == batch
		if start == from.Offset {
			// Trimming happens at the head: if from's own entry is still
			// there, so is everything after it, whatever was published
			// since the check above.
			if len(entries) == 0 || entries[0].ID != from.Offset {
				return r, fmt.Errorf("%w: %s is trimmed past %s", bus.ErrTruncated, ns, from.Offset)
			}
			entries = entries[1:]
		}
		for _, e := range entries {
			r.scanned = bus.Position{Offset: e.ID, Epoch: epoch}
			scanned++
			c, _ := e.Values["c"].(string) // as published: with the bus's prefix
			ch := b.unkey(c)
			if !channel.Match(pattern, ch) {
				continue
			}
			p, _ := e.Values["p"].(string)
			r.events = append(r.events, bus.Event{Channel: ch, Payload: []byte(p), Position: r.scanned})
			if len(r.events) == limit {
				r.more = true
				return r, nil
			}
		}
		if !full || len(entries) == 0 {
			return r, nil
		}
		start = "(" + entries[len(entries)-1].ID
	}
	r.more = true
	return r, nil
}

// mergePages merges the streams' events by offset, keeps limit of them,
// and says where each stream continues: past what it scanned when all its
// events made the page, else after its last event in the page.
func mergePages(reads []nsRead, limit int) bus.Page {
	page := bus.Page{Next: bus.Cursor{}}
	type read struct {
		bus.Event
		stream string
	}
	var events []read
	for _, r := range reads {
		for _, e := range r.events {
			events = append(events, read{e, r.stream})
		}
	}
	// Offsets are times to the millisecond: within one, the order of
	// events in different streams is unknown, and stream order stands in
	// for it.
	slices.SortStableFunc(events, func(a, b read) int {
		am, as := bus.SplitOffset(a.Position.Offset)
		bm, bs := bus.SplitOffset(b.Position.Offset)
		return cmp.Or(cmp.Compare(am, bm), strings.Compare(a.stream, b.stream), cmp.Compare(as, bs))
	})
	if len(events) > limit {
		events = events[:limit]
	}
	last := make(map[string]bus.Position, len(reads))
	kept := make(map[string]int, len(reads))
	for _, e := range events {
		page.Events = append(page.Events, e.Event)
		last[e.stream] = e.Position
		kept[e.stream]++
	}
	for _, r := range reads {
		switch {
		case kept[r.stream] < len(r.events):
			page.Next[r.stream] = cmp.Or(last[r.stream], r.from)
			page.More = true
		case !r.scanned.IsZero():
			page.Next[r.stream] = r.scanned
			page.More = page.More || r.more
		case !r.from.IsZero():
			page.Next[r.stream] = r.from
		}
	}
	return page
}

// trimmedPast reports whether entries after offset may have been trimmed:
// offset is older than the oldest entry kept (Redis does not count trimmed
// entries in max-deleted-entry-id). When exactly the entries up to offset
// went, it says so too: the caller reloads for nothing, but never takes a
// partial answer for a whole one.
func trimmedPast(info *redis.XInfoStream, offset string) bool {
	if info.Length == 0 {
		return bus.CompareOffsets(offset, info.LastGeneratedID) < 0
	}
	return bus.CompareOffsets(offset, info.FirstEntry.ID) < 0
}

// Last returns, for each channel matching pattern, its latest event among
// the newest scan entries of each namespace the pattern spans, oldest
// first: what an MQTT client is given as the retained messages of a new
// subscription. A channel quiet for longer than scan entries of its
// namespace has none.
func (b *Bus) Last(ctx context.Context, pattern string, scan int) ([]bus.Event, error) {
	if err := channel.ValidatePattern(pattern); err != nil {
		return nil, err
	}
	var out []bus.Event
	err := b.again(ctx, staleMap, func() (err error) {
		out, err = b.last(ctx, pattern, scan)
		return err
	})
	return out, err
}

func (b *Bus) last(ctx context.Context, pattern string, scan int) ([]bus.Event, error) {
	namespaces, err := b.namespacesOf(ctx, pattern)
	if err != nil {
		return nil, err
	}
	var out []bus.Event
	for _, ns := range namespaces {
		for _, st := range b.streamsOf(ns) {
			epoch, err := b.client.HGet(ctx, st.meta, "epoch").Result()
			if errors.Is(err, redis.Nil) {
				continue // nothing recorded
			}
			if err != nil {
				return nil, fmt.Errorf("read the epoch of %s: %w", st.name, err)
			}
			entries, err := b.client.XRevRangeN(ctx, st.key, "+", "-", int64(scan)).Result()
			if err != nil {
				return nil, fmt.Errorf("read the stream of %s: %w", st.name, err)
			}
			seen := make(map[string]bool)
			for _, e := range entries {
				c, _ := e.Values["c"].(string)
				ch := b.unkey(c)
				if seen[ch] || !channel.Match(pattern, ch) {
					continue
				}
				seen[ch] = true
				p, _ := e.Values["p"].(string)
				out = append(out, bus.Event{Channel: ch, Payload: []byte(p), Position: bus.Position{Offset: e.ID, Epoch: epoch}})
			}
		}
	}
	slices.SortFunc(out, func(a, b bus.Event) int { return bus.CompareOffsets(a.Position.Offset, b.Position.Offset) })
	return out, nil
}
