package hub

import (
	"cmp"
	"context"
	"errors"
	"maps"
	"sync/atomic"
	"time"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/channel"
)

// Recovery says how a subscription began: for one that resumed from a
// position, whether everything it missed since came first.
type Recovery struct {
	// Resumed reports that the subscription asked to resume from a
	// position; the rest of the fields but Positions are about that.
	Resumed bool
	// Recovered: the Missed events published since the position come
	// before any live event, in offset order within each namespace, with
	// no gap and no repeat between them and the live ones.
	Recovered bool
	Missed    int
	// Reason says why not: one of the Reason constants.
	Reason string
	// Positions, for a subscription that did not resume or could not
	// recover, is where each namespace the pattern spans stood as it
	// began: a client resumes from these until its events tell it more.
	Positions bus.Cursor
}

// Reasons a subscription could not recover. The client then reloads its
// state: its events from now on are complete.
const (
	ReasonEpochChanged = "epoch_changed" // a stream was lost since the position
	ReasonTruncated    = "truncated"     // trimmed past the position
	ReasonTooMany      = "too_many"      // more missed events than Options.RecoverMax
	ReasonUnavailable  = "unavailable"   // the record could not be read, or the edge keeps none
)

const (
	// recoverTimeout bounds the reading of what a subscription missed.
	recoverTimeout = 10 * time.Second
	// historyPage is how many events one History call reads.
	historyPage = 1000
)

// errTooMany stands for more missed events than RecoverMax.
var errTooMany = errors.New("more missed events than EDGE_RECOVER_MAX")

// reasonOf is the Reason for a failure to read the record.
func reasonOf(err error) string {
	switch {
	case errors.Is(err, errTooMany):
		return ReasonTooMany
	case errors.Is(err, bus.ErrEpochChanged):
		return ReasonEpochChanged
	case errors.Is(err, bus.ErrTruncated):
		return ReasonTruncated
	}
	return ReasonUnavailable
}

// replay is a subscription catching up. Until its missed events are
// queued, dispatch holds the live ones here instead of queueing them.
type replay struct {
	live      []*Event // guarded by Hub.mu
	overflow  bool     // guarded by Hub.mu: more live events came than RecoverMax
	cancelled atomic.Bool
	// done is set, and fence, when the replay has handed over to dispatch
	// (with Hub.mu held); from then only dispatch touches fence. An event
	// the record gave may still be on its way live when the replay ends
	// (Redis stores it before the pub/sub connection brings it): fence is
	// where each namespace stood for the subscription as it went live,
	// and a live event at or before it is not given again. Pub/sub brings
	// a namespace in order, so the first one past it lifts it.
	done  bool
	fence bus.Cursor
}

// passes reports whether ev, live, is past the fence of a replay that is
// done, lifting the fence of its namespace when it is. Call from dispatch.
func (r *replay) passes(ev *Event) bool {
	if ev.Position.IsZero() || len(r.fence) == 0 {
		return true
	}
	ns := ev.Stream
	f, ok := r.fence[ns]
	if !ok {
		return true
	}
	if f.Epoch == ev.Position.Epoch && bus.CompareOffsets(ev.Position.Offset, f.Offset) <= 0 {
		return false // the record gave it
	}
	delete(r.fence, ns)
	return true
}

// missed reads what p delivered after since, at most RecoverMax events.
func (h *Hub) missed(ctx context.Context, p string, since bus.Cursor) ([]bus.Event, Recovery) {
	rec := Recovery{Resumed: true}
	if h.opts.History == nil {
		rec.Reason = ReasonUnavailable
		return nil, rec
	}
	var events []bus.Event
	cursor := since
	for {
		page, err := h.opts.History.History(ctx, p, cursor, min(historyPage, h.opts.RecoverMax+1-len(events)))
		if err != nil {
			if rec.Reason = reasonOf(err); rec.Reason == ReasonUnavailable {
				h.log.Warn("read what a subscription missed", "pattern", p, "error", err)
			}
			return nil, rec
		}
		for _, e := range page.Events {
			if !channel.Reserved(e.Channel) { // never the bus's own, as live
				events = append(events, e)
			}
		}
		if len(events) > h.opts.RecoverMax {
			rec.Reason = ReasonTooMany
			return nil, rec
		}
		if !page.More {
			rec.Recovered, rec.Missed = true, len(events)
			return events, rec
		}
		cursor = page.Next
	}
}

