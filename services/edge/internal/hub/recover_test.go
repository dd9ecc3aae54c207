package hub

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/envelope"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
)

// fakeHistory is a record of one epoch, "e1", fed by the test. History
// waits for gate, when set, so the test can publish live events while a
// subscription catches up.
type fakeHistory struct {
	events []bus.Event
	err    error
	gate   chan struct{}
	asked  chan struct{} // closed by the first History call
}

func (f *fakeHistory) History(ctx context.Context, p string, since bus.Cursor, limit int) (bus.Page, error) {
	if f.asked != nil {
		close(f.asked)
		f.asked = nil
	}
	if f.gate != nil {
		<-f.gate
		f.gate = nil
	}
	if f.err != nil {
		return bus.Page{}, f.err
	}
	page := bus.Page{Next: bus.Cursor{}}
	for ns, pos := range since {
		page.Next[ns] = pos
	}
	for _, e := range f.events {
		ns, _, _ := strings.Cut(e.Channel, ":")
		if from, ok := since[ns]; ok && bus.CompareOffsets(e.Position.Offset, from.Offset) <= 0 {
			continue
		}
		if len(page.Events) == limit {
			page.More = true
			break
		}
		page.Events = append(page.Events, e)
		since = bus.Cursor{ns: e.Position} // pages continue after it
		page.Next[ns] = e.Position
	}
	return page, nil
}

// StreamOf names a namespace's one stream, as a bus without partitions does.
func (f *fakeHistory) StreamOf(ch string) string { ns, _, _ := strings.Cut(ch, ":"); return ns }

func (f *fakeHistory) Latest(context.Context, string) (bus.Cursor, error) {
	return bus.Cursor{"rec": {Offset: "9-0", Epoch: "e1"}}, nil
}

// recorded makes the event with subject s at offset "<s>-0" of namespace rec.
func recorded(t *testing.T, s int) bus.Event {
	t.Helper()
	env, err := envelope.Marshal(&envelope.Envelope{Id: fmt.Sprint(s), Type: "rec.a", Channel: "rec:a", Subject: fmt.Sprint(s)})
	if err != nil {
		t.Fatal(err)
	}
	return bus.Event{Channel: "rec:a", Payload: env, Position: bus.Position{Offset: fmt.Sprintf("%d-0", s), Epoch: "e1"}}
}

// publishLive hands the hub a recorded event as live and waits for its
// dispatch.
func (h *testHub) publishLive(e bus.Event, patterns ...string) {
	h.sub.msgs <- bus.Message{Channel: e.Channel, Patterns: patterns, Payload: e.Payload, Position: e.Position}
	h.sub.msgs <- bus.Message{Channel: "sync", Patterns: []string{"sync"}}
}

// recoveryReply writes how a subscription went as JSON.
func recoveryReply(r Recovery) []byte {
	b, _ := json.Marshal(r)
	return b
}

// drain takes c's frames until one satisfies done, as a writer would,
// and returns their summaries.
func drain(t *testing.T, c *testClient, done func(string) bool) []string {
	t.Helper()
	var got []string
	for {
		frames := summary(c.frames())
		if len(frames) == 0 { // the writer stops until the next is ready
			select {
			case <-c.ready:
			case d := <-c.kicks:
				t.Fatalf("kicked with %v after %q", d, got)
			case <-time.After(10 * time.Second):
				t.Fatalf("nothing more after %d frames (the last %q)", len(got), got[max(0, len(got)-3):])
			}
		}
		for _, f := range frames {
			got = append(got, f)
			if done(f) {
				return got
			}
		}
	}
}

func hasPrefix(p string) func(string) bool {
	return func(s string) bool { return strings.HasPrefix(s, p) }
}

