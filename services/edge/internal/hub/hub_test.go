package hub

import (
	"context"
	"encoding/json"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/envelope"
)

// fakeSub is a bus.Subscription fed by the test: what a transport would
// deliver, with no transport.
type fakeSub struct {
	msgs chan bus.Message

	mu       sync.Mutex
	patterns map[string]int // Add minus Remove, per pattern
}

func newFakeSub() *fakeSub {
	return &fakeSub{msgs: make(chan bus.Message), patterns: make(map[string]int)}
}

func (f *fakeSub) Messages() <-chan bus.Message { return f.msgs }
func (f *fakeSub) Live() bool                   { return true }
func (f *fakeSub) Close() error                 { return nil }

func (f *fakeSub) Add(_ context.Context, ps ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range ps {
		f.patterns[p]++
	}
	return nil
}

func (f *fakeSub) Remove(_ context.Context, ps ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range ps {
		f.patterns[p]--
		if f.patterns[p] == 0 {
			delete(f.patterns, p)
		}
	}
	return nil
}

func (f *fakeSub) subscribed() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var ps []string
	for p, n := range f.patterns {
		if n != 1 {
			panic("pattern " + p + " subscribed more than once")
		}
		ps = append(ps, p)
	}
	slices.Sort(ps)
	return ps
}

// testHub runs a hub over a fake subscription until the test ends.
type testHub struct {
	*Hub
	sub *fakeSub
}

func startHub(t *testing.T, queueBytes int) *testHub {
	t.Helper()
	sub := newFakeSub()
	h := New(sub, queueBytes, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	})
	return &testHub{Hub: h, sub: sub}
}

// publish hands the hub one message and returns once it is dispatched:
// the unbuffered channel's next receive happens after dispatch returns,
// which the empty message that follows waits for.
func (h *testHub) publish(t *testing.T, ch, subject string, patterns ...string) {
	t.Helper()
	env := &envelope.Envelope{Id: subject, Type: "test.event", Subject: subject, Channel: ch}
	payload, err := envelope.Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	h.sub.msgs <- bus.Message{Channel: ch, Patterns: patterns, Payload: payload}
	h.sub.msgs <- bus.Message{Channel: "sync", Patterns: []string{"sync"}}
}

// testClient is a connection whose frames the test takes by hand.
type testClient struct {
	*Client
	kicks chan Disconnect
}

func (h *testHub) join(t *testing.T) *testClient {
	t.Helper()
	kicks := make(chan Disconnect, 1)
	c, err := h.Join(func() {}, func(d Disconnect) { kicks <- d })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Leave(c) })
	return &testClient{Client: c, kicks: kicks}
}

// frames returns what waits for c, as strings.
func (c *testClient) frames() []string {
	var out []string
	for _, f := range c.Take(nil) {
		out = append(out, string(f))
	}
	return out
}

// summary describes event frames by subject and subscriptions, and other
// frames as they are.
func summary(frames []string) []string {
	var out []string
	for _, f := range frames {
		var ev struct {
			Subscriptions []string
			Event         *struct{ Subject string }
		}
		if err := json.Unmarshal([]byte(f), &ev); err != nil || ev.Event == nil {
			out = append(out, f)
			continue
		}
		out = append(out, ev.Event.Subject+" via "+strings.Join(ev.Subscriptions, ","))
	}
	return out
}

func (c *testClient) subscribe(t *testing.T, h *testHub, p string) {
	t.Helper()
	if err := h.Subscribe(t.Context(), c.Client, p, []byte("ok "+p)); err != nil {
		t.Fatalf("Subscribe(%q) = %v", p, err)
	}
}

func TestDeliversEachPublishOncePerClient(t *testing.T) {
	t.Parallel()
	h := startHub(t, 1<<20)
	both, star, exact := h.join(t), h.join(t), h.join(t)
	both.subscribe(t, h, "order:*")
	both.subscribe(t, h, "order:placed")
	star.subscribe(t, h, "order:*")
	exact.subscribe(t, h, "order:placed")
	if got, want := h.sub.subscribed(), []string{"order:*", "order:placed"}; !slices.Equal(got, want) {
		t.Fatalf("Redis subscriptions = %q, want %q", got, want)
	}
	h.publish(t, "order:placed", "1", "order:*", "order:placed")
	// What the bus names is what matched at publish time: a subscription
	// the bus did not match delivers nothing, even if the hub has it.
	h.publish(t, "order:placed", "2", "order:*")
	for _, tt := range []struct {
		name string
		c    *testClient
		want []string
	}{
		{"both", both, []string{"ok order:*", "ok order:placed", "1 via order:*,order:placed", "2 via order:*"}},
		{"star", star, []string{"ok order:*", "1 via order:*", "2 via order:*"}},
		{"exact", exact, []string{"ok order:placed", "1 via order:placed"}},
	} {
		if got := summary(tt.c.frames()); !slices.Equal(got, tt.want) {
			t.Errorf("%s got %q, want %q", tt.name, got, tt.want)
		}
	}
}

