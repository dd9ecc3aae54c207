package mqttapi

import (
	"context"
	"slices"
	"testing"

	"github.com/eventbus-suite/eventbus/pkg/bus"
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
		es, err := s.Matching(ctx, "dev:*", 10)
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
	if es, err := s.Matching(ctx, "dev:a", 10); err != nil || len(es) != 1 || string(es[0].Payload) != "back" {
		t.Fatalf("Matching an exact channel = %v, %v; want its message", es, err)
	}
}
