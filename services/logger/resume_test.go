package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
	"github.com/eventbus-suite/eventbus/pkg/sse"
	"github.com/eventbus-suite/eventbus/services/logger/internal/eventlog"
)

// sent is one event a tail sent: its SSE id, and its line.
type sent struct {
	id   string
	line line
	raw  string
}

// read reads n events of rd, failing on anything but messages.
func read(t *testing.T, rd *sse.Reader, n int) []sent {
	t.Helper()
	var got []sent
	for range n {
		ev, err := rd.Next()
		if err != nil {
			t.Fatalf("tail ended after %d events: %v", len(got), err)
		}
		if ev.Type != "message" {
			t.Fatalf("event %d is %s: %s, want a message", len(got), ev.Type, ev.Data)
		}
		var l line
		if err := json.Unmarshal([]byte(ev.Data), &l); err != nil {
			t.Fatalf("event %q: %v", ev.Data, err)
		}
		if _, err := eventlog.ParseMark(ev.ID); err != nil {
			t.Fatalf("event %d has SSE id %q: %v; want a position", len(got), ev.ID, err)
		}
		got = append(got, sent{id: ev.ID, line: l, raw: ev.Data})
	}
	return got
}

// checkResumed checks that got holds every event of want once, and those of
// each namespace in want's order: a resumed tail sends the events after
// its point with no gap and no repeat. Across namespaces, events read back
// from the record come in the record's order (by offset), which need not
// be the order the logger recorded them in.
func checkResumed(t *testing.T, got, want []sent) {
	t.Helper()
	checkResumedBy(t, got, want, eventlog.NamespaceOf)
}

// checkResumedBy is checkResumed with the order kept in each group that
// of names: a namespace, or, where namespaces are partitioned, a channel.
func checkResumedBy(t *testing.T, got, want []sent, of func(ch string) string) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("resumed tail sent %d events, want %d", len(got), len(want))
	}
	index := map[string]int{}
	for i, w := range want {
		index[w.line.Event.ID] = i
	}
	last := map[string]int{}
	for k, g := range got {
		i, ok := index[g.line.Event.ID]
		if !ok {
			t.Fatalf("resumed event %d is %s, not one after the point (or sent twice)", k, g.line.Event.ID)
		}
		delete(index, g.line.Event.ID)
		ns := of(g.line.Channel)
		if prev, seen := last[ns]; seen && i < prev {
			t.Fatalf("resumed event %d (%s) comes before one sent earlier in %s: out of order", k, g.line.Event.ID, ns)
		}
		last[ns] = i
	}
}

// A tail that reconnects with the SSE id of an event the window has long
// forgotten gets every later event once, read back from the record, then
// live ones; within the window, from the window.
func TestTailResumesFromTheRecord(t *testing.T) {
	t.Parallel()
	testTailResumesFromTheRecord(t, "", eventlog.NamespaceOf)
}

// The same with each namespace spread over 4 partitions: the marks name
// the partitions' streams, and order holds per channel.
func TestTailResumesFromAPartitionedRecord(t *testing.T) {
	t.Parallel()
	testTailResumesFromTheRecord(t, "4", func(ch string) string { return ch })
}

func testTailResumesFromTheRecord(t *testing.T, partitions string, orderedIn func(ch string) string) {
	const window, events = 50, 300
	l := startLogger(t, redistest.Shared(t), strings.TrimSuffix(redistest.Prefix(t), ":"), t.TempDir(), map[string]string{
		"LOGGER_TAIL_BUFFER": fmt.Sprint(window), "LOGGER_STDOUT": "false", "BUS_PARTITIONS": partitions,
	})
	// The first tails read as the events come, so as not to fall a
	// window behind.
	all, bb := l.tail(t, "n=0"), l.tail(t, "pattern=bb:*&n=0")
	var original, originalBB []sent
	for i := range events {
		typ := "aa.x" + fmt.Sprint(i%5) // five channels: several partitions
		if i%3 == 0 {
			typ = "bb.y"
		}
		l.publish(t, typ, fmt.Sprint(i))
		original = append(original, read(t, all, 1)...)
		if i%3 == 0 {
			originalBB = append(originalBB, read(t, bb, 1)...)
		}
	}

	var lives []sent // published after the original events, by resume
	resume := func(t *testing.T, query string, from sent, want []sent) {
		t.Helper()
		rd := l.tail(t, query, "Last-Event-ID", from.id)
		got := read(t, rd, len(want))
		checkResumedBy(t, got, want, orderedIn)
		// Then live, with nothing repeated in between.
		id := l.publish(t, "bb.y", fmt.Sprint("live", len(lives)))
		got = read(t, rd, 1)
		if got[0].line.Event.ID != id {
			t.Fatalf("after the resumed events: %s, want the live %s", got[0].line.Event.ID, id)
		}
		lives = append(lives, got[0])
	}
	t.Run("beyond the window", func(t *testing.T) {
		before := servicetest.Metric(t, l.url, "eventbus_logger_tail_replayed_total")
		resume(t, "n=0", original[10], slices.Concat(original[11:], lives))
		replayed := servicetest.Metric(t, l.url, "eventbus_logger_tail_replayed_total") - before
		if replayed < events-11-window {
			t.Errorf("%v events read back from the record, want at least the %d the window had lost", replayed, events-11-window)
		}
	})
	t.Run("beyond the window, one namespace", func(t *testing.T) {
		resume(t, "pattern=bb:*&n=0", originalBB[4], slices.Concat(originalBB[5:], lives))
	})
	t.Run("within the window", func(t *testing.T) {
		before := servicetest.Metric(t, l.url, "eventbus_logger_tail_replayed_total")
		from := len(original) - 20
		got := read(t, l.tail(t, "n=0", "Last-Event-ID", original[from].id), 19)
		for i, g := range got {
			// The window's order is the recorded order: as first sent.
			if want := original[from+1+i]; g.line.Event.ID != want.line.Event.ID || g.id != want.id {
				t.Fatalf("resumed event %d = %s (id %.30s…), want %s (id %.30s…)", i, g.line.Event.ID, g.id, want.line.Event.ID, want.id)
			}
		}
		if got := servicetest.Metric(t, l.url, "eventbus_logger_tail_replayed_total"); got != before {
			t.Errorf("resuming within the window read %v events back from the record, want 0", got-before)
		}
	})
}