// A subscription that resumes gets the reply, then what it missed from the
// record, then the live events held back meanwhile, none twice.
func TestResumeReplaysThenGoesLive(t *testing.T) {
	t.Parallel()
	hist := &fakeHistory{gate: make(chan struct{}), asked: make(chan struct{})}
	for s := 2; s <= 4; s++ {
		hist.events = append(hist.events, recorded(t, s))
	}
	opts := bounds
	opts.History, opts.RecoverMax = hist, 100
	h := startHub(t, opts)
	c := h.joinReady(t)
	asked := hist.asked
	if err := h.Subscribe(t.Context(), c.Client, "rec:*", bus.Cursor{"rec": {Offset: "1-0", Epoch: "e1"}}, recoveryReply); err != nil {
		t.Fatal(err)
	}
	<-asked
	// While it reads the record: one event it finds there, one published
	// after its read (which the fake cannot tell apart from during).
	h.publishLive(recorded(t, 4), "rec:*")
	h.publishLive(recorded(t, 5), "rec:*")
	close(hist.gate)
	got := drain(t, c, hasPrefix("5 "))
	want := []string{`{"Resumed":true,"Recovered":true,"Missed":3,"Reason":"","Positions":null}`, "2 via rec:*", "3 via rec:*", "4 via rec:*", "5 via rec:*"}
	if !slices.Equal(got, want) {
		t.Fatalf("frames = %q, want %q", got, want)
	}
	h.publishLive(recorded(t, 6), "rec:*")
	if got := summary(c.frames()); !slices.Equal(got, []string{"6 via rec:*"}) {
		t.Fatalf("then = %q, want the live event", got)
	}
}

// When the record cannot give what was missed, the reply says why and the
// live events follow it.
func TestResumeThatCannotRecover(t *testing.T) {
	t.Parallel()
	many := &fakeHistory{}
	for s := 2; s <= 5; s++ {
		many.events = append(many.events, recorded(t, s))
	}
	for _, tt := range []struct {
		name string
		hist bus.History
		want string
	}{
		{"epoch changed", &fakeHistory{err: fmt.Errorf("%w: %w", bus.ErrTruncated, bus.ErrEpochChanged)}, ReasonEpochChanged},
		{"trimmed", &fakeHistory{err: bus.ErrTruncated}, ReasonTruncated},
		{"too many", many, ReasonTooMany},
		{"record unreadable", &fakeHistory{err: context.DeadlineExceeded}, ReasonUnavailable},
		{"no record", nil, ReasonUnavailable},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			opts := bounds
			opts.History, opts.RecoverMax = tt.hist, 3
			h := startHub(t, opts)
			c := h.joinReady(t)
			if err := h.Subscribe(t.Context(), c.Client, "rec:*", bus.Cursor{"rec": {Offset: "1-0", Epoch: "e0"}}, recoveryReply); err != nil {
				t.Fatal(err)
			}
			got := drain(t, c, hasPrefix("{"))
			var r Recovery
			if err := json.Unmarshal([]byte(got[0]), &r); err != nil || !r.Resumed || r.Recovered || r.Reason != tt.want {
				t.Fatalf("reply = %s, want not recovered, %s", got[0], tt.want)
			}
			if tt.hist != nil && (len(r.Positions) != 1 || r.Positions["rec"].Offset != "9-0") {
				t.Fatalf("reply = %s, want where rec stands now, to start over from", got[0])
			}
			h.publishLive(recorded(t, 17), "rec:*")
			if got := drain(t, c, hasPrefix("17 ")); !slices.Equal(got, []string{"17 via rec:*"}) {
				t.Fatalf("then = %q, want the live event", got)
			}
		})
	}
}

// A subscription that does not resume is told where its namespaces stand.
func TestSubscribeGivesPositions(t *testing.T) {
	t.Parallel()
	opts := bounds
	opts.History, opts.RecoverMax = &fakeHistory{}, 10
	h := startHub(t, opts)
	c := h.join(t)
	if err := h.Subscribe(t.Context(), c.Client, "rec:*", nil, recoveryReply); err != nil {
		t.Fatal(err)
	}
	if got, want := c.frames(), []string{`{"Resumed":false,"Recovered":false,"Missed":0,"Reason":"","Positions":{"rec":{"Offset":"9-0","Epoch":"e1"}}}`}; !slices.Equal(got, want) {
		t.Fatalf("reply = %q, want %q", got, want)
	}
}

