package mqttapi

import (
	"testing"
	"time"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
)

func TestMain(m *testing.M) { redistest.Main(m) }

// A connection taken over cannot write over what a newer connection of the
// session wrote, nor bring back a session a newer one ended.
func TestStoreRefusesOlderConnections(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	st := Store{Redis: srv.Client(t), Prefix: redistest.Prefix(t)}
	ctx := t.Context()
	save := func(since int64, filter string) {
		t.Helper()
		if err := st.Save(ctx, "user:1/c", state{Filters: map[string]byte{filter: 1}, Since: since}, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	save(2, "newer")
	save(1, "older") // the taken-over connection's last save, arriving late
	if got, ok, err := st.Load(ctx, "user:1/c"); err != nil || !ok || got.Filters["newer"] != 1 {
		t.Fatalf("Load = %+v, %v, %v; want the newer connection's session", got, ok, err)
	}
	if err := st.End(ctx, "user:1/c", 3); err != nil {
		t.Fatal(err)
	}
	save(2, "resurrected")
	if got, ok, err := st.Load(ctx, "user:1/c"); err != nil || ok {
		t.Fatalf("Load after a clean start = %+v, %v, %v; want none", got, ok, err)
	}
	save(4, "next") // a connection after the clean start keeps its own
	if got, ok, _ := st.Load(ctx, "user:1/c"); !ok || got.Filters["next"] != 1 {
		t.Fatalf("Load = %+v, %v; want the next connection's session", got, ok)
	}
}
