package httpapi

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/eventbus-suite/eventbus/pkg/apikey"
	"github.com/eventbus-suite/eventbus/pkg/bus/redisbus"
	"github.com/eventbus-suite/eventbus/pkg/envelope"
	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/services/api/internal/inflight"
	"github.com/eventbus-suite/eventbus/services/api/internal/ingest"
)

func TestMain(m *testing.M) { redistest.Main(m) }

// benchEvent is the 56-byte event of the ingest benchmarks (docs/benchmarks.md).
const benchEvent = `{"type":"bench.ingest","subject":"wrk","data":{"n":123}}`

// BenchmarkDecodeEvent is what POST /v1/events does to a body before it
// reaches the bus: decode it and prepare its envelope, whose data
// DecodeData checked as it made it (ingest.Decoded).
func BenchmarkDecodeEvent(b *testing.B) {
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		env, err := decodeSimple([]byte(benchEvent))
		if err != nil {
			b.Fatal(err)
		}
		if err := envelope.FillStrictDecoded(env, "eventbus/api", now); err != nil {
			b.Fatal(err)
		}
		if _, err := envelope.Marshal(env); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPublishEvent is POST /v1/events through every middleware to a
// real Redis, without the network: ns/op is the service's cost per event,
// with parallel callers batching their publishes as under load.
func BenchmarkPublishEvent(b *testing.B) {
	srv := redistest.Shared(b)
	bs, err := redisbus.New(srv.Client(b), redisbus.Options{Prefix: redistest.Prefix(b), HistoryMaxLen: 100_000})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { bs.Close() })
	mux := http.NewServeMux()
	Register(mux, Options{
		Ingest: ingest.New(bs, "eventbus/api", time.Second, prometheus.NewRegistry()),
		Keys:   apikey.New(nil), Logger: slog.New(slog.DiscardHandler),
		MaxBodyBytes: 1 << 20, MaxBatchBytes: 16 << 20, Budget: inflight.New(32<<20, prometheus.NewRegistry()),
	})
	b.ReportAllocs()
	b.SetParallelism(16)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			r := httptest.NewRequestWithContext(context.Background(), http.MethodPost, "/v1/events", strings.NewReader(benchEvent))
			r.Header.Set("Content-Type", "application/json")
			w := httptest.NewRecorder()
			mux.ServeHTTP(w, r)
			if w.Code != http.StatusAccepted {
				b.Fatalf("POST /v1/events = %d %s", w.Code, w.Body)
			}
		}
	})
}
