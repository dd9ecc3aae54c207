package sseapi

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/sse"
	"github.com/eventbus-suite/eventbus/services/edge/internal/hub"
	"github.com/eventbus-suite/eventbus/services/edge/internal/protocol"
)

// An id this transport writes reads back as the same positions, each
// subscription its own; a bare cursor resumes every subscription from it.
func TestLastEventIDRoundTrip(t *testing.T) {
	t.Parallel()
	patterns := []string{"order:*", "order:placed", "user:*"}
	ps := positions{
		"order:*":      {"order": {Offset: "10-0", Epoch: "e1"}},
		"order:placed": {"order": {Offset: "3-0", Epoch: "e1"}},
		"gone:*":       {"gone": {Offset: "1-0", Epoch: "e1"}},
	}
	got, err := lastEventID(ps.String(), patterns)
	if err != nil || len(got) != 2 || got["order:*"]["order"].Offset != "10-0" || got["order:placed"]["order"].Offset != "3-0" || got["user:*"] != nil {
		t.Fatalf("lastEventID(%s) = %v, %v", ps, got, err)
	}
	bare := bus.Cursor{"order": {Offset: "7-0", Epoch: "e1"}}.String()
	if got, err := lastEventID(bare, patterns); err != nil || len(got) != 3 || got["user:*"]["order"].Offset != "7-0" {
		t.Fatalf("lastEventID(bare cursor) = %v, %v", got, err)
	}
	for _, id := range []string{"s1.!!", "s1." + "e30", "garbage", strings.Repeat("a", maxLastEventID+1)} {
		if _, err := lastEventID(id, patterns); err == nil && id != "s1.e30" {
			t.Errorf("lastEventID(%.40q) accepted", id)
		}
	}
}

// FuzzLastEventID: whatever a client sends back, the stream either
// refuses it with a reason or resumes its own subscriptions from positions
// it could have sent.
func FuzzLastEventID(f *testing.F) {
	f.Add(positions{"order:*": {"order": {Offset: "1732290000000-0", Epoch: "9f01"}}}.String())
	f.Add(bus.Cursor{"order": {Offset: "1732290000000-0", Epoch: "9f01"}}.String())
	f.Add("")
	f.Add("s1.e30")
	f.Add(strings.Repeat("A", 100))
	patterns := []string{"order:*", "user:*"}
	f.Fuzz(func(t *testing.T, id string) {
		got, err := lastEventID(id, patterns)
		if err != nil {
			if got != nil || err.Code != protocol.CodeBadRequest || err.Message == "" {
				t.Fatalf("lastEventID(%q) = %v, %+v", id, got, err)
			}
			return
		}
		for p, c := range got {
			if !slices.Contains(patterns, p) || len(c) > protocol.MaxSince {
				t.Fatalf("lastEventID accepted %q with %d namespaces", p, len(c))
			}
			for ns, pos := range c {
				if strings.ContainsAny(ns, ":*") || !bus.IsOffset(pos.Offset) || !bus.IsEpoch(pos.Epoch) {
					t.Fatalf("lastEventID accepted %q: %+v", ns, pos)
				}
			}
		}
	})
}

// Two subscriptions over one namespace, one still replaying what the other
// has passed: the id keeps each one's position, so a reconnect resumes the
// slower one from where it was, not from where the faster one is.
func TestIDsKeepEachSubscriptionsPosition(t *testing.T) {
	t.Parallel()
	s := &stream{positions: positions{"rec:a": {"rec": {Offset: "1-0", Epoch: "e1"}}, "rec:*": {"rec": {Offset: "1-0", Epoch: "e1"}}}}
	ev := func(n int, subs ...string) hub.Frame {
		return hub.Frame{Data: fmt.Appendf(nil, `{"n":%d}`, n), Subs: subs,
			Event: &hub.Event{Channel: "rec:a", Stream: "rec", Position: bus.Position{Offset: fmt.Sprintf("%d-0", n), Epoch: "e1"}}}
	}
	reply := func(p string) hub.Frame {
		return hub.Frame{Data: subscribed(p, hub.Recovery{Resumed: true, Recovered: true, Missed: 3})}
	}
	var buf bytes.Buffer
	// rec:* replays 2..4 and goes live with 10; rec:a has replayed nothing yet.
	if err := s.writeFrames(sse.NewWriter(&buf), []hub.Frame{reply("rec:*"), ev(2, "rec:*"), ev(3, "rec:*"), ev(4, "rec:*"), ev(10, "rec:*", "rec:a")}); err != nil {
		t.Fatal(err)
	}
	var last string
	for l := range strings.SplitSeq(buf.String(), "\n") {
		if id, ok := strings.CutPrefix(l, "id: "); ok {
			last = id
		}
	}
	got, err := lastEventID(last, []string{"rec:a", "rec:*"})
	if err != nil || got["rec:*"]["rec"].Offset != "10-0" || got["rec:a"]["rec"].Offset != "10-0" {
		t.Fatalf("positions after event 10 = %v, %v; want both at 10 (rec:a got 10 live)", got, err)
	}
	// Written before 10, the id leaves rec:a where it was.
	buf.Reset()
	s.positions = positions{"rec:a": {"rec": {Offset: "1-0", Epoch: "e1"}}}
	if err := s.writeFrames(sse.NewWriter(&buf), []hub.Frame{ev(2, "rec:*"), ev(3, "rec:*")}); err != nil {
		t.Fatal(err)
	}
	for l := range strings.SplitSeq(buf.String(), "\n") {
		if id, ok := strings.CutPrefix(l, "id: "); ok {
			last = id
		}
	}
	if got, _ := lastEventID(last, []string{"rec:a", "rec:*"}); got["rec:a"]["rec"].Offset != "1-0" || got["rec:*"]["rec"].Offset != "3-0" {
		t.Fatalf("positions = %v; want rec:a still at 1, rec:* at 3", got)
	}
}
