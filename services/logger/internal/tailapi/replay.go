package tailapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/channel"
	"github.com/eventbus-suite/eventbus/pkg/sse"
	"github.com/eventbus-suite/eventbus/services/logger/internal/eventlog"
)

// replayPage is how many events a resuming tail reads from the record at
// once: all it holds of the record between writes.
const replayPage = 1000

// truncatedRetries bounds the History calls that say the record was
// truncated while no namespace of the tail's is found to be, before the
// stream gives up.
const truncatedRetries = 3

// truncation is the data of "event: truncated".
type truncation struct {
	Error string `json:"error"`
	Code  string `json:"code"`
	// Namespaces says, for each namespace the record lost events of,
	// why: "epoch_changed" (its stream was lost: Redis flushed, or
	// restarted without its data) or "truncated" (trimmed past the
	// position), as the edge says it.
	Namespaces map[string]string `json:"namespaces"`
}

// replay sends what the record holds after out's mark, a page of
// replayPage at a time, up to the record's end. It returns the window's
// Top as it stood before the last page was read: every record appended
// from there on is either in that page or later, so reading the window
// from there (FollowFrom) with out's mark, which skips what was sent,
// goes on with no gap and no repeat.
//
// Events that match none of the logger's patterns are passed over, as
// are those of a namespace the client's mark does not name that are older
// than its floor: the logger had recorded nothing of that namespace then.
// When the record no longer holds everything after the mark in some
// namespace (trimmed, or its stream lost), the client gets "event:
// truncated" naming them, and those namespaces are read on from the oldest
// event kept.
func (h *handler) replay(ctx context.Context, out *sender, pattern string) (uint64, error) {
	named := make(map[string]bool, len(out.mark.Cursor))
	for ns := range out.mark.Cursor {
		named[ns] = true
	}
	retries := 0
	for {
		top := h.Window.Top()
		page, err := h.History.History(ctx, pattern, out.mark.Cursor, replayPage)
		if errors.Is(err, bus.ErrTruncated) {
			gone, perr := h.truncated(ctx, pattern, out.mark.Cursor)
			if perr != nil {
				return 0, perr
			}
			if len(gone) == 0 {
				if retries++; retries == truncatedRetries {
					return 0, err
				}
				continue
			}
			for ns := range gone {
				delete(out.mark.Cursor, ns)
			}
			if err := out.truncated(gone); err != nil {
				return 0, err
			}
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("read the record: %w", err)
		}
		for chunk := range slices.Chunk(page.Events, batch) {
			if err := out.arm(); err != nil {
				return 0, err
			}
			for _, e := range chunk {
				ns := h.History.StreamOf(e.Channel)
				logged := h.loggedAs(e.Channel)
				if logged == "" || !named[ns] && eventlog.CompareOffsets(e.Position.Offset, out.mark.Floor) < 0 {
					out.mark.Advance(ns, e.Position) // passed: not one for this tail
					continue
				}
				// Not logged now: no logged_at. A payload that is no
				// envelope comes out raw, as the logger logs it.
				rec, _ := eventlog.Format(bus.Message{
					Channel: e.Channel, Patterns: []string{logged}, Payload: e.Payload, Position: e.Position,
				}, time.Time{})
				rec.Stream = ns
				if err := out.record(rec); err != nil {
					return 0, err
				}
				h.replayed.Inc()
			}
			if err := out.rc.Flush(); err != nil {
				return 0, err
			}
		}
		for ns, p := range page.Next {
			out.mark.Advance(ns, p)
		}
		if !page.More {
			return top, nil
		}
	}
}

// truncated returns the namespaces of c that pattern reaches whose record
// no longer holds everything after c's position there, with why, asking
// History about each alone.
func (h *handler) truncated(ctx context.Context, pattern string, c bus.Cursor) (map[string]string, error) {
	gone := map[string]string{}
	for _, ns := range slices.Sorted(maps.Keys(c)) {
		if !eventlog.Reaches(pattern, ns) {
			continue
		}
		// A namespace is a pattern of the one channel named like it: the
		// call reads the namespace's streams alone, and checks the
		// position in this one first (the others, without one, are read
		// from their oldest).
		namespace, _, _ := strings.Cut(ns, ".")
		_, err := h.History.History(ctx, namespace, bus.Cursor{ns: c[ns]}, 1)
		switch {
		case errors.Is(err, bus.ErrEpochChanged):
			gone[ns] = "epoch_changed"
		case errors.Is(err, bus.ErrTruncated):
			gone[ns] = "truncated"
		case err != nil:
			return nil, fmt.Errorf("read the record of %s: %w", ns, err)
		}
	}
	return gone, nil
}

// loggedAs returns the first of the logger's patterns that ch matches, as
// the recorder names it in a log line, or "" when none does.
func (h *handler) loggedAs(ch string) string {
	for _, p := range h.Patterns {
		if channel.Match(p, ch) {
			return p
		}
	}
	return ""
}

// truncated tells the client that the record lost events after its
// position in namespaces, which are read on from their oldest event kept.
func (s *sender) truncated(namespaces map[string]string) error {
	data, err := json.Marshal(truncation{
		Error: "the record no longer holds every event after this stream's position in these namespaces " +
			"(trimmed, or the stream was lost); going on from the oldest event it keeps there",
		Code:       "history_truncated",
		Namespaces: namespaces,
	})
	if err != nil {
		return err
	}
	if err := s.arm(); err != nil {
		return err
	}
	if err := s.sw.WriteEvent(sse.Event{Type: "truncated", Data: string(data)}); err != nil {
		return err
	}
	return s.rc.Flush()
}
