package presence_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/eventbus-suite/eventbus/pkg/presence"
	"github.com/eventbus-suite/eventbus/pkg/redistest"
)

func TestMain(m *testing.M) { redistest.Main(m) }

func newStore(t *testing.T) (*presence.Store, *redis.Client, func(ch string) string) {
	t.Helper()
	srv := redistest.Shared(t)
	redistest.RequireReal(t, srv) // scripts read Redis's TIME
	rdb := srv.Client(t)
	prefix := redistest.Prefix(t)
	keyOf := func(kind, ch string) string { return prefix + kind + ":{x}:" + ch }
	return presence.New(rdb, keyOf, time.Minute), rdb, func(ch string) string { return keyOf("presence", ch) }
}

// expire makes m's entry on key look expired, as a lost edge's would be
// once the TTL has passed: its score, when it expires, goes into the past.
func expire(t *testing.T, rdb *redis.Client, key string, m presence.Member) {
	t.Helper()
	enc := presence.Encode(m)
	if n := rdb.ZAddXX(context.Background(), key, redis.Z{Score: 1, Member: enc}).Val(); n != 0 {
		t.Fatalf("ZADD XX changed %d members; want the existing one updated", n)
	}
	if rdb.ZScore(context.Background(), key, enc).Val() != 1 {
		t.Fatalf("member %s not found in %s", enc, key)
	}
}

func clients(ms []presence.Member) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.Client
	}
	slices.Sort(out)
	return out
}

func TestJoinLeaveList(t *testing.T) {
	s, _, _ := newStore(t)
	ctx := context.Background()
	a := presence.Member{Client: "a", User: "ada", Transport: "ws"}
	b := presence.Member{Client: "b", User: "ada", Transport: "sse"}
	c := presence.Member{Client: "c", Transport: "mqtt-tcp"}
	for _, m := range []presence.Member{a, b, c} {
		if isNew, err := s.Join(ctx, "room:1", m); err != nil || !isNew {
			t.Fatalf("Join(%v) = %v, %v; want new", m, isNew, err)
		}
	}
	if isNew, err := s.Join(ctx, "room:1", a); err != nil || isNew {
		t.Fatalf("Join again = %v, %v; want a renewal, not new", isNew, err)
	}
	ms, st, err := s.List(ctx, "room:1", 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := clients(ms); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Fatalf("List = %v", got)
	}
	if st != (presence.Stats{Clients: 3, Users: 1}) {
		t.Fatalf("Stats = %+v; want 3 clients of 1 user (c has none)", st)
	}
	if left, err := s.Leave(ctx, "room:1", b); err != nil || !left {
		t.Fatalf("Leave = %v, %v", left, err)
	}
	if left, err := s.Leave(ctx, "room:1", b); err != nil || left {
		t.Fatalf("Leave twice = %v, %v; want false: it left already", left, err)
	}
	if n, err := s.Count(ctx, "room:1"); err != nil || n != 2 {
		t.Fatalf("Count = %d, %v; want 2", n, err)
	}
	if ms, st, err := s.List(ctx, "room:2", 0); err != nil || len(ms) != 0 || st != (presence.Stats{}) {
		t.Fatalf("List of an empty channel = %v, %+v, %v", ms, st, err)
	}
}

