package redisbus

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
)

// clusterClient returns a client of c as the services make one
// (NewClient), closed when the test ends.
func clusterClient(t *testing.T, c *redistest.Cluster) redis.UniversalClient {
	t.Helper()
	cl, err := NewClient(c.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.Close() })
	return cl
}

// steady publishes on channels <ns>:0 to <ns>:15 in turn, one event at a
// time, until stopped, and remembers which it acknowledged.
type steady struct {
	b     *Bus
	ns    string
	stop  context.CancelFunc
	wg    sync.WaitGroup
	mu    sync.Mutex
	acked map[string]time.Time // payload → when its publish was acknowledged
	tried int
}

func publishSteadily(t *testing.T, b *Bus, ns string) *steady {
	ctx, stop := context.WithCancel(t.Context())
	s := &steady{b: b, ns: ns, stop: stop, acked: make(map[string]time.Time)}
	s.wg.Go(func() {
		for i := 0; ctx.Err() == nil; i++ {
			pctx, cancel := context.WithTimeout(ctx, time.Second)
			_, err := b.Publish(pctx, ns+":"+strconv.Itoa(i%16), []byte(strconv.Itoa(i)))
			cancel()
			s.mu.Lock()
			s.tried = i + 1
			if err == nil {
				s.acked[strconv.Itoa(i)] = time.Now()
			}
			s.mu.Unlock()
		}
	})
	t.Cleanup(s.end)
	return s
}

func (s *steady) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.acked)
}

// waitFor waits until n more events than now are acknowledged.
func (s *steady) waitFor(t *testing.T, n int, what string) {
	t.Helper()
	from := s.count()
	servicetest.WaitFor(t, what, func() bool { return s.count() >= from+n })
}

func (s *steady) end() {
	s.stop()
	s.wg.Wait()
}

// recorded returns the payloads the record holds on pattern.
func recorded(t *testing.T, b *Bus, pattern string) map[string]bool {
	t.Helper()
	out := make(map[string]bool)
	var cursor bus.Cursor
	for {
		page, err := b.History(t.Context(), pattern, cursor, MaxHistoryLimit)
		if err != nil {
			t.Fatalf("History(%s) = %v", pattern, err)
		}
		for _, e := range page.Events {
			out[string(e.Payload)] = true
		}
		if !page.More {
			return out
		}
		cursor = page.Next
	}
}

// consumeAll fetches from con until it has every payload of want, at least
// once, acknowledging them, and returns how many deliveries it took.
func consumeAll(t *testing.T, con bus.Consumer, want map[string]bool) int {
	t.Helper()
	got := make(map[string]bool)
	deliveries := 0
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	for len(got) < len(want) {
		ds, err := con.Fetch(ctx, 512)
		if ctx.Err() != nil {
			t.Fatalf("the consumer got %d of %d recorded events in 60 s", len(got), len(want))
		}
		if err != nil {
			continue // a shard changing hands: the next Fetch goes on
		}
		for _, d := range ds {
			got[string(d.Payload)] = true
		}
		deliveries += len(ds)
		_ = con.Ack(ctx, ds...)
	}
	return deliveries
}

// markLive publishes a marker on each of ns's 16 channels, again until
// sub receives each live: every partition the channels reach is
// subscribed again.
func markLive(t *testing.T, b *Bus, sub bus.Subscription, ns string) (gaps int) {
	t.Helper()
	pending := make(map[string]bool)
	for i := range 16 {
		pending[ns+":"+strconv.Itoa(i)] = true
	}
	deadline := time.After(30 * time.Second)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for len(pending) > 0 {
		for ch := range pending {
			_, _ = b.Publish(t.Context(), ch, []byte("marker"))
		}
	wait:
		for {
			select {
			case m := <-sub.Messages():
				if m.Gap {
					gaps++
				} else if string(m.Payload) == "marker" {
					delete(pending, m.Channel)
				}
			case <-tick.C:
				break wait
			case <-deadline:
				t.Fatalf("no marker came live on %q in 30 s: those partitions were not subscribed again", slices.Sorted(maps.Keys(pending)))
			}
		}
	}
	return gaps
}

