package recorder_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"reflect"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
	"github.com/eventbus-suite/eventbus/services/logger/internal/eventlog"
	"github.com/eventbus-suite/eventbus/services/logger/internal/recorder"
)

// idle is a consumer with nothing to fetch whose Lag answers lag, err. It
// fails the test when Fetch and Ack run at once, as bus.Consumer does not
// allow (Lag may run beside either).
type idle struct {
	t    *testing.T
	busy atomic.Bool
	lag  int64
	err  error
	lags atomic.Int64 // calls of Lag
}

func (c *idle) enter() func() {
	if !c.busy.CompareAndSwap(false, true) {
		c.t.Error("two methods of the consumer ran at once")
	}
	return func() { c.busy.Store(false) }
}

func (c *idle) Fetch(ctx context.Context, n int) ([]bus.Delivery, error) {
	defer c.enter()()
	<-ctx.Done()
	return nil, ctx.Err()
}

func (c *idle) Ack(context.Context, ...bus.Delivery) error    { defer c.enter()(); return nil }
func (c *idle) Extend(context.Context, ...bus.Delivery) error { return nil }

func (c *idle) Lag(context.Context) (int64, error) {
	c.lags.Add(1)
	return c.lag, c.err
}

func (c *idle) Close() error { return nil }

// run starts a recorder of con named name and returns it; it stops when
// the test ends.
func run(t *testing.T, con bus.Consumer, name string) *recorder.Recorder {
	t.Helper()
	files, err := eventlog.OpenFiles(t.TempDir(), 1<<20, 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { files.Close() })
	r := recorder.New(con, name, []string{"*"}, eventlog.NamespaceOf, files, nil, eventlog.NewWindow(10, eventlog.Recent{}),
		slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v after cancel, want nil", err)
		}
	})
	return r
}

func TestDetail(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		con  *idle
		want map[string]any
	}{
		{name: "lag read", con: &idle{lag: 7}, want: map[string]any{"consumer": "logger/m", "lag_events": int64(7)}},
		// A lag Redis does not give is said, not hidden, and is no error:
		// what makes the logger unready is Redis not answering, which its
		// /readyz checks apart.
		{name: "lag unknown", con: &idle{err: errors.New("read the lag of group logger: Redis does not know it")},
			want: map[string]any{"consumer": "logger/m", "lag_error": "read the lag of group logger: Redis does not know it"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.con.t = t
			r := run(t, tc.con, "logger/m")
			// The lag is read every second while Fetch waits for events.
			servicetest.WaitFor(t, "the lag read twice", func() bool { return tc.con.lags.Load() >= 2 })
			if got := r.Detail(); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Detail() = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestDetailBeforeTheLagIsReadAndWhenLive(t *testing.T) {
	t.Parallel()
	files, err := eventlog.OpenFiles(t.TempDir(), 1<<20, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer files.Close()
	newRecorder := func(name string) *recorder.Recorder {
		return recorder.New(&idle{t: t}, name, []string{"*"}, eventlog.NamespaceOf, files, nil, eventlog.NewWindow(10, eventlog.Recent{}),
			slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
	}
	if got, want := newRecorder("logger/m").Detail(), (map[string]any{"consumer": "logger/m", "lag_error": "not read yet"}); !reflect.DeepEqual(got, want) {
		t.Errorf("Detail() before Run = %v, want %v", got, want)
	}
	if got, want := newRecorder("").Detail(), (map[string]any{"history": "off"}); !reflect.DeepEqual(got, want) {
		t.Errorf("Detail() reading live = %v, want %v", got, want)
	}
}
