// Package servicetest runs a service's run function inside a test, the way
// main would, and hands back the addresses it listens on.
package servicetest

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// RunFunc is the shape of every service's run.
type RunFunc func(ctx context.Context, getenv func(string) string, stderr io.Writer) error

// Service is a running service.
type Service struct {
	// Addrs holds the "..._addr" attributes of the service's "listening"
	// log line, e.g. Addrs["http_addr"] = "127.0.0.1:41234".
	Addrs map[string]string
	logs  *watcher
	stop  func() error
}

// Logs returns everything the service logged so far.
func (s *Service) Logs() string { return s.logs.String() }

// Stop cancels the service's context and returns what run returned. The
// test fails if run takes more than 10 s to return.
func (s *Service) Stop() error { return s.stop() }

// Start runs run with env as its environment, waits until it logs
// "listening", and stops it when the test ends, failing the test unless run
// then returns nil within 10 s.
func Start(t testing.TB, run RunFunc, env map[string]string) *Service {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := &watcher{listening: make(chan map[string]string, 1)}
	done := make(chan error, 1)
	go func() { done <- run(ctx, func(k string) string { return env[k] }, w) }()
	var once sync.Once
	var runErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(10 * time.Second):
				t.Errorf("service did not stop within 10s of cancellation")
			}
		})
		return runErr
	}
	s := &Service{logs: w, stop: stop}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("run returned %v after shutdown, want nil", err)
		}
		if t.Failed() {
			t.Logf("service log:\n%s", w)
		}
	})
	select {
	case s.Addrs = <-w.listening:
		return s
	case err := <-done:
		t.Fatalf("run = %v before listening\n%s", err, w)
	case <-time.After(15 * time.Second):
		t.Fatalf("service not listening after 15s\n%s", w)
	}
	return nil
}

// watcher keeps the log and spots the "listening" line.
type watcher struct {
	mu        sync.Mutex
	buf       bytes.Buffer
	listening chan map[string]string
	seen      bool
}

func (w *watcher) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if w.seen {
		return len(p), nil
	}
	for _, line := range bytes.Split(p, []byte("\n")) {
		var rec map[string]any
		if json.Unmarshal(line, &rec) != nil || rec["msg"] != "listening" {
			continue
		}
		addrs := map[string]string{}
		for k, v := range rec {
			if s, ok := v.(string); ok && strings.HasSuffix(k, "_addr") {
				addrs[k] = s
			}
		}
		w.seen = true
		w.listening <- addrs
		break
	}
	return len(p), nil
}

func (w *watcher) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// WaitFor polls cond every 10 ms until it holds, failing the test after
// 15 s: the way to wait for a condition another process or goroutine brings
// about, rather than sleeping.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after 15s waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Metric reads one unlabelled metric from the Prometheus endpoint at
// base + "/metrics", failing the test when it is not exported.
func Metric(t testing.TB, base, name string) float64 {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatalf("read metrics: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read metrics: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metric %s = %q: %v", name, v, err)
			}
			return f
		}
	}
	t.Fatalf("%s does not export %s", base, name)
	return 0
}
