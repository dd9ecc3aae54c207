package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
)

// gate is a stdout whose writes block until it is opened: the recorder,
// which flushes every batch to stdout, stops on it.
type gate struct {
	entered chan struct{} // closed when the first write begins
	open    chan struct{}
	once    sync.Once
}

func newGate() *gate { return &gate{entered: make(chan struct{}), open: make(chan struct{})} }

func (g *gate) Write(p []byte) (int, error) {
	g.once.Do(func() { close(g.entered) })
	<-g.open
	return len(p), nil
}

// readyz returns the status code and body of GET /readyz.
func (l *logger) readyz(t *testing.T) (int, map[string]any) {
	t.Helper()
	resp, err := http.Get(l.url + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("GET /readyz: %v", err)
	}
	return resp.StatusCode, body
}

// /readyz shows the group's lag: events recorded that the logger has not
// read while it is stuck, then none once it has caught up. Lag does not
// make it unready.
func TestReadyzShowsTheLag(t *testing.T) {
	t.Parallel()
	g := newGate()
	l := startLoggerWith(t, redistest.Shared(t), strings.TrimSuffix(redistest.Prefix(t), ":"), t.TempDir(),
		map[string]string{"LOGGER_MEMBER": "m1"}, g)
	var once sync.Once
	release := func() { once.Do(func() { close(g.open) }) }
	t.Cleanup(release) // before the logger stops: cleanups run last first

	l.publish(t, "lag.x", "first")
	select {
	case <-g.entered: // the recorder took the first event and is stuck writing it
	case <-time.After(30 * time.Second):
		t.Fatal("the recorder wrote nothing to stdout in 30s")
	}
	for i := range 10 {
		l.publish(t, "lag.x", fmt.Sprint(i))
	}
	lagIs := func(want float64) func() bool {
		return func() bool {
			code, body := l.readyz(t)
			if code != http.StatusOK || body["status"] != "ok" || body["consumer"] != "logger/m1" {
				t.Fatalf("GET /readyz = %d %v, want 200 ok with consumer logger/m1", code, body)
			}
			return body["lag_events"] == want
		}
	}
	servicetest.WaitFor(t, "/readyz to show a lag of 10 events", lagIs(10))
	if got := servicetest.Metric(t, l.url, "eventbus_logger_lag_events"); got != 10 {
		t.Errorf("eventbus_logger_lag_events = %v while /readyz says 10", got)
	}
	release()
	servicetest.WaitFor(t, "/readyz to show no lag", lagIs(0))
}
