package redisbus_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/bus/bustest"
	"github.com/eventbus-suite/eventbus/pkg/bus/redisbus"
	"github.com/eventbus-suite/eventbus/pkg/envelope"
	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
	eventbusv1 "github.com/eventbus-suite/eventbus/proto/gen/eventbus/v1"
)

func TestMain(m *testing.M) { redistest.Main(m) }

func newBus(t testing.TB, srv *redistest.Server, opts redisbus.Options) *redisbus.Bus {
	t.Helper()
	if opts.Prefix == "" {
		opts.Prefix = redistest.Prefix(t)
	}
	b, err := redisbus.New(srv.Client(t), opts)
	if err != nil {
		t.Fatalf("redisbus.New = %v", err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

func TestConformance(t *testing.T) {
	srv := redistest.Shared(t)
	// The embedded fallback delivers a message once per connection, not once
	// per matching pattern as Redis does.
	redistest.RequireReal(t, srv)
	t.Run("LiveOnly", func(t *testing.T) {
		bustest.Run(t, func(t *testing.T) bustest.Bus { return newBus(t, srv, redisbus.Options{}) }, bustest.Features{})
	})
	t.Run("History", func(t *testing.T) {
		bustest.Run(t, func(t *testing.T) bustest.Bus {
			return newBus(t, srv, redisbus.Options{HistoryMaxLen: 1000, HistoryTTL: time.Hour})
		}, bustest.Features{History: true})
	})
	// Each namespace spread over 4 streams, as on a cluster, with the
	// live wire of one server.
	t.Run("Partitioned", func(t *testing.T) {
		bustest.Run(t, func(t *testing.T) bustest.Bus {
			return newBus(t, srv, redisbus.Options{HistoryMaxLen: 1000, HistoryTTL: time.Hour, Partitions: 4})
		}, bustest.Features{History: true})
	})
}

// On a Redis Cluster (3 masters, 3 replicas), each namespace spread over
// partitions on every shard, live through sharded subscriptions: the bus
// behaves as on one server.
func TestConformanceOnACluster(t *testing.T) {
	c := redistest.SharedCluster(t)
	bustest.Run(t, func(t *testing.T) bustest.Bus {
		b, err := redisbus.New(c.Client(t), redisbus.Options{Prefix: redistest.Prefix(t), HistoryMaxLen: 1000, HistoryTTL: time.Hour})
		if err != nil {
			t.Fatalf("redisbus.New = %v", err)
		}
		t.Cleanup(func() { _ = b.Close() })
		return b
	}, bustest.Features{History: true, Sharded: true})
}

func TestPrefixIsolates(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	a := newBus(t, srv, redisbus.Options{})
	b := newBus(t, srv, redisbus.Options{})
	sub, err := a.Subscribe(t.Context(), "*")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if r, err := b.Publish(t.Context(), "order:placed", []byte("b")); err != nil || r.Receivers != 0 {
		t.Fatalf("Publish on another prefix = %d, %v; want 0, nil", r.Receivers, err)
	}
	if r, err := a.Publish(t.Context(), "order:placed", []byte("a")); err != nil || r.Receivers != 1 {
		t.Fatalf("Publish on own prefix = %d, %v; want 1, nil", r.Receivers, err)
	}
	if m := bustest.Receive(t, sub); m.Channel != "order:placed" || !slices.Equal(m.Patterns, []string{"*"}) || string(m.Payload) != "a" {
		t.Fatalf("received %+v, want the prefix taken off and payload a", m)
	}
}

func TestNewRejectsBadPrefix(t *testing.T) {
	t.Parallel()
	for _, p := range []string{"noColon", "wild*:", "a::", ":"} {
		if _, err := redisbus.New(redis.NewClient(&redis.Options{}), redisbus.Options{Prefix: p}); err == nil {
			t.Errorf("New(prefix %q) = nil error, want one", p)
		}
	}
}

func TestResubscribesAfterRedisRestart(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	redistest.RequireReal(t, srv)
	var logs servicetest.Buffer
	reg := prometheus.NewRegistry()
	b := newBus(t, srv, redisbus.Options{
		Logger:     slog.New(slog.NewJSONHandler(&logs, nil)),
		Registerer: reg,
		Namespace:  "test",
	})
	sub, err := b.Subscribe(t.Context(), "order:*", "user:created")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()

	srv.Stop(t)
	// Publishing while Redis is down fails promptly rather than hanging.
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	_, err = b.Publish(ctx, "order:placed", []byte("lost"))
	cancel()
	if err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Publish with Redis down = %v, want a connection error", err)
	}
	srv.Restart(t)

	servicetest.WaitFor(t, "subscription live again", sub.Live)
	// Live is the receive loop's last word; under load it may not have seen
	// the loss yet. Wait until Redis has both subscriptions back as well.
	rdb := srv.Client(t)
	servicetest.WaitFor(t, "both subscriptions back in Redis", func() bool {
		pat, err1 := rdb.PubSubNumPat(t.Context()).Result()
		chans, err2 := rdb.PubSubChannels(t.Context(), "*").Result()
		return err1 == nil && err2 == nil && pat == 1 && len(chans) == 1
	})
	// Where the lost messages would have been, a Gap says so, before
	// anything published since.
	if m := bustest.Receive(t, sub); !m.Gap || m.Channel != "" {
		t.Fatalf("first after the restart = %+v, want a Gap", m)
	}
	for _, ch := range []string{"order:placed", "user:created"} {
		if r, err := b.Publish(t.Context(), ch, []byte(ch)); err != nil || r.Receivers != 1 {
			t.Fatalf("Publish(%s) after restart = %d, %v; want 1, nil", ch, r.Receivers, err)
		}
		if m := bustest.Receive(t, sub); string(m.Payload) != ch {
			t.Fatalf("received %q after restart, want %q", m.Payload, ch)
		}
	}
	if got := counterValue(t, reg, "test_bus_reconnects_total"); got < 1 {
		t.Errorf("test_bus_reconnects_total = %v, want ≥ 1", got)
	}
	for _, want := range []string{"redis subscription lost", "redis subscription restored"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("logs lack %q:\n%s", want, logs.String())
		}
	}
}

// counterValue reads a counter from reg.
func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}

