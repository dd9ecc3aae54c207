package roster

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/eventbus-suite/eventbus/pkg/presence"
)

type noBus struct{}

func (noBus) PublishLive(context.Context, string, []byte) (int64, error) { return 0, nil }

// While Redis is away the changes wait, and a leave takes back its join
// still waiting: what waits is bounded by the connections, not by how
// often they come and go.
func TestPendingChangesCollapse(t *testing.T) {
	t.Parallel()
	r := New(Options{Store: presence.New(nil, nil, time.Minute), Bus: noBus{}, Namespaces: []string{"room"},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, prometheus.NewRegistry())
	a := presence.Member{Client: "a", Transport: "ws"}
	b := presence.Member{Client: "b", Transport: "ws"}
	for range 1000 {
		r.Joined("room:1", a, false)
		r.Left("room:1", a)
	}
	r.Joined("room:1", b, false)
	r.Joined("chat:1", a, false) // no presence there: nothing to write
	r.Left("room:2", b)          // never joined there
	if len(r.pending) != 1 || r.pending[0].m != b || !r.pending[0].join {
		t.Fatalf("pending %+v, want b's join alone", r.pending)
	}
	r.Left("room:1", b)
	if !r.Drained() {
		t.Fatalf("pending %+v, want nothing: b's leave took back its join", r.pending)
	}
}
