package servicetest_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/eventbus-suite/eventbus/pkg/server"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
)

// demo is a service as small as a service gets: it logs at LOG_LEVEL,
// listens on DEMO_HTTP_ADDR and DEMO_GRPC_ADDR and serves /readyz. Its
// first busy calls fail as a taken port would.
func demo(calls *atomic.Int32, busy int32) servicetest.RunFunc {
	return func(ctx context.Context, getenv func(string) string, stderr io.Writer) error {
		var level slog.Level
		if err := level.UnmarshalText([]byte(getenv("LOG_LEVEL"))); err != nil {
			return err
		}
		log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level}))
		if calls.Add(1) <= busy {
			return fmt.Errorf("listen on %s: %w", getenv("DEMO_HTTP_ADDR"), syscall.EADDRINUSE)
		}
		l, err := server.Listen(ctx, getenv("DEMO_HTTP_ADDR"))
		if err != nil {
			return err
		}
		g, err := server.Listen(ctx, getenv("DEMO_GRPC_ADDR"))
		if err != nil {
			return err
		}
		defer g.Close()
		log.Info("listening", "http_addr", l.Addr().String(), "grpc_addr", g.Addr().String())
		mux := http.NewServeMux()
		server.Ops(mux, prometheus.NewRegistry(), func(context.Context) error { return nil })
		return server.ServeHTTP(ctx, &http.Server{Handler: mux}, l)
	}
}

func TestStartWaitsForReadinessAtAnyLogLevel(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		level string
		busy  int32
	}{
		{"info", "info", 0},
		{"warn logs no listening line", "warn", 0},
		{"error", "error", 0},
		{"a taken port is picked again", "warn", 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var calls atomic.Int32
			s := servicetest.Start(t, demo(&calls, tt.busy), map[string]string{
				"LOG_LEVEL": tt.level, "DEMO_HTTP_ADDR": "127.0.0.1:0", "DEMO_GRPC_ADDR": "127.0.0.1:0",
			})
			if got := calls.Load(); got != tt.busy+1 {
				t.Errorf("run called %d times, want %d", got, tt.busy+1)
			}
			resp, err := http.Get("http://" + s.Addrs["http_addr"] + "/healthz")
			if err != nil {
				t.Fatalf("GET /healthz at Addrs[http_addr] = %v", err)
			}
			resp.Body.Close()
			c, err := net.Dial("tcp", s.Addrs["grpc_addr"])
			if err != nil {
				t.Fatalf("dial Addrs[grpc_addr] = %v", err)
			}
			c.Close()
			if err := s.Stop(); err != nil {
				t.Errorf("Stop() = %v, want nil", err)
			}
		})
	}
}