func TestPublishWithRedisStoppedIsNotSent(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	redistest.RequireReal(t, srv)
	b := newBus(t, srv, redisbus.Options{})
	if _, err := b.Publish(t.Context(), "a:b", []byte("up")); err != nil {
		t.Fatalf("Publish = %v", err)
	}
	srv.Stop(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := b.Publish(ctx, "a:b", []byte("down")); !errors.Is(err, bus.ErrNotSent) {
		t.Errorf("Publish with Redis stopped = %v, want an error wrapping bus.ErrNotSent", err)
	}
	_, errs, err := b.PublishBatch(ctx, []bus.Publication{{Channel: "a:b"}, {Channel: "a:c"}})
	if err != nil || len(errs) != 2 || !errors.Is(errs[0], bus.ErrNotSent) || !errors.Is(errs[1], bus.ErrNotSent) {
		t.Errorf("PublishBatch with Redis stopped = %v, %v; want each error wrapping bus.ErrNotSent", errs, err)
	}
}

func TestPublishWithRedisHungEndsByTheDeadline(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	redistest.RequireReal(t, srv)
	prefix := redistest.Prefix(t)
	b := newBus(t, srv, redisbus.Options{Prefix: prefix})
	watcher := newBus(t, srv, redisbus.Options{Prefix: prefix})
	sub, err := watcher.Subscribe(t.Context(), "hung:*")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if _, err := b.Publish(t.Context(), "hung:a", []byte("before")); err != nil {
		t.Fatalf("Publish = %v", err)
	}
	if m := bustest.Receive(t, sub); string(m.Payload) != "before" {
		t.Fatalf("received %q, want before", m.Payload)
	}
	srv.Pause(t)
	// go-redis would wait out its 3 s read timeout and then send the
	// pipeline again on a new connection, three more times; the deadline
	// ends it instead, and the caller hears what happened, not ctx.Err().
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	_, err = b.Publish(ctx, "hung:a", []byte("written, never answered"))
	cancel()
	if err == nil || errors.Is(err, bus.ErrNotSent) || !strings.Contains(err.Error(), "publish to redis") {
		t.Fatalf("Publish with Redis hung = %v, want the pipeline's error, not bus.ErrNotSent: the message was written", err)
	}
	srv.Resume(t)
	if _, err := b.Publish(t.Context(), "hung:b", []byte("after")); err != nil {
		t.Fatalf("Publish after Redis resumed = %v", err)
	}
	// The first message was written before Redis froze, so Redis runs it
	// when it thaws: at most once, never again by a retry.
	var got []string
	for {
		m := bustest.Receive(t, sub)
		got = append(got, string(m.Payload))
		if string(m.Payload) == "after" {
			break
		}
	}
	if len(got) > 2 {
		t.Errorf("received %q, want each message at most once", got)
	}
}

func TestLostReplyIsNotSentAgain(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	redistest.RequireReal(t, srv)
	p := newCutProxy(t, srv.Addr, "publish")
	prefix := redistest.Prefix(t)
	b := newBus(t, &redistest.Server{Addr: p.addr()}, redisbus.Options{Prefix: prefix})
	watcher := newBus(t, srv, redisbus.Options{Prefix: prefix})
	sub, err := watcher.Subscribe(t.Context(), "lost:*")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()

	p.cutAfterPublish.Store(true)
	n, err := b.Publish(t.Context(), "lost:a", []byte("once"))
	if err == nil || errors.Is(err, bus.ErrNotSent) {
		t.Fatalf("Publish whose reply was lost = %+v, %v; want an error that leaves the outcome open", n, err)
	}
	if r, err := b.Publish(t.Context(), "lost:b", []byte("sentinel")); err != nil || r.Receivers != 1 {
		t.Fatalf("Publish(sentinel) = %d, %v; want 1, nil", r.Receivers, err)
	}
	if m := bustest.Receive(t, sub); string(m.Payload) != "once" {
		t.Fatalf("received %q, want the message whose reply was lost: Redis had it", m.Payload)
	}
	if m := bustest.Receive(t, sub); string(m.Payload) != "sentinel" {
		t.Fatalf("received %q, want the sentinel: the message was sent again", m.Payload)
	}
	if got := p.publishes.Load(); got != 2 {
		t.Errorf("proxy saw %d PUBLISH commands, want 2: one message and the sentinel", got)
	}
}

// cutProxy relays TCP between go-redis and a real Redis, and when told,
// drops the connection that carries the next command named cmd once Redis
// has it but before its reply gets back: a reply lost on the network.
type cutProxy struct {
	l               net.Listener
	redis           string
	cmd             []byte // "\r\n<command>\r\n", lower case
	cutAfterPublish atomic.Bool
	publishes       atomic.Int64 // commands named cmd seen
}

func newCutProxy(t *testing.T, redisAddr, cmd string) *cutProxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{l: l, redis: redisAddr, cmd: []byte("\r\n" + cmd + "\r\n")}
	var wg sync.WaitGroup
	t.Cleanup(func() { _ = l.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { p.relay(c) })
		}
	})
	return p
}