// A client that unsubscribes gets the reply after every event the
// subscription delivered and nothing after it: the reply and the events
// share the queue.
func TestRepliesAndEventsShareOneOrder(t *testing.T) {
	t.Parallel()
	h := startHub(t, 1<<20)
	c := h.join(t)
	c.subscribe(t, h, "a:*")
	h.publish(t, "a:b", "1", "a:*")
	h.Unsubscribe(c.Client, "a:*", []byte("unsubscribed"))
	h.publish(t, "a:b", "2", "a:*")
	if got, want := summary(c.frames()), []string{"ok a:*", "1 via a:*", "unsubscribed"}; !slices.Equal(got, want) {
		t.Fatalf("frames = %q, want %q", got, want)
	}
	if got := h.sub.subscribed(); len(got) != 0 {
		t.Fatalf("Redis subscriptions after the last client left = %q, want none", got)
	}
}

func TestRevokeDropsWhatIsNoLongerGranted(t *testing.T) {
	t.Parallel()
	h := startHub(t, 1<<20)
	c, other := h.join(t), h.join(t)
	c.subscribe(t, h, "*")
	c.subscribe(t, h, "order:*")
	c.subscribe(t, h, "notify:user:4")
	other.subscribe(t, h, "*")
	c.frames()
	n := h.Revoke(c.Client, func(p string) bool { return p == "order:*" }, func(p string) []byte { return []byte("revoked " + p) })
	if n != 2 {
		t.Fatalf("Revoke = %d, want 2", n)
	}
	h.publish(t, "notify:user:4", "secret", "*", "notify:user:4")
	h.publish(t, "order:placed", "order", "*", "order:*")
	got := c.frames()
	slices.Sort(got[:2]) // the notices come in map order
	if want := []string{"revoked *", "revoked notify:user:4", "order via order:*"}; !slices.Equal(summary(got), want) {
		t.Fatalf("frames = %q, want %q", summary(got), want)
	}
	if got, want := h.sub.subscribed(), []string{"*", "order:*"}; !slices.Equal(got, want) {
		t.Fatalf("Redis subscriptions = %q, want %q: * stays for the other client", got, want)
	}
}

// The queue is bounded in bytes: a burst within the bound waits, one past
// it closes the client as slow, and an empty queue takes any frame.
func TestQueueIsBoundedInBytes(t *testing.T) {
	t.Parallel()
	h := startHub(t, 4096)
	c := h.join(t)
	c.Send(make([]byte, 10_000)) // alone: taken whatever its size
	if got := len(c.Take(nil)); got != 1 {
		t.Fatalf("Take after one large frame = %d frames, want 1", got)
	}
	for range 4 {
		c.Send(make([]byte, 1000))
	}
	select {
	case d := <-c.kicks:
		t.Fatalf("kicked with %v within the bound", d)
	default:
	}
	c.Send(make([]byte, 1000))
	if d := <-c.kicks; d != DisconnectSlow {
		t.Fatalf("kicked with %v past the bound, want %v", d, DisconnectSlow)
	}
}

// fakeTimer never fires by itself.
type fakeTimer struct{ c chan time.Time }

func (f fakeTimer) C() <-chan time.Time { return f.c }
func (fakeTimer) Reset(time.Duration)   {}
func (fakeTimer) Stop()                 {}

// A writer pausing to pack events wakes when its queue is half full, so a
// client that reads fast enough is never closed because of the pause. The
// timer here never fires: only the queue can end the pause.
func TestPauseEndsWhenTheQueueIsHalfFull(t *testing.T) {
	saved := newTimer
	newTimer = func(time.Duration) timer { return fakeTimer{make(chan time.Time)} }
	t.Cleanup(func() { newTimer = saved })
	h := startHub(t, 4000)
	c := h.join(t)
	c.Send(make([]byte, 100))
	c.Take(nil) // the writer takes it and pauses
	paused := make(chan struct{})
	go func() {
		c.Pause(time.Hour)
		close(paused)
	}()
	for range 20 {
		c.Send(make([]byte, 100)) // up to half of the bound
	}
	<-paused
	if got := len(c.Take(nil)); got != 20 {
		t.Fatalf("Take after the pause = %d frames, want 20", got)
	}
	select {
	case d := <-c.kicks:
		t.Fatalf("kicked with %v", d)
	default:
	}
}

// CloseAfter lets what is queued be written first.
func TestCloseAfterWritesTheQueueFirst(t *testing.T) {
	t.Parallel()
	h := startHub(t, 1<<20)
	c := h.join(t)
	c.Send([]byte("why"))
	c.CloseAfter(Disconnect{4001, "bye"})
	c.Send([]byte("dropped"))
	select {
	case d := <-c.kicks:
		t.Fatalf("kicked with %v before the queue was written", d)
	default:
	}
	if got := c.frames(); !slices.Equal(got, []string{"why"}) {
		t.Fatalf("frames = %q, want [why]", got)
	}
	if got := c.frames(); len(got) != 0 {
		t.Fatalf("frames after the close = %q, want none", got)
	}
	if d := <-c.kicks; d != (Disconnect{4001, "bye"}) {
		t.Fatalf("kicked with %v, want 4001 bye", d)
	}
}
