// Package recorder is the core of the logger service: it reads the record
// through the consumer group "logger" into the log files and the window
// tails read, acknowledges what it has written, and copies each line to
// stdout as far as stdout keeps up.
package recorder

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/channel"
	"github.com/eventbus-suite/eventbus/pkg/retry"
	"github.com/eventbus-suite/eventbus/services/logger/internal/eventlog"
)

// Recorder writes every event of a consumer group down.
type Recorder struct {
	con      bus.Consumer // Run fetches and acknowledges; the lag reader reads Lag meanwhile
	name     string       // "group/member", or "" when reading live
	patterns []string     // the group's, to name the one each event matched
	streamOf eventlog.StreamOf
	files    *eventlog.Files
	stdout   *stdoutLines // nil when lines do not go to stdout
	window   *eventlog.Window
	log      *slog.Logger
	now      func() time.Time
	out      []formatted // one batch's lines, reused

	logged    prometheus.Counter
	malformed prometheus.Counter
	lag       prometheus.Gauge
	behind    atomic.Pointer[lagReading] // the last reading of the group's lag; nil before the first
}

// lagReading is one reading of Consumer.Lag.
type lagReading struct {
	events int64
	err    error
}

// errLagUnread is the lag's error until it was first read.
var errLagUnread = errors.New("not read yet")

// New returns a Recorder reading con, a member of a group consuming
// patterns; name is the member's "group/member" for /readyz, or "" when
// con reads live (bus.Live), without a group. streamOf names the stream of
// each record's position, as the bus does. stdout may be nil; when set,
// each line is copied to it from a bounded buffer, dropped (and counted in
// eventbus_logger_stdout_dropped_total) when stdout does not keep up.
func New(con bus.Consumer, name string, patterns []string, streamOf eventlog.StreamOf, files *eventlog.Files, stdout io.Writer, window *eventlog.Window,
	log *slog.Logger, reg prometheus.Registerer) *Recorder {
	r := &Recorder{
		con: con, name: name, streamOf: streamOf,
		patterns: patterns, files: files, window: window, log: log, now: time.Now, out: make([]formatted, 0, maxBatch),
		logged: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "eventbus_logger_events_logged_total", Help: "Events written to the log."}),
		malformed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "eventbus_logger_malformed_total", Help: "Messages that were no envelope, logged raw."}),
		lag: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "eventbus_logger_lag_seconds", Help: "Time between the last logged event's time and its logging."}),
	}
	if stdout != nil {
		r.stdout = newStdoutLines(stdout, log)
		reg.MustRegister(r.stdout.droppedTotal)
	}
	behind := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "eventbus_logger_lag_events", Help: "Recorded events the logger's group has not read yet, read every second (-1: Redis did not say)."},
		func() float64 {
			n, err := r.Lag()
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
	// lagEvery is how often the group's lag is read.
	lagEvery = time.Second
)

// Lag returns the group's lag (recorded events no member has fetched yet)
// as last read, at most about two seconds ago while Run runs; an error
// when it was not read yet or Redis did not say.
func (r *Recorder) Lag() (int64, error) {
	l := r.behind.Load()
	if l == nil {
		return 0, errLagUnread
	}
	return l.events, l.err
}

// Detail is what /readyz says of the recorder: {"consumer":"logger/<member>",
// "lag_events":12}, with "lag_error" instead of "lag_events" when the lag
// could not be read, or {"history":"off"} when reading live. It takes no
// time: the lag is the last reading.
func (r *Recorder) Detail() map[string]any {
	if r.name == "" {
		return map[string]any{"history": "off"}
	}
	d := map[string]any{"consumer": r.name}
	if n, err := r.Lag(); err != nil {
		d["lag_error"] = err.Error()
	} else {
		d["lag_events"] = n
	}
	return d
}

// readLag reads the group's lag every lagEvery until ctx ends.
func (r *Recorder) readLag(ctx context.Context) {
	tick := time.NewTicker(lagEvery)
	defer tick.Stop()
	for {
		lctx, cancel := context.WithTimeout(ctx, lagEvery)
		n, err := r.con.Lag(lctx)
		cancel()
		if err != nil && ctx.Err() != nil {
			return
		}
		r.behind.Store(&lagReading{events: n, err: err})
		select {
		case <-tick.C:
		case <-ctx.Done():
			return
		}
	}
}