// recover queues, for c's new subscription p, the reply reply makes, then
// what p missed since, then the live events dispatch held back meanwhile,
// leaving out those the record gave already, and hands p over to dispatch.
func (h *Hub) recover(c *Client, p string, since bus.Cursor, r *replay, reply func(Recovery) []byte) {
	// A token per subscription reading the record, held while it reads:
	// the replay then goes at its client's pace without one.
	select {
	case h.recovering <- struct{}{}:
	case <-c.gone:
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), recoverTimeout)
	go func() { // a client that goes stops the reading
		select {
		case <-c.gone:
		case <-ctx.Done():
		}
		cancel()
	}()
	missed, rec := h.missed(ctx, p, since)
	h.m.recoveries.WithLabelValues(cmp.Or(rec.Reason, "recovered")).Inc()
	if !rec.Recovered && h.opts.History != nil {
		// Where the client starts over: it reloads its state, and its
		// positions from here on are these.
		if latest, err := h.opts.History.Latest(ctx, p); err == nil {
			rec.Positions = latest
		}
	}
	cancel()
	<-h.recovering
	if !c.pushWait(subscribedFrame(p, rec, reply), &r.cancelled) {
		return
	}
	// last is where each namespace stands for the client: a live event at
	// or before it came from the record already.
	from := since
	if !rec.Recovered {
		from = rec.Positions // live events up to them are in the state it reloads
	}
	last := make(bus.Cursor, len(from))
	maps.Copy(last, from)
	subs := []string{p}
	for _, e := range missed {
		ev, err := NewEvent(e.Channel, h.streamOf(e.Channel), e.Position, e.Payload)
		if err != nil {
			h.m.malformed.Inc()
			continue
		}
		if !h.push(c, ev, subs, &r.cancelled) {
			return
		}
		last[ev.Stream] = ev.Position
	}
	h.m.recovered.Add(float64(len(missed)))
	for {
		h.mu.Lock()
		live, overflow := r.live, r.overflow
		r.live = nil
		if len(live) == 0 || overflow {
			if c.replays[p] == r {
				if overflow {
					delete(c.replays, p)
				} else {
					r.done, r.fence = true, last
				}
			}
			h.raiseFloor(last)
			h.mu.Unlock()
			if overflow {
				c.tooSlow(DisconnectSlow) // what it missed meanwhile is lost: it recovers again
			}
			return
		}
		h.mu.Unlock()
		for _, ev := range live {
			ns := ev.Stream
			if !ev.Position.IsZero() && !last[ns].IsZero() && bus.CompareOffsets(ev.Position.Offset, last[ns].Offset) <= 0 {
				continue // the record gave it
			}
			if !h.push(c, ev, subs, &r.cancelled) {
				return
			}
			if !ev.Position.IsZero() {
				last[ns] = ev.Position
			}
		}
	}
}

// push encodes ev for c and queues it, waiting for room.
func (h *Hub) push(c *Client, ev *Event, subs []string, cancelled *atomic.Bool) bool {
	if c.withholds(ev.Channel) {
		return true
	}
	data, err := c.enc.Encode(ev, subs)
	if errors.Is(err, ErrSkip) {
		return true
	}
	if err != nil {
		h.m.malformed.Inc()
		return true
	}
	if !c.pushWait(Frame{Kind: FrameEvent, Data: data, Event: ev, Subs: subs}, cancelled) {
		return false
	}
	h.m.delivered.Inc()
	return true
}

// hold keeps ev for the replays among c's subscriptions subs, and returns
// the subscriptions that are live. Call with mu held (read is enough: each
// replay's fields are written under it only by dispatch, and by recover
// with mu held for writing).
func (h *Hub) hold(c *Client, ev *Event, subs []string) []string {
	live := subs[:0:0]
	if subs = c.through(ev, subs); len(subs) == 0 {
		return live // neither now nor after the replay
	}
	for _, p := range subs {
		r := c.replays[p]
		if r == nil || r.done && r.passes(ev) {
			live = append(live, p)
			continue
		}
		if r.done {
			continue // given already, from the record
		}
		if len(r.live) >= h.opts.RecoverMax {
			r.overflow, r.live = true, nil
		}
		if !r.overflow {
			r.live = append(r.live, ev)
		}
	}
	return live
}
