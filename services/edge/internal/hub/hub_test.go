package hub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/channel"
	"github.com/eventbus-suite/eventbus/pkg/envelope"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
)

// fakeSub is a bus.Subscription fed by the test: what a transport would
// deliver, with no transport.
type fakeSub struct {
	msgs chan bus.Message

	mu       sync.Mutex
	patterns map[string]int // Add minus Remove, per pattern
	adds     [][]string     // each Add call's patterns
	gate     chan struct{}  // when set, Add waits for it
}

func newFakeSub() *fakeSub {
	return &fakeSub{msgs: make(chan bus.Message), patterns: make(map[string]int)}
}

func (f *fakeSub) Messages() <-chan bus.Message { return f.msgs }
func (f *fakeSub) Live() bool                   { return true }
func (f *fakeSub) Close() error                 { return nil }

func (f *fakeSub) Add(_ context.Context, ps ...string) error {
	f.mu.Lock()
	gate := f.gate
	f.mu.Unlock()
	if gate != nil {
		<-gate
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.adds = append(f.adds, slices.Clone(ps))
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

// redisNames returns what the hub has subscribed in Redis once the
// changes it queued are applied.
func (h *testHub) redisNames() []string {
	h.settle()
	return h.sub.subscribed()
}

// bounds are the hub's Options in tests that do not test them.
var bounds = Options{QueueBytes: 1 << 20, MaxUserPatterns: 100, MaxUserConnections: 100, MaxRedisPatterns: 100}

func startHub(t *testing.T, opts Options) *testHub {
	t.Helper()
	return startHubIn(t, opts, prometheus.NewRegistry())
}

// startHubIn starts a hub whose metrics go to reg.
func startHubIn(t *testing.T, opts Options, reg prometheus.Registerer) *testHub {
	t.Helper()
	sub := newFakeSub()
	h := New(sub, opts, slog.New(slog.DiscardHandler), reg)
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

// testEncoding writes an event frame as {"subscriptions":[…],"event":{…}}.
type testEncoding struct{}

func (testEncoding) Encode(ev *Event, subs []string) ([]byte, error) {
	event, err := ev.JSON()
	if err != nil {
		return nil, err
	}
	s, _ := json.Marshal(subs)
	return fmt.Appendf(nil, `{"subscriptions":%s,"event":%s}`, s, event), nil
}

// testClient is a connection whose frames the test takes by hand.
type testClient struct {
	*Client
	kicks chan Disconnect
	ready chan struct{} // a frame waits and no writer runs; with joinReady
	left  bool
}

// join connects a client of a user of its own.
func (h *testHub) join(t *testing.T) *testClient {
	t.Helper()
	return h.joinAs(t, fmt.Sprintf("user:%d", users.Add(1)))
}

var users atomic.Int64

// joinAs connects a client of identity who; it leaves when the test ends,
// unless it left before.
func (h *testHub) joinAs(t *testing.T, who string) *testClient {
	t.Helper()
	kicks := make(chan Disconnect, 1)
	c, err := h.Join(who, "test", testEncoding{}, func() {}, func(d Disconnect) { kicks <- d })
	if err != nil {
		t.Fatal(err)
	}
	tc := &testClient{Client: c, kicks: kicks}
	t.Cleanup(func() {
		if !tc.left {
			h.Leave(c)
		}
	})
	return tc
}

// joinReady connects a client whose readiness the test follows, as a
// writer would: each receive from ready is a turn to take its frames.
func (h *testHub) joinReady(t *testing.T) *testClient {
	t.Helper()
	tc := &testClient{kicks: make(chan Disconnect, 1), ready: make(chan struct{}, 1)}
	c, err := h.Join(fmt.Sprintf("user:%d", users.Add(1)), "test", testEncoding{}, func() {
		select {
		case tc.ready <- struct{}{}:
		default:
		}
	}, func(d Disconnect) { tc.kicks <- d })
	if err != nil {
		t.Fatal(err)
	}
	tc.Client = c
	t.Cleanup(func() {
		if !tc.left {
			h.Leave(c)
		}
	})
	return tc
}

func (h *testHub) leave(c *testClient) {
	c.left = true
	h.Leave(c.Client)
}

// frames returns what waits for c, as strings.
func (c *testClient) frames() []string {
	var out []string
	for _, f := range c.Take(nil) {
		out = append(out, string(f.Data))
	}
	return out
}

// expectation is what waits for one client, as summary gives it.
type expectation struct {
	name string
	c    *testClient
	want []string
}

// expectFrames takes what waits for each client and checks it.
func expectFrames(t *testing.T, es []expectation) {
	t.Helper()
	for _, e := range es {
		if got := summary(e.c.frames()); !slices.Equal(got, e.want) {
			t.Errorf("%s got %q, want %q", e.name, got, e.want)
		}
	}
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

// reply answers a subscription with frame, whatever became of it; an empty
// frame queues nothing.
func reply(frame string) func(Recovery) []byte {
	return func(Recovery) []byte {
		if frame == "" {
			return nil
		}
		return []byte(frame)
	}
}

func (c *testClient) subscribe(t *testing.T, h *testHub, p string) {
	t.Helper()
	if err := h.Subscribe(t.Context(), c.Client, p, nil, reply("ok "+p)); err != nil {
		t.Fatalf("Subscribe(%q) = %v", p, err)
	}
}

func TestDeliversEachPublishOncePerClient(t *testing.T) {
	t.Parallel()
	h := startHub(t, bounds)
	both, orders, placed := h.join(t), h.join(t), h.join(t)
	both.subscribe(t, h, "order:*")
	both.subscribe(t, h, "*:placed")
	orders.subscribe(t, h, "order:*")
	placed.subscribe(t, h, "*:placed")
	if got, want := h.redisNames(), []string{"*:placed", "order:*"}; !slices.Equal(got, want) {
		t.Fatalf("Redis subscriptions = %q, want %q", got, want)
	}
	h.publish(t, "order:placed", "1", "*:placed", "order:*")
	// What the bus names is what matched at publish time: a subscription
	// the bus did not match delivers nothing, even if the hub has it.
	h.publish(t, "order:placed", "2", "order:*")
	expectFrames(t, []expectation{
		{"both", both, []string{"ok order:*", "ok *:placed", "1 via *:placed,order:*", "2 via order:*"}},
		{"orders", orders, []string{"ok order:*", "1 via order:*", "2 via order:*"}},
		{"placed", placed, []string{"ok *:placed", "1 via *:placed"}},
	})
}

// A client that unsubscribes gets the reply after every event the
// subscription delivered and nothing after it: the reply and the events
// share the queue.
func TestRepliesAndEventsShareOneOrder(t *testing.T) {
	t.Parallel()
	h := startHub(t, bounds)
	c := h.join(t)
	c.subscribe(t, h, "a:*")
	h.publish(t, "a:b", "1", "a:*")
	h.Unsubscribe(c.Client, "a:*", []byte("unsubscribed"))
	h.publish(t, "a:b", "2", "a:*")
	if got, want := summary(c.frames()), []string{"ok a:*", "1 via a:*", "unsubscribed"}; !slices.Equal(got, want) {
		t.Fatalf("frames = %q, want %q", got, want)
	}
	if got := h.redisNames(); len(got) != 0 {
		t.Fatalf("Redis subscriptions after the last client left = %q, want none", got)
	}
}

func TestRevokeDropsWhatIsNoLongerGranted(t *testing.T) {
	t.Parallel()
	h := startHub(t, bounds)
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
	if got, want := h.redisNames(), []string{"*", "order:*"}; !slices.Equal(got, want) {
		t.Fatalf("Redis subscriptions = %q, want %q: * stays for the other client", got, want)
	}
}

// The queue is bounded in bytes: a burst within the bound waits, one past
// it closes the client as slow, and an empty queue takes any frame.
func TestQueueIsBoundedInBytes(t *testing.T) {
	t.Parallel()
	h := startHub(t, Options{QueueBytes: 4096, MaxUserPatterns: 1, MaxUserConnections: 1, MaxRedisPatterns: 1})
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
	h := startHub(t, Options{QueueBytes: 4000, MaxUserPatterns: 1, MaxUserConnections: 1, MaxRedisPatterns: 1})
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
	h := startHub(t, bounds)
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

// Past MaxRedisPatterns, a covering pattern serves the rest, and the hub
// filters for them: Redis holds few patterns, and no client gets what its
// own patterns do not match.
func TestCoveringPatternPastTheBound(t *testing.T) {
	t.Parallel()
	opts := bounds
	opts.MaxRedisPatterns = 1
	h := startHub(t, opts)
	a, b, c, exact := h.join(t), h.join(t), h.join(t), h.join(t)
	a.subscribe(t, h, "order:a*")
	exact.subscribe(t, h, "order:b1")
	if got, want := h.redisNames(), []string{"order:a*", "order:b1"}; !slices.Equal(got, want) {
		t.Fatalf("Redis subscriptions within the bound = %q, want %q", got, want)
	}
	b.subscribe(t, h, "order:b*")
	if got, want := h.redisNames(), []string{"order:*", "order:b1"}; !slices.Equal(got, want) {
		t.Fatalf("Redis subscriptions past the bound = %q, want %q", got, want)
	}
	// A pattern a cover serves already costs Redis nothing.
	c.subscribe(t, h, "order:c*")
	if got, want := h.redisNames(), []string{"order:*", "order:b1"}; !slices.Equal(got, want) {
		t.Fatalf("Redis subscriptions = %q, want %q", got, want)
	}
	h.publish(t, "order:a1", "1", "order:*")
	h.publish(t, "order:b1", "2", "order:*", "order:b1")
	h.publish(t, "order:zz", "3", "order:*")
	// Published before the cover: Redis names the pattern itself.
	h.publish(t, "order:a2", "4", "order:a*")
	// Between the cover's subscription and the pattern's unsubscription.
	h.publish(t, "order:a3", "5", "order:*", "order:a*")
	expectFrames(t, []expectation{
		{"a", a, []string{"ok order:a*", "1 via order:a*", "4 via order:a*", "5 via order:a*"}},
		{"b", b, []string{"ok order:b*", "2 via order:b*"}},
		{"c", c, []string{"ok order:c*"}},
		{"exact", exact, []string{"ok order:b1", "2 via order:b1"}},
	})
	// The cover goes when the last pattern it serves does.
	for _, cl := range []*testClient{a, b, c} {
		h.leave(cl)
	}
	if got, want := h.redisNames(), []string{"order:b1"}; !slices.Equal(got, want) {
		t.Fatalf("Redis subscriptions after the covered clients left = %q, want %q", got, want)
	}
}

// A first-token wildcard is covered by "*".
func TestCoverOfAWildcardNamespaceIsEverything(t *testing.T) {
	t.Parallel()
	opts := bounds
	opts.MaxRedisPatterns = 1
	h := startHub(t, opts)
	a, b := h.join(t), h.join(t)
	a.subscribe(t, h, "*:placed")
	b.subscribe(t, h, "ord*:shipped")
	if got, want := h.redisNames(), []string{"*"}; !slices.Equal(got, want) {
		t.Fatalf("Redis subscriptions = %q, want %q", got, want)
	}
	h.publish(t, "order:placed", "1", "*")
	h.publish(t, "order:shipped", "2", "*")
	if got, want := summary(a.frames()), []string{"ok *:placed", "1 via *:placed"}; !slices.Equal(got, want) {
		t.Errorf("a got %q, want %q", got, want)
	}
	if got, want := summary(b.frames()), []string{"ok ord*:shipped", "2 via ord*:shipped"}; !slices.Equal(got, want) {
		t.Errorf("b got %q, want %q", got, want)
	}
}

func TestUserBounds(t *testing.T) {
	t.Parallel()
	opts := bounds
	opts.MaxUserPatterns, opts.MaxUserConnections = 2, 2
	h := startHub(t, opts)
	one, two := h.joinAs(t, "user:1"), h.joinAs(t, "user:1")
	one.subscribe(t, h, "a:*")
	two.subscribe(t, h, "a:*") // the same pattern again: not a new one
	two.subscribe(t, h, "b:*")
	if err := h.Subscribe(t.Context(), one.Client, "c:*", nil, reply("")); !errors.Is(err, ErrTooManyPatterns) {
		t.Fatalf("third distinct pattern of user 1 = %v, want ErrTooManyPatterns", err)
	}
	if _, err := h.Join("user:1", "test", testEncoding{}, func() {}, func(Disconnect) {}); !errors.Is(err, ErrTooManyConnections) {
		t.Fatalf("third connection of user 1 = %v, want ErrTooManyConnections", err)
	}
	anon := h.joinAs(t, "addr:127.0.0.1")
	if err := h.Identify(anon.Client, "user:1"); !errors.Is(err, ErrTooManyConnections) {
		t.Fatalf("authenticating a third connection as user 1 = %v, want ErrTooManyConnections", err)
	}
	// A pattern of user 1 comes free when no connection of it holds it.
	h.Unsubscribe(two.Client, "b:*", []byte("bye"))
	one.subscribe(t, h, "c:*")
	h.leave(two)
	if err := h.Identify(anon.Client, "user:1"); err != nil {
		t.Fatalf("authenticating as user 1 once it has room = %v", err)
	}
}

// FuzzPatternSet: the prefix index finds exactly the patterns that match,
// as trying every pattern would.
func FuzzPatternSet(f *testing.F) {
	f.Add("order:a*,order:*,*:placed,order:placed,o*d*", "order:placed")
	f.Add("*,a*b,ab*", "ab")
	f.Fuzz(func(t *testing.T, patterns, ch string) {
		if channel.Validate(ch) != nil {
			return
		}
		s := &patternSet{byPrefix: make(map[string][]string)}
		var want []string
		for _, p := range slices.Compact(slices.Sorted(slices.Values(strings.Split(patterns, ",")))) {
			if channel.ValidatePattern(p) != nil {
				continue
			}
			s.add(p)
			if channel.Match(p, ch) {
				want = append(want, p)
			}
		}
		got := s.match(ch, nil)
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Fatalf("match(%q) = %q, want %q", ch, got, want)
		}
	})
}

// A cover is as narrow as the patterns it takes over allow, and a cover
// taken over by a wider one still serves what Redis matched against it.
func TestNarrowestCoverAndCoversOfCovers(t *testing.T) {
	t.Parallel()
	opts := bounds
	opts.MaxRedisPatterns = 2
	h := startHub(t, opts)
	x1, x2, y, w := h.join(t), h.join(t), h.join(t), h.join(t)
	x1.subscribe(t, h, "a:x1*")
	y.subscribe(t, h, "b:y*")
	x2.subscribe(t, h, "a:x2*")
	if got, want := h.redisNames(), []string{"a:x*", "b:y*"}; !slices.Equal(got, want) {
		t.Fatalf("Redis subscriptions = %q, want %q", got, want)
	}
	h.publish(t, "a:x2q", "1", "a:x*")
	w.subscribe(t, h, "a:w*")
	if got, want := h.redisNames(), []string{"a:*", "b:y*"}; !slices.Equal(got, want) {
		t.Fatalf("Redis subscriptions = %q, want %q", got, want)
	}
	h.publish(t, "a:x1q", "2", "a:x*") // matched before a:* took over
	h.publish(t, "a:x1q", "3", "a:*")
	h.publish(t, "a:wq", "4", "a:*")
	expectFrames(t, []expectation{
		{"x1", x1, []string{"ok a:x1*", "2 via a:x1*", "3 via a:x1*"}},
		{"x2", x2, []string{"ok a:x2*", "1 via a:x2*"}},
		{"w", w, []string{"ok a:w*", "4 via a:w*"}},
		{"y", y, []string{"ok b:y*"}},
	})
	for _, c := range []*testClient{x1, x2, w} {
		h.leave(c)
	}
	if got, want := h.redisNames(), []string{"b:y*"}; !slices.Equal(got, want) {
		t.Fatalf("Redis subscriptions after they left = %q, want %q", got, want)
	}
	if n := len(h.covers) + len(h.coveredBy); n != 0 {
		t.Fatalf("%d covers left behind, want none", n)
	}
}

// A pattern can be its own cover; when it goes, the count of Redis
// patterns goes down by one, not two.
func TestAPatternThatIsItsOwnCover(t *testing.T) {
	t.Parallel()
	opts := bounds
	opts.MaxRedisPatterns = 1
	h := startHub(t, opts)
	a, star := h.join(t), h.join(t)
	a.subscribe(t, h, "order:a*")
	star.subscribe(t, h, "order:*")
	if got, want := h.redisNames(), []string{"order:*"}; !slices.Equal(got, want) {
		t.Fatalf("Redis subscriptions = %q, want %q", got, want)
	}
	h.publish(t, "order:a1", "1", "order:*")
	if got, want := summary(a.frames()), []string{"ok order:a*", "1 via order:a*"}; !slices.Equal(got, want) {
		t.Errorf("a got %q, want %q", got, want)
	}
	if got, want := summary(star.frames()), []string{"ok order:*", "1 via order:*"}; !slices.Equal(got, want) {
		t.Errorf("star got %q, want %q", got, want)
	}
	h.leave(a)
	h.leave(star)
	if got := h.redisNames(); len(got) != 0 {
		t.Fatalf("Redis subscriptions after both left = %q, want none", got)
	}
	if len(h.wild) != 0 {
		t.Fatalf("the count of Redis patterns is %d with none subscribed", len(h.wild))
	}
}

// Authenticating as a user brings the connection's patterns along, within
// the user's bound.
func TestIdentifyKeepsTheUserPatternBound(t *testing.T) {
	t.Parallel()
	opts := bounds
	opts.MaxUserPatterns = 2
	h := startHub(t, opts)
	user := h.joinAs(t, "user:9")
	user.subscribe(t, h, "a:*")
	user.subscribe(t, h, "b:*")
	anon := h.joinAs(t, "addr:192.0.2.1")
	anon.subscribe(t, h, "c:*")
	if err := h.Identify(anon.Client, "user:9"); !errors.Is(err, ErrTooManyPatterns) {
		t.Fatalf("Identify with a third distinct pattern = %v, want ErrTooManyPatterns", err)
	}
	h.Unsubscribe(anon.Client, "c:*", nil)
	anon.subscribe(t, h, "a:*") // one the user holds already
	if err := h.Identify(anon.Client, "user:9"); err != nil {
		t.Fatalf("Identify with a pattern the user holds = %v", err)
	}
}

// countingEncoding counts the frames it makes.
type countingEncoding struct{ n *atomic.Int64 }

func (e countingEncoding) Encode(ev *Event, subs []string) ([]byte, error) {
	e.n.Add(1)
	return testEncoding{}.Encode(ev, subs)
}

// The hub makes an event's frame once per encoding and set of matching
// subscriptions, however many clients it goes to, and hands each client
// the event with it, position included, for transports that follow
// positions.
func TestEncodesEachFrameOnce(t *testing.T) {
	t.Parallel()
	h := startHub(t, bounds)
	var made atomic.Int64
	enc := countingEncoding{&made}
	var clients []*Client
	for i := range 10 {
		c, err := h.Join(fmt.Sprintf("user:enc%d", i), "test", enc, func() {}, func(Disconnect) {})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.Leave(c) })
		if err := h.Subscribe(t.Context(), c, "enc:*", nil, reply("")); err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 { // half of them match twice: another frame
			if err := h.Subscribe(t.Context(), c, "enc:a", nil, reply("")); err != nil {
				t.Fatal(err)
			}
		}
		clients = append(clients, c)
	}
	pos := bus.Position{Offset: "1732290000000-4", Epoch: "9f01"}
	env, _ := envelope.Marshal(&envelope.Envelope{Id: "1", Type: "enc.a", Channel: "enc:a"})
	h.sub.msgs <- bus.Message{Channel: "enc:a", Patterns: []string{"enc:*", "enc:a"}, Payload: env, Position: pos}
	h.sub.msgs <- bus.Message{Channel: "sync", Patterns: []string{"sync"}}
	if got := made.Load(); got != 2 {
		t.Errorf("frames made = %d, want 2 (one per set of matching subscriptions)", got)
	}
	for i, c := range clients {
		var events []Frame
		for _, f := range c.Take(nil) {
			if f.Event != nil {
				events = append(events, f)
			}
		}
		if len(events) != 1 || events[0].Event.Position != pos || events[0].Event.Stream != "enc" {
			t.Fatalf("client %d got %+v, want the event once, at %+v", i, events, pos)
		}
	}
}

// Subscriptions that arrive while Redis is busy share its next round trip,
// and one to a pattern subscribed already waits for none.
func TestSubscriptionsShareRedisRoundTrips(t *testing.T) {
	t.Parallel()
	h := startHub(t, bounds)
	early := h.join(t)
	early.subscribe(t, h, "st:early")
	gate := make(chan struct{})
	h.sub.mu.Lock()
	h.sub.gate = gate
	h.sub.mu.Unlock()
	const n = 50
	errs := make(chan error, n)
	for i := range n {
		c := h.join(t)
		go func() { errs <- h.Subscribe(t.Context(), c.Client, fmt.Sprintf("st:c%d", i), nil, reply("")) }()
	}
	// Redis holds the first batch: a subscription to what it has already
	// is answered meanwhile.
	servicetest.WaitFor(t, "the first batch to reach Redis", func() bool {
		h.mu.RLock()
		defer h.mu.RUnlock()
		return len(h.adding) > 0
	})
	other := h.join(t)
	other.subscribe(t, h, "st:early")
	close(gate)
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	h.sub.mu.Lock()
	calls := len(h.sub.adds)
	h.sub.mu.Unlock()
	if got := len(h.redisNames()); got != n+1 {
		t.Fatalf("Redis has %d names, want %d", got, n+1)
	}
	// One Add for st:early, then the 50 in a few batches, not 50.
	if calls > 1+n/2 {
		t.Fatalf("%d Add calls for %d subscriptions, want them batched", calls-1, n)
	}
}

// The dispatch tells the Pacer how long each message waited since the bus
// read it: a message that waited past strainLag strains it, one the bus
// did not stamp says nothing, and the histogram counts the wait.
func TestDispatchLagStrainsThePacer(t *testing.T) {
	pacer := &Pacer{Rate: 30000}
	opts := bounds
	opts.Pacer = pacer
	reg := prometheus.NewRegistry()
	h := startHubIn(t, opts, reg)
	h.sub.msgs <- bus.Message{Channel: "sync", Patterns: []string{"sync"}}
	h.sub.msgs <- bus.Message{Channel: "sync", Patterns: []string{"sync"}}
	if pacer.strained.Load() != 0 {
		t.Fatal("strained by messages without a time of receipt")
	}
	h.sub.msgs <- bus.Message{Channel: "sync", Patterns: []string{"sync"}, Received: time.Now().Add(-time.Second)}
	h.sub.msgs <- bus.Message{Channel: "sync", Patterns: []string{"sync"}}
	if pacer.strained.Load() == 0 {
		t.Fatal("not strained by a message that waited a second")
	}
	// Of the four messages, the one stamped is observed, and only it.
	var lag dto.Metric
	if err := h.m.dispatchLag.Write(&lag); err != nil {
		t.Fatal(err)
	}
	if n, sum := lag.GetHistogram().GetSampleCount(), lag.GetHistogram().GetSampleSum(); n != 1 || sum < 1 {
		t.Fatalf("eventbus_edge_dispatch_lag_seconds: %d observations summing to %vs, want 1 of at least 1 s", n, sum)
	}
	if n, err := testutil.GatherAndCount(reg, "eventbus_edge_pacing_strained"); err != nil || n != 1 {
		t.Fatalf("eventbus_edge_pacing_strained: %d series, %v; want 1", n, err)
	}
}

// Messages the bus read before a Gap's catch-up ended waited for the
// catch-up, not for the CPU: their wait counts from its end, and a
// failover does not strain the Pacer.
func TestLagCountsFromTheEndOfACatchUp(t *testing.T) {
	pacer := &Pacer{Rate: 30000}
	at := time.Now() // the hub's clock stands still: no wait but the stamp's
	opts := bounds
	opts.Pacer, opts.now = pacer, func() time.Time { return at }
	h := startHub(t, opts)
	stamped := at.Add(-time.Second) // read, then held while the subscription came back
	h.sub.msgs <- bus.Message{Gap: true}
	h.sub.msgs <- bus.Message{Channel: "sync", Patterns: []string{"sync"}, Received: stamped}
	h.sub.msgs <- bus.Message{Channel: "sync", Patterns: []string{"sync"}}
	if pacer.strained.Load() != 0 {
		t.Fatal("strained by a message held through a catch-up")
	}
}
