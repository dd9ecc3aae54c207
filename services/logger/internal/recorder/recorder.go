// Package recorder is the core of the logger service: it drains a bus
// subscription into the log files, stdout and the window tails read.
package recorder

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/services/logger/internal/eventlog"
)

// Recorder writes every message of a subscription down.
type Recorder struct {
	sub    bus.Subscription
	files  *eventlog.Files
	stdout *bufio.Writer // nil when lines do not go to stdout
	window *eventlog.Window
	log    *slog.Logger
	now    func() time.Time
	out    []formatted // one batch's lines, reused

	logged    prometheus.Counter
	malformed prometheus.Counter
	lag       prometheus.Gauge
}

// New returns a Recorder; stdout may be nil.
func New(sub bus.Subscription, files *eventlog.Files, stdout io.Writer, window *eventlog.Window,
	log *slog.Logger, reg prometheus.Registerer) *Recorder {
	r := &Recorder{
		sub: sub, files: files, window: window, log: log, now: time.Now, out: make([]formatted, maxBatch),
		logged: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "eventbus_logger_events_logged_total", Help: "Events written to the log."}),
		malformed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "eventbus_logger_malformed_total", Help: "Messages that were no envelope, logged raw."}),
		lag: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "eventbus_logger_lag_seconds", Help: "Time between the last logged event's time and its logging."}),
	}
	if stdout != nil {
		r.stdout = bufio.NewWriterSize(stdout, 64<<10)
	}
	reg.MustRegister(r.logged, r.malformed, r.lag)
	return r
}

const (
	// maxBatch caps the messages taken from the subscription at once.
	maxBatch = 512
	// minParallel is the smallest batch worth formatting on several cores.
	minParallel = 64
)

// Run records until ctx ends or the subscription closes. It takes every
// message waiting, formats them (on every core when there are many) and
// writes them in order. Lines are flushed whenever no message is waiting,
// so the files trail the bus by at most one batch, and always before Run
// returns.
func (r *Recorder) Run(ctx context.Context) error {
	msgs := r.sub.Messages()
	batch := make([]bus.Message, 0, maxBatch)
	for {
		select {
		case m, ok := <-msgs:
			if !ok {
				return errors.Join(errors.New("subscription closed"), r.flush())
			}
			batch = append(batch[:0], m)
		fill:
			for len(batch) < maxBatch {
				select {
				case m, ok := <-msgs:
					if !ok {
						break fill // the next receive reports it
					}
					batch = append(batch, m)
				default:
					break fill
				}
			}
			if err := r.record(batch); err != nil {
				return err
			}
			clear(batch)
			if len(msgs) == 0 {
				if err := r.flush(); err != nil {
					return err
				}
			}
		case <-ctx.Done():
			return r.flush()
		}
	}
}

type formatted struct {
	rec eventlog.Record
	err error
}

func (r *Recorder) record(batch []bus.Message) error {
	now := r.now()
	out := r.out[:len(batch)]
	format := func(lo, hi int) {
		for i := lo; i < hi; i++ {
			out[i].rec, out[i].err = eventlog.Format(batch[i], now)
		}
	}
	if workers := runtime.GOMAXPROCS(0); len(batch) < minParallel || workers == 1 {
		format(0, len(batch))
	} else {
		var wg sync.WaitGroup
		per := (len(batch) + workers - 1) / workers
		for lo := 0; lo < len(batch); lo += per {
			wg.Go(func() { format(lo, min(lo+per, len(batch))) })
		}
		wg.Wait()
	}
	defer clear(out)
	for i, f := range out {
		if f.err != nil {
			r.malformed.Inc()
			r.log.Warn("message is not an envelope; logged raw", "channel", batch[i].Channel, "error", f.err)
		}
		if err := r.files.WriteLine(f.rec.Line); err != nil {
			return err
		}
		if r.stdout != nil {
			r.stdout.Write(f.rec.Line)
			r.stdout.WriteByte('\n')
		}
		r.window.Append(f.rec)
		r.logged.Inc()
		if !f.rec.Time.IsZero() {
			r.lag.Set(now.Sub(f.rec.Time).Seconds())
		}
	}
	return nil
}

func (r *Recorder) flush() error {
	err := r.files.Flush()
	if r.stdout != nil {
		if serr := r.stdout.Flush(); serr != nil && err == nil {
			err = fmt.Errorf("write stdout: %w", serr)
		}
	}
	return err
}
