package hub

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// fakeClock is a clock the test moves by hand.
type fakeClock struct{ ns atomic.Int64 }

func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.ns.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	return c
}

func (c *fakeClock) now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

// slowCloses reads eventbus_edge_slow_consumer_closes_total from reg.
func slowCloses(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "eventbus_edge_slow_consumer_closes_total" {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatal("eventbus_edge_slow_consumer_closes_total is not registered")
	return 0
}

func delayBounds(clock *fakeClock) Options {
	return Options{QueueBytes: 1 << 20, QueueDelay: 100 * time.Millisecond, MaxUserPatterns: 10, MaxUserConnections: 10,
		MaxRedisPatterns: 10, now: clock.now}
}

// A client that stops reading is closed as too slow once the oldest frame
// in its queue has waited past the bound, far below the bound in bytes,
// and the close is counted.
func TestQueueIsBoundedInTime(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	reg := prometheus.NewRegistry()
	h := startHubIn(t, delayBounds(clock), reg)
	stalled := h.join(t)
	stalled.subscribe(t, h, "a:*")
	h.publish(t, "a:b", "1", "a:*") // queued behind the reply, which is as old
	clock.advance(100 * time.Millisecond)
	h.publish(t, "a:b", "2", "a:*") // at the bound: still within it
	select {
	case d := <-stalled.kicks:
		t.Fatalf("kicked with %v at the bound", d)
	default:
	}
	clock.advance(time.Millisecond)
	h.publish(t, "a:b", "3", "a:*")
	if d := <-stalled.kicks; d != DisconnectSlowDelay {
		t.Fatalf("kicked with %v past the bound, want %v", d, DisconnectSlowDelay)
	}
	if got := slowCloses(t, reg); got != 1 {
		t.Errorf("slow consumer closes = %v, want 1", got)
	}
	if DisconnectSlowDelay.Code != DisconnectSlow.Code {
		t.Errorf("DisconnectSlowDelay.Code = %d, want %d as DisconnectSlow", DisconnectSlowDelay.Code, DisconnectSlow.Code)
	}
}

// A client that keeps up is never closed, however long it has been
// connected and however late each frame is taken within the bound: the
// bound is on the oldest frame waiting, not on the connection.
func TestFastClientIsNotClosedByTheDelayBound(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	reg := prometheus.NewRegistry()
	h := startHubIn(t, delayBounds(clock), reg)
	fast := h.join(t)
	fast.subscribe(t, h, "a:*")
	fast.Take(nil)
	for i := range 50 {
		h.publish(t, "a:b", "x", "a:*")
		clock.advance(60 * time.Millisecond)
		h.publish(t, "a:b", "y", "a:*")
		if got := len(fast.Take(nil)); got != 2 {
			t.Fatalf("round %d: Take = %d frames, want 2", i, got)
		}
		clock.advance(90 * time.Millisecond) // an idle queue has no age
	}
	select {
	case d := <-fast.kicks:
		t.Fatalf("kicked with %v", d)
	default:
	}
	if got := slowCloses(t, reg); got != 0 {
		t.Errorf("slow consumer closes = %v, want 0", got)
	}
}

// A reply queued behind a frame that waited too long closes the client
// too: replies and events share the queue and its bound.
func TestReplyPastTheDelayBound(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	h := startHub(t, delayBounds(clock))
	c := h.join(t)
	c.Send([]byte("first"))
	clock.advance(101 * time.Millisecond)
	c.Send([]byte("second"))
	if d := <-c.kicks; d != DisconnectSlowDelay {
		t.Fatalf("kicked with %v, want %v", d, DisconnectSlowDelay)
	}
}

// A writer pausing to pack events never holds the oldest frame past half
// the delay bound: a pause that would is cut short, so the pause itself
// never closes a client that reads fast enough. The timer never fires by
// itself: a pause that does not return at once would hang the test.
func TestPauseStopsShortOfTheDelayBound(t *testing.T) {
	saved := newTimer
	newTimer = func(time.Duration) timer { return fakeTimer{make(chan time.Time)} }
	t.Cleanup(func() { newTimer = saved })
	clock := newFakeClock()
	h := startHub(t, delayBounds(clock))
	c := h.join(t)
	c.Send([]byte("waiting"))
	clock.advance(50 * time.Millisecond) // half the bound: no time left to pause
	c.Pause(time.Hour)
	if got := len(c.Take(nil)); got != 1 {
		t.Fatalf("Take after the pause = %d frames, want 1", got)
	}
}