// A tail resuming from a position the record no longer holds (here the
// stream was lost with Redis's data while the logger was down, and made
// again with a new epoch) is told so with event: truncated, then gets what
// the record keeps.
func TestTailResumeFromATruncatedRecord(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t) // flushed below: a server of its own
	redistest.RequireReal(t, srv)
	dir := t.TempDir()
	env := map[string]string{"LOGGER_TAIL_BUFFER": "5", "LOGGER_STDOUT": "false"}
	l := startLogger(t, srv, "trunc", dir, env)
	rd := l.tail(t, "n=0")
	var old []sent
	for i := range 20 {
		l.publish(t, "tr.x", fmt.Sprint("old", i))
		old = append(old, read(t, rd, 1)...) // as they come: the window holds 5
	}
	if err := l.svc.Stop(); err != nil {
		t.Fatal(err)
	}
	// Flushed while no consumer waits on the stream: see the report on
	// redisbus about a flush under a blocked XREADGROUP.
	if err := srv.Client(t).FlushAll(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	l = startLogger(t, srv, "trunc", dir, env) // its window: the last 5 old events, read back from the file
	rd = l.tail(t, "n=0")
	var ids []string
	for i := range 3 {
		ids = append(ids, l.publish(t, "tr.x", fmt.Sprint("new", i)))
		if got := read(t, rd, 1)[0]; got.line.Event.ID != ids[i] { // the logger has it
			t.Fatalf("after the flush the tail got %s, want %s", got.line.Event.ID, ids[i])
		}
	}

	resumed := l.tail(t, "n=0", "Last-Event-ID", old[3].id)
	ev, err := resumed.Next()
	if err != nil {
		t.Fatal(err)
	}
	var trunc struct {
		Error, Code string
		Namespaces  map[string]string
	}
	if err := json.Unmarshal([]byte(ev.Data), &trunc); err != nil || ev.Type != "truncated" ||
		trunc.Code != "history_truncated" || trunc.Error == "" || !maps.Equal(trunc.Namespaces, map[string]string{"tr": "epoch_changed"}) {
		t.Fatalf("first event of a tail resuming from a lost stream = %s %s (%v), want truncated, code history_truncated, namespaces {tr: epoch_changed}",
			ev.Type, ev.Data, err)
	}
	if ev.ID != "" {
		t.Errorf("event: truncated has SSE id %q, want none: the client keeps the one it resumed from", ev.ID)
	}
	for i, s := range read(t, resumed, 3) {
		if s.line.Event.ID != ids[i] {
			t.Fatalf("after event: truncated, event %d = %s, want %s: what the record keeps, in order", i, s.line.Event.ID, ids[i])
		}
		if strings.Contains(s.raw, "logged_at") {
			t.Errorf("an event read back from the record has logged_at: %s", s.raw)
		}
	}
	id := l.publish(t, "tr.x", "live")
	if got := read(t, resumed, 1)[0]; got.line.Event.ID != id {
		t.Fatalf("then %s, want the live %s", got.line.Event.ID, id)
	}
}

// A Last-Event-ID that claims to be a position but is not one is refused;
// an id that is no position at all is taken for an envelope id the window
// has lost: the last n.
func TestTailRefusesABadPosition(t *testing.T) {
	t.Parallel()
	l := startLogger(t, redistest.Shared(t), strings.TrimSuffix(redistest.Prefix(t), ":"), t.TempDir(), nil)
	for _, id := range []string{"p1.", "p1.1-0", "p1.x.e30", "p1.1-0.!!!", "p1.1-0.bm9wZQ", "p1.1-0." + strings.Repeat("A", eventlog.MaxMarkLen)} {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, l.url+"/v1/tail?n=0", nil)
		req.Header.Set("Last-Event-ID", id)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		code, message, err := servicetest.ErrorReply(resp)
		if resp.StatusCode != http.StatusBadRequest || err != nil || code != "invalid_argument" ||
			!strings.Contains(message, "Last-Event-ID") {
			t.Errorf("GET /v1/tail with Last-Event-ID %.40q = %d %s %q, want 400 invalid_argument naming Last-Event-ID", id, resp.StatusCode, code, message)
		}
	}
	rd := l.tail(t, "n=0")
	id := l.publish(t, "n.x", "one")
	read(t, rd, 1) // the logger has it
	got := read(t, l.tail(t, "n=1", "Last-Event-ID", "not-a-position-nor-a-known-id"), 1)
	if got[0].line.Event.ID != id {
		t.Errorf("tail with an unknown Last-Event-ID and n=1 got %s, want the last event %s", got[0].line.Event.ID, id)
	}
}
