package hub

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/eventbus-suite/eventbus/pkg/channel"
)

// Redis tests every pattern subscribed anywhere on every PUBLISH, so the
// patterns an edge holds slow every publisher on the bus. The hub keeps
// their number at most MaxRedisPatterns. Within it, each client pattern is
// subscribed as it is. Past it, a new pattern is served by a Redis pattern
// that covers it; if none does, the hub subscribes the narrowest cover
// that also covers a pattern subscribed already ("order:a*" and "order:b*"
// give "order:*"; "*:placed" and "order:*" give "*"), which takes over
// every pattern it covers, so the count never grows. The hub then matches
// the patterns a cover serves against each event it brings. Channels
// without a wildcard cost Redis a hash lookup and are always subscribed as
// they are.
//
// A Redis name serves its own clients (Hub.subs) and the client patterns
// it covers (Hub.covers); it is unsubscribed when it serves neither. A
// name taken over by a cover keeps its set until its patterns leave, for
// the events Redis matched against it before the cover took over.

// serve arranges for the first client of p to receive p's events. When
// that takes a name new to Redis, it returns what to wait on, with change
// released, for Redis to deliver them; else it returns nil once they are
// delivered. Call with change held, not mu.
func (h *Hub) serve(ctx context.Context, p string) (*pendingAdd, error) {
	h.mu.RLock()
	_, subscribed := h.redis[p]
	adding := h.adding[p] != nil
	full := len(h.wild)+h.addingWild >= h.opts.MaxRedisPatterns
	h.mu.RUnlock()
	switch {
	case subscribed:
		return nil, nil // subscribed in Redis for the clients it covers
	case adding || !channel.IsPattern(p) || !full:
		return h.add(p), nil
	}
	// Past the bound, a cover is chosen among what Redis has once every
	// change queued before is applied: a removal still queued of the name
	// it picks would undo it, and names on their way in would be missed.
	// New changes wait meanwhile, as they need change.
	h.settle()
	h.mu.RLock()
	_, subscribed = h.redis[p]
	full = len(h.wild) >= h.opts.MaxRedisPatterns
	by, cover := h.coverOf(p), h.coverFor(p)
	h.mu.RUnlock()
	switch {
	case subscribed:
		return nil, nil
	case !full:
		return h.add(p), nil
	case by != "":
		h.mu.Lock()
		h.cover(by, p)
		h.mu.Unlock()
		return nil, nil
	}
	// Until Redis confirms that the patterns the cover takes over are
	// unsubscribed, an event may come through both: dispatch counts it once.
	if err := h.sub.Add(ctx, cover); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	h.mu.Lock()
	h.subscribed(cover)
	if cover != p { // p may be its own cover ("order:*" over "order:a*")
		h.cover(cover, p)
	}
	var moved []string
	for r := range h.wild {
		if r == cover || !channel.Covers(cover, r) {
			continue
		}
		h.unsubscribed(r)
		moved = append(moved, r)
		if len(h.subs[r]) > 0 {
			h.cover(cover, r)
		}
		if set := h.covers[r]; set != nil {
			for _, ps := range set.byPrefix {
				for _, q := range ps {
					h.cover(cover, q)
				}
			}
		}
	}
	h.mu.Unlock()
	h.release(moved)
	h.log.Info("redis patterns at their bound: a covering pattern takes over",
		"cover", cover, "bound", h.opts.MaxRedisPatterns, "taken_over", len(moved))
	return nil, nil
}

// coverOf returns a Redis pattern that covers p, or "". Call with mu held.
func (h *Hub) coverOf(p string) string {
	for r := range h.wild {
		if channel.Covers(r, p) {
			return r
		}
	}
	return ""
}

// coverFor returns the narrowest pattern that covers p and a wildcard
// pattern subscribed in Redis: their longest common literal prefix
// followed by '*'. Call with mu held.
func (h *Hub) coverFor(p string) string {
	lp, best := literalPrefix(p), ""
	for r := range h.wild {
		lr := literalPrefix(r)
		n := 0
		for n < len(lp) && n < len(lr) && lp[n] == lr[n] {
			n++
		}
		if n > len(best) {
			best = lp[:n]
		}
	}
	return best + "*"
}

// forsake undoes serve when the last client of p leaves, and returns the
// Redis names that now serve no one. Call with mu held.
func (h *Hub) forsake(p string) []string {
	var orphans []string
	for _, q := range h.coveredBy[p] {
		h.covers[q].remove(p)
		if h.covers[q].len() > 0 {
			continue
		}
		delete(h.covers, q)
		if _, ok := h.redis[q]; ok && len(h.subs[q]) == 0 {
			orphans = append(orphans, q)
		}
	}
	delete(h.coveredBy, p)
	if _, ok := h.redis[p]; ok && h.covers[p].len() == 0 && !slices.Contains(orphans, p) {
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
	if h.covers[q].add(p) {
		h.coveredBy[p] = append(h.coveredBy[p], q)
	}
}

// subscribed and unsubscribed keep the count of Redis patterns. Call with
// mu held.
func (h *Hub) subscribed(r string) {
	h.redis[r] = struct{}{}
	if channel.IsPattern(r) {
		h.wild[r] = struct{}{}
	}
}

func (h *Hub) unsubscribed(r string) {
	if _, ok := h.redis[r]; !ok {
		return
	}
	delete(h.redis, r)
	delete(h.wild, r)
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

// add adds p and reports whether s did not hold it.
func (s *patternSet) add(p string) bool {
	k := literalPrefix(p)
	if slices.Contains(s.byPrefix[k], p) {
		return false
	}
	s.byPrefix[k] = append(s.byPrefix[k], p)
	s.n++
	return true
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

// len returns how many patterns s holds; a nil set holds none.
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
