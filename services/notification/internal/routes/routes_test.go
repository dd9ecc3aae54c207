package routes_test

import (
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/services/notification/internal/routes"
)

func TestMain(m *testing.M) { redistest.Main(m) }

// redisZ is id due long ago.
func redisZ(id string) redis.Z { return redis.Z{Score: 0, Member: id} }

func newStore(t *testing.T) (*routes.Store, *redistest.Server) {
	t.Helper()
	srv := redistest.Shared(t)
	redistest.RequireReal(t, srv) // scripts read Redis's clock (TIME)
	return routes.New(srv.Client(t), redistest.Prefix(t), time.Hour), srv
}

// The first choice of each stage stands, whoever asks again.
func TestChooseFirstStands(t *testing.T) {
	t.Parallel()
	s, srv := newStore(t)
	ctx := t.Context()
	first := routes.Choice{Route: "realtime", Reason: "online"}
	if c, won, err := s.Choose(ctx, "n1", "u1", routes.First, first); err != nil || !won || c != first {
		t.Fatalf("Choose = %v, %v, %v; want %v, won", c, won, err, first)
	}
	if c, won, err := s.Choose(ctx, "n1", "u1", routes.First, routes.Choice{Route: "push", Reason: "offline_push_subscribed"}); err != nil || won || c != first {
		t.Errorf("Choose again = %v, %v, %v; want %v, not won", c, won, err, first)
	}
	fb := routes.Choice{Route: "email", Reason: "ack_timeout_push_off"}
	if c, won, err := s.Choose(ctx, "n1", "u1", routes.Fallback, fb); err != nil || !won || c != fb {
		t.Errorf("Choose the fallback = %v, %v, %v; want %v, won", c, won, err, fb)
	}
	if ttl := srv.Client(t).PTTL(ctx, s.Key("n1")).Val(); ttl <= 0 || ttl > time.Hour {
		t.Errorf("state's TTL = %v, want the store's hour", ttl)
	}
}

// A receipt counts for the notification's user only, first once; an
// awaited receipt is taken once until its lease runs out, and not at all
// once delivered or done.
func TestAwaitTakeDeliver(t *testing.T) {
	t.Parallel()
	s, srv := newStore(t)
	rdb := srv.Client(t)
	ctx := t.Context()
	if err := s.Await(ctx, "n0", []byte("p0"), time.Hour); err == nil {
		t.Errorf("Await before Choose = nil, want an error")
	}
	for _, id := range []string{"n1", "n2"} {
		if _, _, err := s.Choose(ctx, id, "u1", routes.First, routes.Choice{Route: "realtime", Reason: "online"}); err != nil {
			t.Fatal(err)
		}
		if err := s.Await(ctx, id, []byte("p-"+id), time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	if due, err := s.TakeDue(ctx, 10, time.Hour); err != nil || len(due) != 0 {
		t.Fatalf("TakeDue before the deadline = %v, %v; want nothing", due, err)
	}
	// Due now, as time would make them.
	due := func() {
		t.Helper()
		for _, id := range []string{"n1", "n2"} {
			rdb.ZAddXX(ctx, s.AcksKey(), redisZ(id))
		}
	}
	due()
	got, err := s.TakeDue(ctx, 10, time.Hour)
	if err != nil || len(got) != 2 || string(got[0].Payload) != "p-"+got[0].NotificationID {
		t.Fatalf("TakeDue = %+v, %v; want n1 and n2 with their payloads", got, err)
	}
	if again, err := s.TakeDue(ctx, 10, time.Hour); err != nil || len(again) != 0 {
		t.Errorf("TakeDue while leased = %v, %v; want nothing", again, err)
	}

	for _, tt := range []struct {
		id, user string
		want     routes.Receipt
	}{
		{"n1", "u2", routes.Unknown}, // another user's
		{"n9", "u1", routes.Unknown}, // no such notification
		{"n1", "u1", routes.FirstReceipt},
		{"n1", "u1", routes.Repeat},
	} {
		if r, err := s.Deliver(ctx, tt.id, tt.user, time.Now()); err != nil || r != tt.want {
			t.Errorf("Deliver(%s, %s) = %v, %v; want %v", tt.id, tt.user, r, err, tt.want)
		}
	}
	if ok, err := s.Delivered(ctx, "n1"); err != nil || !ok {
		t.Errorf("Delivered(n1) = %v, %v; want true", ok, err)
	}
	if ok, err := s.Delivered(ctx, "n2"); err != nil || ok {
		t.Errorf("Delivered(n2) = %v, %v; want false", ok, err)
	}
	if err := s.Done(ctx, "n1"); err != nil {
		t.Fatal(err)
	}
	// The lease runs out: n2 comes again; n1, done with, does not.
	due()
	if got, err := s.TakeDue(ctx, 10, time.Hour); err != nil || len(got) != 1 || got[0].NotificationID != "n2" {
		t.Errorf("TakeDue after the lease = %+v, %v; want n2 only", got, err)
	}
	if n := rdb.ZCard(ctx, s.AcksKey()).Val(); n != 1 {
		t.Errorf("%d awaited receipts, want 1 (n2)", n)
	}
	// Extend renews n2's lease and adds nothing back.
	rdb.ZAddXX(ctx, s.AcksKey(), redisZ("n2"))
	if err := s.Extend(ctx, time.Hour, "n1", "n2"); err != nil {
		t.Fatal(err)
	}
	if got, err := s.TakeDue(ctx, 10, time.Hour); err != nil || len(got) != 0 {
		t.Errorf("TakeDue after Extend = %+v, %v; want nothing", got, err)
	}
	if n := rdb.ZCard(ctx, s.AcksKey()).Val(); n != 1 {
		t.Errorf("%d awaited receipts after Extend, want 1", n)
	}
}

// An awaited receipt whose state ran out is dropped, not returned.
func TestTakeDueDropsWhatRanOut(t *testing.T) {
	t.Parallel()
	s, srv := newStore(t)
	rdb := srv.Client(t)
	ctx := t.Context()
	if _, _, err := s.Choose(ctx, "n1", "u1", routes.First, routes.Choice{Route: "realtime", Reason: "online"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Await(ctx, "n1", []byte("p"), time.Hour); err != nil {
		t.Fatal(err)
	}
	rdb.Del(ctx, s.Key("n1"))
	rdb.ZAddXX(ctx, s.AcksKey(), redisZ("n1"))
	if got, err := s.TakeDue(ctx, 10, time.Hour); err != nil || len(got) != 0 {
		t.Errorf("TakeDue = %+v, %v; want nothing", got, err)
	}
	if n := rdb.ZCard(ctx, s.AcksKey()).Val(); n != 0 {
		t.Errorf("%d awaited receipts, want the one without state dropped", n)
	}
}
