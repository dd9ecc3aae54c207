package mqttapi

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/channel"
	"github.com/eventbus-suite/eventbus/pkg/redistest"
)

// oneHash keeps every namespace's retained messages in one hash, as a
// bus of one partition does.
type oneHash string

func (k oneHash) NamespaceKey(string, string) string    { return string(k) }
func (k oneHash) NamespaceKeys(string, string) []string { return []string{string(k)} }
func (oneHash) NamespacesOf(context.Context, string) ([]string, error) {
	return []string{"dev"}, nil
}

// Of two retained publishes racing to the store, the later in the record
// stands, and a clear is not undone by an older message arriving late.
func TestRetainedStoreKeepsTheLatest(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	redistest.RequireReal(t, srv)
	s := &RetainedStore{Redis: srv.Client(t), Keys: oneHash(redistest.Prefix(t) + "retained")}
	ctx := context.Background()
	at := func(offset string) bus.Position { return bus.Position{Offset: offset, Epoch: "9f"} }
	read := func() []string {
		t.Helper()
		es, err := s.Matching(ctx, "dev:*", nil, 10)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range es {
			out = append(out, e.Channel+"="+string(e.Payload)+"@"+e.Position.Offset)
		}
		return out
	}
	steps := []struct {
		do   func() error
		want []string
	}{
		{func() error { return s.Set(ctx, "dev:a", at("10-0"), []byte("ten")) }, []string{"dev:a=ten@10-0"}},
		{func() error { return s.Set(ctx, "dev:a", at("9-5"), []byte("nine")) }, []string{"dev:a=ten@10-0"}},   // older: refused
		{func() error { return s.Set(ctx, "dev:a", at("100-0"), []byte("100")) }, []string{"dev:a=100@100-0"}}, // longer: later
		{func() error { return s.Clear(ctx, "dev:a", at("100-1")) }, nil},
		{func() error { return s.Set(ctx, "dev:a", at("100-0"), []byte("late")) }, nil}, // older than the clear
		{func() error { return s.Set(ctx, "dev:b", bus.Position{}, []byte("no history")) }, []string{"dev:b=no history@"}},
		{func() error { return s.Set(ctx, "dev:a", at("101-0"), []byte("back")) }, []string{"dev:a=back@101-0", "dev:b=no history@"}},
	}
	for i, st := range steps {
		if err := st.do(); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if got := read(); !slices.Equal(got, st.want) {
			t.Fatalf("step %d: retained %q, want %q", i, got, st.want)
		}
	}
	if es, err := s.Matching(ctx, "dev:a", nil, 10); err != nil || len(es) != 1 || string(es[0].Payload) != "back" {
		t.Fatalf("Matching an exact channel = %v, %v; want its message", es, err)
	}
}

// partitioned keeps each namespace's retained messages in parts hashes,
// a channel's by a hash of it, as a bus of several partitions does.
type partitioned struct {
	prefix string
	parts  int
	nss    []string
}

func (k partitioned) NamespaceKey(_, ch string) string {
	ns, _, _ := strings.Cut(ch, ":")
	h := fnv.New32a()
	h.Write([]byte(ch))
	return fmt.Sprintf("%s%s:%d", k.prefix, ns, int(h.Sum32())%k.parts)
}

func (k partitioned) NamespaceKeys(_, ns string) []string {
	var keys []string
	for i := range k.parts {
		keys = append(keys, fmt.Sprintf("%s%s:%d", k.prefix, ns, i))
	}
	return keys
}

func (k partitioned) NamespacesOf(context.Context, string) ([]string, error) { return k.nss, nil }