// Run records until ctx ends. It fetches every event waiting (up to
// maxBatch), formats them (on every core when there are many), writes them
// in order, flushes the files and only then acknowledges them: an event
// is acknowledged once it is in the files, so a crash costs at most a
// repeat of the last batch, never a loss. When ctx ends, what was fetched
// is written and acknowledged before Run returns. Meanwhile it reads the
// group's lag every second (see Lag), and copies the lines to stdout from
// a goroutine of its own, waiting for it at most stdoutGrace as it returns:
// a write to a stdout that takes nothing cannot be interrupted, and is
// left to end with the process.
//
// Redis going away does not end Run: it retries, with a backoff of at
// most 5 s, saying so once in the log, and goes on from the group's
// position when Redis is back. A batch written but not yet acknowledged
// when ctx ends during such an outage comes again after a restart. Only
// a failure to write the files, or a closed bus, ends Run with an error.
func (r *Recorder) Run(ctx context.Context) error {
	lctx, stopLag := context.WithCancel(ctx)
	var wg sync.WaitGroup
	if r.name != "" {
		wg.Go(func() { r.readLag(lctx) })
	}
	defer wg.Wait()
	defer stopLag()
	if r.stdout != nil {
		// The copying outlives ctx, to write the last batch.
		sctx, stopStdout := context.WithCancel(context.WithoutCancel(ctx))
		copied := make(chan struct{})
		go func() {
			defer close(copied)
			r.stdout.run(sctx)
		}()
		defer func() {
			stopStdout()
			select {
			case <-copied:
			case <-time.After(stdoutGrace):
				r.log.Warn("stdout takes no event lines: leaving the last ones unwritten")
			}
			r.stdout.close()
		}()
	}

	outage := retry.Outage{What: "read the record", Log: r.log}
	batch := make([]bus.Message, 0, maxBatch)
	for {
		ds, err := r.con.Fetch(ctx, maxBatch)
		if ctx.Err() != nil && len(ds) == 0 {
			return r.flush()
		}
		if errors.Is(err, bus.ErrClosed) {
			return errors.Join(fmt.Errorf("read the record: %w", err), r.flush())
		}
		if err != nil {
			if outage.Failed(ctx, err) != nil {
				return r.flush()
			}
			continue
		}
		outage.Succeeded()
		if len(ds) == 0 {
			continue
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
		r.show()
		for {
			// The acknowledgement outlives a shutdown that began meanwhile.
			err := r.con.Ack(context.WithoutCancel(ctx), ds...)
			if err == nil {
				break
			}
			if outage.Failed(ctx, err) != nil {
				return nil // written: a restart writes them again
			}
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

// record formats batch into r.out and writes it to the files, buffered,
// and queues it for stdout: the lines are in the files once flush returns,
// and show then hands them to the tails.
func (r *Recorder) record(batch []bus.Message) error {
	now := r.now()
	r.out = slices.Grow(r.out[:0], len(batch))[:len(batch)]
	out := r.out
	format := func(lo, hi int) {
		for i := lo; i < hi; i++ {
			out[i].rec, out[i].err = eventlog.Format(batch[i], now)
			out[i].rec.Stream = r.streamOf(batch[i].Channel)
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
	for i, f := range out {
		if f.err != nil {
			r.malformed.Inc()
			r.log.Warn("message is not an envelope; logged raw", "channel", batch[i].Channel, "error", f.err)
		}
		if err := r.files.WriteLine(f.rec.Line); err != nil {
			return err
		}
		if r.stdout != nil {
			r.stdout.add(f.rec.Line)
		}
		r.logged.Inc()
		if !f.rec.Time.IsZero() {
			r.lag.Set(now.Sub(f.rec.Time).Seconds())
		}
	}
	return nil
}

// show hands the batch record wrote, now flushed, to the tails: a tail
// never shows a line the files do not have yet.
func (r *Recorder) show() {
	for _, f := range r.out {
		r.window.Append(f.rec)
	}
	clear(r.out)
	r.out = r.out[:0]
}

func (r *Recorder) flush() error {
	err := r.files.Flush()
	if r.stdout != nil {
		r.stdout.kick()
	}
	return err
}
