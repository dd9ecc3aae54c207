package hub

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/eventbus-suite/eventbus/pkg/channel"
)

// Redis tests every pattern subscribed anywhere on every PUBLISH, so the
// patterns an edge holds slow every publisher on the bus. The hub keeps
// their number at most MaxRedisPatterns: within it, each client pattern is
// subscribed as it is; past it, a new one is served by a Redis pattern
// that covers it, subscribing "order:*" for "order:a*" (or "*" for
// "*:placed") if none does, and the hub matches it against each event
// that cover brings. Channels without a wildcard cost Redis a hash lookup
// and are always subscribed as they are.
//
// A Redis name serves its own clients (Hub.subs) and the client patterns
// it covers (Hub.covers); it is unsubscribed when it serves neither.

// serve arranges for the first client of p to receive p's events: through
// a Redis name that covers p already, through p itself, or past the bound
// through a cover of p. It returns once Redis delivers p. Call with change
// held, not mu.
func (h *Hub) serve(ctx context.Context, p string) error {
	h.mu.RLock()
	_, subscribed := h.redis[p]
	by := h.coverOf(p)
	full := h.patterns >= h.opts.MaxRedisPatterns
	h.mu.RUnlock()
	switch {
	case subscribed:
		return nil // subscribed in Redis for the clients it covers
	case !channel.IsPattern(p) || !full:
		if err := h.sub.Add(ctx, p); err != nil {
			return fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		h.mu.Lock()
		h.subscribed(p)
		h.mu.Unlock()
		return nil
	case by != "":
		h.mu.Lock()
		h.cover(by, p)
		h.mu.Unlock()
		return nil
	}
	// Past the bound: subscribe a cover of p, which takes over every
	// pattern it covers, and unsubscribe those. Until Redis confirms the
	// unsubscription, an event may come through both: dispatch counts it
	// once.
	q := coverFor(p)
	if err := h.sub.Add(ctx, q); err != nil {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	h.mu.Lock()
	h.subscribed(q)
	h.cover(q, p)
	var moved []string
	for r := range h.redis {
		if r != q && channel.IsPattern(r) && h.covers[r].len() == 0 && channel.Covers(q, r) {
			h.unsubscribed(r)
			h.cover(q, r)
			moved = append(moved, r)
		}
	}
	h.mu.Unlock()
	h.release(moved)
	h.log.Info("redis patterns at their bound: a covering pattern serves more client patterns",
		"cover", q, "bound", h.opts.MaxRedisPatterns, "moved", len(moved))
	return nil
}

// coverFor returns the pattern that serves p once the bound is reached:
// its namespace's "ns:*", or "*" when p's first token has a wildcard.
func coverFor(p string) string {
	if i := strings.IndexByte(p, ':'); i > 0 && !channel.IsPattern(p[:i]) {
		return p[:i] + ":*"
	}
	return "*"
}

// coverOf returns a Redis pattern that covers p, or "". Call with mu held.
func (h *Hub) coverOf(p string) string {
	for _, q := range []string{coverFor(p), "*"} {
		if _, ok := h.redis[q]; ok && channel.Covers(q, p) {
			return q
		}
	}
	return ""
}

// forsake undoes serve when the last client of p leaves, and returns the
// Redis names that now serve no one. Call with mu held.
func (h *Hub) forsake(p string) []string {
	var orphans []string
	if q, ok := h.coveredBy[p]; ok {
		delete(h.coveredBy, p)
		h.covers[q].remove(p)
		if h.covers[q].len() == 0 {
			delete(h.covers, q)
			if len(h.subs[q]) == 0 {
				orphans = append(orphans, q)
			}
		}
	}
	if _, ok := h.redis[p]; ok && h.covers[p].len() == 0 {
		orphans = append(orphans, p)
	}
	for _, r := range orphans {
		h.unsubscribed(r)
	}
	return orphans
}

// cover makes Redis name q serve client pattern p. Call with mu held.
func (h *Hub) cover(q, p string) {
	if h.covers[q] == nil {
		h.covers[q] = &patternSet{byPrefix: make(map[string][]string)}
	}
	h.covers[q].add(p)
	h.coveredBy[p] = q
}

// subscribed and unsubscribed keep the count of Redis patterns. Call with
// mu held.
func (h *Hub) subscribed(r string) {
	h.redis[r] = struct{}{}
	if channel.IsPattern(r) {
		h.patterns++
	}
}

func (h *Hub) unsubscribed(r string) {
	delete(h.redis, r)
	if channel.IsPattern(r) {
		h.patterns--
	}
}

// recipients returns the client patterns an event on ch brought by the
// Redis names of patterns is for, sorted and once each. Call with mu held,
// from the dispatching goroutine.
func (h *Hub) recipients(ch string, patterns []string) []string {
	h.wanted = h.wanted[:0]
	for _, r := range patterns {
		if len(h.subs[r]) > 0 {
			h.wanted = append(h.wanted, r)
		}
		h.wanted = h.covers[r].match(ch, h.wanted)
	}
	if len(h.wanted) > 1 {
		slices.Sort(h.wanted)
		h.wanted = slices.Compact(h.wanted)
	}
	return h.wanted
}

// redisNames returns what the hub holds subscribed in Redis, sorted; for
// tests.
func (h *Hub) redisNames() []string {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return slices.Sorted(maps.Keys(h.redis))
}

// patternSet holds client patterns by their literal prefix, the text
// before the first '*': the patterns that may match a channel are found in
// as many lookups as the channel has bytes, however many patterns there
// are. Its methods take a nil set as empty.
type patternSet struct {
	byPrefix map[string][]string
	n        int
}

func literalPrefix(p string) string {
	if i := strings.IndexByte(p, '*'); i >= 0 {
		return p[:i]
	}
	return p
}

func (s *patternSet) add(p string) {
	k := literalPrefix(p)
	s.byPrefix[k] = append(s.byPrefix[k], p)
	s.n++
}

func (s *patternSet) remove(p string) {
	k := literalPrefix(p)
	if i := slices.Index(s.byPrefix[k], p); i >= 0 {
		s.byPrefix[k] = slices.Delete(s.byPrefix[k], i, i+1)
		if len(s.byPrefix[k]) == 0 {
			delete(s.byPrefix, k)
		}
		s.n--
	}
}

func (s *patternSet) len() int {
	if s == nil {
		return 0
	}
	return s.n
}

// match appends the patterns of s that match ch to dst.
func (s *patternSet) match(ch string, dst []string) []string {
	if s == nil {
		return dst
	}
	for i := 0; i <= len(ch); i++ {
		for _, p := range s.byPrefix[ch[:i]] {
			if channel.Match(p, ch) {
				dst = append(dst, p)
			}
		}
	}
	return dst
}