// A master killed under steady publishing: its replica takes over, the
// publisher, a consumer group member and a live subscription go on, and
// the only events lost are those the dead master acknowledged before it
// died and never replicated (on its partitions, before the kill), which
// the test measures and prints.
func TestClusterFailover(t *testing.T) {
	c := redistest.StartCluster(t, 3, 1)
	b, err := New(clusterClient(t, c), Options{Prefix: redistest.Prefix(t), HistoryMaxLen: 100_000})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	sub, err := b.Subscribe(t.Context(), "fo:*")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	con, err := b.Consume(t.Context(), "g", "m", []string{"fo:*"}, bus.ConsumerOptions{Visibility: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer con.Close()

	pub := publishSteadily(t, b, "fo")
	pub.waitFor(t, 300, "events before the kill")
	victim := c.MasterOf(t, keySlot(b.streamFor("fo:0").key))
	victimHeld := map[int]bool{} // the partitions the victim served
	for i := range b.parts {
		victimHeld[i] = c.MasterOf(t, keySlot(b.streamOf("fo", i).key)) == victim
	}
	killed := time.Now()
	c.Kill(t, victim)
	// A publish on fo:0 goes through again once its slot has a master.
	servicetest.WaitFor(t, "a publish on the killed master's partition", func() bool {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		_, err := b.Publish(ctx, "fo:0", []byte("probe"))
		return err == nil
	})
	recovered := time.Now()
	recovery := recovered.Sub(killed)
	c.WaitHealthy(t)
	pub.waitFor(t, 300, "events after the failover")
	pub.end()

	gaps := markLive(t, b, sub, "fo")
	inRecord := recorded(t, b, "fo:*")
	var lost []string
	for p, at := range pub.acked {
		if inRecord[p] {
			continue
		}
		lost = append(lost, p)
		// Only what the dead master acknowledged can be lost: on a
		// channel of its partitions, before its replica took over.
		i, _ := strconv.Atoi(p)
		if ch := "fo:" + strconv.Itoa(i%16); !at.Before(recovered) || !victimHeld[b.streamFor(ch).part] {
			t.Errorf("acknowledged event %s on %s (partition %d, %v after the kill) is not in the record", p, ch, b.streamFor(ch).part, at.Sub(killed))
		}
	}
	want := maps.Clone(inRecord)
	delete(want, "probe")
	delete(want, "marker")
	deliveries := consumeAll(t, con, want)
	t.Logf("killed %s: publishes on its partitions went through again after %v; %d of %d acknowledged events lost (acknowledged by the dead master, never replicated); the consumer took %d deliveries for %d events; the subscription reported %d gap(s)",
		victim, recovery.Round(time.Millisecond), len(lost), len(pub.acked), deliveries, len(want), gaps)
	if gaps == 0 {
		t.Error("the live subscription lost a partition's connection and reported no gap")
	}

}

// After a failover, a process's map of slots still names the dead master
// until something it sends there fails: its first publish on the slot
// fails unsent (connection refused), has the map read again, and is sent
// again to the new master; its first read of the record, through another
// client with its own map, is read again so. The caller sees no error.
func TestClusterPublishAndReadAfterAFailoverGoThrough(t *testing.T) {
	c := redistest.StartCluster(t, 3, 1)
	b, err := New(clusterClient(t, c), Options{Prefix: redistest.Prefix(t), HistoryMaxLen: 1000})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := b.Publish(t.Context(), "fs:0", []byte("before")); err != nil {
		t.Fatal(err)
	}
	victim := c.MasterOf(t, keySlot(b.streamFor("fs:0").key))
	c.Kill(t, victim)
	c.WaitHealthy(t)
	// The failover is over when no node names the dead master any more: a
	// node the news has not reached yet may still, and a client reading
	// the map from it would learn nothing.
	servicetest.WaitFor(t, "every node to name a new master", func() bool {
		return !slices.ContainsFunc(c.Addrs, func(addr string) bool { return addr != victim && namesMaster(t, addr, victim) })
	})
	failed := testutil.ToFloat64(b.m.publishErrors)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	r, err := b.Publish(ctx, "fs:0", []byte("after"))
	if err != nil {
		t.Fatalf("the first publish after the failover: %v", err)
	}
	if r.Position.IsZero() {
		t.Fatal("the publish after the failover has no position in the record")
	}
	if testutil.ToFloat64(b.m.publishErrors) == failed {
		t.Fatal("the first publish after the failover met no stale map: the test proves nothing")
	}
	page, err := b.History(ctx, "fs:*", nil, 10)
	if err != nil {
		t.Fatalf("the first read of the record after the failover: %v", err)
	}
	var got []string
	for _, e := range page.Events {
		got = append(got, string(e.Payload))
	}
	if !slices.Contains(got, "after") {
		t.Fatalf("the record after the failover holds %q, want the event published after it", got)
	}
}

// namesMaster reports whether the node at addr says master serves slots.
func namesMaster(t *testing.T, addr, master string) bool {
	t.Helper()
	cl := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	defer cl.Close()
	slots, err := cl.ClusterSlots(t.Context()).Result()
	if err != nil {
		return true // no answer yet: not known to be over
	}
	return slices.ContainsFunc(slots, func(s redis.ClusterSlot) bool { return len(s.Nodes) > 0 && s.Nodes[0].Addr == master })
}

// A slot holding live partitions migrates to another master while events
// flow: the old master unsubscribes its sharded subscribers (and go-redis
// alone would hear nothing more), the subscription follows the slot, and
// nothing is lost from the record or the consumer group.
func TestClusterSlotMigration(t *testing.T) {
	c := redistest.StartCluster(t, 3, 0)
	b, err := New(clusterClient(t, c), Options{Prefix: redistest.Prefix(t), HistoryMaxLen: 100_000})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	sub, err := b.Subscribe(t.Context(), "mg:*")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	con, err := b.Consume(t.Context(), "g", "m", []string{"mg:*"}, bus.ConsumerOptions{Visibility: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer con.Close()

	pub := publishSteadily(t, b, "mg")
	pub.waitFor(t, 300, "events before the migration")
	slot := keySlot(b.streamFor("mg:0").key)
	from := c.MasterOf(t, slot)
	to := slices.DeleteFunc(c.Masters(t), func(a string) bool { return a == from })[0]
	c.MigrateSlot(t, slot, to)
	if got := c.MasterOf(t, slot); got != to {
		t.Fatalf("slot %d is on %s after the migration, want %s", slot, got, to)
	}
	pub.waitFor(t, 300, "events after the migration")
	pub.end()

	gaps := markLive(t, b, sub, "mg")
	inRecord := recorded(t, b, "mg:*")
	for p := range pub.acked {
		if !inRecord[p] {
			t.Errorf("acknowledged event %s is not in the record after the migration", p)
		}
	}
	want := maps.Clone(inRecord)
	delete(want, "marker")
	consumeAll(t, con, want)
	t.Logf("slot %d moved from %s to %s under %d acknowledged of %d tried publishes; the subscription reported %d gap(s)", slot, from, to, len(pub.acked), pub.tried, gaps)
	if gaps == 0 {
		t.Error("the live subscription lost the migrated slot's partition and reported no gap")
	}
}

// Each master carries about 1/N of the live traffic with 1, 3 and 6
// masters, where classic PUBLISH on a cluster hands every message to every
// node over the cluster bus.
func TestClusterTrafficPerMaster(t *testing.T) {
	const events = 1200
	for _, masters := range []int{1, 3, 6} {
		t.Run(strconv.Itoa(masters), func(t *testing.T) {
			c := redistest.StartCluster(t, masters, 0)
			cl := c.Client(t)
			// 12 partitions: an even share for 1, 3 and 6 masters.
			b, err := New(cl, Options{Prefix: redistest.Prefix(t), HistoryMaxLen: 100_000, Partitions: 12})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			sub, err := b.Subscribe(t.Context(), "*")
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Close()
			// 1,200 channels of 3 namespaces: the announcements of a
			// namespace new to a partition are at most 36.
			msgs := make([]bus.Publication, events)
			for i := range msgs {
				msgs[i] = bus.Publication{Channel: fmt.Sprintf("tr%d:c%d", i%3, i), Payload: []byte("x")}
			}
			for chunk := range slices.Chunk(msgs, 100) {
				if _, _, err := b.PublishBatch(t.Context(), chunk); err != nil {
					t.Fatal(err)
				}
			}
			spublish := perMaster(t, c, "cmdstat_spublish:calls=", "INFO", "commandstats")
			// The same messages with classic PUBLISH: each node handles
			// every one, taken from a client or received from the node
			// that took it over the cluster bus.
			received := perMaster(t, c, "cluster_stats_messages_publish_received:", "CLUSTER", "INFO")
			taken := perMaster(t, c, "cmdstat_publish:calls=", "INFO", "commandstats")
			for _, m := range msgs {
				if err := cl.Publish(t.Context(), "classic:"+m.Channel, m.Payload).Err(); err != nil {
					t.Fatal(err)
				}
			}
			var classic []int
			handled := func() bool {
				classic = perMaster(t, c, "cluster_stats_messages_publish_received:", "CLUSTER", "INFO")
				for i, n := range perMaster(t, c, "cmdstat_publish:calls=", "INFO", "commandstats") {
					classic[i] += n - received[i] - taken[i]
				}
				return !slices.ContainsFunc(classic, func(n int) bool { return n < events })
			}
			// The cluster bus carries them on after PUBLISH answered.
			servicetest.WaitFor(t, "every node to handle every classic PUBLISH", handled)
			t.Logf("%d masters, %d events: sharded, SPUBLISH per master %v; classic, PUBLISH handled per node %v", masters, events, spublish, classic)
			for i, n := range spublish {
				// Announcements of a namespace new to a partition ride on
				// SPUBLISH too: at most 36 here.
				if share := float64(n) / float64(events); share < 0.7/float64(masters) || share > 1.3/float64(masters)+0.03 {
					t.Errorf("master %d carried %d SPUBLISH of %d events, want about 1/%d", i, n, events, masters)
				}
			}

		})
	}
}

// perMaster reads a counter from each master of c, sorted by address:
// field's value in the answer of the command args (INFO commandstats,
// CLUSTER INFO).
func perMaster(t *testing.T, c *redistest.Cluster, field string, args ...any) []int {
	t.Helper()
	var out []int
	for _, addr := range c.Masters(t) {
		cl := redis.NewClient(&redis.Options{Addr: addr})
		text, err := cl.Do(t.Context(), args...).Text()
		cl.Close()
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		if _, rest, ok := strings.Cut(text, field); ok {
			v, _, _ := strings.Cut(rest, ",")
			v, _, _ = strings.Cut(v, "\r")
			n, _ = strconv.Atoi(strings.TrimSpace(v))
		}
		out = append(out, n)
	}
	return out
}

// BenchmarkClusterPublish publishes from 64 goroutines, recorded and
// delivered live to one subscription of *, on a cluster of 1 and of 3
// masters (no replicas), every master on this machine: events/s overall
// and per master, the figure docs/scaling.md sizes shards from.
func BenchmarkClusterPublish(b *testing.B) {
	for _, masters := range []int{1, 3} {
		b.Run(fmt.Sprintf("masters=%d", masters), func(b *testing.B) {
			c := redistest.StartCluster(b, masters, 0)
			cl, err := NewClient(c.URL)
			if err != nil {
				b.Fatal(err)
			}
			defer cl.Close()
			bs, err := New(cl, Options{Prefix: redistest.Prefix(b), HistoryMaxLen: 100_000})
			if err != nil {
				b.Fatal(err)
			}
			defer bs.Close()
			sub, err := bs.Subscribe(b.Context(), "*")
			if err != nil {
				b.Fatal(err)
			}
			defer sub.Close()
			var received sync.WaitGroup
			received.Go(func() {
				for range sub.Messages() {
				}
			})
			payload := make([]byte, 200)
			var n atomic.Int64
			b.SetParallelism(32) // 64 publishers on 2 cores
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := n.Add(1)
					if _, err := bs.Publish(b.Context(), fmt.Sprintf("bench%d:c%d", i%4, i%1000), payload); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			perSec := float64(b.N) / b.Elapsed().Seconds()
			b.ReportMetric(perSec, "events/s")
			b.ReportMetric(perSec/float64(masters), "events/s/master")
			_ = sub.Close()
			received.Wait()
		})
	}
}
