package main

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
)

// A stdout that takes nothing (a terminal paused or scrolled back, a pipe
// whose reader is stuck) does not hold up recording: every event reaches
// the files and is acknowledged, the lines that did not fit in the
// stdout buffer are dropped, counted and said in the log, and the logger
// still stops when asked.
func TestAStdoutThatBlocksDoesNotHoldUpRecording(t *testing.T) {
	t.Parallel()
	// 5,000 lines of about 1 KiB: more than the stdout buffer (1 MiB) and
	// the pipe's (64 KiB) together.
	const events = 5000
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	// After the logger stops (cleanups run last first): closing the read
	// end ends the write that is stuck.
	t.Cleanup(func() { r.Close(); w.Close() })
	dir := t.TempDir()
	l := startLoggerWith(t, redistest.Shared(t), strings.TrimSuffix(redistest.Prefix(t), ":"), dir,
		map[string]string{"LOGGER_MEMBER": "m1"}, w, nil)

	pad := strings.Repeat("p", 800)
	for i := range events {
		l.publish(t, "load.event", fmt.Sprint(pad, i))
	}
	servicetest.WaitFor(t, "every event in events.log", func() bool { return logLines(t, dir) == events })
	servicetest.WaitFor(t, "every event acknowledged", func() bool {
		st, err := l.bus.Stats(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		groups := 0
		for _, ns := range st.Namespaces {
			for _, g := range ns.Groups {
				if g.Name == "logger" {
					groups++
					if g.Pending != 0 || g.Lag != 0 {
						return false
					}
				}
			}
		}
		return groups > 0
	})
	if got := servicetest.Metric(t, l.url, "eventbus_logger_events_logged_total"); got != events {
		t.Errorf("eventbus_logger_events_logged_total = %v, want %d", got, events)
	}
	if got := servicetest.Metric(t, l.url, "eventbus_logger_stdout_dropped_total"); got == 0 || got >= events {
		t.Errorf("eventbus_logger_stdout_dropped_total = %v, want some lines but not all dropped", got)
	}
	if err := l.svc.Stop(); err != nil {
		t.Errorf("run = %v, want nil", err)
	}
	if !strings.Contains(l.svc.Logs(), "lines dropped") {
		t.Errorf("the log does not say stdout dropped lines:\n%s", l.svc.Logs())
	}
}
