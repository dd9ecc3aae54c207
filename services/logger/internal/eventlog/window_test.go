package eventlog_test

import (
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/envelope"
	"github.com/eventbus-suite/eventbus/services/logger/internal/eventlog"
)

// readAll reads what t has waiting, failing the test unless it then waits.
func readAll(t *testing.T, tail *eventlog.Tail) []eventlog.Record {
	t.Helper()
	var got []eventlog.Record
	buf := make([]eventlog.Record, 2) // small, so that reads come in several parts
	for {
		n, wait, err := tail.Read(buf)
		if err != nil {
			t.Fatalf("Read = %v after %d records", err, len(got))
		}
		if n == 0 {
			if wait == nil {
				t.Fatal("Read = 0 records and no channel to wait on")
			}
			return got
		}
		got = append(got, buf[:n]...)
	}
}

func TestWindowFollow(t *testing.T) {
	t.Parallel()
	var recs []eventlog.Record
	for i := range 8 {
		ch := "order:placed"
		if i%2 == 1 {
			ch = "user:created"
		}
		recs = append(recs, record(t, ch, i))
	}
	w := eventlog.NewWindow(6, eventlog.Recent{Records: recs[:7]}) // holds 1..6
	tail := w.Follow("order:*", 2, "")
	if got := subjects(t, readAll(t, tail)); got != "4,6" {
		t.Errorf("backlog of order:* n=2 = %s, want 4,6", got)
	}
	_, wait, _ := tail.Read(make([]eventlog.Record, 4))
	w.Append(recs[7]) // user:created: not for this tail
	<-wait
	w.Append(record(t, "order:shipped", 8))
	if got := subjects(t, readAll(t, tail)); got != "8" {
		t.Errorf("live records = %s, want 8", got)
	}

	if got := subjects(t, readAll(t, w.Follow("*", 0, recs[5].ID))); got != "6,7,8" {
		t.Errorf("resume after 5 = %s, want 6,7,8", got)
	}
	// recs[0] is no longer held: fall back to n.
	if got := subjects(t, readAll(t, w.Follow("*", 1, recs[0].ID))); got != "8" {
		t.Errorf("resume after a forgotten id = %s, want the last 1: 8", got)
	}
	if got := subjects(t, readAll(t, w.Follow("user:*", 10, ""))); got != "3,5,7" {
		t.Errorf("backlog of user:* n=10 = %s, want the 3 held: 3,5,7", got)
	}
}

func TestWindowTailThatFallsBehindLags(t *testing.T) {
	t.Parallel()
	w := eventlog.NewWindow(10, eventlog.Recent{})
	rec := record(t, "a:b", 0)
	tail := w.Follow("*", 0, "")
	buf := make([]eventlog.Record, 4)
	w.Append(rec)
	if n, _, err := tail.Read(buf); n != 1 || err != nil {
		t.Fatalf("Read = %d, %v; want 1 record", n, err)
	}
	for range 11 { // one more than the window holds: one unread record is lost
		w.Append(rec)
	}
	for range 2 {
		if n, wait, err := tail.Read(buf); !errors.Is(err, eventlog.ErrLagged) || n != 0 || wait != nil {
			t.Fatalf("Read after falling behind = %d, %v, %v; want ErrLagged", n, wait, err)
		}
	}

	// A tail that has sent nothing yet loses only backlog: no lag.
	fresh := w.Follow("*", 10, "")
	for range 5 {
		w.Append(rec)
	}
	if got := len(readAll(t, fresh)); got != 10 {
		t.Errorf("fresh tail whose backlog partly left read %d records, want the 10 held", got)
	}
	// A tail that sent nothing yet but had live records to send lags.
	live := w.Follow("*", 0, "")
	for range 11 {
		w.Append(rec)
	}
	if _, _, err := live.Read(buf); !errors.Is(err, eventlog.ErrLagged) {
		t.Errorf("Read of a tail that lost live records = %v, want ErrLagged", err)
	}
	// So does a resumed one.
	resumed := w.Follow("*", 0, "") // positioned like a resume after the newest
	w.Append(record(t, "a:b", 1))
	id := readAll(t, resumed)[0].ID
	again := w.Follow("*", 0, id)
	for range 11 {
		w.Append(rec)
	}
	if _, _, err := again.Read(buf); !errors.Is(err, eventlog.ErrLagged) {
		t.Errorf("Read of a resumed tail that lost records = %v, want ErrLagged", err)
	}
}

