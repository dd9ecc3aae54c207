// Package bustest is the conformance suite of package bus: every
// implementation passes Run.
package bustest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/channel"
)

// Bus is what the suite tests.
type Bus interface {
	bus.Publisher
	bus.Subscriber
}

// NewBus returns a bus isolated from every other bus the suite creates: a
// message published on one is never seen by another. It arranges its own
// cleanup with t.Cleanup.
type NewBus func(t *testing.T) Bus

// wait bounds how long a test waits for a message before it fails; it is
// a failure guard, never a synchronisation.
const wait = 10 * time.Second

// Features say what an implementation offers beyond live delivery.
type Features struct {
	// History: Publish returns positions, live messages carry them, and
	// the bus implements bus.History and bus.Consumers.
	History bool
	// Sharded: live messages come through one connection per partition
	// (a Redis Cluster's sharded pub/sub), so their order holds per
	// channel, not across channels, and Receipt.Receivers counts the
	// subscriptions listening to the channel's partition, whether or not
	// their patterns match it: the suite checks that a message someone
	// receives is counted, and what each subscription receives.
	Sharded bool
}

// featuresOf holds the Features of each bus under test, for the helpers.
var featuresOf sync.Map // Bus → Features

func sharded(b Bus) bool {
	f, _ := featuresOf.Load(b)
	return f.(Features).Sharded
}

// Run runs the conformance suite for an implementation with features f.
func Run(t *testing.T, newBus NewBus, f Features) {
	none := func(*testing.T, Bus) {}
	positions, history, groups, redelivery, restart := testNoPositions, none, none, none, none
	bound, extend := none, none
	if f.History {
		positions, history = testPositions, testHistory
		groups, redelivery, restart = testConsumerGroups, testConsumerRedelivery, testConsumerRestart
		bound, extend = testConsumerFetchBound, testConsumerExtend
	}
	tests := []struct {
		name string
		run  func(t *testing.T, b Bus)
	}{
		{"Positions", positions},
		{"History", history},
		{"ConsumerGroups", groups},
		{"ConsumerRedelivery", redelivery},
		{"ConsumerRestart", restart},
		{"ConsumerFetchBound", bound},
		{"ConsumerExtend", extend},
		{"ExactChannel", testExactChannel},
		{"Pattern", testPattern},
		{"NoSubscribers", testNoSubscribers},
		{"OrderedAndComplete", testOrdered},
		{"ConcurrentPublishers", testConcurrent},
		{"OverlappingPatterns", testOverlapping},
		{"OverlappingWhileChanging", testOverlappingWhileChanging},
		{"AddRemove", testAddRemove},
		{"PublishBatch", testBatch},
		{"Close", testClose},
		{"InvalidInput", testInvalid},
		{"EndedContextSendsNothing", testEndedContext},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := newBus(t)
			featuresOf.Store(b, f)
			t.Cleanup(func() { featuresOf.Delete(b) })
			tt.run(t, b)
		})
	}
}

func subscribe(t *testing.T, b Bus, patterns ...string) bus.Subscription {
	t.Helper()
	sub, err := b.Subscribe(t.Context(), patterns...)
	if err != nil {
		t.Fatalf("Subscribe(%q) = %v", patterns, err)
	}
	t.Cleanup(func() { _ = sub.Close() })
	return sub
}

func publish(t *testing.T, b Bus, ch, payload string, wantReceivers int64) bus.Receipt {
	t.Helper()
	r, err := b.Publish(t.Context(), ch, []byte(payload))
	if err != nil {
		t.Fatalf("Publish(%q) = %v", ch, err)
	}
	if sharded(b) {
		if wantReceivers > 0 && r.Receivers < 1 {
			t.Fatalf("Publish(%q) = %d receivers, want some", ch, r.Receivers)
		}
	} else if r.Receivers != wantReceivers {
		t.Fatalf("Publish(%q) = %d receivers, want %d", ch, r.Receivers, wantReceivers)
	}
	return r
}

// Receive returns the next message of sub, failing the test if none comes.
func Receive(t testing.TB, sub bus.Subscription) bus.Message {
	t.Helper()
	select {
	case m, ok := <-sub.Messages():
		if !ok {
			t.Fatal("Messages() closed, want a message")
		}
		return m
	case <-time.After(wait):
		t.Fatalf("no message within %v", wait)
		return bus.Message{}
	}
}

