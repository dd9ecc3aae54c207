// Package inflight keeps one budget of the request bytes the api holds at
// once, over every HTTP request and gRPC call, so that many large requests
// at a time are refused rather than grow memory without bound.
package inflight

import (
	"errors"
	"io"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// ErrOverBudget is what taking bytes past the budget returns, also when it
// happens while a request's body is read: the request is to be refused as
// unavailable, to be retried later.
var ErrOverBudget = errors.New("the api holds as many request bytes as it may at once")

// Budget counts the bytes requests in flight have taken against a maximum.
// It is safe for concurrent use. Nothing waits for room: a request that
// does not fit is refused at once.
type Budget struct {
	max     int64
	mu      sync.Mutex
	used    int64
	inUse   prometheus.Gauge
	refused prometheus.Counter
}

// New returns a budget of max bytes, exporting
// eventbus_api_inflight_bytes and eventbus_api_inflight_refused_total to
// reg.
func New(max int64, reg prometheus.Registerer) *Budget {
	b := &Budget{
		max: max,
		inUse: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "eventbus_api_inflight_bytes",
			Help: "Request bytes the api holds now, of API_MAX_INFLIGHT_BYTES.",
		}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "eventbus_api_inflight_refused_total",
			Help: "Requests refused because API_MAX_INFLIGHT_BYTES was held by others.",
		}),
	}
	reg.MustRegister(b.inUse, b.refused)
	return b
}

// Max is the budget's size in bytes.
func (b *Budget) Max() int64 { return b.max }

// take reserves n bytes, or none when they do not fit.
func (b *Budget) take(n int64) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if n > b.max-b.used {
		b.refused.Inc()
		return ErrOverBudget
	}
	b.used += n
	b.inUse.Set(float64(b.used))
	return nil
}

func (b *Budget) give(n int64) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.used -= n
	b.inUse.Set(float64(b.used))
}

// Used is how many bytes are taken now.
func (b *Budget) Used() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

// Hold is what one request has taken of a budget. It is not safe for
// concurrent use: one request, one goroutine. Its zero value is not
// usable; get one from Budget.Hold.
type Hold struct {
	b    *Budget
	held int64
}

// Hold returns an empty hold on b for one request; Release it when the
// request ends.
func (b *Budget) Hold() *Hold { return &Hold{b: b} }

// Take reserves n more bytes for the request, or returns ErrOverBudget and
// takes none.
func (h *Hold) Take(n int64) error {
	if n <= 0 {
		return nil
	}
	if err := h.b.take(n); err != nil {
		return err
	}
	h.held += n
	return nil
}

// Give returns n of the bytes the request took, once it no longer keeps
// what they stood for (a batch sent on).
func (h *Hold) Give(n int64) {
	n = min(n, h.held)
	h.b.give(n)
	h.held -= n
}

// Release gives back everything the request took. The hold may be used
// again afterwards.
func (h *Hold) Release() { h.Give(h.held) }

// Reader returns body with every byte read from it taken from the hold
// first: a read that does not fit returns ErrOverBudget. For bodies whose
// length is not known up front.
func (h *Hold) Reader(body io.ReadCloser) io.ReadCloser { return &reader{ReadCloser: body, h: h} }

type reader struct {
	io.ReadCloser
	h *Hold
}

func (r *reader) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	if n > 0 {
		// The bytes are already in p, which the caller owns; what counts
		// is what it may keep. Refusing them ends the request, and its
		// buffer with it.
		if terr := r.h.Take(int64(n)); terr != nil {
			return 0, terr
		}
	}
	return n, err
}