func TestWindowFollowScansPastOneChunk(t *testing.T) {
	t.Parallel()
	var recs []eventlog.Record
	for i := range 3000 {
		ch := "order:placed"
		if i%3 != 0 {
			ch = "user:created"
		}
		recs = append(recs, record(t, ch, i))
	}
	w := eventlog.NewWindow(len(recs), eventlog.Recent{Records: recs})
	got := readAll(t, w.Follow("order:*", 900, ""))
	if len(got) != 900 || got[0].ID != recs[300].ID || got[899].ID != recs[2997].ID {
		t.Errorf("backlog of order:* n=900 = %d records from %s, want 900 from %s", len(got), got[0].ID, recs[300].ID)
	}
	if got := readAll(t, w.Follow("*", 0, recs[10].ID)); len(got) != 2989 || got[0].ID != recs[11].ID {
		t.Errorf("resume after record 10 = %d records, want 2989 from record 11", len(got))
	}
}

// at returns a record of channel ch at offset in epoch "e1", its subject
// the offset.
func at(t *testing.T, ch, offset string) eventlog.Record {
	t.Helper()
	env := &envelope.Envelope{Type: "test.event", Channel: ch, Subject: offset}
	if err := envelope.Fill(env, "test", time.Now()); err != nil {
		t.Fatal(err)
	}
	b, err := envelope.Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := eventlog.Format(bus.Message{Channel: ch, Patterns: []string{"*"}, Payload: b,
		Position: bus.Position{Offset: offset, Epoch: "e1"}}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	rec.Stream = eventlog.NamespaceOf(ch)
	return rec
}

func pos(offset string) bus.Position { return bus.Position{Offset: offset, Epoch: "e1"} }

// The window knows where a tail starts in every namespace its pattern
// reaches, also from records that have left it, and finds the point a
// mark stands at.
func TestWindowMarks(t *testing.T) {
	t.Parallel()
	var recs []eventlog.Record // a:1 b:2 a:3 b:4 a:5 b:6 a:7 b:8
	for i := 1; i <= 8; i++ {
		ch := "a:x"
		if i%2 == 0 {
			ch = "b:y"
		}
		recs = append(recs, at(t, ch, fmt.Sprintf("%d-0", i)))
	}
	w := eventlog.NewWindow(6, eventlog.Recent{Records: recs}) // holds 3..8

	for _, tc := range []struct {
		name   string
		tail   *eventlog.Tail
		want   string
		wantAt bus.Cursor
	}{
		{name: "backlog of 2", tail: w.Follow("*", 2, ""), want: "7-0,8-0",
			wantAt: bus.Cursor{"a": pos("5-0"), "b": pos("6-0")}},
		{name: "live, one namespace", tail: w.Follow("a:*", 0, ""), want: "",
			wantAt: bus.Cursor{"a": pos("7-0")}},
		{name: "backlog past what is held", tail: w.Follow("*", 10, ""), want: "3-0,4-0,5-0,6-0,7-0,8-0",
			wantAt: bus.Cursor{"a": pos("1-0"), "b": pos("2-0")}},
		{name: "after an envelope id", tail: w.Follow("*", 0, recs[4].ID), want: "6-0,7-0,8-0",
			wantAt: bus.Cursor{"a": pos("5-0"), "b": pos("4-0")}},
	} {
		if got := subjects(t, readAll(t, tc.tail)); got != tc.want {
			t.Errorf("%s: records %s, want %s", tc.name, got, tc.want)
		}
		if got := tc.tail.Start(); !reflect.DeepEqual(got.Cursor, tc.wantAt) || got.Floor != "1-0" {
			t.Errorf("%s: Start() = %+v, want %v with floor 1-0", tc.name, got, tc.wantAt)
		}
	}

	// A mark in the window: the tail goes on after its latest position.
	m := eventlog.Mark{Floor: "1-0", Cursor: bus.Cursor{"a": pos("5-0"), "b": pos("4-0")}}
	tail, ok := w.FollowMark("*", m)
	if !ok {
		t.Fatalf("FollowMark(%v) found nothing, want the point after 5-0", m.Cursor)
	}
	if got := subjects(t, readAll(t, tail)); got != "6-0,7-0,8-0" {
		t.Errorf("FollowMark(a 5, b 4) records = %s, want 6-0,7-0,8-0", got)
	}
	if got := tail.Start(); !reflect.DeepEqual(got, m) {
		t.Errorf("FollowMark Start() = %+v, want the mark %+v", got, m)
	}
	// A mark that misses a namespace gets the window's position there.
	tail, _ = w.FollowMark("*", eventlog.Mark{Floor: "1-0", Cursor: bus.Cursor{"a": pos("5-0")}})
	if got := tail.Start().Cursor; !reflect.DeepEqual(got, bus.Cursor{"a": pos("5-0"), "b": pos("4-0")}) {
		t.Errorf("FollowMark(a 5) Start() = %v, want b's position at that point, 4-0, added", got)
	}
	// Older than the window, or unknown: not found.
	for _, c := range []bus.Cursor{{"a": pos("1-0")}, {"b": pos("4-1")}, {"a": {Offset: "5-0", Epoch: "e2"}}, {}} {
		if _, ok := w.FollowMark("*", eventlog.Mark{Floor: "1-0", Cursor: c}); ok {
			t.Errorf("FollowMark(%v) found a point, want none", c)
		}
	}

	// A record written twice (a crash between writing and acknowledging)
	// is found at its first copy, so nothing after that is missed.
	w.Append(at(t, "a:x", "7-0"))
	w.Append(at(t, "b:y", "9-0"))
	tail, _ = w.FollowMark("*", eventlog.Mark{Floor: "1-0", Cursor: bus.Cursor{"a": pos("7-0"), "b": pos("6-0")}})
	if got := subjects(t, readAll(t, tail)); got != "8-0,7-0,9-0" {
		t.Errorf("FollowMark(a 7, b 6) with a repeated 7 = %s, want 8-0,7-0,9-0 from the first 7", got)
	}

	// FollowFrom reads from a number Top gave, with no backlog.
	top := w.Top()
	from := w.FollowFrom("b:*", top)
	w.Append(at(t, "a:x", "10-0"))
	w.Append(at(t, "b:y", "11-0"))
	if got := subjects(t, readAll(t, from)); got != "11-0" {
		t.Errorf("FollowFrom(b:*, Top) = %s, want 11-0", got)
	}
	for range 6 {
		w.Append(at(t, "a:x", "12-0"))
	}
	if _, _, err := w.FollowFrom("*", top).Read(make([]eventlog.Record, 1)); !errors.Is(err, eventlog.ErrLagged) {
		t.Errorf("FollowFrom a number that left the window: Read = %v, want ErrLagged", err)
	}
}

// LoadRecent keeps, of the lines older than those it returns, each
// namespace's last position, and the oldest offset of all.
func TestLoadRecentKeepsPositions(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	fs, err := eventlog.OpenFiles(dir, 1<<20, 2)
	if err != nil {
		t.Fatal(err)
	}
	lines := []eventlog.Record{at(t, "a:x", "5-0"), at(t, "b:y", "3-0"), at(t, "a:x", "6-0"), at(t, "c:z", "7-0"), at(t, "b:y", "8-0")}
	noPos, _ := eventlog.Format(bus.Message{Channel: "d:w", Patterns: []string{"*"}, Payload: []byte("x")}, time.Now())
	for _, r := range append(lines, noPos) {
		if err := fs.WriteLine(r.Line); err != nil {
			t.Fatal(err)
		}
	}
	if err := fs.Close(); err != nil {
		t.Fatal(err)
	}
	recent, err := eventlog.LoadRecent(dir, 3, eventlog.NamespaceOf)
	if err != nil {
		t.Fatal(err)
	}
	if len(recent.Records) != 3 || recent.Records[0].Position != pos("7-0") || !recent.Records[2].Position.IsZero() {
		t.Fatalf("LoadRecent(3) records = %+v, want c 7, b 8 and the one without a position", recent.Records)
	}
	if want := (bus.Cursor{"a": pos("6-0"), "b": pos("3-0")}); !reflect.DeepEqual(recent.Before, want) || recent.Floor != "3-0" {
		t.Errorf("LoadRecent(3) Before = %v, Floor = %q; want %v and 3-0", recent.Before, recent.Floor, want)
	}
	w := eventlog.NewWindow(3, recent)
	if got := w.Follow("*", 3, "").Start(); !reflect.DeepEqual(got.Cursor, bus.Cursor{"a": pos("6-0"), "b": pos("3-0")}) || got.Floor != "3-0" {
		t.Errorf("window from LoadRecent: Start() = %+v, want a 6, b 3, floor 3-0", got)
	}
}
