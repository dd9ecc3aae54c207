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

	logged    prometheus.Counter
	malformed prometheus.Counter
	lag       prometheus.Gauge
}

// New returns a Recorder; stdout may be nil.
func New(sub bus.Subscription, files *eventlog.Files, stdout io.Writer, window *eventlog.Window,
	log *slog.Logger, reg prometheus.Registerer) *Recorder {
	r := &Recorder{
		sub: sub, files: files, window: window, log: log, now: time.Now,
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

// Run records until ctx ends or the subscription closes. Lines are flushed
// whenever no message is waiting, so the files trail the bus by at most
// one batch, and always before Run returns.
func (r *Recorder) Run(ctx context.Context) error {
	msgs := r.sub.Messages()
	for {
		select {
		case m, ok := <-msgs:
			if !ok {
				return errors.Join(errors.New("subscription closed"), r.flush())
			}
			if err := r.record(m); err != nil {
				return err
			}
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

func (r *Recorder) record(m bus.Message) error {
	now := r.now()
	rec, err := eventlog.Format(m, now)
	if err != nil {
		r.malformed.Inc()
		r.log.Warn("message is not an envelope; logged raw", "channel", m.Channel, "error", err)
	}
	if err := r.files.WriteLine(rec.Line); err != nil {
		return err
	}
	if r.stdout != nil {
		r.stdout.Write(rec.Line)
		r.stdout.WriteByte('\n')
	}
	r.window.Append(rec)
	r.logged.Inc()
	if !rec.Time.IsZero() {
		r.lag.Set(now.Sub(rec.Time).Seconds())
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
