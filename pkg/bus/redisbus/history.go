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
	namespaces, err := b.namespacesOf(ctx, pattern)
	if err != nil {
		return bus.Page{}, err
	}
	reads := make([]nsRead, 0, len(namespaces))
	for _, ns := range namespaces {
		r, err := b.readNamespace(ctx, ns, pattern, since[ns], limit)
		if err != nil {
			return bus.Page{}, err
		}
		reads = append(reads, r)
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
	all, err := b.client.SMembers(ctx, b.namespacesKey()).Result()
	if err != nil {
		return nil, fmt.Errorf("read the known namespaces: %w", err)
	}
	all = slices.DeleteFunc(all, func(ns string) bool { return !strings.HasPrefix(ns, prefix) })
	slices.Sort(all)
	return all, nil
}

// Latest implements bus.History.
func (b *Bus) Latest(ctx context.Context, pattern string) (bus.Cursor, error) {
	if err := channel.ValidatePattern(pattern); err != nil {
		return nil, err
	}
	namespaces, err := b.namespacesOf(ctx, pattern)
	if err != nil {
		return nil, err
	}
	pipe := b.client.Pipeline()
	epochs := make([]*redis.StringCmd, len(namespaces))
	lasts := make([]*redis.XMessageSliceCmd, len(namespaces))
	for i, ns := range namespaces {
		epochs[i] = pipe.HGet(ctx, b.metaKey(ns), "epoch")
		lasts[i] = pipe.XRevRangeN(ctx, b.streamKey(ns), "+", "-", 1)
	}
	_, _ = pipe.Exec(ctx)
	out := make(bus.Cursor, len(namespaces))
	for i, ns := range namespaces {
		epoch, err := epochs[i].Result()
		if errors.Is(err, redis.Nil) {
			continue // nothing recorded
		}
		last, lerr := lasts[i].Result()
		if err = cmp.Or(err, lerr); err != nil {
			return nil, fmt.Errorf("read the last position of %s: %w", ns, err)
		}
		if len(last) == 1 {
			out[ns] = bus.Position{Offset: last[0].ID, Epoch: epoch}
		}
	}
	return out, nil
}

// nsRead is what one namespace gave a History call.
type nsRead struct {
	ns      string
	events  []bus.Event
	scanned bus.Position // the last entry read, matching or not; zero if none
	from    bus.Position // where the read started
	more    bool
}

// readNamespace reads the events of ns after from that match pattern, up
// to limit of them, scanning at most ten times limit entries.
func (b *Bus) readNamespace(ctx context.Context, ns, pattern string, from bus.Position, limit int) (nsRead, error) {
	key := b.streamKey(ns)
	r := nsRead{ns: ns, from: from}
	pipe := b.client.Pipeline()
	epochCmd := pipe.HGet(ctx, b.metaKey(ns), "epoch")
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

// mergePages merges the namespaces' events by offset, keeps limit of them,
// and says where each namespace continues: past what it scanned when all
// its events made the page, else after its last event in the page.
func mergePages(reads []nsRead, limit int) bus.Page {
	page := bus.Page{Next: bus.Cursor{}}
	for _, r := range reads {
		page.Events = append(page.Events, r.events...)
	}
	// Offsets are times to the millisecond: within one, the order of
	// events in different namespaces is unknown, and namespace order
	// stands in for it.
	slices.SortStableFunc(page.Events, func(a, b bus.Event) int {
		am, as := bus.SplitOffset(a.Position.Offset)
		bm, bs := bus.SplitOffset(b.Position.Offset)
		return cmp.Or(cmp.Compare(am, bm), strings.Compare(namespaceOf(a.Channel), namespaceOf(b.Channel)), cmp.Compare(as, bs))
	})
	cut := len(page.Events) > limit
	if cut {
		page.Events = page.Events[:limit]
	}
	last := make(map[string]bus.Position, len(reads))
	kept := make(map[string]int, len(reads))
	for _, e := range page.Events {
		ns := namespaceOf(e.Channel)
		last[ns] = e.Position
		kept[ns]++
	}
	for _, r := range reads {
		switch {
		case kept[r.ns] < len(r.events):
			page.Next[r.ns] = cmp.Or(last[r.ns], r.from)
			page.More = true
		case !r.scanned.IsZero():
			page.Next[r.ns] = r.scanned
			page.More = page.More || r.more
		case !r.from.IsZero():
			page.Next[r.ns] = r.from
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
	namespaces, err := b.namespacesOf(ctx, pattern)
	if err != nil {
		return nil, err
	}
	var out []bus.Event
	for _, ns := range namespaces {
		epoch, err := b.client.HGet(ctx, b.metaKey(ns), "epoch").Result()
		if errors.Is(err, redis.Nil) {
			continue // nothing recorded
		}
		if err != nil {
			return nil, fmt.Errorf("read the epoch of %s: %w", ns, err)
		}
		entries, err := b.client.XRevRangeN(ctx, b.streamKey(ns), "+", "-", int64(scan)).Result()
		if err != nil {
			return nil, fmt.Errorf("read the stream of %s: %w", ns, err)
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
	slices.SortFunc(out, func(a, b bus.Event) int { return bus.CompareOffsets(a.Position.Offset, b.Position.Offset) })
	return out, nil
}
