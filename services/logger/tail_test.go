package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
	"github.com/eventbus-suite/eventbus/pkg/sse"
)

// get sends GET path with the Authorization header auth (none when "")
// and returns the status, the error code of a JSON error body, and the
// response, whose body the test closes.
func (l *logger) get(t *testing.T, path, auth string) (int, string, *http.Response) {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, l.url+path, nil)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.Header.Get("Content-Type") != "application/json" {
		return resp.StatusCode, "", resp
	}
	var body struct {
		Error struct{ Code, Message string }
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("GET %s = %d with a body that is no JSON error: %v", path, resp.StatusCode, err)
	}
	return resp.StatusCode, body.Error.Code, resp
}

// stuckTail opens a tail on a socket with a 4 KiB receive buffer and reads
// only its status line: a client that stopped reading.
func (l *logger) stuckTail(t *testing.T, query string) net.Conn {
	t.Helper()
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		return errors.Join(err, serr)
	}}
	c, err := d.DialContext(t.Context(), "tcp", strings.TrimPrefix(l.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	// As with tail: a missing event fails the test instead of hanging it.
	if err := c.SetReadDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "GET /v1/tail?%s HTTP/1.1\r\nHost: logger\r\n\r\n", query)
	status := make([]byte, len("HTTP/1.1 200"))
	if _, err := io.ReadFull(c, status); err != nil || string(status) != "HTTP/1.1 200" {
		t.Fatalf("stuck tail: status %q, %v; want HTTP/1.1 200", status, err)
	}
	return c
}

// logLines counts the lines of events.log.
func logLines(t *testing.T, dir string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "events.log"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return bytes.Count(b, []byte("\n"))
}

func TestTailNeedsAKeyWhenAPIKeysIsSet(t *testing.T) {
	t.Parallel()
	l := startLogger(t, redistest.Shared(t), strings.TrimSuffix(redistest.Prefix(t), ":"), t.TempDir(),
		map[string]string{"API_KEYS": "k1, k2"})
	for _, auth := range []string{"", "Bearer k3", "Bearer ", "k1", "Basic azE6"} {
		status, code, resp := l.get(t, "/v1/tail?n=0", auth)
		if status != http.StatusUnauthorized || code != "unauthorized" || resp.Header.Get("WWW-Authenticate") == "" {
			t.Errorf("GET /v1/tail with Authorization %q = %d %s, want 401 unauthorized with WWW-Authenticate", auth, status, code)
		}
	}
	for _, path := range []string{"/readyz", "/healthz", "/metrics"} {
		if status, _, _ := l.get(t, path, ""); status != http.StatusOK {
			t.Errorf("GET %s without a key = %d, want 200: probes and scrapes need none", path, status)
		}
	}
	rd := l.tail(t, "n=0", "Authorization", "Bearer k2")
	id := l.publish(t, "a.b", "keyed")
	if got := next(t, rd); got.Event.ID != id {
		t.Errorf("tail with a key got %s, want %s", got.Event.ID, id)
	}
	if strings.Contains(l.svc.Logs(), "API_KEYS is not set") {
		t.Errorf("logger warns that API_KEYS is not set although it is:\n%s", l.svc.Logs())
	}
}

func TestTailWithoutAPIKeysIsOpenAndSaysSo(t *testing.T) {
	t.Parallel()
	// At LOG_LEVEL=warn the logger logs no "listening" line: servicetest
	// finds it all the same, and the warning still shows.
	l := startLogger(t, redistest.Shared(t), strings.TrimSuffix(redistest.Prefix(t), ":"), t.TempDir(),
		map[string]string{"LOG_LEVEL": "warn"})
	if status, _, _ := l.get(t, "/v1/tail?n=0", ""); status != http.StatusOK {
		t.Errorf("GET /v1/tail without API_KEYS = %d, want 200", status)
	}
	if !strings.Contains(l.svc.Logs(), "API_KEYS is not set") {
		t.Errorf("logger does not warn that its tail is open:\n%s", l.svc.Logs())
	}
}

