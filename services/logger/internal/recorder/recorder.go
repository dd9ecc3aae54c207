// Package recorder is the core of the logger service: it reads the record
// through the consumer group "logger" into the log files, stdout and the
// window tails read, and acknowledges what it has written.
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
	"github.com/eventbus-suite/eventbus/pkg/channel"
	"github.com/eventbus-suite/eventbus/services/logger/internal/eventlog"
)

// Recorder writes every event of a consumer group down.
type Recorder struct {
	con      bus.Consumer
	patterns []string // the group's, to name the one each event matched
	files    *eventlog.Files
	stdout   *bufio.Writer // nil when lines do not go to stdout
	window   *eventlog.Window
	log      *slog.Logger
	now      func() time.Time
	out      []formatted // one batch's lines, reused

	logged    prometheus.Counter
	malformed prometheus.Counter
	lag       prometheus.Gauge
}

// New returns a Recorder reading con, a member of a group consuming
// patterns; stdout may be nil.
func New(con bus.Consumer, patterns []string, files *eventlog.Files, stdout io.Writer, window *eventlog.Window,
	log *slog.Logger, reg prometheus.Registerer) *Recorder {
	r := &Recorder{
		con: con, patterns: patterns, files: files, window: window, log: log, now: time.Now, out: make([]formatted, maxBatch),
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
	behind := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "eventbus_logger_lag_events", Help: "Recorded events the logger's group has not read yet (-1: Redis did not say)."},
		func() float64 {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			n, err := con.Lag(ctx)
			if err != nil {
				return -1
			}
			return float64(n)
		})
	reg.MustRegister(r.logged, r.malformed, r.lag, behind)
	return r
}

const (
	// maxBatch caps the messages taken from the subscription at once.
	maxBatch = 512
	// minParallel is the smallest batch worth formatting on several cores.
	minParallel = 64
)

// Run records until ctx ends. It fetches every event waiting (up to
// maxBatch), formats them (on every core when there are many), writes them
// in order, flushes the files and only then acknowledges them: an event
// is acknowledged once it is in the files, so a crash costs at most a
// repeat of the last batch, never a loss. When ctx ends, what was fetched
// is written and acknowledged before Run returns.
func (r *Recorder) Run(ctx context.Context) error {
	batch := make([]bus.Message, 0, maxBatch)
	for {
		ds, err := r.con.Fetch(ctx, maxBatch)
		if ctx.Err() != nil && len(ds) == 0 {
			return r.flush()
		}
		if err != nil {
			return errors.Join(fmt.Errorf("read the record: %w", err), r.flush())
		}
		batch = batch[:0]
		for _, d := range ds {
			batch = append(batch, bus.Message{Channel: d.Channel, Patterns: r.matching(d.Channel), Payload: d.Payload, Position: d.Position})
		}
		if err := r.record(batch); err != nil {
			return err
		}
		if err := r.flush(); err != nil {
			return err
		}
		// The acknowledgement outlives a shutdown that began meanwhile.
		if err := r.con.Ack(context.WithoutCancel(ctx), ds...); err != nil {
			return err
		}
		clear(batch)
	}
}

// matching returns the first of the group's patterns that ch matches.
func (r *Recorder) matching(ch string) []string {
	for _, p := range r.patterns {
		if channel.Match(p, ch) {
			return []string{p}
		}
	}
	return []string{r.patterns[0]}
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
