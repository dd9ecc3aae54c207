// Package retry paces the retries of work that fails while something it
// depends on is away (Redis restarting, a network partition), and says so
// once in the log rather than once per try.
package retry

import (
	"cmp"
	"context"
	"log/slog"
	"math/rand/v2"
	"time"
)

// Outage paces the retries of one piece of work. Its zero value is not
// usable: set Log and What. It is not safe for concurrent use; each loop
// that retries keeps its own.
type Outage struct {
	// What names the work in the log, as "read the record".
	What string
	Log  *slog.Logger
	// Min is the first wait (default 100 ms); each failure doubles it, up
	// to Max (default 5 s), with jitter so that replicas do not retry in
	// step.
	Min, Max time.Duration

	wait   time.Duration
	since  time.Time // when the outage began; zero while the work succeeds
	failed int       // failures since then
}

// Failed records a failure of the work and waits before the next try: it
// logs the first failure of an outage (at warning level, with err), then
// waits its backoff, or until ctx ends, when it returns ctx's error.
func (o *Outage) Failed(ctx context.Context, err error) error {
	if o.since.IsZero() {
		o.since = time.Now()
		o.Log.Warn(o.What+" failed; retrying until it works", "error", err)
	}
	o.failed++
	o.wait = min(max(2*o.wait, cmp.Or(o.Min, 100*time.Millisecond)), cmp.Or(o.Max, 5*time.Second))
	t := time.NewTimer(o.wait/2 + rand.N(o.wait/2+1))
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Succeeded records that the work worked: if an outage was going on, it
// logs its end once, with how long it lasted and how many tries failed.
func (o *Outage) Succeeded() {
	if o.since.IsZero() {
		return
	}
	o.Log.Info(o.What+" works again", "outage", time.Since(o.since).Round(time.Millisecond).String(), "failed_tries", o.failed)
	o.since, o.failed, o.wait = time.Time{}, 0, 0
}

// Failing reports whether an outage is going on: the last try failed.
func (o *Outage) Failing() bool { return !o.since.IsZero() }