// TestListLimit: a limit bounds the members returned, never the counts,
// which cover every member.
func TestListLimit(t *testing.T) {
	s, _, _ := newStore(t)
	ctx := context.Background()
	for i := range 25 {
		user := string(rune('a' + i%5))
		if _, err := s.Join(ctx, "room:big", presence.Member{Client: "c" + string(rune('a'+i)), User: user, Transport: "ws"}); err != nil {
			t.Fatal(err)
		}
	}
	ms, st, err := s.List(ctx, "room:big", 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 10 || st != (presence.Stats{Clients: 25, Users: 5}) {
		t.Fatalf("List(limit 10) = %d members, %+v; want 10 members of counts 25 clients, 5 users", len(ms), st)
	}
}

// TestExpiry: a member not renewed within the TTL (its edge was lost) no
// longer counts, is swept exactly once, and a renewal brings it back as
// new.
func TestExpiry(t *testing.T) {
	s, rdb, key := newStore(t)
	ctx := context.Background()
	lost := presence.Member{Client: "lost", User: "bob", Transport: "mqtt"}
	kept := presence.Member{Client: "kept", User: "ada", Transport: "ws"}
	for _, m := range []presence.Member{lost, kept} {
		if _, err := s.Join(ctx, "room:1", m); err != nil {
			t.Fatal(err)
		}
	}
	expire(t, rdb, key("room:1"), lost)
	ms, st, err := s.List(ctx, "room:1", 0)
	if err != nil || !slices.Equal(clients(ms), []string{"kept"}) || st != (presence.Stats{Clients: 1, Users: 1}) {
		t.Fatalf("List after expiry = %v, %+v, %v; want only kept", clients(ms), st, err)
	}
	// Its own edge's late Leave is no news: Sweep says it.
	if left, err := s.Leave(ctx, "room:1", lost); err != nil || left {
		t.Fatalf("Leave of an expired member = %v, %v; want false", left, err)
	}
	if _, err := s.Join(ctx, "room:1", lost); err != nil {
		t.Fatal(err)
	}
	expire(t, rdb, key("room:1"), lost)
	gone, err := s.Sweep(ctx, "room:1")
	if err != nil || len(gone) != 1 || gone[0] != lost {
		t.Fatalf("Sweep = %v, %v; want [lost]", gone, err)
	}
	if gone, err := s.Sweep(ctx, "room:1"); err != nil || len(gone) != 0 {
		t.Fatalf("second Sweep = %v, %v; want nothing: each member is swept once", gone, err)
	}
	// An edge cut off from Redis longer than the TTL renews its members:
	// those swept meanwhile come back, and Renew says which.
	expire(t, rdb, key("room:1"), kept)
	back, err := s.Renew(ctx, []presence.Entry{{Channel: "room:1", Member: kept}, {Channel: "room:1", Member: lost}})
	if err != nil {
		t.Fatal(err)
	}
	if len(back) != 2 {
		t.Fatalf("Renew = %v; want both back (one expired, one swept)", back)
	}
	if back, err := s.Renew(ctx, []presence.Entry{{Channel: "room:1", Member: kept}}); err != nil || len(back) != 0 {
		t.Fatalf("Renew of a live member = %v, %v; want nothing new", back, err)
	}
	if ttl := rdb.PTTL(ctx, key("room:1")).Val(); ttl <= 0 || ttl > time.Minute {
		t.Fatalf("key TTL = %v; want the key to expire with its members (at most the TTL)", ttl)
	}
}

// TestForeignMember: a member the store did not write (a hand-made entry)
// is ignored, never returned half-decoded.
func TestForeignMember(t *testing.T) {
	s, rdb, key := newStore(t)
	ctx := context.Background()
	far := float64(time.Now().Add(time.Hour).UnixMilli())
	rdb.ZAdd(ctx, key("room:1"), redis.Z{Score: far, Member: "not json"}, redis.Z{Score: far, Member: `{"user":"x"}`})
	ms, _, err := s.List(ctx, "room:1", 0)
	if err != nil || len(ms) != 0 {
		t.Fatalf("List = %v, %v; want the foreign entries ignored", ms, err)
	}
}

// FuzzMember: whatever a sorted set holds (another version's entries, a
// hand-made one), reading it never panics, and what it takes for a
// member is one, which reads back the same once written.
func FuzzMember(f *testing.F) {
	f.Add(presence.Encode(presence.Member{Client: "c", User: "ada", Transport: "ws"}))
	f.Add(`{"client":"c"}`)
	f.Add(`{"user":"x"}`)
	f.Add(`not json`)
	f.Add(`{"client":"c","extra":[1,2]}`)
	f.Fuzz(func(t *testing.T, s string) {
		m, ok := presence.Decode(s)
		if !ok {
			return
		}
		if m.Client == "" {
			t.Fatalf("took %q for a member without a client", s)
		}
		if back, ok := presence.Decode(presence.Encode(m)); !ok || back != m {
			t.Fatalf("%+v reads back as %+v, %v", m, back, ok)
		}
	})
}

// TestRenewMany: renewals go several pipelines at a time, and every
// entry past the first pipeline is renewed, and said back, all the same.
func TestRenewMany(t *testing.T) {
	s, rdb, key := newStore(t)
	ctx := context.Background()
	var es []presence.Entry
	for i := range 1300 {
		e := presence.Entry{Channel: fmt.Sprintf("room:%d", i%7), Member: presence.Member{Client: fmt.Sprint("c", i), Transport: "ws"}}
		es = append(es, e)
	}
	back, err := s.Renew(ctx, es)
	if err != nil || len(back) != len(es) {
		t.Fatalf("first Renew = %d back, %v; want all %d new", len(back), err, len(es))
	}
	last := es[len(es)-1]
	expire(t, rdb, key(last.Channel), last.Member)
	back, err = s.Renew(ctx, es)
	if err != nil || len(back) != 1 || back[0] != last {
		t.Fatalf("Renew = %v, %v; want only the expired entry of the last pipeline back", back, err)
	}
	total := 0
	for i := range 7 {
		n, err := s.Count(ctx, fmt.Sprintf("room:%d", i))
		if err != nil {
			t.Fatal(err)
		}
		total += n
	}
	if total != len(es) {
		t.Fatalf("%d members over the channels, want %d", total, len(es))
	}
}

// TestLongExpiredMembersGo: a channel nobody sweeps keeps no member
// expired for longer than the TTL once anyone renews there.
func TestLongExpiredMembersGo(t *testing.T) {
	s, rdb, key := newStore(t)
	ctx := context.Background()
	lost := presence.Member{Client: "lost", Transport: "ws"}
	live := presence.Member{Client: "live", Transport: "ws"}
	for _, m := range []presence.Member{lost, live} {
		if _, err := s.Join(ctx, "notify:user:1", m); err != nil {
			t.Fatal(err)
		}
	}
	expire(t, rdb, key("notify:user:1"), lost) // expired at 1 ms after the epoch: long past
	if _, err := s.Renew(ctx, []presence.Entry{{Channel: "notify:user:1", Member: live}}); err != nil {
		t.Fatal(err)
	}
	if n := rdb.ZCard(ctx, key("notify:user:1")).Val(); n != 1 {
		t.Fatalf("%d members in the set, want the live one alone", n)
	}
}