// expect receives one message and checks it against ch, the patterns that
// matched and payload.
func expect(t *testing.T, sub bus.Subscription, ch string, patterns []string, payload string) {
	t.Helper()
	m := Receive(t, sub)
	if m.Channel != ch || !slices.Equal(m.Patterns, patterns) || string(m.Payload) != payload {
		t.Fatalf("received {%q %q %q}, want {%q %q %q}", m.Channel, m.Patterns, m.Payload, ch, patterns, payload)
	}
}

func testExactChannel(t *testing.T, b Bus) {
	sub := subscribe(t, b, "order:placed")
	publish(t, b, "order:shipped", "other", 0)
	publish(t, b, "order:placed", "hello", 1)
	expect(t, sub, "order:placed", []string{"order:placed"}, "hello")
}

func testPattern(t *testing.T, b Bus) {
	sub := subscribe(t, b, "user:*")
	publish(t, b, "order:placed", "no", 0)
	publish(t, b, "user:42:deleted", "crosses colons", 1)
	publish(t, b, "user:created", "plain", 1)
	first, second := Receive(t, sub), Receive(t, sub)
	if sharded(b) && first.Channel == "user:created" {
		// Two channels, maybe of two partitions: no order between them.
		first, second = second, first
	}
	for _, m := range []struct {
		got         bus.Message
		ch, payload string
	}{{first, "user:42:deleted", "crosses colons"}, {second, "user:created", "plain"}} {
		if m.got.Channel != m.ch || !slices.Equal(m.got.Patterns, []string{"user:*"}) || string(m.got.Payload) != m.payload {
			t.Fatalf("received {%q %q %q}, want {%q [user:*] %q}", m.got.Channel, m.got.Patterns, m.got.Payload, m.ch, m.payload)
		}
	}
}

func testNoSubscribers(t *testing.T, b Bus) {
	publish(t, b, "nobody:listens", "x", 0)
}

// testOrdered: what one publisher publishes on three channels arrives
// complete and in order: in all (on a sharded bus, in each channel).
func testOrdered(t *testing.T, b Bus) {
	const n = 2000
	sub := subscribe(t, b, "seq:*")
	var want []string
	for i := range n {
		ch := "seq:" + strconv.Itoa(i%3)
		publish(t, b, ch, strconv.Itoa(i), 1)
		want = append(want, ch+"/"+strconv.Itoa(i))
	}
	got := make([]string, n)
	for i := range n {
		m := Receive(t, sub)
		got[i] = m.Channel + "/" + string(m.Payload)
	}
	if in := slices.Equal(got, want); !in && (!sharded(b) || !SameInEachChannel(got, want)) {
		t.Fatalf("received %d messages out of order or not each once: first %q", n, got[:min(n, 10)])
	}
}

