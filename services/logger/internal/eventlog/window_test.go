package eventlog_test

import (
	"errors"
	"testing"

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
	w := eventlog.NewWindow(6, recs[:7]) // holds 1..6
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
	w := eventlog.NewWindow(10, nil)
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
	w := eventlog.NewWindow(len(recs), recs)
	got := readAll(t, w.Follow("order:*", 900, ""))
	if len(got) != 900 || got[0].ID != recs[300].ID || got[899].ID != recs[2997].ID {
		t.Errorf("backlog of order:* n=900 = %d records from %s, want 900 from %s", len(got), got[0].ID, recs[300].ID)
	}
	if got := readAll(t, w.Follow("*", 0, recs[10].ID)); len(got) != 2989 || got[0].ID != recs[11].ID {
		t.Errorf("resume after record 10 = %d records, want 2989 from record 11", len(got))
	}
}
