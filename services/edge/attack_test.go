package main

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/envelope"
	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/token"
)

// A new token replaces the grants of the old one: what it no longer covers
// is dropped at once, and the client is told.
func TestReauthDropsWhatTheNewTokenDoesNotGrant(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), nil)
	c := e.dial(t, mint(t, "42", "*"))
	c.subscribe("1", "*")
	c.subscribe("2", "order:*")
	c.subscribe("3", "notify:user:42")
	// A token granting nothing but the user's own channel.
	if r := c.do(fmt.Sprintf(`{"action":"auth","token":%q,"id":"4"}`, mint(t, "42"))); r.Unsubscribed == "" {
		t.Fatalf("first frame after re-auth = %+v, want a notice of a dropped subscription", r)
	} else if second := c.next(); second.Unsubscribed == "" || r.Reason != "forbidden" || second.Reason != "forbidden" {
		t.Fatalf("frames after re-auth = %+v, %+v; want two notices with reason forbidden", r, second)
	} else if got := []string{r.Unsubscribed, second.Unsubscribed}; !equal(got, "*", "order:*") && !equal(got, "order:*", "*") {
		t.Fatalf("dropped %q, want * and order:*", got)
	}
	if r := c.next(); !r.OK || r.ID != "4" {
		t.Fatalf("auth reply = %+v, want ok with id 4", r)
	}
	e.publish(t, "other:secret", "secret", 0)
	e.publish(t, "order:placed", "order", 0)
	e.publish(t, "notify:user:42", "mine", 1)
	if f := c.next(); f.subject() != "mine" || !equal(f.Subscriptions, "notify:user:42") {
		t.Fatalf("event after re-auth = %+v, want only the user's own notification", f)
	}
	if got := e.metric(t, "eventbus_edge_revoked_subscriptions_total"); got != 2 {
		t.Errorf("eventbus_edge_revoked_subscriptions_total = %v, want 2", got)
	}
}

// A connection never changes users: a token of another user closes it.
func TestReauthAsAnotherUserCloses(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), nil)
	c := e.dial(t, mint(t, "4", "order:*"))
	c.subscribe("1", "notify:user:4")
	r := c.do(fmt.Sprintf(`{"action":"auth","token":%q,"id":"2"}`, mint(t, "5", "*")))
	if r.Error == nil || r.Error.Code != "unauthorized" || r.ID != "2" {
		t.Fatalf("auth as another user = %+v, want unauthorized with id 2", r)
	}
	if code := c.closeStatus(); code != 4001 {
		t.Fatalf("closed with %d, want 4001", code)
	}
	e.publish(t, "notify:user:4", "after", 0)
}

// A close reason too long for a close frame is cut, so the code still
// arrives.
func TestLongCloseReasonKeepsItsCode(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), nil)
	long, err := token.Issue([]byte(secret), strings.Repeat("Ü", 100), nil, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	c := e.dial(t, "")
	if r := c.do(fmt.Sprintf(`{"action":"auth","token":%q}`, long)); r.Error == nil || len(r.Error.Message) <= 123 {
		t.Fatalf("auth reply = %+v, want an error longer than a close frame holds", r)
	}
	if code := c.closeStatus(); code != 4001 {
		t.Fatalf("closed with %d, want 4001", code)
	}
}

func TestTextThatIsNotUTF8Closes1007(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), nil)
	c := e.dial(t, mint(t, "1", "*"))
	if err := c.conn.Write(t.Context(), websocket.MessageText, []byte{'{', 0xff, '}'}); err != nil {
		t.Fatal(err)
	}
	if code := c.closeStatus(); code != websocket.StatusInvalidFramePayloadData {
		t.Fatalf("closed with %d, want 1007", code)
	}
}