// Matching returns at most max messages, those of the first channels
// that match and that keep accepts, when more would: over several
// namespaces and partitions, with hashes large enough that HSCAN reads
// them in pages, and with channels that match the glob but not keep (as a
// filter's '+' is narrower than '*') crowding the order.
func TestRetainedMatchingKeepsTheFirstMax(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	redistest.RequireReal(t, srv)
	keys := partitioned{prefix: redistest.Prefix(t) + "retained:", parts: 3, nss: []string{"dev", "lab"}}
	s := &RetainedStore{Redis: srv.Client(t), Keys: keys}
	ctx := context.Background()
	var all []string
	for _, ns := range keys.nss {
		for i := range 2400 {
			ch := fmt.Sprintf("%s:s%04d:temp", ns, i)
			if i%3 == 0 {
				ch = fmt.Sprintf("%s:s%04d:x:temp", ns, i) // matches *:temp, not one level
			}
			all = append(all, ch)
			if err := s.Set(ctx, ch, bus.Position{Offset: fmt.Sprintf("%d-0", i+1), Epoch: "9f"}, []byte(ch)); err != nil {
				t.Fatal(err)
			}
		}
		// A cleared one matches too, and is none.
		if err := s.Clear(ctx, ns+":s0001:temp", bus.Position{Offset: "5000-0", Epoch: "9f"}); err != nil {
			t.Fatal(err)
		}
	}
	for _, key := range keys.NamespaceKeys(retainedKind, "dev") {
		if n, err := srv.Client(t).HLen(ctx, key).Result(); err != nil || n <= 2*retainedScanCount {
			t.Fatalf("partition %s holds %d fields (%v): too few for HSCAN to page", key, n, err)
		}
	}
	oneLevel := func(ch string) bool { return strings.Count(ch, ":") == 2 }
	for _, tt := range []struct {
		pattern string
		keep    func(string) bool
		max     int
	}{
		{"*:temp", oneLevel, 100},
		{"*:temp", nil, 250},
		{"lab:*", oneLevel, 1000}, // fewer match than max
		{"*", nil, 1},
	} {
		var want []string
		for _, ch := range all {
			if channel.Match(tt.pattern, ch) && (tt.keep == nil || tt.keep(ch)) && !strings.HasSuffix(ch, ":s0001:temp") {
				want = append(want, ch)
			}
		}
		slices.Sort(want)
		want = want[:min(len(want), tt.max)]
		es, err := s.Matching(ctx, tt.pattern, tt.keep, tt.max)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, e := range es {
			if string(e.Payload) != e.Channel {
				t.Fatalf("%s: channel %s holds %q", tt.pattern, e.Channel, e.Payload)
			}
			got = append(got, e.Channel)
		}
		if !slices.Equal(got, want) {
			t.Errorf("Matching(%q, max %d) = %d channels %.60q…, want %d %.60q…", tt.pattern, tt.max, len(got), got, len(want), want)
		}
	}
}

