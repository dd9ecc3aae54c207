package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
)

// gate blocks the writes of a log line holding trigger until it is
// opened; other lines go through. The recorder, which logs a message that
// is no envelope as it records it, stops on it.
type gate struct {
	trigger string
	entered chan struct{} // closed when the first blocked write begins
	open    chan struct{}
	once    sync.Once
}

func newGate(trigger string) *gate {
	return &gate{trigger: trigger, entered: make(chan struct{}), open: make(chan struct{})}
}

// wrap returns w with its writes through g.
func (g *gate) wrap(w io.Writer) io.Writer { return gated{g, w} }

type gated struct {
	g *gate
	w io.Writer
}

func (w gated) Write(p []byte) (int, error) {
	if strings.Contains(string(p), w.g.trigger) {
		w.g.once.Do(func() { close(w.g.entered) })
		<-w.g.open
	}
	return w.w.Write(p)
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
	g := newGate("not an envelope")
	l := startLoggerWith(t, redistest.Shared(t), strings.TrimSuffix(redistest.Prefix(t), ":"), t.TempDir(),
		map[string]string{"LOGGER_MEMBER": "m1"}, io.Discard, g.wrap)
	var once sync.Once
	release := func() { once.Do(func() { close(g.open) }) }
	t.Cleanup(release) // before the logger stops: cleanups run last first

	if _, err := l.bus.Publish(t.Context(), "lag:x", []byte("no envelope")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-g.entered: // the recorder took the message and is stuck logging it
	case <-time.After(30 * time.Second):
		t.Fatal("the recorder logged nothing of the message in 30s")
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
