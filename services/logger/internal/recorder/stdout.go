package recorder

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

const (
	// stdoutBuffer bounds the event lines waiting for stdout, in bytes:
	// some thousands of events.
	stdoutBuffer = 1 << 20
	// stdoutGrace is how long Run waits, as it returns, for stdout to
	// take the last lines.
	stdoutGrace = 2 * time.Second
	// dropsEvery is how often at most the log says stdout dropped lines.
	dropsEvery = 10 * time.Second
)

// stdoutLines copies event lines to a writer from a buffer bounded in
// bytes, written by a goroutine of its own, so that a slow or stuck stdout
// (a terminal paused or scrolled, a pipe nobody reads) never holds up
// recording and acknowledging: a line that does not fit is dropped and
// counted. stdout is a convenience; the files are the record.
type stdoutLines struct {
	w   io.Writer
	log *slog.Logger

	mu      sync.Mutex
	pending []byte    // lines not yet handed to w
	dropped int64     // lines dropped and not yet said in the log
	said    time.Time // when dropped lines were last said
	broken  atomic.Bool
	wake    chan struct{} // capacity 1: there are lines to write

	droppedTotal prometheus.Counter
}

func newStdoutLines(w io.Writer, log *slog.Logger) *stdoutLines {
	return &stdoutLines{
		w: w, log: log, wake: make(chan struct{}, 1),
		droppedTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "eventbus_logger_stdout_dropped_total",
			Help: "Event lines not copied to stdout (LOGGER_STDOUT) because it was not taking them as fast as events came, or failed."}),
	}
}

// add queues line and a newline for stdout, or drops it when the buffer
// is full, saying so in the log at most every dropsEvery. It never blocks
// on stdout.
func (s *stdoutLines) add(line []byte) {
	if s.broken.Load() {
		s.droppedTotal.Inc()
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.pending)+len(line)+1 <= stdoutBuffer {
		s.pending = append(append(s.pending, line...), '\n')
		return
	}
	s.droppedTotal.Inc()
	s.dropped++
	if time.Since(s.said) >= dropsEvery {
		s.sayDropped()
	}
}

// sayDropped logs the lines dropped since it last did, if any; s.mu is
// held.
func (s *stdoutLines) sayDropped() {
	if s.dropped > 0 {
		s.log.Warn("stdout is not keeping up with the events: lines dropped (the log files have every one)", "lines", s.dropped)
		s.dropped, s.said = 0, time.Now()
	}
}

// close says the lines dropped that were not said yet.
func (s *stdoutLines) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sayDropped()
}

// kick tells run that lines are waiting.
func (s *stdoutLines) kick() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// run writes the lines queued by add to stdout until ctx ends, then writes
// what is left and returns. A write that fails stops the copying for good,
// said once in the log.
func (s *stdoutLines) run(ctx context.Context) {
	var out []byte
	for {
		done := false
		select {
		case <-s.wake:
		case <-ctx.Done():
			done = true
		}
		s.mu.Lock()
		out, s.pending = s.pending, out[:0]
		s.mu.Unlock()
		if len(out) > 0 && !s.broken.Load() {
			if _, err := s.w.Write(out); err != nil {
				s.broken.Store(true)
				s.log.Warn("write event lines to stdout: no more lines go there", "error", err)
			}
		}
		if done {
			return
		}
	}
}
