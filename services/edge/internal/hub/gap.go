package hub

import (
	"cmp"
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/channel"
	"github.com/eventbus-suite/eventbus/pkg/retry"
)

// streamOf names the stream the events of ch are recorded in, the key of
// their positions in cursors: as the record says, or the namespace (the
// first token of ch) when the hub has no record.
func (h *Hub) streamOf(ch string) string {
	if h.opts.History != nil {
		return h.opts.History.StreamOf(ch)
	}
	ns, _, _ := strings.Cut(ch, ":")
	return ns
}

// gapTries bounds the reads of the record that fill one gap.
const gapTries = 4

// catchUp follows a gap in the Redis subscription: it reads from the
// record what every subscribed name missed since the last event the hub
// saw in each stream, and dispatches it in offset order before the
// live events that follow the gap (dispatch then skips those it had from
// the record). If the record cannot say, every connection is closed with
// DisconnectResume: each client resumes from its own positions, and its
// reply tells it whether anything is lost.
func (h *Hub) catchUp() {
	h.mu.RLock()
	names := slices.Sorted(maps.Keys(h.redis))
	since := maps.Clone(h.floor)
	maps.Copy(since, h.seen) // what was dispatched is later than any floor
	h.mu.RUnlock()
	if len(names) == 0 {
		return
	}
	if h.opts.History == nil {
		h.log.Warn("redis subscription had a gap; without a record (BUS_HISTORY=off) what was published meanwhile is lost")
		return
	}
	// The first read after a Redis failover may find the client's map of
	// slots stale while it learns the new master: a few tries, a moment
	// apart, before every connection is closed for it. What the record
	// says it cannot give (truncated, too many) is final.
	backoff := retry.Backoff{Min: 100 * time.Millisecond, Max: time.Second}
	missed, err := h.readGap(names, since)
	for try := 1; err != nil && try < gapTries && !errors.Is(err, bus.ErrTruncated) && !errors.Is(err, errTooMany); try++ {
		h.log.Debug("read what a gap missed from the record; trying again", "error", err)
		_ = backoff.Wait(context.Background())
		missed, err = h.readGap(names, since)
	}
	if err != nil {
		h.log.Warn("redis subscription had a gap the record cannot fill; closing every connection for its client to resume", "error", err)
		h.m.recoveries.WithLabelValues("gap_" + reasonOf(err)).Inc()
		h.mu.RLock()
		for c := range h.clients {
			c.Kick(DisconnectResume)
		}
		h.mu.RUnlock()
		return
	}
	h.m.recoveries.WithLabelValues("gap").Inc()
	h.log.Info("redis subscription had a gap; read what it missed from the record", "events", len(missed))
	for _, e := range missed {
		var patterns []string
		for _, r := range names {
			if channel.Match(r, e.Channel) {
				patterns = append(patterns, r)
			}
		}
		h.dispatch(bus.Message{Channel: e.Channel, Patterns: patterns, Payload: e.Payload, Position: e.Position})
	}
}

// readGap reads what names missed after since, each event once, in offset
// order (namespace order within a millisecond, as History merges).
func (h *Hub) readGap(names []string, since bus.Cursor) ([]bus.Event, error) {
	ctx, cancel := context.WithTimeout(context.Background(), recoverTimeout)
	defer cancel()
	type key struct{ ns, offset string }
	got := make(map[key]bus.Event)
	for _, r := range names {
		cursor, n := since, 0
		for {
			page, err := h.opts.History.History(ctx, r, cursor, historyPage)
			if err != nil {
				return nil, err
			}
			for _, e := range page.Events {
				got[key{h.streamOf(e.Channel), e.Position.Offset}] = e
			}
			if n += len(page.Events); n > h.opts.RecoverMax {
				return nil, errTooMany
			}
			if !page.More {
				break
			}
			cursor = page.Next
		}
	}
	out := slices.Collect(maps.Values(got))
	slices.SortFunc(out, func(a, b bus.Event) int {
		am, _ := bus.SplitOffset(a.Position.Offset)
		bm, _ := bus.SplitOffset(b.Position.Offset)
		return cmp.Or(cmp.Compare(am, bm), strings.Compare(h.streamOf(a.Channel), h.streamOf(b.Channel)),
			bus.CompareOffsets(a.Position.Offset, b.Position.Offset))
	})
	return out, nil
}
