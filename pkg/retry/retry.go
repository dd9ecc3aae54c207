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

// Backoff paces one loop's retries, silently. Its zero value waits 100 ms
// first; each failure doubles the wait up to Max (default 5 s), with
// jitter so that replicas do not retry in step. It is not safe for
// concurrent use; each loop that retries keeps its own.
type Backoff struct {
	Min, Max time.Duration
	wait     time.Duration
}

// Wait waits before the next try, or until ctx ends, when it returns ctx's
// error.
func (b *Backoff) Wait(ctx context.Context) error {
	b.wait = min(max(2*b.wait, cmp.Or(b.Min, 100*time.Millisecond)), cmp.Or(b.Max, 5*time.Second))
	t := time.NewTimer(b.wait/2 + rand.N(b.wait/2+1))
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Reset starts the waits over, after a success.
func (b *Backoff) Reset() { b.wait = 0 }

// Outage is a Backoff that also says, once, that the work fails and, once,
// that it works again: for the one loop of a service that speaks for its
// outages (others that depend on the same thing retry with a Backoff).
// Set What and Log. It is not safe for concurrent use.
type Outage struct {
	// What names the work in the log, as "read the record".
	What string
	Log  *slog.Logger
	Backoff

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
	return o.Wait(ctx)
}

// Succeeded records that the work worked: if an outage was going on, it
// logs its end once, with how long it lasted and how many tries failed.
func (o *Outage) Succeeded() {
	o.Reset()
	if o.since.IsZero() {
		return
	}
	// At the level of the failure, so that whoever sees one sees both.
	o.Log.Warn(o.What+" works again", "outage", time.Since(o.since).Round(time.Millisecond).String(), "failed_tries", o.failed)
	o.since, o.failed = time.Time{}, 0
}

// Failing reports whether an outage is going on: the last try failed.
func (o *Outage) Failing() bool { return !o.since.IsZero() }