func (p *cutProxy) addr() string { return p.l.Addr().String() }

func (p *cutProxy) relay(client net.Conn) {
	defer client.Close()
	server, err := net.Dial("tcp", p.redis)
	if err != nil {
		return
	}
	defer server.Close()
	var cut atomic.Bool
	go func() {
		defer client.Close()
		buf := make([]byte, 64<<10)
		for {
			n, err := server.Read(buf)
			if n > 0 && !cut.Load() {
				if _, err := client.Write(buf[:n]); err != nil {
					return
				}
			}
			if err != nil || cut.Load() {
				return
			}
		}
	}()
	buf := make([]byte, 64<<10)
	for {
		n, err := client.Read(buf)
		if n > 0 {
			k := bytes.Count(bytes.ToLower(buf[:n]), p.cmd)
			p.publishes.Add(int64(k))
			// Mark the cut before Redis can answer, then let the
			// command through.
			if k > 0 && p.cutAfterPublish.CompareAndSwap(true, false) {
				cut.Store(true)
			}
			if _, err := server.Write(buf[:n]); err != nil {
				return
			}
			if cut.Load() {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func TestPublishAfterCloseIsNotSent(t *testing.T) {
	t.Parallel()
	b, err := redisbus.New(redistest.Shared(t).Client(t), redisbus.Options{Prefix: redistest.Prefix(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	// The request channel has room, so a publish may be queued after the
	// pipeline stopped: it must still be answered.
	for range 100 {
		if _, err := b.Publish(t.Context(), "closed:a", nil); !errors.Is(err, bus.ErrClosed) || !errors.Is(err, bus.ErrNotSent) {
			t.Fatalf("Publish after Close = %v, want bus.ErrClosed and bus.ErrNotSent", err)
		}
	}
}

// Redis forgets its scripts when it restarts or is told to: a publish then
// sends the script again, once, and is recorded once.
func TestPublishAfterTheScriptCacheIsFlushed(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t) // its script cache is flushed: a server of its own
	redistest.RequireReal(t, srv)
	b := newBus(t, srv, redisbus.Options{HistoryMaxLen: 1000})
	before, err := b.Publish(t.Context(), "flushed:x", []byte("before"))
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Client(t).ScriptFlush(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	after, err := b.Publish(t.Context(), "flushed:x", []byte("after"))
	if err != nil || after.Epoch != before.Epoch || after.Offset <= before.Offset {
		t.Fatalf("Publish after SCRIPT FLUSH = %+v, %v; want a position after %+v", after.Position, err, before.Position)
	}
	page, err := b.History(t.Context(), "flushed:*", nil, 10)
	if err != nil || len(page.Events) != 2 || string(page.Events[1].Payload) != "after" {
		t.Fatalf("History = %+v, %v; want before and after, once each", page.Events, err)
	}
}

// History answers ErrTruncated, never a partial page, when the stream was
// trimmed past the position asked for or lost with Redis's data; after a
// flush the namespace has a new epoch.
func TestHistoryTruncated(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t) // flushed below: a server of its own
	redistest.RequireReal(t, srv)
	b := newBus(t, srv, redisbus.Options{HistoryMaxLen: 10})
	first, err := b.Publish(t.Context(), "trim:x", []byte("first"))
	if err != nil {
		t.Fatal(err)
	}
	page, err := b.History(t.Context(), "trim:*", nil, 1)
	if err != nil || len(page.Events) != 1 || page.Events[0].Position != first.Position {
		t.Fatalf("History = %+v, %v; want the first event", page, err)
	}
	// Trimming with ~ frees whole nodes of 100 entries: publish past one.
	for i := range 300 {
		if _, err := b.Publish(t.Context(), "trim:x", []byte(strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.History(t.Context(), "trim:*", page.Next, 10); !errors.Is(err, bus.ErrTruncated) {
		t.Fatalf("History past a trimmed position = %v, want ErrTruncated", err)
	}
	recent, err := b.History(t.Context(), "trim:*", nil, 1000)
	if err != nil || len(recent.Events) == 0 || len(recent.Events) >= 301 {
		t.Fatalf("History from the oldest kept = %d events, %v; want the trimmed stream's", len(recent.Events), err)
	}
	if err := srv.Client(t).FlushAll(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := b.History(t.Context(), "trim:*", recent.Next, 10); !errors.Is(err, bus.ErrTruncated) {
		t.Fatalf("History after a flush = %v, want ErrTruncated", err)
	}
	again, err := b.Publish(t.Context(), "trim:x", []byte("again"))
	if err != nil || again.Epoch == "" || again.Epoch == first.Epoch {
		t.Fatalf("Publish after a flush = %+v, %v; want a new epoch, not %s", again.Position, err, first.Epoch)
	}
}

// BenchmarkHistory reads a namespace's record a page of 1,000 at a time;
// its events/s figure is in docs/benchmarks.md.
func BenchmarkHistory(b *testing.B) {
	srv := redistest.Shared(b)
	bs := newBus(b, srv, redisbus.Options{HistoryMaxLen: 1_000_000})
	const n = 100_000
	payload := make([]byte, 200)
	for i := 0; i < n; i += 500 {
		msgs := make([]bus.Publication, 500)
		for j := range msgs {
			msgs[j] = bus.Publication{Channel: "bench:history", Payload: payload}
		}
		if _, _, err := bs.PublishBatch(b.Context(), msgs); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	read := 0
	for b.Loop() {
		var cursor bus.Cursor
		for {
			page, err := bs.History(b.Context(), "bench:*", cursor, 1000)
			if err != nil {
				b.Fatal(err)
			}
			read += len(page.Events)
			if !page.More {
				break
			}
			cursor = page.Next
		}
	}
	b.ReportMetric(float64(read)/b.Elapsed().Seconds(), "events/s")
}

// A consumer whose streams were lost with Redis's data joins them again
// and reads on from the first event recorded since.
func TestConsumerAfterAFlush(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t) // flushed below: a server of its own
	redistest.RequireReal(t, srv)
	b := newBus(t, srv, redisbus.Options{HistoryMaxLen: 1000})
	c, err := b.Consume(t.Context(), "g", "m", []string{"fl:*"}, bus.ConsumerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	fetch := func(want string) bus.Delivery {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		for {
			ds, err := c.Fetch(ctx, 1)
			if err != nil {
				t.Fatalf("Fetch = %v, want %s", err, want)
			}
			if len(ds) == 1 {
				if string(ds[0].Payload) != want {
					t.Fatalf("Fetch = %s, want %s", ds[0].Payload, want)
				}
				if err := c.Ack(t.Context(), ds[0]); err != nil {
					t.Fatal(err)
				}
				return ds[0]
			}
		}
	}
	if _, err := b.Publish(t.Context(), "fl:x", []byte("before")); err != nil {
		t.Fatal(err)
	}
	before := fetch("before")
	if err := srv.Client(t).FlushAll(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Publish(t.Context(), "fl:x", []byte("after")); err != nil {
		t.Fatal(err)
	}
	if after := fetch("after"); after.Position.Epoch == before.Position.Epoch {
		t.Fatalf("epoch %s after the flush, want a new one", after.Position.Epoch)
	}
	// A flush while the consumer waits in XREADGROUP (Redis answers
	// UNBLOCKED) is the same loss, not an error of the consumer's.
	got := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		for {
			ds, err := c.Fetch(ctx, 1)
			if err != nil || len(ds) == 1 {
				if err == nil && string(ds[0].Payload) != "waited" {
					err = fmt.Errorf("got %s", ds[0].Payload)
				}
				got <- err
				return
			}
		}
	}()
	rdb := srv.Client(t)
	servicetest.WaitFor(t, "the consumer to wait in XREADGROUP", func() bool {
		info, err := rdb.Info(t.Context(), "clients").Result()
		return err == nil && !strings.Contains(info, "blocked_clients:0")
	})
	if err := rdb.FlushAll(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Publish(t.Context(), "fl:x", []byte("waited")); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatalf("Fetch across a flush while it waited = %v, want the event published after", err)
	}
}

// Redis killed (SIGKILL) and restarted from its append-only file in the
// middle of a stream: the record and the group's position survive, the
// epoch stays, and the consumer reads on from where it was, missing
// nothing Redis acknowledged.
func TestRedisKilledAndRestartedWithItsData(t *testing.T) {
	t.Parallel()
	srv := redistest.StartPersistent(t)
	b := newBus(t, srv, redisbus.Options{HistoryMaxLen: 10_000})
	c, err := b.Consume(t.Context(), "g", "m", []string{"aof:*"}, bus.ConsumerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	read := func(n int) []bus.Delivery {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		var all []bus.Delivery
		for len(all) < n {
			ds, err := c.Fetch(ctx, n-len(all))
			if err != nil && ctx.Err() != nil {
				t.Fatalf("fetched %d of %d: %v", len(all), n, err)
			}
			if len(ds) > 0 {
				if err := c.Ack(ctx, ds...); err != nil {
					continue // Redis is coming back: the events come again
				}
			}
			all = append(all, ds...)
		}
		return all
	}
	publishN := func(from, to int) (last bus.Receipt) {
		t.Helper()
		for i := from; i < to; i++ {
			r, err := b.Publish(t.Context(), "aof:x", []byte(strconv.Itoa(i)))
			if err != nil {
				t.Fatalf("Publish %d = %v", i, err)
			}
			last = r
		}
		return last
	}
	before := publishN(0, 500)
	got := read(250)
	srv.Stop(t) // SIGKILL
	srv.Restart(t)
	after := publishN(500, 1000)
	if after.Epoch != before.Epoch {
		t.Fatalf("epoch %s after the restart, was %s: the record was kept", after.Epoch, before.Epoch)
	}
	got = append(got, read(750)...)
	seen := map[string]bool{}
	for _, d := range got {
		seen[string(d.Payload)] = true
	}
	for i := range 1000 {
		if !seen[strconv.Itoa(i)] {
			t.Fatalf("event %d never came to the consumer", i)
		}
	}
}

// A consumer group that falls further behind than the stream keeps holds
// the trimming back: it loses nothing, and once it has read on, the
// stream is trimmed again. That holds for a group whose pattern covers a
// namespace that appears while no member is looking.
func TestTrimmingWaitsForConsumerGroups(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	redistest.RequireReal(t, srv)
	for _, tt := range []struct{ pattern, channel string }{
		{"trimg:*", "trimg:x"},   // a namespace the group names
		{"trimw*", "trimwnew:x"}, // one that appears after the group is made
	} {
		b := newBus(t, srv, redisbus.Options{HistoryMaxLen: 100})
		c, err := b.Consume(t.Context(), "slow", "m", []string{tt.pattern}, bus.ConsumerOptions{})
		if err != nil {
			t.Fatal(err)
		}
		const n = 2000 // twenty times what the stream keeps
		for i := 0; i < n; i += 100 {
			msgs := make([]bus.Publication, 100)
			for j := range msgs {
				msgs[j] = bus.Publication{Channel: tt.channel, Payload: []byte(strconv.Itoa(i + j))}
			}
			if _, _, err := b.PublishBatch(t.Context(), msgs); err != nil {
				t.Fatal(err)
			}
		}
		got := 0
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		for got < n {
			ds, err := c.Fetch(ctx, 500)
			if err != nil {
				t.Fatalf("%s: fetched %d of %d events: %v", tt.pattern, got, n, err)
			}
			for _, d := range ds {
				if string(d.Payload) != strconv.Itoa(got) {
					t.Fatalf("%s: event %d has payload %s: one was lost", tt.pattern, got, d.Payload)
				}
				got++
			}
			if err := c.Ack(ctx, ds...); err != nil {
				t.Fatal(err)
			}
		}
		cancel()
		// Caught up: the next publish trims to about the 100 kept.
		if _, err := b.Publish(t.Context(), tt.channel, []byte("last")); err != nil {
			t.Fatal(err)
		}
		page, err := b.History(t.Context(), tt.pattern, nil, 10_000)
		if err != nil || len(page.Events) > 400 {
			t.Fatalf("%s: history after the group caught up holds %d events, %v; want it trimmed to about 100", tt.pattern, len(page.Events), err)
		}
	}
}

// What a plain subscriber of the Redis wire gets, as the seed's consumers
// subscribe: an envelope any protobuf decoder reads, its position among
// its fields, and nothing to strip; subscribers of the bus get the payload
// as published and the position beside it.
func TestLiveMessagesAreEnvelopesWithTheirPosition(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	redistest.RequireReal(t, srv)
	prefix := redistest.Prefix(t)
	b := newBus(t, srv, redisbus.Options{Prefix: prefix, HistoryMaxLen: 1000})
	plain := srv.Client(t).PSubscribe(t.Context(), prefix+"wire:*")
	defer plain.Close()
	if _, err := plain.Receive(t.Context()); err != nil { // the subscription's confirmation
		t.Fatal(err)
	}
	sub, err := b.Subscribe(t.Context(), "wire:*")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	payload, err := proto.Marshal(&eventbusv1.Envelope{Id: "w1", Type: "wire.sent", Channel: "wire:sent"})
	if err != nil {
		t.Fatal(err)
	}
	sent := time.Now()
	r, err := b.Publish(t.Context(), "wire:sent", payload)
	if err != nil {
		t.Fatal(err)
	}
	m, err := plain.ReceiveMessage(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var env eventbusv1.Envelope
	if err := proto.Unmarshal([]byte(m.Payload), &env); err != nil {
		t.Fatalf("the live message is no envelope: %v", err)
	}
	if env.GetId() != "w1" || env.GetOffset() != r.Offset || env.GetEpoch() != r.Epoch {
		t.Errorf("decoded id %q at %s/%s, want w1 at the receipt's %s/%s", env.GetId(), env.GetOffset(), env.GetEpoch(), r.Offset, r.Epoch)
	}
	var got bus.Message
	select {
	case got = <-sub.Messages():
	case <-time.After(10 * time.Second):
		t.Fatal("the bus's subscriber got nothing")
	}
	if !bytes.Equal(got.Payload, payload) || got.Position != r.Position {
		t.Errorf("the bus's subscriber got %q at %+v, want the payload as published at %+v", got.Payload, got.Position, r.Position)
	}
	if got.Received.Before(sent) || got.Received.After(time.Now()) {
		t.Errorf("received at %v, want when the subscription read it, after %v", got.Received, sent)
	}
}

// With the JSON wire (Options.Encode, BUS_WIRE=json) a plain subscriber
// gets a JSON object any JSON parser reads, its position among its
// members; the bus's subscribers and the record get the JSON as encoded,
// without them.
func TestJSONWireCarriesThePosition(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	redistest.RequireReal(t, srv)
	prefix := redistest.Prefix(t)
	b := newBus(t, srv, redisbus.Options{Prefix: prefix, HistoryMaxLen: 1000, Encode: envelope.ToJSON})
	plain := srv.Client(t).PSubscribe(t.Context(), prefix+"jw:*")
	defer plain.Close()
	if _, err := plain.Receive(t.Context()); err != nil {
		t.Fatal(err)
	}
	sub, err := b.Subscribe(t.Context(), "jw:*")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	env := &eventbusv1.Envelope{Id: "j1", Type: "jw.sent", Channel: "jw:sent", Source: "test"}
	payload, err := proto.Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	r, err := b.Publish(t.Context(), "jw:sent", payload)
	if err != nil {
		t.Fatal(err)
	}
	m, err := plain.ReceiveMessage(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var parsed map[string]any
	if err := json.Unmarshal([]byte(m.Payload), &parsed); err != nil {
		t.Fatalf("the live message %q is no JSON: %v", m.Payload, err)
	}
	if parsed["id"] != "j1" || parsed["offset"] != r.Offset || parsed["epoch"] != r.Epoch {
		t.Errorf("parsed %v, want id j1 at the receipt's %s/%s", parsed, r.Offset, r.Epoch)
	}
	var got bus.Message
	select {
	case got = <-sub.Messages():
	case <-time.After(10 * time.Second):
		t.Fatal("the bus's subscriber got nothing")
	}
	want := envelope.ToJSON(payload)
	if !bytes.Equal(got.Payload, want) || got.Position != r.Position {
		t.Errorf("the bus's subscriber got %s at %+v, want %s at %+v", got.Payload, got.Position, want, r.Position)
	}
	page, err := b.History(t.Context(), "jw:*", nil, 10)
	if err != nil || len(page.Events) != 1 || !bytes.Equal(page.Events[0].Payload, want) {
		t.Fatalf("History = %+v, %v; want the JSON as encoded", page.Events, err)
	}
	if back, err := envelope.Unmarshal(got.Payload); err != nil || !proto.Equal(back, env) {
		t.Errorf("Unmarshal of the JSON wire = %v, %v; want %v", back, err, env)
	}
}

// A bus without history appends no position, so a message that merely
// ends like one (an envelope's last field, JSON members named so) reaches
// its subscribers as it was published, with no position.
func TestWithoutHistoryNothingIsTakenAsAPosition(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	redistest.RequireReal(t, srv)
	b := newBus(t, srv, redisbus.Options{})
	sub, err := b.Subscribe(t.Context(), "np:*")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	for _, payload := range []string{"xJ\x031-0R\x02ab", `{"a":1,"offset":"1-0","epoch":"ab"}`, "\x00eb1 ab 1-0\nbody"} {
		if _, err := b.Publish(t.Context(), "np:x", []byte(payload)); err != nil {
			t.Fatal(err)
		}
		select {
		case m := <-sub.Messages():
			if string(m.Payload) != payload || !m.Position.IsZero() {
				t.Errorf("got %q at %+v, want %q with no position", m.Payload, m.Position, payload)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the subscriber got nothing")
		}
	}
}

// Trimming keeps at least MAXLEN entries after every run and not many
// more: MAXLEN, plus the runs between marks (every 10 entries for 1,000),
// plus a stream node Redis trims whole (100). A stream recorded before the
// marks were kept (no count, no marks) is trimmed as before, and the
// marks take over; they stay about MAXLEN/every however long it runs.
func TestTrimmingKeepsAboutMaxLen(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	redistest.RequireReal(t, srv)
	prefix := redistest.Prefix(t)
	const maxLen, most = 1000, 1000 + 10 + 100 + 7
	b := newBus(t, srv, redisbus.Options{Prefix: prefix, HistoryMaxLen: maxLen})
	rdb := srv.Client(t)
	key := prefix + "stream:{keep}"
	published := 0
	publish := func(runs int) {
		t.Helper()
		for range runs {
			msgs := make([]bus.Publication, 7) // runs that straddle the marks
			for j := range msgs {
				msgs[j] = bus.Publication{Channel: "keep:x", Payload: []byte(strconv.Itoa(published))}
				published++
			}
			if _, _, err := b.PublishBatch(t.Context(), msgs); err != nil {
				t.Fatal(err)
			}
			n, err := rdb.XLen(t.Context(), key).Result()
			if err != nil {
				t.Fatal(err)
			}
			if want := min(published, maxLen); n < int64(want) {
				t.Fatalf("after %d events the stream holds %d: trimmed below %d", published, n, want)
			}
		}
	}
	publish(1000)
	if n := rdb.XLen(t.Context(), key).Val(); n > most {
		t.Fatalf("after %d events the stream holds %d, want at most %d", published, n, most)
	}
	if n := rdb.ZCard(t.Context(), key+":marks").Val(); n > maxLen/10+2 {
		t.Errorf("%d marks for MAXLEN %d every 10, want about 100", n, maxLen)
	}

	// A stream recorded before the count and the marks: it grows past
	// MAXLEN by hand, then the next runs trim it back.
	if err := rdb.HDel(t.Context(), key+":meta", "added").Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Del(t.Context(), key+":marks").Err(); err != nil {
		t.Fatal(err)
	}
	for i := range 3000 {
		if err := rdb.XAdd(t.Context(), &redis.XAddArgs{Stream: key, Values: []any{"c", prefix + "keep:x", "p", "old" + strconv.Itoa(i)}}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	publish(400)
	if n := rdb.XLen(t.Context(), key).Val(); n > most {
		t.Fatalf("a stream recorded before the marks holds %d after %d more events, want at most %d", n, 400*7, most)
	}
	if added, err := rdb.HGet(t.Context(), key+":meta", "added").Int(); err != nil || added < 400*7 {
		t.Errorf("the count of entries added = %d, %v; want at least the %d published since", added, err, 400*7)
	}
}

// A member back under its name gets its unacknowledged events once, then
// new ones, even if it leaves those unacknowledged: they come again only
// through the visibility timeout.
func TestOwnUnacknowledgedEventsComeOnce(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	redistest.RequireReal(t, srv)
	b := newBus(t, srv, redisbus.Options{HistoryMaxLen: 1000})
	consume := func() bus.Consumer {
		c, err := b.Consume(t.Context(), "g", "m", []string{"own:*"}, bus.ConsumerOptions{Visibility: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	fetch := func(c bus.Consumer) []string {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		ds, err := c.Fetch(ctx, 10)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, d := range ds {
			got = append(got, string(d.Payload))
		}
		return got
	}
	first := consume()
	for _, p := range []string{"a", "b"} {
		if _, err := b.Publish(t.Context(), "own:x", []byte(p)); err != nil {
			t.Fatal(err)
		}
	}
	if got := fetch(first); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("first fetch = %q", got)
	}
	again := consume()
	if got := fetch(again); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("fetch after the restart = %q, want the unacknowledged a and b", got)
	}
	if _, err := b.Publish(t.Context(), "own:x", []byte("c")); err != nil {
		t.Fatal(err)
	}
	if got := fetch(again); !slices.Equal(got, []string{"c"}) {
		t.Fatalf("next fetch = %q, want the new c, not a and b again", got)
	}
}

// Stats names every recorded namespace with its consumer groups: their
// members, pending events and lag.
func TestStatsShowConsumerGroups(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	b := newBus(t, srv, redisbus.Options{HistoryMaxLen: 1000})
	c, err := b.Consume(t.Context(), "stg", "m1", []string{"st:*"}, bus.ConsumerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := b.Publish(t.Context(), "st:x", []byte(strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if ds, err := c.Fetch(ctx, 1); err != nil || len(ds) != 1 {
		t.Fatalf("Fetch = %v, %v", ds, err)
	}
	st, err := b.Stats(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range st.Namespaces {
		if n.Namespace != "st" {
			continue
		}
		if n.Events != 3 || n.Epoch == "" || len(n.Groups) != 1 {
			t.Fatalf("namespace st = %+v, want 3 events, an epoch and the group", n)
		}
		if g := n.Groups[0]; g.Name != "stg" || g.Consumers != 1 || g.Pending != 1 || g.Lag != 2 {
			t.Fatalf("group = %+v, want stg with 1 member, 1 pending, lag 2", g)
		}
		return
	}
	t.Fatalf("Stats = %+v, want the namespace st", st.Namespaces)
}

// Last gives each matching channel's latest event within the window it
// scans, oldest first, across namespaces.
func TestLast(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	b := newBus(t, srv, redisbus.Options{Prefix: redistest.Prefix(t), HistoryMaxLen: 1000})
	for _, m := range [][2]string{{"lt:a", "a1"}, {"lt:b", "b1"}, {"lt:a", "a2"}, {"lt:a:x", "ax"}, {"ltx:a", "other"}} {
		if _, err := b.Publish(t.Context(), m[0], []byte(m[1])); err != nil {
			t.Fatal(err)
		}
	}
	got := func(pattern string, scan int) []string {
		t.Helper()
		events, err := b.Last(t.Context(), pattern, scan)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range events {
			out = append(out, e.Channel+"="+string(e.Payload))
		}
		return out
	}
	if g := got("lt:*", 100); !slices.Equal(g, []string{"lt:b=b1", "lt:a=a2", "lt:a:x=ax"}) {
		t.Errorf("Last(lt:*) = %q", g)
	}
	if g := got("lt:a", 100); !slices.Equal(g, []string{"lt:a=a2"}) {
		t.Errorf("Last(lt:a) = %q", g)
	}
	if g := got("lt:b", 2); len(g) != 0 {
		t.Errorf("Last(lt:b) within the newest 2 entries = %q, want none", g)
	}
	if g := got("none:*", 100); len(g) != 0 {
		t.Errorf("Last(none:*) = %q, want none", g)
	}
}

// Extend never takes back an event another member has claimed: the claim
// stands, and the extending member's call leaves it as it was.
func TestExtendLeavesAnotherMembersClaim(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	redistest.RequireReal(t, srv)
	prefix := redistest.Prefix(t)
	b := newBus(t, srv, redisbus.Options{Prefix: prefix, HistoryMaxLen: 1000})
	opts := bus.ConsumerOptions{Visibility: 50 * time.Millisecond}
	slow, err := b.Consume(t.Context(), "g", "slow", []string{"ext:*"}, opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Publish(t.Context(), "ext:x", []byte("e")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	held, err := slow.Fetch(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	fast, err := b.Consume(t.Context(), "g", "fast", []string{"ext:*"}, opts)
	if err != nil {
		t.Fatal(err)
	}
	taken, err := fast.Fetch(ctx, 1) // once the visibility timeout passed
	if err != nil || len(taken) != 1 || !taken[0].Redelivered {
		t.Fatalf("the other member's Fetch = %v, %v; want the event redelivered", taken, err)
	}
	if err := slow.Extend(t.Context(), held...); err != nil {
		t.Fatalf("Extend = %v", err)
	}
	pending, err := srv.Client(t).XPendingExt(t.Context(), &redis.XPendingExtArgs{
		Stream: prefix + "stream:{ext}", Group: "g", Start: "-", End: "+", Count: 10,
	}).Result()
	if err != nil || len(pending) != 1 || pending[0].Consumer != "fast" || pending[0].RetryCount != 2 {
		t.Fatalf("pending after Extend = %+v, %v; want the event still fast's, delivered twice", pending, err)
	}
}

// On a cluster, Stats goes over every master: the shard channels of the
// subscribed partitions, named as their streams, and every partition's
// stream of a namespace.
func TestStatsOnACluster(t *testing.T) {
	t.Parallel()
	c := redistest.SharedCluster(t)
	b, err := redisbus.New(c.Client(t), redisbus.Options{Prefix: redistest.Prefix(t), HistoryMaxLen: 1000})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	sub, err := b.Subscribe(t.Context(), "st:*")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	for i := range 3 {
		if _, err := b.Publish(t.Context(), "st:"+strconv.Itoa(i), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	st, err := b.Stats(t.Context())
	if err != nil {
		t.Fatalf("Stats = %v", err)
	}
	if len(st.Channels) != redisbus.DefaultClusterPartitions {
		t.Fatalf("Stats channels = %q, want st's %d partitions", st.Channels, redisbus.DefaultClusterPartitions)
	}
	for _, ch := range st.Channels {
		if !strings.HasPrefix(ch, "st.") || st.NumSub[ch] != 1 {
			t.Fatalf("Stats channel %q with %d subscriptions, want a partition of st with 1", ch, st.NumSub[ch])
		}
	}
	var events int64
	for _, n := range st.Namespaces {
		if n.Namespace == "st" {
			events += n.Events
		}
	}
	if events != 3 {
		t.Fatalf("Stats namespaces = %+v, want st's 3 events over its partitions", st.Namespaces)
	}
}

// A read whose answer is lost with its connection delivered its events to
// the member in Redis all the same: the next Fetch reads the member's own
// again and hands them out, rather than leave them to the visibility
// timeout (an hour here).
func TestAReadLostOnTheWayComesAtOnce(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	redistest.RequireReal(t, srv)
	p := newCutProxy(t, srv.Addr, "xreadgroup")
	prefix := redistest.Prefix(t)
	pub := newBus(t, srv, redisbus.Options{Prefix: prefix, HistoryMaxLen: 1000})
	b := newBus(t, &redistest.Server{Addr: p.addr()}, redisbus.Options{Prefix: prefix, HistoryMaxLen: 1000})
	c, err := b.Consume(t.Context(), "g", "m", []string{"cut:*"}, bus.ConsumerOptions{Visibility: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fetch := func() ([]bus.Delivery, error) {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		return c.Fetch(ctx, 10)
	}
	for _, payload := range []string{"before", "lost"} {
		if _, err := pub.Publish(t.Context(), "cut:x", []byte(payload)); err != nil {
			t.Fatal(err)
		}
		if payload == "lost" {
			p.cutAfterPublish.Store(true)
			if ds, err := fetch(); err == nil {
				t.Fatalf("Fetch whose answer was cut = %d events, nil; want an error", len(ds))
			}
		}
		ds, err := fetch()
		if err != nil || len(ds) != 1 || string(ds[0].Payload) != payload || ds[0].Redelivered != (payload == "lost") {
			t.Fatalf("Fetch = %+v, %v; want %q (redelivered %v)", ds, err, payload, payload == "lost")
		}
		if err := c.Ack(t.Context(), ds...); err != nil {
			t.Fatal(err)
		}
	}
}

// On a cluster, a namespace that appears after a subscription of a
// pattern with a wild first token is announced, and subscribed: its first
// event went by before that, so a Gap comes, and before any of its events,
// so that a reader filling gaps from the record reads from before them.
func TestANewNamespaceOnAClusterGivesAGapFirst(t *testing.T) {
	t.Parallel()
	c := redistest.SharedCluster(t)
	rdb, err := redisbus.NewClient(c.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	b, err := redisbus.New(rdb, redisbus.Options{Prefix: redistest.Prefix(t), HistoryMaxLen: 1000})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	sub, err := b.Subscribe(t.Context(), "nn*")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if _, err := b.Publish(t.Context(), "nnnew:a", []byte("first")); err != nil {
		t.Fatal(err)
	}
	// Published again until one comes live: the namespace's channels are
	// subscribed by then.
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(10 * time.Second)
	gap := false
	for i := 0; ; i++ {
		select {
		case m := <-sub.Messages():
			if m.Gap {
				gap = true
				continue
			}
			if !gap {
				t.Fatalf("event %q of the new namespace came before the Gap for its first", m.Payload)
			}
			return
		case <-tick.C:
			if _, err := b.Publish(t.Context(), "nnnew:a", []byte("again "+strconv.Itoa(i))); err != nil {
				t.Fatal(err)
			}
		case <-deadline:
			t.Fatalf("nothing of the new namespace came live in 10 s (gap %v)", gap)
		}
	}
}
