package mqttapi

import (
	"context"
	"fmt"
	"hash/fnv"
	"slices"
	"strings"
	"testing"

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
