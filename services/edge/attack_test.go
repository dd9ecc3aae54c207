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
	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
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
	// The hub leaves Redis's "*" in the background: wait for it to be gone.
	servicetest.WaitFor(t, "the edge to unsubscribe * in Redis", func() bool {
		r, err := e.bus.Publish(t.Context(), "other:probe", event(t, "other:probe", "probe"))
		return err == nil && r.Receivers == 0
	})
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
	servicetest.WaitFor(t, "the closed connection's subscription to go", func() bool {
		return e.metric(t, "eventbus_edge_subscriptions") == 0
	})
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
		msgs[i] = bus.Publication{Channel: "burst:x", Payload: event(t, "burst:x", strconv.Itoa(i))}
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

// One user's distinct patterns are bounded across its connections.
func TestUserPatternBound(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), map[string]string{"EDGE_MAX_USER_PATTERNS": "3"})
	one, two := e.dial(t, mint(t, "7", "*")), e.dial(t, mint(t, "7", "*"))
	one.subscribe("1", "pb:a*")
	one.subscribe("2", "pb:b*")
	two.subscribe("1", "pb:a*") // held already: not a new pattern
	two.subscribe("2", "pb:c*")
	r := two.do(`{"action":"subscribe","channel":"pb:d*","id":"3"}`)
	if r.Error == nil || r.Error.Code != "too_many_patterns" || r.ID != "3" {
		t.Fatalf("a fourth distinct pattern = %+v, want too_many_patterns with id 3", r)
	}
	other := e.dial(t, mint(t, "8", "*"))
	other.subscribe("1", "pb:d*") // another user has room of its own
	if got := e.metric(t, `eventbus_edge_limit_refusals_total{limit="user_patterns"}`); got != 1 {
		t.Errorf("user_patterns refusals = %v, want 1", got)
	}
}

// One user's connections are bounded, and so are those of one address
// without a user.
func TestUserConnectionBound(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), map[string]string{
		"EDGE_MAX_USER_CONNECTIONS": "2", "EDGE_ALLOW_ANONYMOUS": "true", "EDGE_PUBLIC_CHANNELS": "news:*"})
	// The edge joins a connection after its handshake: wait for each, so
	// that the third is the one refused.
	joined := func(n float64) {
		t.Helper()
		servicetest.WaitFor(t, fmt.Sprintf("%v connections", n), func() bool { return e.metric(t, "eventbus_edge_connections") == n })
	}
	e.dial(t, mint(t, "7"))
	e.dial(t, mint(t, "7"))
	joined(2)
	if code := e.dial(t, mint(t, "7")).closeStatus(); code != 4029 {
		t.Fatalf("a third connection of user 7 closed with %d, want 4029", code)
	}
	// Anonymous connections count against their address: 127.0.0.1.
	anon := e.dial(t, "")
	anon.subscribe("1", "news:*")
	e.dial(t, "")
	joined(4)
	if code := e.dial(t, "").closeStatus(); code != 4029 {
		t.Fatalf("a third anonymous connection from one address closed with %d, want 4029", code)
	}
	// Authenticating moves a connection to its user, which is full.
	r := anon.do(fmt.Sprintf(`{"action":"auth","token":%q,"id":"2"}`, mint(t, "7")))
	if r.Error == nil || r.Error.Code != "too_many_connections" {
		t.Fatalf("auth as a full user = %+v, want too_many_connections", r)
	}
	if code := anon.closeStatus(); code != 4029 {
		t.Fatalf("closed with %d, want 4029", code)
	}
}

// Past EDGE_MAX_REDIS_PATTERNS, Redis holds covering patterns and the edge
// filters: every client still gets exactly what its own patterns match.
func TestRedisPatternsStayBounded(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t) // NUMPAT is server-wide: this test needs its own server
	redistest.RequireReal(t, srv)
	e := startEdge(t, srv, map[string]string{"EDGE_MAX_REDIS_PATTERNS": "4"})
	rdb := srv.Client(t)
	var clients []*client
	for u := range 3 {
		c := e.dial(t, mint(t, strconv.Itoa(u), "*"))
		for p := range 5 {
			c.subscribe(strconv.Itoa(p), fmt.Sprintf("amp:u%dp%d*", u, p))
		}
		clients = append(clients, c)
	}
	if n, err := rdb.PubSubNumPat(t.Context()).Result(); err != nil || n > 4 {
		t.Fatalf("NUMPAT = %d, %v; want at most 4", n, err)
	}
	if got := e.metric(t, "eventbus_edge_covered_patterns"); got == 0 {
		t.Fatalf("eventbus_edge_covered_patterns = %v, want some", got)
	}
	for u := range clients {
		for p := range 5 {
			e.publish(t, fmt.Sprintf("amp:u%dp%dx", u, p), fmt.Sprintf("%d-%d", u, p), -1)
		}
	}
	e.publish(t, "amp:nobody", "nobody", -1)
	for u, c := range clients {
		for p := range 5 {
			if f := c.next(); f.subject() != fmt.Sprintf("%d-%d", u, p) || !equal(f.Subscriptions, fmt.Sprintf("amp:u%dp%d*", u, p)) {
				t.Fatalf("client %d, event %d = %+v", u, p, f)
			}
		}
		if r := c.do(`{"action":"ping","id":"end"}`); r.ID != "end" {
			t.Fatalf("client %d got %+v after its own events, want the pong", u, r)
		}
	}
}