// A burst that a reading client drains in time never closes it: the queue
// is bounded in bytes (1 MiB), not in frames.
func TestBurstIsDeliveredToAReadingClient(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), nil)
	c := e.dial(t, mint(t, "1", "*"))
	c.subscribe("1", "burst:x")
	const n = 1000
	msgs := make([]bus.Publication, n)
	for i := range msgs {
		env := &envelope.Envelope{Type: "burst.x", Subject: strconv.Itoa(i)}
		if err := envelope.Fill(env, "test", time.Now()); err != nil {
			t.Fatal(err)
		}
		b, err := envelope.Marshal(env)
		if err != nil {
			t.Fatal(err)
		}
		msgs[i] = bus.Publication{Channel: "burst:x", Payload: b}
	}
	if _, _, err := e.bus.PublishBatch(t.Context(), msgs); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if f := c.next(); f.subject() != strconv.Itoa(i) {
			t.Fatalf("event %d = %+v, want subject %d", i, f, i)
		}
	}
	if got := e.metric(t, "eventbus_edge_slow_consumer_closes_total"); got != 0 {
		t.Errorf("%v slow-consumer closes, want 0", got)
	}
}

// While other clients subscribe and unsubscribe patterns that also match,
// a client gets every event exactly once.
func TestNoDuplicatesWhileOthersToggleOverlappingPatterns(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), map[string]string{"EDGE_RATE_LIMIT": "100000", "EDGE_RATE_BURST": "100000"})
	c := e.dial(t, mint(t, "1", "*"))
	c.subscribe("1", "dup:*")
	c.subscribe("2", "dup:a1")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 10 {
		toggler := e.dial(t, mint(t, strconv.Itoa(100+i), "*"))
		wg.Go(func() {
			for j := 0; ; j++ {
				select {
				case <-stop:
					return
				default:
				}
				action, p := "subscribe", "dup:a*"
				if j%2 == 1 {
					action = "unsubscribe"
				}
				if j%4 >= 2 {
					p = "dup:*"
				}
				toggler.send(fmt.Sprintf(`{"action":%q,"channel":%q,"id":"t"}`, action, p))
				for f := toggler.next(); f.ID != "t"; f = toggler.next() {
				}
			}
		})
	}
	const n = 2000
	for i := range n {
		e.publish(t, "dup:a1", strconv.Itoa(i), -1)
		if i == n/2 {
			// Halfway, the client itself drops one of its two matching
			// subscriptions while events flow.
			c.send(`{"action":"unsubscribe","channel":"dup:a1","id":"u"}`)
		}
	}
	close(stop)
	wg.Wait()
	e.publish(t, "dup:end", "end", -1)
	for i := 0; i <= n; i++ {
		f := c.next()
		if f.ID == "u" {
			i--
			continue
		}
		if want := strconv.Itoa(i); i < n && f.subject() != want {
			t.Fatalf("event %d = %+v, want subject %s: lost, reordered or repeated", i, f, want)
		}
	}
	if r := c.do(`{"action":"ping","id":"last"}`); r.ID != "last" {
		t.Fatalf("frame after the last event = %+v, want the pong: a duplicate came through", r)
	}
}

// A subscribe reply comes before the subscription's first event, and an
// unsubscribe reply after its last, however fast events flow.
func TestRepliesComeInOrderWithEvents(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), map[string]string{"EDGE_RATE_LIMIT": "100000", "EDGE_RATE_BURST": "100000"})
	c := e.dial(t, mint(t, "1", "*"))
	other := e.dial(t, mint(t, "2", "*"))
	other.subscribe("1", "flow:x") // keeps flow:x subscribed in Redis throughout
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				e.publish(t, "flow:x", strconv.Itoa(i), -1)
			}
		})
	}
	defer func() {
		close(stop)
		wg.Wait()
	}()
	for i := range 200 {
		id := strconv.Itoa(i)
		if r := c.do(`{"action":"subscribe","channel":"flow:x","id":"s` + id + `"}`); r.ID != "s"+id {
			t.Fatalf("first frame after subscribe %d = %+v, want its reply", i, r)
		}
		c.send(`{"action":"unsubscribe","channel":"flow:x","id":"u` + id + `"}`)
		for f := c.next(); f.ID != "u"+id; f = c.next() {
			if f.Channel != "flow:x" {
				t.Fatalf("frame before the unsubscribe reply = %+v, want events only", f)
			}
		}
		if r := c.do(`{"action":"ping","id":"p` + id + `"}`); r.ID != "p"+id {
			t.Fatalf("first frame after the unsubscribe reply = %+v, want the pong", r)
		}
	}
}
