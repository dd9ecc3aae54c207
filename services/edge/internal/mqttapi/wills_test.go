package mqttapi

import (
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/eventbus-suite/eventbus/pkg/bus/redisbus"
	"github.com/eventbus-suite/eventbus/pkg/redistest"
)

func willStore(t *testing.T) Store {
	t.Helper()
	srv := redistest.Shared(t)
	redistest.RequireReal(t, srv)
	return Store{Redis: srv.Client(t), Prefix: redistest.Prefix(t), Keys: oneSlot(redistest.Prefix(t))}
}

// oneSlot names a group's keys under prefix, in the group's slot, as a bus
// does.
type oneSlot string

func (p oneSlot) GroupKey(group, name string) string {
	return string(p) + group + ":{" + group + "}:" + name
}

// A will that comes due is leased to one taker at a time: taken again
// only when its lease ends unpublished, and gone once published.
func TestDueWillsAreLeased(t *testing.T) {
	s := willStore(t)
	ctx := t.Context()
	for _, key := range []string{"user:1/a", "user:1/b"} {
		if ok, err := s.DelayWill(ctx, key, 1, []byte("will of "+key), 0); !ok || err != nil {
			t.Fatalf("DelayWill(%s) = %v, %v", key, ok, err)
		}
	}
	first, err := s.LeaseDueWills(ctx, 100, time.Hour)
	if err != nil || len(first) != 2 {
		t.Fatalf("LeaseDueWills = %v, %v; want both wills", first, err)
	}
	if again, err := s.LeaseDueWills(ctx, 100, time.Hour); err != nil || len(again) != 0 {
		t.Fatalf("while leased: LeaseDueWills = %v, %v; want none", again, err)
	}
	if err := s.DoneWill(ctx, first[0]); err != nil {
		t.Fatal(err)
	}
	// The other's lease ends unpublished (its taker died): it is taken again.
	if err := s.Redis.ZAdd(ctx, s.willsDue(), redisZ(0, first[1].key)).Err(); err != nil {
		t.Fatal(err)
	}
	retaken, err := s.LeaseDueWills(ctx, 100, time.Hour)
	if err != nil || len(retaken) != 1 || retaken[0].key != first[1].key || !slices.Equal(retaken[0].will, first[1].will) {
		t.Fatalf("after a lease ended: LeaseDueWills = %v, %v; want %s's will alone", retaken, err, first[1].key)
	}
}

// A will done with is not deleted when the session delayed a newer one
// meanwhile.
func TestDoneWillKeepsANewerWill(t *testing.T) {
	s := willStore(t)
	ctx := t.Context()
	if _, err := s.DelayWill(ctx, "user:2/a", 1, []byte("older"), 0); err != nil {
		t.Fatal(err)
	}
	taken, err := s.LeaseDueWills(ctx, 1, time.Hour)
	if err != nil || len(taken) != 1 {
		t.Fatalf("LeaseDueWills = %v, %v", taken, err)
	}
	if _, err := s.DelayWill(ctx, "user:2/a", 2, []byte("newer"), time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := s.DoneWill(ctx, taken[0]); err != nil {
		t.Fatal(err)
	}
	if w, err := s.TakeWill(ctx, "user:2/a", 3, time.Hour); err != nil || string(w) != "newer" {
		t.Fatalf("TakeWill = %q, %v; want the newer will, kept", w, err)
	}
}

// A connection that ends after a newer one of its session began keeps no
// will: its edge learnt late that it was taken over.
func TestAWillOfAConnectionTakenOverIsRefused(t *testing.T) {
	s := willStore(t)
	ctx := t.Context()
	if w, err := s.TakeWill(ctx, "user:3/a", 200, time.Hour); err != nil || w != nil {
		t.Fatalf("TakeWill with none waiting = %q, %v", w, err)
	}
	if ok, err := s.DelayWill(ctx, "user:3/a", 100, []byte("late"), 0); ok || err != nil {
		t.Fatalf("DelayWill of a connection older than the newest = %v, %v; want refused", ok, err)
	}
	if ok, err := s.DelayWill(ctx, "user:3/a", 200, []byte("its own"), 0); !ok || err != nil {
		t.Fatalf("DelayWill of the newest connection = %v, %v; want kept", ok, err)
	}
	// An older connection's TakeWill does not move the mark back.
	if _, err := s.TakeWill(ctx, "user:3/a", 150, time.Hour); err != nil {
		t.Fatal(err)
	}
	if ok, _ := s.DelayWill(ctx, "user:3/a", 170, []byte("late"), 0); ok {
		t.Fatal("the mark moved back to an older connection's start")
	}
}

func redisZ(score float64, member string) redis.Z { return redis.Z{Score: score, Member: member} }

// On a Redis Cluster the wills' scripts touch keys of one slot: a will
// waits, is taken back, and is leased and done with, as on one server.
func TestWillsOnACluster(t *testing.T) {
	c := redistest.SharedCluster(t)
	rdb := c.Client(t)
	b, err := redisbus.New(rdb, redisbus.Options{Prefix: redistest.Prefix(t)})
	if err != nil {
		t.Fatal(err)
	}
	s := Store{Redis: rdb, Prefix: redistest.Prefix(t), Keys: b}
	ctx := t.Context()
	for i, key := range []string{"user:1/a", "user:2/b", "addr:192.0.2.1/c"} {
		if ok, err := s.DelayWill(ctx, key, int64(i), []byte("will of "+key), 0); !ok || err != nil {
			t.Fatalf("DelayWill(%s) = %v, %v", key, ok, err)
		}
	}
	if w, err := s.TakeWill(ctx, "user:2/b", 10, time.Hour); err != nil || string(w) != "will of user:2/b" {
		t.Fatalf("TakeWill = %q, %v", w, err)
	}
	due, err := s.LeaseDueWills(ctx, 100, time.Hour)
	if err != nil || len(due) != 2 {
		t.Fatalf("LeaseDueWills = %v, %v; want the two not taken back", due, err)
	}
	for _, w := range due {
		if err := s.DoneWill(ctx, w); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := rdb.HLen(ctx, s.willsKept()).Result(); err != nil || n != 0 {
		t.Fatalf("%d wills kept after all were done with (%v), want none", n, err)
	}
}