func TestTailsAreCapped(t *testing.T) {
	t.Parallel()
	l := startLogger(t, redistest.Shared(t), strings.TrimSuffix(redistest.Prefix(t), ":"), t.TempDir(),
		map[string]string{"LOGGER_MAX_TAILS": "2"})
	if status, _, _ := l.get(t, "/v1/tail?n=0", ""); status != http.StatusOK {
		t.Fatalf("first tail = %d, want 200", status)
	}
	_, _, second := l.get(t, "/v1/tail?n=0", "")
	status, code, resp := l.get(t, "/v1/tail?n=0", "")
	if status != http.StatusServiceUnavailable || code != "unavailable" || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("third tail with LOGGER_MAX_TAILS=2: GET /v1/tail = %d %s, want 503 unavailable with Retry-After", status, code)
	}
	if got := servicetest.Metric(t, l.url, "eventbus_logger_tails_rejected_total"); got != 1 {
		t.Errorf("eventbus_logger_tails_rejected_total = %v, want 1", got)
	}
	if got := servicetest.Metric(t, l.url, "eventbus_logger_tails"); got != 2 {
		t.Errorf("eventbus_logger_tails = %v, want 2", got)
	}
	// A tail that ends gives its place back.
	second.Body.Close()
	servicetest.WaitFor(t, "one tail open", func() bool { return servicetest.Metric(t, l.url, "eventbus_logger_tails") == 1 })
	rd := l.tail(t, "n=0")
	id := l.publish(t, "a.b", "after")
	if got := next(t, rd); got.Event.ID != id {
		t.Errorf("tail opened after one closed got %s, want %s", got.Event.ID, id)
	}
}

func TestTailsThatNeverReadDoNotHoldUpRecording(t *testing.T) {
	t.Parallel()
	const tails, events = 20, 3000
	dir := t.TempDir()
	l := startLogger(t, redistest.Shared(t), strings.TrimSuffix(redistest.Prefix(t), ":"), dir, map[string]string{
		"LOGGER_MAX_TAILS": fmt.Sprint(tails), "LOGGER_TAIL_WRITE_TIMEOUT": "100ms", "LOGGER_STDOUT": "false",
	})
	for range tails {
		l.stuckTail(t, "n=0")
	}
	// 3000 events of 1 KiB are far more than the socket buffers of a tail
	// hold: every tail's writes stop while events keep coming.
	pad := strings.Repeat("p", 1024)
	for i := range events {
		l.publish(t, "load.event", fmt.Sprint(pad, i))
	}
	servicetest.WaitFor(t, "every event in events.log", func() bool { return logLines(t, dir) == events })
	// Each stuck tail is cut off, giving its place back.
	servicetest.WaitFor(t, "the stuck tails cut off", func() bool {
		return servicetest.Metric(t, l.url, `eventbus_logger_tails_cut_total{reason="stalled"}`) == tails &&
			servicetest.Metric(t, l.url, "eventbus_logger_tails") == 0
	})
	rd := l.tail(t, "n=1")
	if got := next(t, rd); !strings.HasSuffix(got.Event.Subject, fmt.Sprint(events-1)) {
		t.Errorf("new tail's backlog = %s, want the last event", got.Event.Subject)
	}
}

func TestATailThatFallsAWindowBehindLags(t *testing.T) {
	t.Parallel()
	const window, events = 100, 2000
	dir := t.TempDir()
	l := startLogger(t, redistest.Shared(t), strings.TrimSuffix(redistest.Prefix(t), ":"), dir, map[string]string{
		"LOGGER_TAIL_BUFFER": fmt.Sprint(window), "LOGGER_TAIL_WRITE_TIMEOUT": "1h", "LOGGER_STDOUT": "false",
	})
	c := l.stuckTail(t, "n=0")
	pad := strings.Repeat("p", 1024)
	var ids []string
	for i := range events {
		ids = append(ids, l.publish(t, "load.event", fmt.Sprint(pad, i)))
	}
	servicetest.WaitFor(t, "every event in events.log", func() bool { return logLines(t, dir) == events })

	// The tail took what its socket buffers hold, far less than the 1,900
	// events that have left the window since: reading on, it gets those in
	// order, then event: lagged, then the end.
	resp, err := http.ReadResponse(bufio.NewReader(io.MultiReader(strings.NewReader("HTTP/1.1 200"), c)), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	rd := sse.NewReader(resp.Body)
	got := 0
	for {
		ev, err := rd.Next()
		if err != nil {
			t.Fatalf("tail ended with %v after %d events, before event: lagged", err, got)
		}
		if ev.Type == "lagged" {
			break
		}
		var ln line
		if err := json.Unmarshal([]byte(ev.Data), &ln); err != nil || ln.Event.ID != ids[got] {
			t.Fatalf("event %d = %s (%v), want %s: in order, with no gap", got, ln.Event.ID, err, ids[got])
		}
		got++
	}
	if got >= events-window {
		t.Errorf("tail got %d events before event: lagged, want fewer than the %d that left the window", got, events-window)
	}
	if _, err := rd.Next(); !errors.Is(err, io.EOF) {
		t.Errorf("Next() after event: lagged = %v, want io.EOF", err)
	}
	if got := servicetest.Metric(t, l.url, `eventbus_logger_tails_cut_total{reason="lagged"}`); got != 1 {
		t.Errorf(`eventbus_logger_tails_cut_total{reason="lagged"} = %v, want 1`, got)
	}
}
