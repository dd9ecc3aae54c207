package redisbus

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/redistest"
)

// newPartitionedBus returns a bus of two partitions on one server.
func newPartitionedBus(t *testing.T) *Bus {
	t.Helper()
	srv := redistest.Shared(t)
	redistest.RequireReal(t, srv)
	b, err := New(srv.Client(t), Options{Prefix: redistest.Prefix(t), HistoryMaxLen: 1000, Partitions: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// channelIn returns a channel of namespace ns in partition part.
func channelIn(b *Bus, ns string, part int) string {
	for i := 0; ; i++ {
		if ch := ns + ":" + strconv.Itoa(i); b.partitionOf(ch) == part {
			return ch
		}
	}
}

// readHook holds the XREADGROUP of new events on one stream once it has
// taken some, until released; releases it when the member reads its own
// events again without that stream; and fails the next read of new events
// on another stream when asked.
type readHook struct {
	held, fail  string // stream keys
	landed      chan struct{}
	released    chan struct{}
	failNext    atomic.Bool
	landOnce    sync.Once
	releaseOnce sync.Once
}

func (h *readHook) release() { h.releaseOnce.Do(func() { close(h.released) }) }

func (h *readHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *readHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		args := cmd.Args()
		if !strings.EqualFold(cmd.Name(), "xreadgroup") || !slices.Contains(args, any(">")) {
			return next(ctx, cmd)
		}
		if slices.Contains(args, any(h.fail)) && h.failNext.CompareAndSwap(true, false) {
			err := errors.New("connection lost on the way")
			cmd.SetErr(err)
			return err
		}
		err := next(ctx, cmd)
		if res, _ := cmd.(*redis.XStreamSliceCmd).Result(); slices.Contains(args, any(h.held)) && len(res) > 0 {
			h.landOnce.Do(func() { close(h.landed) })
			<-h.released
		}
		return err
	}
}

func (h *readHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		own, held := false, false
		for _, cmd := range cmds {
			if strings.EqualFold(cmd.Name(), "xreadgroup") {
				own = true
				held = held || slices.Contains(cmd.Args(), any(h.held))
			}
		}
		select {
		case <-h.landed:
			if own && !held {
				h.release()
			}
		default:
		}
		return err
	}
}

// After a lost read, a member reads its own pending events again; one
// that another partition's read in flight took then must not be handed
// out by both.
func TestOwnEventsReadAgainWhileAReadIsInFlight(t *testing.T) {
	t.Parallel()
	b := newPartitionedBus(t)
	chA, chB := channelIn(b, "own", 0), channelIn(b, "own", 1)
	h := &readHook{
		held: b.streamFor(chB).key, fail: b.streamFor(chA).key,
		landed: make(chan struct{}), released: make(chan struct{}),
	}
	defer h.release()
	b.pub.AddHook(h)
	c, err := b.Consume(t.Context(), "g", "m", []string{"own:*"}, bus.ConsumerOptions{Visibility: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fetch := func(ctx context.Context) ([]string, error) {
		ds, err := c.Fetch(ctx, 10)
		var out []string
		for _, d := range ds {
			out = append(out, string(d.Payload))
		}
		return out, err
	}

	// A read in flight on partition 1 takes "b" and is held; partition
	// 0's next read is lost, and the Fetch fails.
	first := make(chan error, 1)
	go func() {
		got, err := fetch(t.Context())
		if err == nil {
			err = errors.New("no error: got " + strings.Join(got, ","))
		}
		first <- err
	}()
	if _, err := b.Publish(t.Context(), chB, []byte("b")); err != nil {
		t.Fatal(err)
	}
	<-h.landed
	h.failNext.Store(true)
	if err := <-first; err == nil || !strings.Contains(err.Error(), "lost on the way") {
		t.Fatalf("Fetch with a read lost = %v, want that error", err)
	}

	// The next Fetch reads the member's own events again: the held read
	// goes on once that Fetch has returned, or once it has read its own
	// events without the held read's partition.
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	all, err := fetch(ctx)
	if err != nil {
		t.Fatalf("Fetch after the lost read = %q, %v", all, err)
	}
	h.release()
	if _, err := b.Publish(t.Context(), chA, []byte("a")); err != nil {
		t.Fatal(err)
	}
	for !slices.Contains(all, "a") {
		ds, err := fetch(ctx)
		if err != nil {
			t.Fatalf("Fetch = %v, %v; have %q", ds, err, all)
		}
		all = append(all, ds...)
	}
	slices.Sort(all)
	if want := []string{"a", "b"}; !slices.Equal(all, want) {
		t.Fatalf("events fetched = %q, want %q, each once", all, want)
	}
}

// A delivery extended for longer than two visibility timeouts is still
// held: a read of the member's own events after a lost read leaves it.
func TestExtendedDeliveryIsNotReadAgain(t *testing.T) {
	t.Parallel()
	b := newPartitionedBus(t)
	const visibility = time.Hour
	con, err := b.Consume(t.Context(), "g", "m", []string{"ext:*"}, bus.ConsumerOptions{Visibility: visibility})
	if err != nil {
		t.Fatal(err)
	}
	defer con.Close()
	c := con.(*consumer)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := b.Publish(ctx, "ext:x", []byte("slow")); err != nil {
		t.Fatal(err)
	}
	ds, err := c.Fetch(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	// Handed out three visibility timeouts ago, and extended now.
	key := b.streamFor("ext:x").key + " " + ds[0].Position.Offset
	c.mu.Lock()
	c.given[key] = time.Now().Add(-3 * visibility)
	c.mu.Unlock()
	if err := c.Extend(ctx, ds...); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Publish(ctx, "ext:x", []byte("next")); err != nil {
		t.Fatal(err)
	}
	if next, err := c.Fetch(ctx, 1); err != nil || string(next[0].Payload) != "next" {
		t.Fatalf("Fetch = %v, %v; want next", next, err)
	}
	// As after a lost read.
	c.ownFirst = true
	clear(c.ownFrom)
	clear(c.ownDone)
	if _, err := b.Publish(ctx, "ext:x", []byte("last")); err != nil {
		t.Fatal(err)
	}
	if got, err := c.Fetch(ctx, 10); err != nil || len(got) != 1 || string(got[0].Payload) != "last" {
		var payloads []string
		for _, d := range got {
			payloads = append(payloads, string(d.Payload))
		}
		t.Fatalf("Fetch after a lost read = %q, %v; want only last", payloads, err)
	}
}

func TestFetchAfterCloseEnds(t *testing.T) {
	t.Parallel()
	b := newPartitionedBus(t)
	c, err := b.Consume(t.Context(), "g", "m", []string{"closed:*"}, bus.ConsumerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if ds, err := c.Fetch(ctx, 1); !errors.Is(err, bus.ErrClosed) {
		t.Fatalf("Fetch after Close = %v, %v; want %v", ds, err, bus.ErrClosed)
	}
}