// A replay longer than the client's queue goes at the pace the client
// reads, and never closes it as too slow.
func TestResumeLongerThanTheQueue(t *testing.T) {
	t.Parallel()
	hist := &fakeHistory{}
	const n = 2000
	for s := 2; s < 2+n; s++ {
		hist.events = append(hist.events, recorded(t, s))
	}
	opts := bounds
	opts.History, opts.RecoverMax, opts.QueueBytes = hist, n, 4<<10 // room for some 20 frames
	h := startHub(t, opts)
	c := h.joinReady(t)
	if err := h.Subscribe(t.Context(), c.Client, "rec:*", bus.Cursor{"rec": {Offset: "1-0", Epoch: "e1"}}, recoveryReply); err != nil {
		t.Fatal(err)
	}
	got := drain(t, c, hasPrefix(fmt.Sprint(n+1)+" "))
	if len(got) != n+1 {
		t.Fatalf("got %d frames, want the reply and %d events", len(got), n)
	}
	for i, f := range got[1:] {
		if want := fmt.Sprintf("%d via rec:*", i+2); f != want {
			t.Fatalf("frame %d = %q, want %q", i+1, f, want)
		}
	}
}

// Unsubscribing while a subscription catches up stops its replay: the
// unsubscribe reply comes after every frame it queued, and nothing after.
func TestUnsubscribeWhileResuming(t *testing.T) {
	t.Parallel()
	hist := &fakeHistory{gate: make(chan struct{}), asked: make(chan struct{})}
	hist.events = append(hist.events, recorded(t, 2))
	opts := bounds
	opts.History, opts.RecoverMax = hist, 10
	h := startHub(t, opts)
	c := h.joinReady(t)
	asked := hist.asked
	if err := h.Subscribe(t.Context(), c.Client, "rec:*", bus.Cursor{"rec": {Offset: "1-0", Epoch: "e1"}}, recoveryReply); err != nil {
		t.Fatal(err)
	}
	<-asked
	h.Unsubscribe(c.Client, "rec:*", []byte("unsubscribed"))
	close(hist.gate)
	h.publishLive(recorded(t, 3), "rec:*")
	if got := drain(t, c, hasPrefix("unsubscribed")); !slices.Equal(got, []string{"unsubscribed"}) {
		t.Fatalf("frames = %q, want the unsubscribe reply alone", got)
	}
}

// After a gap in the Redis subscription the hub reads what it missed from
// the record and delivers it before the live events that follow, none
// twice.
func TestGapIsFilledFromTheRecord(t *testing.T) {
	t.Parallel()
	hist := &fakeHistory{}
	for s := 10; s <= 13; s++ {
		hist.events = append(hist.events, recorded(t, s))
	}
	opts := bounds
	opts.History, opts.RecoverMax = hist, 100
	h := startHub(t, opts)
	c := h.join(t)
	c.subscribe(t, h, "rec:*")
	h.publishLive(recorded(t, 10), "rec:*")
	h.sub.msgs <- bus.Message{Gap: true}
	h.publishLive(recorded(t, 13), "rec:*") // came live as well as from the record
	h.publishLive(recorded(t, 14), "rec:*")
	want := []string{"ok rec:*", "10 via rec:*", "11 via rec:*", "12 via rec:*", "13 via rec:*", "14 via rec:*"}
	if got := summary(c.frames()); !slices.Equal(got, want) {
		t.Fatalf("frames = %q, want %q", got, want)
	}
}

// A gap the record cannot fill closes every connection, for each client to
// resume from its own positions and learn what it lost.
func TestGapTheRecordCannotFill(t *testing.T) {
	t.Parallel()
	opts := bounds
	opts.History, opts.RecoverMax = &fakeHistory{err: bus.ErrTruncated}, 100
	h := startHub(t, opts)
	c := h.join(t)
	c.subscribe(t, h, "rec:*")
	h.sub.msgs <- bus.Message{Gap: true}
	if d := <-c.kicks; d != DisconnectResume {
		t.Fatalf("kicked with %v, want %v", d, DisconnectResume)
	}
}

// resumed waits until c's subscription p has handed over to live dispatch.
func (h *testHub) resumed(t *testing.T, c *Client, p string) {
	t.Helper()
	servicetest.WaitFor(t, p+" to go live", func() bool {
		h.mu.RLock()
		defer h.mu.RUnlock()
		r := c.replays[p]
		return r == nil || r.done
	})
}