func testConcurrent(t *testing.T, b Bus) {
	const publishers, each = 16, 250
	sub := subscribe(t, b, "conc:*")
	var wg sync.WaitGroup
	errs := make(chan error, publishers)
	for p := range publishers {
		wg.Go(func() {
			for i := range each {
				r, err := b.Publish(t.Context(), "conc:"+strconv.Itoa(p), fmt.Appendf(nil, "%d/%d", p, i))
				if err != nil || r.Receivers != 1 && !sharded(b) || r.Receivers < 1 {
					errs <- fmt.Errorf("Publish = %d, %v; want 1, nil", r.Receivers, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	seen := make(map[string]bool, publishers*each)
	next := make([]int, publishers) // per publisher, order holds
	for range publishers * each {
		m := Receive(t, sub)
		var p, i int
		if _, err := fmt.Sscanf(string(m.Payload), "%d/%d", &p, &i); err != nil {
			t.Fatalf("payload %q: %v", m.Payload, err)
		}
		if seen[string(m.Payload)] {
			t.Fatalf("payload %q delivered twice", m.Payload)
		}
		seen[string(m.Payload)] = true
		if i != next[p] {
			t.Fatalf("publisher %d: got message %d, want %d", p, i, next[p])
		}
		next[p]++
	}
}

func testOverlapping(t *testing.T, b Bus) {
	sub := subscribe(t, b, "ov:*", "ov:a", "o*")
	publish(t, b, "ov:a", "same", 3)
	publish(t, b, "ov:a", "same", 3) // the same bytes again: a publish of its own
	publish(t, b, "ov:b", "other", 2)
	expect(t, sub, "ov:a", []string{"o*", "ov:*", "ov:a"}, "same")
	expect(t, sub, "ov:a", []string{"o*", "ov:*", "ov:a"}, "same")
	expect(t, sub, "ov:b", []string{"o*", "ov:*"}, "other")
}

// testOverlappingWhileChanging publishes while another pattern that also
// matches comes and goes: every publish arrives exactly once, in order,
// naming the patterns live when it was published.
func testOverlappingWhileChanging(t *testing.T, b Bus) {
	sub := subscribe(t, b, "dup:*")
	const n = 2000
	toggled := make(chan error, 1)
	stop := make(chan struct{})
	go func() {
		var err error
		for i := 0; err == nil; i++ {
			select {
			case <-stop:
				toggled <- nil
				return
			default:
			}
			if i%2 == 0 {
				err = sub.Add(t.Context(), "dup:a*", "dup:a1")
			} else {
				err = sub.Remove(t.Context(), "dup:a*", "dup:a1")
			}
		}
		toggled <- err
	}()
	for i := range n {
		if _, err := b.Publish(t.Context(), "dup:a1", []byte(strconv.Itoa(i))); err != nil {
			t.Fatalf("Publish = %v", err)
		}
	}
	close(stop)
	if err := <-toggled; err != nil {
		t.Fatalf("Add or Remove = %v", err)
	}
	// A last publish on a channel only dup:* matches marks the end.
	publish(t, b, "dup:end", "end", 1)
	for i := range n {
		m := Receive(t, sub)
		if string(m.Payload) != strconv.Itoa(i) {
			t.Fatalf("message %d has payload %q: a publish was lost or repeated", i, m.Payload)
		}
		extra := slices.DeleteFunc(slices.Clone(m.Patterns), func(p string) bool { return p == "dup:a*" || p == "dup:a1" })
		if !slices.Equal(extra, []string{"dup:*"}) {
			t.Fatalf("message %d matched %q, want dup:* and maybe dup:a* and dup:a1", i, m.Patterns)
		}
	}
	expect(t, sub, "dup:end", []string{"dup:*"}, "end")
}

func testAddRemove(t *testing.T, b Bus) {
	sub := subscribe(t, b, "ar:first")
	if err := sub.Add(t.Context(), "ar:more:*", "ar:exact"); err != nil {
		t.Fatalf("Add = %v", err)
	}
	publish(t, b, "ar:more:1", "m", 1)
	publish(t, b, "ar:exact", "e", 1)
	expect(t, sub, "ar:more:1", []string{"ar:more:*"}, "m")
	expect(t, sub, "ar:exact", []string{"ar:exact"}, "e")
	if err := sub.Remove(t.Context(), "ar:more:*", "ar:exact"); err != nil {
		t.Fatalf("Remove = %v", err)
	}
	publish(t, b, "ar:more:1", "gone", 0)
	publish(t, b, "ar:exact", "gone", 0)
	publish(t, b, "ar:first", "still", 1)
	expect(t, sub, "ar:first", []string{"ar:first"}, "still")
}

func testBatch(t *testing.T, b Bus) {
	sub := subscribe(t, b, "batch:a")
	msgs := make([]bus.Publication, 100)
	for i := range msgs {
		ch := "batch:a"
		if i%2 == 1 {
			ch = "batch:b" // nobody listens
		}
		msgs[i] = bus.Publication{Channel: ch, Payload: []byte(strconv.Itoa(i))}
	}
	receipts, errs, err := b.PublishBatch(t.Context(), msgs)
	if err != nil {
		t.Fatalf("PublishBatch = %v", err)
	}
	if len(receipts) != len(msgs) || len(errs) != len(msgs) {
		t.Fatalf("PublishBatch gave %d receipts and %d errors, want %d each", len(receipts), len(errs), len(msgs))
	}
	for i := range msgs {
		if want := int64(1 - i%2); receipts[i].Receivers != want || errs[i] != nil {
			t.Fatalf("message %d: %d receivers, error %v; want %d, nil", i, receipts[i].Receivers, errs[i], want)
		}
	}
	for i := 0; i < len(msgs); i += 2 {
		expect(t, sub, "batch:a", []string{"batch:a"}, strconv.Itoa(i))
	}
}

func testClose(t *testing.T, b Bus) {
	sub, err := b.Subscribe(t.Context(), "close:*")
	if err != nil {
		t.Fatalf("Subscribe = %v", err)
	}
	if err := sub.Close(); err != nil {
		t.Fatalf("Close = %v", err)
	}
	select {
	case _, ok := <-sub.Messages():
		if ok {
			t.Fatal("Messages() delivered after Close, want it closed")
		}
	case <-time.After(wait):
		t.Fatal("Messages() still open after Close")
	}
	if sub.Live() {
		t.Error("Live() = true after Close")
	}
	publish(t, b, "close:x", "nobody", 0)
}

func testInvalid(t *testing.T, b Bus) {
	if _, err := b.Publish(t.Context(), "Not A Channel", nil); !errors.Is(err, channel.ErrInvalid) {
		t.Errorf("Publish(bad channel) = %v, want channel.ErrInvalid", err)
	}
	if _, err := b.Publish(t.Context(), "wild:*", nil); !errors.Is(err, channel.ErrInvalid) {
		t.Errorf("Publish(pattern) = %v, want channel.ErrInvalid", err)
	}
	if _, err := b.Subscribe(t.Context(), "a:[bc]"); !errors.Is(err, channel.ErrInvalid) {
		t.Errorf("Subscribe(glob class) = %v, want channel.ErrInvalid", err)
	}
	_, _, err := b.PublishBatch(t.Context(), []bus.Publication{{Channel: "ok"}, {Channel: "NO"}})
	if !errors.Is(err, channel.ErrInvalid) {
		t.Errorf("PublishBatch(bad channel) = %v, want channel.ErrInvalid", err)
	}
}

func testEndedContext(t *testing.T, b Bus) {
	sub := subscribe(t, b, "ended:*")
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := b.Publish(ctx, "ended:a", []byte("cancelled")); !errors.Is(err, bus.ErrNotSent) || !errors.Is(err, context.Canceled) {
		t.Errorf("Publish(cancelled context) = %v, want bus.ErrNotSent and context.Canceled", err)
	}
	ctx, cancel = context.WithDeadline(t.Context(), time.Now().Add(-time.Second))
	defer cancel()
	if _, _, err := b.PublishBatch(ctx, []bus.Publication{{Channel: "ended:b", Payload: []byte("expired")}}); !errors.Is(err, bus.ErrNotSent) {
		t.Errorf("PublishBatch(expired context) = %v, want bus.ErrNotSent", err)
	}
	publish(t, b, "ended:c", "sentinel", 1)
	expect(t, sub, "ended:c", []string{"ended:*"}, "sentinel")
}

// offset splits a stream offset "<ms>-<seq>" into its two numbers.
func offset(t *testing.T, o string) [2]uint64 {
	t.Helper()
	var ms, seq uint64
	if _, err := fmt.Sscanf(o, "%d-%d", &ms, &seq); err != nil {
		t.Fatalf("offset %q is not <ms>-<seq>: %v", o, err)
	}
	return [2]uint64{ms, seq}
}

func before(a, b [2]uint64) bool { return a[0] < b[0] || a[0] == b[0] && a[1] < b[1] }

// testPositions: every publish gets a position in its stream, offsets
// grow within a channel's stream, a stream keeps its epoch, and the live
// message carries the same position.
func testPositions(t *testing.T, b Bus) {
	sub := subscribe(t, b, "pos:*", "other:*")
	var last bus.Receipt
	for i := range 5 {
		r := publish(t, b, "pos:a", strconv.Itoa(i), 1)
		if r.Offset == "" || r.Epoch == "" {
			t.Fatalf("Publish gave position %+v, want offset and epoch", r.Position)
		}
		if i > 0 && (r.Epoch != last.Epoch || !before(offset(t, last.Offset), offset(t, r.Offset))) {
			t.Fatalf("position %+v after %+v, want the same epoch and a later offset", r.Position, last.Position)
		}
		if m := Receive(t, sub); m.Position != r.Position || string(m.Payload) != strconv.Itoa(i) {
			t.Fatalf("live message at %+v with payload %q, want %+v and %d", m.Position, m.Payload, r.Position, i)
		}
		last = r
	}
	other := publish(t, b, "other:x", "o", 1)
	if other.Epoch == "" || other.Epoch == last.Epoch {
		t.Fatalf("namespace other has epoch %q, pos has %q: want an epoch of its own", other.Epoch, last.Epoch)
	}
	receipts, errs, err := b.PublishBatch(t.Context(), []bus.Publication{{Channel: "pos:a", Payload: []byte("b1")}, {Channel: "pos:a", Payload: []byte("b2")}})
	if err != nil || errs[0] != nil || errs[1] != nil {
		t.Fatalf("PublishBatch = %v, %v", errs, err)
	}
	if !before(offset(t, last.Offset), offset(t, receipts[0].Offset)) || !before(offset(t, receipts[0].Offset), offset(t, receipts[1].Offset)) {
		t.Fatalf("batch offsets %q, %q after %q, want them growing", receipts[0].Offset, receipts[1].Offset, last.Offset)
	}
}

// testNoPositions: without history, there are none.
func testNoPositions(t *testing.T, b Bus) {
	sub := subscribe(t, b, "pos:*")
	if r := publish(t, b, "pos:a", "x", 1); !r.Position.IsZero() {
		t.Fatalf("Publish without history gave position %+v", r.Position)
	}
	if m := Receive(t, sub); !m.Position.IsZero() || string(m.Payload) != "x" {
		t.Fatalf("live message %+v, want no position and payload x", m)
	}
}

// testHistory: History pages through a pattern's events across the
// namespaces it spans, in offset order, and a cursor continues exactly
// where the last page stopped.
func testHistory(t *testing.T, b Bus) {
	h, ok := b.(bus.History)
	if !ok {
		t.Fatal("the bus has history but does not implement bus.History")
	}
	var want []string
	for i := range 12 {
		ch := []string{"hist:a", "hist:b", "hist2:c", "nope:d"}[i%4]
		publish(t, b, ch, ch+"/"+strconv.Itoa(i), 0)
		if ch != "nope:d" {
			want = append(want, ch+"/"+strconv.Itoa(i))
		}
	}
	// "hist*" spans two namespaces, hist and hist2, and skips nope.
	var got []string
	var cursor bus.Cursor
	for pages := 0; ; pages++ {
		page, err := h.History(t.Context(), "hist*", cursor, 4)
		if err != nil {
			t.Fatalf("History(hist*, %v) = %v", cursor, err)
		}
		if len(page.Events) > 4 || pages > 10 {
			t.Fatalf("page %d has %d events, limit 4", pages, len(page.Events))
		}
		for _, e := range page.Events {
			got = append(got, string(e.Payload))
			if e.Position.IsZero() || !strings.HasPrefix(string(e.Payload), e.Channel+"/") {
				t.Fatalf("event %+v has no position or the wrong channel", e)
			}
		}
		cursor = page.Next
		if !page.More {
			break
		}
	}
	// Within a channel (a stream) the order is exact; across streams, by
	// time.
	if !SameInEachChannel(got, want) {
		t.Fatalf("History(hist*) paged through %q, want %q in each channel's order", got, want)
	}
	page, err := h.History(t.Context(), "hist:b", nil, 100)
	if err != nil || len(page.Events) != 3 || page.More {
		t.Fatalf("History(hist:b) = %d events, more %v, %v; want 3, false, nil", len(page.Events), page.More, err)
	}
	publish(t, b, "hist:b", "later", 0)
	page, err = h.History(t.Context(), "hist:b", page.Next, 100)
	if err != nil || len(page.Events) != 1 || string(page.Events[0].Payload) != "later" {
		t.Fatalf("History(hist:b) after its last page = %+v, %v; want the one later event", page, err)
	}
	histB := h.StreamOf("hist:b")
	if !bus.IsStream(histB) || !strings.HasPrefix(histB, "hist") {
		t.Fatalf("StreamOf(hist:b) = %q, want a stream of namespace hist", histB)
	}
	if _, err := h.History(t.Context(), "hist:b", bus.Cursor{histB: {Offset: page.Events[0].Position.Offset, Epoch: "another"}}, 10); !errors.Is(err, bus.ErrTruncated) || !errors.Is(err, bus.ErrEpochChanged) {
		t.Fatalf("History from another epoch = %v, want ErrTruncated and ErrEpochChanged", err)
	}
	// Latest is where each stream stands: nothing after it.
	streams := map[string]bool{h.StreamOf("hist:a"): true, histB: true, h.StreamOf("hist2:c"): true}
	latest, err := h.Latest(t.Context(), "hist*")
	if err != nil || len(latest) != len(streams) || latest[histB] != page.Events[0].Position || latest[h.StreamOf("hist2:c")].IsZero() {
		t.Fatalf("Latest(hist*) = %v, %v; want the %d streams of hist and hist2, %s at %+v", latest, err, len(streams), histB, page.Events[0].Position)
	}
	if page, err := h.History(t.Context(), "hist*", latest, 100); err != nil || len(page.Events) != 0 {
		t.Fatalf("History(hist*) from Latest = %+v, %v; want nothing", page, err)
	}
	if latest, err := h.Latest(t.Context(), "never:*"); err != nil || len(latest) != 0 {
		t.Fatalf("Latest(never:*) = %v, %v; want nothing", latest, err)
	}
}

func consume(t *testing.T, b Bus, group, name string, opts bus.ConsumerOptions, patterns ...string) bus.Consumer {
	t.Helper()
	cs, ok := b.(bus.Consumers)
	if !ok {
		t.Fatal("the bus has history but does not implement bus.Consumers")
	}
	c, err := cs.Consume(t.Context(), group, name, patterns, opts)
	if err != nil {
		t.Fatalf("Consume(%s, %s, %q) = %v", group, name, patterns, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// fetchAll fetches from members in turn until want events came, failing
// after wait; it returns each delivery's payload, in the order fetched.
func fetchAll(t *testing.T, want int, ack bool, members ...bus.Consumer) ([]string, []bus.Delivery) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	var got []string
	var all []bus.Delivery
	for i := 0; len(got) < want; i++ {
		m := members[i%len(members)]
		short, stop := context.WithTimeout(ctx, 100*time.Millisecond)
		ds, err := m.Fetch(short, want-len(got))
		stop()
		if err != nil && ctx.Err() != nil {
			t.Fatalf("fetched %d of %d events in %v: %q", len(got), want, wait, got)
		}
		if ack && len(ds) > 0 {
			if err := m.Ack(t.Context(), ds...); err != nil {
				t.Fatalf("Ack = %v", err)
			}
		}
		for _, d := range ds {
			got = append(got, string(d.Payload))
		}
		all = append(all, ds...)
	}
	return got, all
}

// testConsumerGroups: the members of a group share its events, each once,
// in order per namespace; every group gets every event; events on
// channels the patterns do not match, and events from before the group was
// made, are not delivered.
func testConsumerGroups(t *testing.T, b Bus) {
	publish(t, b, "cg:a", "before", 0)
	m1 := consume(t, b, "workers", "m1", bus.ConsumerOptions{}, "cg:a*", "cg2:*")
	m2 := consume(t, b, "workers", "m2", bus.ConsumerOptions{}, "cg:a*", "cg2:*")
	audit := consume(t, b, "audit", "only", bus.ConsumerOptions{}, "cg:a*", "cg2:*")
	var want []string
	for i := range 30 {
		ch := []string{"cg:a1", "cg:b1", "cg2:x"}[i%3]
		publish(t, b, ch, ch+"/"+strconv.Itoa(i), 0)
		if ch != "cg:b1" {
			want = append(want, ch+"/"+strconv.Itoa(i))
		}
	}
	for name, members := range map[string][]bus.Consumer{"workers": {m1, m2}, "audit": {audit}} {
		got, _ := fetchAll(t, len(want), true, members...)
		sorted := slices.Sorted(slices.Values(got))
		if !slices.Equal(sorted, slices.Sorted(slices.Values(want))) {
			t.Fatalf("group %s got %q, want each of %q once", name, got, want)
		}
	}
	short, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	if ds, err := audit.Fetch(short, 10); len(ds) != 0 || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Fetch after everything was acknowledged = %d events, %v; want none", len(ds), err)
	}
	if lag, err := audit.Lag(t.Context()); err != nil || lag != 0 {
		t.Fatalf("Lag after everything was fetched = %d, %v; want 0", lag, err)
	}
	publish(t, b, "cg2:y", "unread", 0)
	if lag, err := audit.Lag(t.Context()); err != nil || lag != 1 {
		t.Fatalf("Lag with one event unread = %d, %v; want 1", lag, err)
	}
}

// testConsumerRedelivery: what a member fetched and never acknowledged
// goes to another member once the visibility timeout passes.
func testConsumerRedelivery(t *testing.T, b Bus) {
	opts := bus.ConsumerOptions{Visibility: 200 * time.Millisecond}
	dead := consume(t, b, "g", "dead", opts, "cr:*")
	for i := range 5 {
		publish(t, b, "cr:x", strconv.Itoa(i), 0)
	}
	if got, _ := fetchAll(t, 5, false, dead); len(got) != 5 {
		t.Fatalf("the first member fetched %q", got)
	}
	_ = dead.Close()
	alive := consume(t, b, "g", "alive", opts, "cr:*")
	got, ds := fetchAll(t, 5, true, alive)
	if !slices.Equal(got, []string{"0", "1", "2", "3", "4"}) || !ds[0].Redelivered {
		t.Fatalf("the other member got %q (redelivered %v), want 0 to 4 again", got, ds[0].Redelivered)
	}
}

// testConsumerRestart: a member that comes back under its name gets its
// unacknowledged events first, and a namespace that appears later reaches
// a group whose pattern covers it.
func testConsumerRestart(t *testing.T, b Bus) {
	first := consume(t, b, "g", "m", bus.ConsumerOptions{}, "rs*")
	publish(t, b, "rs:a", "one", 0)
	publish(t, b, "rs:a", "two", 0)
	_, ds := fetchAll(t, 2, false, first)
	if err := first.Ack(t.Context(), ds[0]); err != nil {
		t.Fatal(err)
	}
	_ = first.Close()
	again := consume(t, b, "g", "m", bus.ConsumerOptions{}, "rs*")
	publish(t, b, "rsnew:z", "new namespace", 0)
	got, ds := fetchAll(t, 2, true, again)
	if !slices.Equal(got, []string{"two", "new namespace"}) || !ds[0].Redelivered || ds[1].Redelivered {
		t.Fatalf("after the restart got %q, want the unacknowledged two, then the new namespace's event", got)
	}
}

// fetchBounded fetches from m until want events came, checking that no
// Fetch returns more than n and that each returns its events in offset
// order; it acknowledges them when ack.
func fetchBounded(t *testing.T, m bus.Consumer, n, want int, ack bool) []bus.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	var all []bus.Delivery
	for len(all) < want {
		ds, err := m.Fetch(ctx, n)
		if err != nil {
			t.Fatalf("Fetch(%d) after %d of %d events = %v", n, len(all), want, err)
		}
		if len(ds) == 0 || len(ds) > n {
			t.Fatalf("Fetch(%d) = %d events, want 1 to %d", n, len(ds), n)
		}
		if !slices.IsSortedFunc(ds, func(a, b bus.Delivery) int { return bus.CompareOffsets(a.Position.Offset, b.Position.Offset) }) {
			t.Fatalf("Fetch(%d) returned events out of offset order", n)
		}
		if ack {
			if err := m.Ack(t.Context(), ds...); err != nil {
				t.Fatalf("Ack = %v", err)
			}
		}
		all = append(all, ds...)
	}
	return all
}

// inOrderOnce reports whether ds holds each of want once ("<channel>/<i>"
// payloads), in publishing order within each namespace.
func inOrderOnce(ds []bus.Delivery, want []string) bool {
	got := make([]string, len(ds))
	for i, d := range ds {
		got[i] = string(d.Payload)
	}
	return SameInEachNamespace(got, want)
}

// testConsumerFetchBound: Fetch(n) returns at most n events however many
// namespaces have a backlog, each event once, in offset order within a
// Fetch; so does the first Fetch of a member that restarts with more than
// n unacknowledged events in several namespaces, and a member taking over
// another's backlog.
func testConsumerFetchBound(t *testing.T, b Bus) {
	const n, per = 7, 20
	opts := bus.ConsumerOptions{Visibility: 300 * time.Millisecond}
	first := consume(t, b, "g", "m", opts, "fb*")
	var want []string
	for i := range per {
		for _, ch := range []string{"fba:x", "fbb:y", "fbc:z"} {
			p := ch + "/" + strconv.Itoa(i)
			publish(t, b, ch, p, 0)
			want = append(want, p)
		}
	}
	if ds := fetchBounded(t, first, n, len(want), false); !inOrderOnce(ds, want) {
		t.Fatalf("the first member's events are not each of %d once in order", len(want))
	}
	_ = first.Close()
	again := consume(t, b, "g", "m", opts, "fb*")
	ds := fetchBounded(t, again, n, len(want), false)
	if !inOrderOnce(ds, want) || !ds[0].Redelivered {
		t.Fatalf("after a restart, its unacknowledged events are not each of %d once in order (redelivered %v)", len(want), ds[0].Redelivered)
	}
	_ = again.Close()
	other := consume(t, b, "g", "other", opts, "fb*")
	if ds := fetchBounded(t, other, n, len(want), true); !ds[0].Redelivered || len(ds) != len(want) {
		t.Fatalf("another member took over %d events (redelivered %v), want %d", len(ds), ds[0].Redelivered, len(want))
	}
}

// testConsumerExtend: events a member keeps extending do not go to another
// member after the visibility timeout, including those it read ahead of
// its next Fetch; once it stops, they do.
func testConsumerExtend(t *testing.T, b Bus) {
	const vis = 2 * time.Second
	opts := bus.ConsumerOptions{Visibility: vis}
	busy := consume(t, b, "g", "busy", opts, "ext*")
	for i := range 4 {
		publish(t, b, "exta:x", "a"+strconv.Itoa(i), 0)
		publish(t, b, "extb:x", "b"+strconv.Itoa(i), 0)
	}
	// Two namespaces of four events each, four fetched: the other four
	// are held ahead, and Extend covers them.
	fetched := time.Now()
	ds := fetchBounded(t, busy, 4, 4, false)
	other := consume(t, b, "g", "other", opts, "ext*")
	at := func(d time.Duration) {
		timer := time.NewTimer(time.Until(fetched.Add(d)))
		defer timer.Stop()
		select {
		case <-timer.C:
		case <-t.Context().Done():
		}
	}
	// Extended at 0.6 and 1.2 visibility timeouts, the events are 0.3 of
	// one idle at 1.5, where without Extend they would be other's.
	for _, when := range []time.Duration{vis * 6 / 10, vis * 12 / 10} {
		at(when)
		if err := busy.Extend(t.Context(), ds...); err != nil {
			t.Fatalf("Extend = %v", err)
		}
	}
	at(vis * 15 / 10)
	short, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	if got, err := other.Fetch(short, 10); len(got) != 0 {
		t.Fatalf("while the busy member extended its events, another fetched %d of them (%v)", len(got), err)
	}
	got, redelivered := fetchAll(t, 8, true, other)
	if slices.Sort(got); !slices.Equal(got, []string{"a0", "a1", "a2", "a3", "b0", "b1", "b2", "b3"}) || !redelivered[0].Redelivered {
		t.Fatalf("once the busy member stopped extending, another got %q, want all 8 redelivered", got)
	}
}

// SameInEachChannel reports whether got and want hold the same events,
// each written "<channel>/…", in the same order within each channel: a
// channel's events are in one stream, whose order a bus keeps, while the
// streams of one namespace's partitions may interleave in either order.
func SameInEachChannel(got, want []string) bool {
	return sameInEach(got, want, func(s string) string { ch, _, _ := strings.Cut(s, "/"); return ch })
}

// SameInEachNamespace reports whether got and want hold the same events,
// each written "<channel>…" (so that its namespace is the text before the
// first ':'), in the same order within each namespace: across namespaces,
// events of one millisecond may come in either order.
func SameInEachNamespace(got, want []string) bool {
	return sameInEach(got, want, func(s string) string { ns, _, _ := strings.Cut(s, ":"); return ns })
}

// sameInEach reports whether got and want hold the same events in the
// same order within each group that of names.
func sameInEach(got, want []string, of func(string) string) bool {
	split := func(s []string) map[string][]string {
		m := map[string][]string{}
		for _, x := range s {
			m[of(x)] = append(m[of(x)], x)
		}
		return m
	}
	g, w := split(got), split(want)
	if len(got) != len(want) || len(g) != len(w) {
		return false
	}
	for ns := range w {
		if !slices.Equal(g[ns], w[ns]) {
			return false
		}
	}
	return true
}
