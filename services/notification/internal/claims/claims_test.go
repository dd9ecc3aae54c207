package claims_test

import (
	"errors"
	"testing"
	"time"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/services/notification/internal/claims"
)

func TestMain(m *testing.M) { redistest.Main(m) }

// Two stores (two replicas) contend for one notification: only the lease's
// holder extends, dead-letters or releases it; the other's tries change
// nothing.
func TestLeaseIsTheHoldersOnly(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	rdb := srv.Client(t)
	prefix := redistest.Prefix(t)
	a, b := claims.New(rdb, prefix, time.Minute), claims.New(rdb, prefix, time.Minute)
	key := a.Key("e1", "welcome_email")
	list := prefix + "dead_letters"

	if state, _, err := a.Take(t.Context(), "e1", "welcome_email"); err != nil || state != claims.Taken {
		t.Fatalf("a.Take = %v, %v; want Taken", state, err)
	}
	state, holder, err := b.Take(t.Context(), "e1", "welcome_email")
	if err != nil || state != claims.Held || holder == "" {
		t.Fatalf("b.Take = %v, %q, %v; want Held by a", state, holder, err)
	}
	if state, _, err := a.Take(t.Context(), "e1", "welcome_email"); err != nil || state != claims.Held {
		t.Errorf("a.Take while a sends it = %v, %v; want Held", state, err)
	}

	// Shorten the lease as time would, then extend it.
	if err := rdb.PExpire(t.Context(), key, 50*time.Millisecond).Err(); err != nil {
		t.Fatal(err)
	}
	if ok, err := b.Extend(t.Context(), "e1", "welcome_email"); err != nil || ok {
		t.Errorf("b.Extend of a's lease = %v, %v; want false", ok, err)
	}
	if err := a.ExtendHeld(t.Context()); err != nil {
		t.Fatal(err)
	}
	if ttl := rdb.PTTL(t.Context(), key).Val(); ttl < 30*time.Second {
		t.Errorf("lease's TTL after a.ExtendHeld = %v, want about a minute", ttl)
	}

	if err := b.Release(t.Context(), "e1", "welcome_email"); err != nil {
		t.Fatal(err)
	}
	if err := b.DeadLetter(t.Context(), "e1", "welcome_email", time.Hour, list, "b's", ""); !errors.Is(err, claims.ErrLost) {
		t.Errorf("b.DeadLetter of a's lease = %v, want ErrLost", err)
	}
	if v := rdb.Get(t.Context(), key).Val(); v != holder {
		t.Fatalf("claim after b's release and dead letter = %q, want a's lease %q", v, holder)
	}
	if n := rdb.LLen(t.Context(), list).Val(); n != 0 {
		t.Errorf("b's dead letter was written (%d entries)", n)
	}

	// a dead-letters it: once, and a first send leaves it to a retry.
	if err := a.DeadLetter(t.Context(), "e1", "welcome_email", time.Hour, list, "first", ""); err != nil {
		t.Fatalf("a.DeadLetter = %v", err)
	}
	if err := a.DeadLetter(t.Context(), "e1", "welcome_email", time.Hour, list, "again", ""); !errors.Is(err, claims.ErrLost) {
		t.Errorf("a.DeadLetter a second time = %v, want ErrLost", err)
	}
	if got := rdb.LRange(t.Context(), list, 0, -1).Val(); len(got) != 1 || got[0] != "first" {
		t.Errorf("dead letters = %q, want [first]", got)
	}
	for _, s := range []*claims.Store{a, b} {
		if state, _, err := s.Take(t.Context(), "e1", "welcome_email"); err != nil || state != claims.DeadLettered {
			t.Errorf("Take of a dead-lettered email = %v, %v; want DeadLettered", state, err)
		}
	}
	// A retry takes it, fails, and puts its dead letter back in one step.
	if state, _, err := b.TakeDeadLetter(t.Context(), "e1", "welcome_email"); err != nil || state != claims.Taken {
		t.Fatalf("b.TakeDeadLetter = %v, %v; want Taken", state, err)
	}
	if err := b.DeadLetter(t.Context(), "e1", "welcome_email", time.Hour, list, "second", "first"); err != nil {
		t.Fatalf("b.DeadLetter replacing the first = %v", err)
	}
	if got := rdb.LRange(t.Context(), list, 0, -1).Val(); len(got) != 1 || got[0] != "second" {
		t.Errorf("dead letters = %q, want [second]", got)
	}
	// A retry that sends it.
	if state, _, err := a.TakeDeadLetter(t.Context(), "e1", "welcome_email"); err != nil || state != claims.Taken {
		t.Fatalf("a.TakeDeadLetter = %v, %v; want Taken", state, err)
	}
	if err := a.MarkSent(t.Context(), "e1", "welcome_email", time.Hour); err != nil {
		t.Fatal(err)
	}
	if state, _, err := b.TakeDeadLetter(t.Context(), "e1", "welcome_email"); err != nil || state != claims.Sent {
		t.Errorf("TakeDeadLetter of a sent email = %v, %v; want Sent", state, err)
	}
}

// A lease the store itself took, but whose answer was lost (the connection
// dropped after Redis ran the command), is taken again, not waited out.
func TestOwnLeaseWithoutASenderIsTakenAgain(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	rdb := srv.Client(t)
	prefix := redistest.Prefix(t)
	a := claims.New(rdb, prefix, time.Minute)
	if state, _, err := a.Take(t.Context(), "e2", "welcome_email"); err != nil || state != claims.Taken {
		t.Fatalf("Take = %v, %v; want Taken", state, err)
	}
	lease := rdb.Get(t.Context(), a.Key("e2", "welcome_email")).Val()
	// The sender gives up without a word to Redis, as after a lost answer.
	if err := rdb.Del(t.Context(), a.Key("e2", "welcome_email")).Err(); err != nil {
		t.Fatal(err)
	}
	if err := a.Release(t.Context(), "e2", "welcome_email"); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Set(t.Context(), a.Key("e2", "welcome_email"), lease, time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	if state, holder, err := a.Take(t.Context(), "e2", "welcome_email"); err != nil || state != claims.Taken {
		t.Errorf("Take of its own lease no sender holds = %v, %q, %v; want Taken", state, holder, err)
	}
}
