package inflight_test

import (
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/eventbus-suite/eventbus/services/api/internal/inflight"
)

func TestHoldsShareOneBudget(t *testing.T) {
	t.Parallel()
	b := inflight.New(100, prometheus.NewRegistry())
	a, c := b.Hold(), b.Hold()
	if err := a.Take(60); err != nil {
		t.Fatalf("Take(60) of 100 = %v, want nil", err)
	}
	if err := c.Take(41); !errors.Is(err, inflight.ErrOverBudget) {
		t.Fatalf("Take(41) with 60 of 100 taken = %v, want ErrOverBudget", err)
	}
	if got := b.Used(); got != 60 {
		t.Fatalf("Used() after a refused Take = %d, want 60: a refusal takes nothing", got)
	}
	if err := c.Take(40); err != nil {
		t.Fatalf("Take(40) with 60 of 100 taken = %v, want nil", err)
	}
	a.Give(10)
	if got := b.Used(); got != 90 {
		t.Fatalf("Used() after Give(10) = %d, want 90", got)
	}
	a.Release()
	a.Release() // twice gives nothing more back
	c.Release()
	if got := b.Used(); got != 0 {
		t.Fatalf("Used() after every Release = %d, want 0", got)
	}
	if err := a.Take(101); !errors.Is(err, inflight.ErrOverBudget) {
		t.Fatalf("Take(101) of an empty 100 = %v, want ErrOverBudget", err)
	}
}

// A body of unknown length takes its bytes as they are read, and its read
// fails once they do not fit.
func TestReaderTakesWhatItReads(t *testing.T) {
	t.Parallel()
	b := inflight.New(10, prometheus.NewRegistry())
	h := b.Hold()
	defer h.Release()
	got, err := io.ReadAll(h.Reader(io.NopCloser(strings.NewReader("0123456789"))))
	if err != nil || string(got) != "0123456789" || b.Used() != 10 {
		t.Fatalf("ReadAll of 10 bytes in a budget of 10 = %q, %v with %d used; want all of it, 10 used", got, err, b.Used())
	}
	other := b.Hold()
	defer other.Release()
	if _, err := io.ReadAll(other.Reader(io.NopCloser(strings.NewReader("x")))); !errors.Is(err, inflight.ErrOverBudget) {
		t.Fatalf("ReadAll past the budget = %v, want ErrOverBudget", err)
	}
}
