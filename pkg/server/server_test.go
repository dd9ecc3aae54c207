package server_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/eventbus-suite/eventbus/pkg/server"
)

// get serves GET path on mux and returns the status and the JSON body.
func get(t *testing.T, mux *http.ServeMux, path string) (int, map[string]any) {
	t.Helper()
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequestWithContext(t.Context(), http.MethodGet, path, nil))
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Fatalf("GET %s: Content-Type %q, want application/json", path, ct)
	}
	var body map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatalf("GET %s: body %q: %v", path, rec.Body, err)
	}
	return rec.Code, body
}

func TestOpsReadyz(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		err      error
		wantCode int
		want     map[string]any
	}{
		{name: "ready", wantCode: http.StatusOK, want: map[string]any{"status": "ok"}},
		{name: "unready", err: errors.New("redis: connection refused"), wantCode: http.StatusServiceUnavailable,
			want: map[string]any{"status": "unavailable", "error": "redis: connection refused"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			mux := http.NewServeMux()
			server.Ops(mux, prometheus.NewRegistry(), func(context.Context) error { return tc.err })
			code, body := get(t, mux, "/readyz")
			if code != tc.wantCode || !cmp.Equal(body, tc.want) {
				t.Errorf("GET /readyz = %d %v, want %d %v", code, body, tc.wantCode, tc.want)
			}
			if code, body := get(t, mux, "/healthz"); code != http.StatusOK || !cmp.Equal(body, map[string]any{"status": "ok"}) {
				t.Errorf("GET /healthz = %d %v, want 200 {status: ok}", code, body)
			}
		})
	}
}

func TestOpsDetailReadyz(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		detail   map[string]any
		err      error
		wantCode int
		want     map[string]any
	}{
		{name: "ready with detail", detail: map[string]any{"lag_events": 12, "consumer": "logger/a"}, wantCode: http.StatusOK,
			want: map[string]any{"status": "ok", "lag_events": 12.0, "consumer": "logger/a"}},
		{name: "unready keeps the detail", detail: map[string]any{"lag_events": 3}, err: errors.New("down"),
			wantCode: http.StatusServiceUnavailable, want: map[string]any{"status": "unavailable", "error": "down", "lag_events": 3.0}},
		{name: "no detail", wantCode: http.StatusOK, want: map[string]any{"status": "ok"}},
		{name: "detail cannot override status or error", detail: map[string]any{"status": "great", "error": "none"},
			wantCode: http.StatusOK, want: map[string]any{"status": "ok"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			mux := http.NewServeMux()
			server.OpsDetail(mux, prometheus.NewRegistry(), func(context.Context) (map[string]any, error) { return tc.detail, tc.err })
			code, body := get(t, mux, "/readyz")
			if code != tc.wantCode || !cmp.Equal(body, tc.want) {
				t.Errorf("GET /readyz = %d %v, want %d %v", code, body, tc.wantCode, tc.want)
			}
		})
	}
}

// A path no route serves answers a JSON 404, on every service.
func TestUnknownPathsAreJSON404s(t *testing.T) {
	t.Parallel()
	mux := http.NewServeMux()
	server.Ops(mux, prometheus.NewRegistry(), func(context.Context) error { return nil })
	for _, path := range []string{"/", "/nope", "/v2/x"} {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		var body struct {
			Error struct{ Code, Message string }
		}
		if rec.Code != http.StatusNotFound || rec.Header().Get("Content-Type") != "application/json" ||
			json.Unmarshal(rec.Body.Bytes(), &body) != nil || body.Error.Code != "not_found" {
			t.Errorf("GET %s = %d %s %s, want a JSON 404", path, rec.Code, rec.Header().Get("Content-Type"), rec.Body)
		}
	}
}

// A path served with other methods answers a JSON 405 that names them.
func TestOtherMethodsAreJSON405s(t *testing.T) {
	t.Parallel()
	mux := http.NewServeMux()
	mux.HandleFunc("POST /demo/x", func(http.ResponseWriter, *http.Request) {})
	server.Ops(mux, prometheus.NewRegistry(), func(context.Context) error { return nil })
	for _, tc := range []struct{ method, path, allow string }{
		{http.MethodPost, "/healthz", "GET"},
		{http.MethodDelete, "/metrics", "GET"},
		{http.MethodGet, "/demo/x", "POST"},
	} {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest(tc.method, tc.path, nil))
		var body struct {
			Error struct{ Code, Message string }
		}
		if rec.Code != http.StatusMethodNotAllowed || rec.Header().Get("Allow") != tc.allow ||
			json.Unmarshal(rec.Body.Bytes(), &body) != nil || body.Error.Code != "method_not_allowed" {
			t.Errorf("%s %s = %d Allow %q %s, want a JSON 405 allowing %s", tc.method, tc.path, rec.Code, rec.Header().Get("Allow"), rec.Body, tc.allow)
		}
	}
}