// Two subscriptions of one client replaying at once, each longer than its
// queue: both finish (a queue with room wakes every replay waiting for it).
func TestTwoReplaysOfOneClientBothFinish(t *testing.T) {
	t.Parallel()
	hist := &fakeHistory{}
	const n = 2000
	for s := 2; s < 2+n; s++ {
		hist.events = append(hist.events, recorded(t, s))
	}
	opts := bounds
	opts.History, opts.RecoverMax, opts.QueueBytes = hist, n, 4<<10
	h := startHub(t, opts)
	c := h.joinReady(t)
	for _, p := range []string{"rec:*", "rec:a"} {
		if err := h.Subscribe(t.Context(), c.Client, p, bus.Cursor{"rec": {Offset: "1-0", Epoch: "e1"}}, recoveryReply); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]int{}
	drain(t, c, func(f string) bool {
		seen[f[strings.Index(f, " via ")+5:]]++
		return seen["rec:*"] == n && seen["rec:a"] == n
	})
}

// After a gap, a namespace the hub has dispatched nothing of since it
// started is read from where its resumed subscriptions stood, not from the
// oldest event kept: nothing the client had comes again.
func TestGapAfterAResumeRepeatsNothing(t *testing.T) {
	t.Parallel()
	hist := &fakeHistory{}
	for s := 2; s <= 5; s++ {
		hist.events = append(hist.events, recorded(t, s))
	}
	opts := bounds
	opts.History, opts.RecoverMax = hist, 100
	h := startHub(t, opts)
	c := h.joinReady(t)
	if err := h.Subscribe(t.Context(), c.Client, "rec:*", bus.Cursor{"rec": {Offset: "5-0", Epoch: "e1"}}, recoveryReply); err != nil {
		t.Fatal(err)
	}
	drain(t, c, hasPrefix("{"))
	h.resumed(t, c.Client, "rec:*")
	h.sub.msgs <- bus.Message{Gap: true}
	h.publishLive(recorded(t, 6), "rec:*")
	if got := drain(t, c, hasPrefix("6 ")); !slices.Equal(got, []string{"6 via rec:*"}) {
		t.Fatalf("after the gap: %q, want only the new event", got)
	}
}

// A fresh subscription learns where a namespace stands before an event
// there reaches the edge: that event is still delivered to everyone.
func TestAFreshSubscriptionDropsNoEventInFlight(t *testing.T) {
	t.Parallel()
	opts := bounds
	opts.History, opts.RecoverMax = &fakeHistory{}, 100 // Latest: rec at 9-0
	h := startHub(t, opts)
	a := h.join(t)
	a.subscribe(t, h, "rec:*")
	b := h.join(t)
	b.subscribe(t, h, "rec:*")
	h.publishLive(recorded(t, 9), "rec:*") // published before Latest was read, dispatched after
	for _, c := range []*testClient{a, b} {
		if got := summary(c.frames()); !slices.Contains(got, "9 via rec:*") {
			t.Fatalf("got %q, want event 9", got)
		}
	}
}

// An event the record gave a resuming subscription may still be on its
// way live when the replay has ended (Redis stores it before the hub's
// pub/sub connection brings it): it is not given again, and what follows
// it is. This repeated 2 events in 1 of 3 SSE resumes after an edge kill.
func TestResumeGivesNothingTwiceThatArrivesLiveAfterTheReplay(t *testing.T) {
	t.Parallel()
	hist := &fakeHistory{}
	for s := 2; s <= 4; s++ {
		hist.events = append(hist.events, recorded(t, s))
	}
	opts := bounds
	opts.History, opts.RecoverMax = hist, 100
	h := startHub(t, opts)
	c := h.joinReady(t)
	if err := h.Subscribe(t.Context(), c.Client, "rec:*", bus.Cursor{"rec": {Offset: "1-0", Epoch: "e1"}}, recoveryReply); err != nil {
		t.Fatal(err)
	}
	got := drain(t, c, hasPrefix("4 "))
	want := []string{`{"Resumed":true,"Recovered":true,"Missed":3,"Reason":"","Positions":null}`, "2 via rec:*", "3 via rec:*", "4 via rec:*"}
	if !slices.Equal(got, want) {
		t.Fatalf("frames = %q, want %q", got, want)
	}
	// The replay is over; 3 and 4 arrive live only now, then 5 and 6.
	for s := 3; s <= 6; s++ {
		h.publishLive(recorded(t, s), "rec:*")
	}
	if got := drain(t, c, hasPrefix("6 ")); !slices.Equal(got, []string{"5 via rec:*", "6 via rec:*"}) {
		t.Fatalf("then = %q, want 5 and 6 only", got)
	}
}