// A namespace keeps at most Max retained messages, shared among its
// partitions' hashes: past it, a message for a channel without one is
// refused, while replacing or clearing one is not. Clears take no room:
// their positions are kept apart, for clearedFor, and still keep an
// older message out. An older edge's clears, kept in the messages' hash,
// are moved apart when a hash is full, at most once a clearedFor.
func TestRetainedStoreBoundsANamespace(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	redistest.RequireReal(t, srv)
	rdb := srv.Client(t)
	keys := partitioned{prefix: redistest.Prefix(t) + "retained:", parts: 3, nss: []string{"dev"}}
	s := &RetainedStore{Redis: rdb, Keys: keys, Max: 10} // 4 a hash
	ctx := context.Background()
	offset := 0
	pos := func() bus.Position { offset++; return bus.Position{Offset: fmt.Sprintf("%d-0", offset), Epoch: "9f"} }
	held := map[string][]string{} // by hash, the channels kept
	for i := range 40 {
		ch := fmt.Sprintf("dev:d%02d", i)
		key := keys.NamespaceKey(retainedKind, ch)
		switch err := s.Set(ctx, ch, pos(), []byte("on")); {
		case err == nil:
			held[key] = append(held[key], ch)
		case !errors.Is(err, ErrRetainedFull):
			t.Fatal(err)
		case len(held[key]) < 4:
			t.Fatalf("%s refused with %d in its hash, want room for 4: %v", ch, len(held[key]), err)
		}
	}
	for _, key := range keys.NamespaceKeys(retainedKind, "dev") {
		if n, err := rdb.HLen(ctx, key).Result(); err != nil || n != 4 || len(held[key]) != 4 {
			t.Fatalf("hash %s holds %d (%v), kept %d; want 4 each: 40 channels spread over 3", key, n, err, len(held[key]))
		}
	}
	full := keys.NamespaceKeys(retainedKind, "dev")[0]
	var others []string // channels of the full hash it does not hold
	for i := 40; len(others) < 20; i++ {
		if ch := fmt.Sprintf("dev:d%02d", i); keys.NamespaceKey(retainedKind, ch) == full {
			others = append(others, ch)
		}
	}
	other, third := others[0], others[1]
	cleared := pos() // a clear of other, which has no message
	if err := s.Clear(ctx, other, cleared); err != nil {
		t.Fatalf("clearing %s, which has none, in a full hash: %v", other, err)
	}
	if n, err := rdb.HLen(ctx, full).Result(); err != nil || n != 4 {
		t.Fatalf("a clear of a channel without a message changed the full hash to %d (%v)", n, err)
	}
	kept := held[full][0]
	if err := s.Set(ctx, kept, pos(), []byte("off")); err != nil {
		t.Fatalf("replacing a retained message in a full hash: %v", err)
	}
	if err := s.Clear(ctx, kept, pos()); err != nil {
		t.Fatalf("clearing in a full hash: %v", err)
	}
	// Older than their clears: neither comes back, and each hash has its
	// room for a message the clear freed.
	if err := s.Set(ctx, kept, bus.Position{Offset: "1-0", Epoch: "9f"}, []byte("late")); err != nil {
		t.Fatal(err)
	}
	late := bus.Position{Offset: fmt.Sprintf("%d-9", mustAtoi(t, strings.TrimSuffix(cleared.Offset, "-0"))-1), Epoch: "9f"}
	if err := s.Set(ctx, other, late, []byte("late")); err != nil {
		t.Fatal(err)
	}
	for _, ch := range []string{kept, other} {
		if es, err := s.Matching(ctx, ch, nil, 1); err != nil || len(es) != 0 {
			t.Fatalf("an older message of %s after its clear: retained %v (%v), want none", ch, es, err)
		}
	}
	if err := s.Set(ctx, third, pos(), []byte("on")); err != nil {
		t.Fatalf("a new channel in the room a clear freed: %v", err)
	}

	// A clear is forgotten by the first write clearedFor after it, on
	// Redis's clock.
	age := func(ch string, d time.Duration) {
		t.Helper()
		now, err := rdb.Time(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		if err := rdb.ZAdd(ctx, full+":clears:by-time", redis.Z{Score: float64(now.Add(-d).UnixMilli()), Member: ch}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	age(kept, clearedFor-5*time.Second)
	if err := s.Set(ctx, third, pos(), []byte("again")); err != nil {
		t.Fatal(err)
	}
	if ok, err := rdb.HExists(ctx, full+":clears", kept).Result(); err != nil || !ok {
		t.Fatalf("a clear forgotten before clearedFor (%v)", err)
	}
	age(kept, clearedFor+time.Second)
	if err := s.Set(ctx, third, pos(), []byte("again")); err != nil {
		t.Fatal(err)
	}
	if ok, err := rdb.HExists(ctx, full+":clears", kept).Result(); err != nil || ok {
		t.Fatalf("a clear kept past clearedFor (%v)", err)
	}
	if n, err := rdb.ZCard(ctx, full+":clears:by-time").Result(); err != nil || n != 1 {
		t.Fatalf("%d clears listed (%v), want 1: other's", n, err)
	}

	// An older edge's clear, a position with no envelope in the messages'
	// hash, takes room: when the hash is full, it is moved apart, and the
	// message kept; it still keeps an older message out.
	old := others[2]
	if err := rdb.HDel(ctx, full, held[full][1]).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.HSet(ctx, full, old, "3-0 9f\n").Err(); err != nil { // full again, one of them an old clear
		t.Fatal(err)
	}
	fresh := &RetainedStore{Redis: rdb, Keys: keys, Max: 10} // another edge, which has adopted nothing
	if err := fresh.Set(ctx, others[3], pos(), []byte("on")); err != nil {
		t.Fatalf("a new channel with an old clear in a full hash: %v", err)
	}
	if v, err := rdb.HGet(ctx, full+":clears", old).Result(); err != nil || v != "3-0" {
		t.Fatalf("the old clear was not moved apart: %q (%v)", v, err)
	}
	if err := fresh.Set(ctx, old, bus.Position{Offset: "2-0", Epoch: "9f"}, []byte("late")); err != nil {
		t.Fatal(err)
	}
	if es, err := fresh.Matching(ctx, old, nil, 1); err != nil || len(es) != 0 {
		t.Fatalf("an older message after an old clear: retained %v (%v), want none", es, err)
	}
	// Within clearedFor, the same edge does not look again: the old clear
	// that would make room stays.
	if err := rdb.HDel(ctx, full, held[full][2]).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.HSet(ctx, full, others[4], "4-0 9f\n").Err(); err != nil {
		t.Fatal(err)
	}
	if err := fresh.Set(ctx, others[5], pos(), []byte("on")); !errors.Is(err, ErrRetainedFull) {
		t.Fatalf("a second adoption within clearedFor: %v, want ErrRetainedFull", err)
	}

	unbounded := &RetainedStore{Redis: rdb, Keys: keys}
	if err := unbounded.Set(ctx, others[6], pos(), []byte("on")); err != nil {
		t.Fatalf("Max 0 bounds nothing: %v", err)
	}
}

func mustAtoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
