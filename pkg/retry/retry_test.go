package retry_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/eventbus-suite/eventbus/pkg/retry"
)

func TestOutageLogsOnceEachWay(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	o := &retry.Outage{What: "read the record", Log: slog.New(slog.NewTextHandler(&buf, nil)), Backoff: retry.Backoff{Min: time.Microsecond, Max: time.Millisecond}}
	for range 5 {
		if err := o.Failed(t.Context(), errors.New("connection refused")); err != nil {
			t.Fatalf("Failed = %v, want nil", err)
		}
	}
	if !o.Failing() {
		t.Fatal("Failing() = false after failures, want true")
	}
	o.Succeeded()
	o.Succeeded()
	if o.Failing() {
		t.Fatal("Failing() = true after a success, want false")
	}
	logs := buf.String()
	if strings.Count(logs, "read the record failed") != 1 || strings.Count(logs, "read the record works again") != 1 || !strings.Contains(logs, "failed_tries=5") {
		t.Fatalf("logs = %q, want one line for the outage's start and one for its end, counting 5 failed tries", logs)
	}
}

func TestOutageWaitEndsWithTheContext(t *testing.T) {
	t.Parallel()
	o := &retry.Outage{What: "x", Log: slog.New(slog.DiscardHandler), Backoff: retry.Backoff{Min: time.Hour}}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := o.Failed(ctx, errors.New("down")); !errors.Is(err, context.Canceled) {
		t.Fatalf("Failed with an ended context = %v, want context.Canceled", err)
	}
}

func TestBackoffWaitsGrowToMaxAndReset(t *testing.T) {
	t.Parallel()
	b := retry.Backoff{Min: time.Microsecond, Max: 4 * time.Microsecond}
	for range 5 {
		if err := b.Wait(t.Context()); err != nil {
			t.Fatalf("Wait = %v", err)
		}
	}
	b.Reset()
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := (&retry.Backoff{Min: time.Hour}).Wait(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait with an ended context = %v, want context.Canceled", err)
	}
}
