// Package servicetest runs a service's run function inside a test, the way
// main would, and hands back the addresses it listens on.
package servicetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// RunFunc is the shape of every service's run.
type RunFunc func(ctx context.Context, getenv func(string) string, stderr io.Writer) error

// Service is a running service.
type Service struct {
	// Addrs holds the address of every *_ADDR variable, keyed by the
	// variable's name without the service's prefix, in lower case:
	// API_GRPC_ADDR gives Addrs["grpc_addr"] = "127.0.0.1:41234".
	Addrs map[string]string
	logs  *Buffer
	stop  func() error
}

// Logs returns everything the service logged so far.
func (s *Service) Logs() string { return s.logs.String() }

// Stop cancels the service's context and returns what run returned. The
// test fails if run takes more than 10 s to return.
func (s *Service) Stop() error { return s.stop() }

// attempts bounds how often Start picks new ports when a port it chose was
// taken before the service could listen on it.
const attempts = 5

// Start runs run with env as its environment, waits until the service
// answers 200 on GET /readyz at its HTTP address (the *_HTTP_ADDR
// variable), and stops it when the test ends, failing the test unless run
// then returns nil within 10 s.
//
// Every *_ADDR variable whose port is 0 is given a free port before run
// starts, so the addresses are known without reading the service's log,
// whatever its LOG_LEVEL. Should another socket take such a port first, run
// fails to listen and Start tries again with new ports.
func Start(t testing.TB, run RunFunc, env map[string]string) *Service {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for attempt := 1; ; attempt++ {
		vars, addrs, err := pickPorts(env)
		if err != nil {
			t.Fatalf("servicetest: %v", err)
		}
		if addrs["http_addr"] == "" {
			t.Fatalf("servicetest: no *_HTTP_ADDR in the environment to wait on")
		}
		in := launch(run, vars)
		err = in.waitReady(addrs["http_addr"], deadline)
		if err == nil {
			var once sync.Once
			var runErr error
			stop := func() error {
				once.Do(func() { runErr = in.stop(t) })
				return runErr
			}
			s := &Service{Addrs: addrs, logs: in.logs, stop: stop}
			t.Cleanup(func() {
				if err := s.Stop(); err != nil {
					t.Errorf("run returned %v after shutdown, want nil", err)
				}
				if t.Failed() {
					t.Logf("service log:\n%s", in.logs)
				}
			})
			return s
		}
		_ = in.stop(t)
		if !errors.Is(err, syscall.EADDRINUSE) || attempt == attempts {
			t.Fatalf("servicetest: %v\n%s", err, in.logs)
		}
	}
}

// instance is one call of run.
type instance struct {
	cancel context.CancelFunc
	logs   *Buffer
	done   chan struct{} // closed when run returns
	err    error         // what run returned; read once done is closed
}

func launch(run RunFunc, vars map[string]string) *instance {
	ctx, cancel := context.WithCancel(context.Background())
	in := &instance{cancel: cancel, logs: &Buffer{}, done: make(chan struct{})}
	go func() {
		defer close(in.done)
		in.err = run(ctx, func(k string) string { return vars[k] }, in.logs)
	}()
	return in
}

// stop cancels run and waits 10 s at most for it to return.
func (in *instance) stop(t testing.TB) error {
	in.cancel()
	select {
	case <-in.done:
		return in.err
	case <-time.After(10 * time.Second):
		t.Errorf("service did not stop within 10s of cancellation")
		return nil
	}
}

// waitReady polls GET /readyz at addr every 10 ms until it answers 200,
// run returns, or the deadline passes.
func (in *instance) waitReady(addr string, deadline time.Time) error {
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	url := "http://" + addr + "/readyz"
	last := errors.New("no answer yet")
	for {
		select {
		case <-in.done:
			if in.err == nil {
				return errors.New("run returned nil before it was ready")
			}
			return fmt.Errorf("run returned before it was ready: %w", in.err)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("GET %s not 200 within 15s: %v", url, last)
		}
		resp, err := client.Get(url)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = errors.New(resp.Status)
		}
		last = err
		select {
		case <-in.done:
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// pickPorts returns env with a free port in every *_ADDR variable whose
// port is 0, and the address to reach each *_ADDR variable at.
func pickPorts(env map[string]string) (vars, addrs map[string]string, err error) {
	vars, addrs = make(map[string]string, len(env)), map[string]string{}
	for k, v := range env {
		vars[k] = v
		_, name, ok := strings.Cut(k, "_")
		if !ok || !strings.HasSuffix(k, "_ADDR") {
			continue
		}
		host, port, err := net.SplitHostPort(v)
		if err != nil {
			continue // run reports it
		}
		if port == "0" {
			l, err := net.Listen("tcp", v)
			if err != nil {
				return nil, nil, fmt.Errorf("find a free port for %s=%s: %w", k, v, err)
			}
			port = strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
			l.Close()
			vars[k] = net.JoinHostPort(host, port)
		}
		if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
			host = "127.0.0.1"
		}
		addrs[strings.ToLower(name)] = net.JoinHostPort(host, port)
	}
	return vars, addrs, nil
}

// WaitFor polls cond every 10 ms until it holds, failing the test after
// 15 s: the way to wait for a condition another process or goroutine brings
// FreeAddr is an address of 127.0.0.1 on a port free a moment ago, for a
// service a test starts to listen on.
func FreeAddr(tb testing.TB) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

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
	v, ok := metric(t, base, name)
	if !ok {
		t.Fatalf("%s does not export %s", base, name)
	}
	return v
}

// Count is Metric for a counter whose series appears with its first
// count (one of a label's values, say): 0 while the service does not
// export it yet.
func Count(t testing.TB, base, name string) float64 {
	t.Helper()
	v, _ := metric(t, base, name)
	return v
}

// metric reads the value of name at base/metrics, and whether it is there.
func metric(t testing.TB, base, name string) (float64, bool) {
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
			return f, true
		}
	}
	return 0, false
}

// ErrorReply reads the JSON error a service answers with,
// {"error":{"code","message"}}, and closes resp's body.
func ErrorReply(resp *http.Response) (code, message string, err error) {
	defer resp.Body.Close()
	var body struct {
		Error struct{ Code, Message string }
	}
	err = json.NewDecoder(resp.Body).Decode(&body)
	return body.Error.Code, body.Error.Message, err
}

// Receive returns the next value of ch, failing the test if none comes
// within 10 s: a client that never gets it fails rather than hangs.
func Receive[T any](t testing.TB, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatal("nothing received within 10 s")
		var zero T
		return zero
	}
}
