// Package server runs HTTP and gRPC servers bound to a context, and serves
// the endpoints every eventbus service has: /healthz, /readyz, /metrics.
package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
)

// ShutdownTimeout bounds a graceful shutdown; services stop within 10 s of
// SIGTERM with room to spare.
const ShutdownTimeout = 8 * time.Second

// ServeHTTP serves srv on l until ctx ends, then shuts it down gracefully,
// waiting at most ShutdownTimeout for requests in flight. Handlers that
// stream (SSE, WebSocket) must end on their own when ctx ends: Shutdown does
// not interrupt them. It returns nil after a shutdown caused by ctx.
func ServeHTTP(ctx context.Context, srv *http.Server, l net.Listener) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve http on %s: %w", l.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ShutdownTimeout)
	defer cancel()
	err := srv.Shutdown(sctx)
	if serr := <-errc; !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	if err != nil {
		_ = srv.Close()
		return fmt.Errorf("shut down http on %s: %w", l.Addr(), err)
	}
	return nil
}

// ServeGRPC serves srv on l until ctx ends, then stops it gracefully,
// cutting calls still running after ShutdownTimeout. It returns nil after a
// stop caused by ctx.
func ServeGRPC(ctx context.Context, srv *grpc.Server, l net.Listener) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve grpc on %s: %w", l.Addr(), err)
	case <-ctx.Done():
	}
	stopped := make(chan struct{})
	go func() {
		srv.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(ShutdownTimeout):
		srv.Stop()
		<-stopped
	}
	<-errc
	return nil
}

// Listen opens a TCP listener, naming the address on failure.
func Listen(ctx context.Context, addr string) (net.Listener, error) {
	l, err := new(net.ListenConfig).Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	return l, nil
}

// Ops adds /healthz (the process is up), /readyz (ready returns nil) and
// /metrics (everything g gathers) to mux, and a JSON 404 for every path no
// other route serves. /readyz answers
// {"status":"ok"}, or 503 {"status":"unavailable","error":"…"}.
func Ops(mux *http.ServeMux, g prometheus.Gatherer, ready func(context.Context) error) {
	OpsDetail(mux, g, func(ctx context.Context) (map[string]any, error) { return nil, ready(ctx) })
}

// OpsDetail is Ops for a service that says more in /readyz: ready returns
// the detail to add to the answer as well as whether the service is ready
// (a nil error). The detail's keys join "status" (and "error") at the top
// of the JSON object, which is sent whether ready or not, so a probe reads
// {"status":"ok","lag_events":12}; a detail key named "status" or "error"
// is overridden. ready has 2 s and is called for every probe: it should
// return what it already knows rather than do slow work.
func OpsDetail(mux *http.ServeMux, g prometheus.Gatherer, ready func(context.Context) (map[string]any, error)) {
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeStatus(w, http.StatusOK, "ok", nil, nil)
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		detail, err := ready(ctx)
		if err != nil {
			writeStatus(w, http.StatusServiceUnavailable, "unavailable", detail, err)
			return
		}
		writeStatus(w, http.StatusOK, "ok", detail, nil)
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	// Whatever no route serves is a JSON 404 or 405 too, not the mux's text.
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if allow := allowedMethods(mux, r); allow != "" {
			w.Header().Set("Allow", allow)
			WriteError(w, http.StatusMethodNotAllowed, "method_not_allowed", fmt.Sprintf("%s %s: use %s", r.Method, r.URL.Path, allow))
			return
		}
		WriteError(w, http.StatusNotFound, "not_found", "no route "+r.Method+" "+r.URL.Path)
	})
}

// allowedMethods lists the methods another route of mux serves r's path
// with: the fallback route "/" catches every request the mux would answer
// 405 itself, in text.
func allowedMethods(mux *http.ServeMux, r *http.Request) string {
	var allow []string
	probe := r.Clone(r.Context())
	for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
		probe.Method = m
		if _, pattern := mux.Handler(probe); m != r.Method && pattern != "/" && pattern != "" {
			allow = append(allow, m)
		}
	}
	return strings.Join(allow, ", ")
}

func writeStatus(w http.ResponseWriter, code int, status string, detail map[string]any, err error) {
	body := make(map[string]any, len(detail)+2)
	maps.Copy(body, detail)
	body["status"] = status
	if err != nil {
		body["error"] = err.Error()
	} else {
		delete(body, "error")
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(body)
}

// NewRegistry returns a registry with the Go runtime and process
// collectors, which every service exports.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return reg
}

// Pprof adds the net/http/pprof handlers under /debug/pprof/ to mux. Only
// for profiling: never expose them where untrusted clients reach the port.
func Pprof(mux *http.ServeMux) {
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
}

// WriteError writes the error body every eventbus HTTP endpoint uses:
// {"error":{"code":"invalid_argument","message":"…"}}.
func WriteError(w http.ResponseWriter, status int, code, message string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"code": code, "message": message}})
}
