// Package tailapi serves GET /v1/tail: the logger's events as a
// Server-Sent-Events stream.
package tailapi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/eventbus-suite/eventbus/pkg/apikey"
	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/channel"
	"github.com/eventbus-suite/eventbus/pkg/server"
	"github.com/eventbus-suite/eventbus/pkg/sse"
	"github.com/eventbus-suite/eventbus/services/logger/internal/eventlog"
)

// heartbeat keeps proxies from closing a quiet stream.
const heartbeat = 15 * time.Second

// batch is how many records a tail takes from the window at once: all it
// holds of the log between writes.
const batch = 64

// sendBuffer is the kernel send buffer of a tail's connection. Left to
// itself Linux grows it to megabytes for a client that does not read, which
// costs memory outside the process and the CPU to fill it.
const sendBuffer = 64 << 10

type connKey struct{}

// ConnContext, set as the http.Server's ConnContext, lets a tail size its
// connection's send buffer.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

// Options configure the tail endpoint.
type Options struct {
	// Window is what tails read.
	Window *eventlog.Window
	// MaxN is the largest backlog a tail may ask for.
	MaxN int
	// MaxTails caps the tails open at once; one more is refused with 503.
	MaxTails int
	// WriteTimeout cuts off a tail whose client has taken none of a write
	// for this long, e.g. one that stopped reading.
	WriteTimeout time.Duration
	// Keys are the API keys a tail must send; with none, anyone may tail.
	Keys apikey.Keys
	// History is the record, read by a tail resuming from a position the
	// window no longer holds; nil when the bus keeps none, and then such a
	// tail gets the last n events, as for an envelope id the window lost.
	History bus.History
	// Patterns are the logger's (LOGGER_PATTERNS): events read back from
	// the record that match none of them are not sent, as the logger does
	// not log them.
	Patterns []string
}

type handler struct {
	Options
	ctx   context.Context
	slots chan struct{} // one value per open tail

	open     prometheus.Gauge
	rejected prometheus.Counter
	cut      *prometheus.CounterVec
	replayed prometheus.Counter
}

// Register adds GET /v1/tail to mux and its metrics to reg. Streams end
// when ctx ends, so that the server can shut down.
func Register(ctx context.Context, mux *http.ServeMux, reg prometheus.Registerer, opts Options) {
	h := &handler{
		Options: opts, ctx: ctx, slots: make(chan struct{}, opts.MaxTails),
		open: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "eventbus_logger_tails", Help: "Tails open."}),
		rejected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "eventbus_logger_tails_rejected_total", Help: "Tails refused because LOGGER_MAX_TAILS were open."}),
		cut: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "eventbus_logger_tails_cut_total",
			Help: "Tails closed by the logger: lagged (fell a window behind) or stalled (took no write for LOGGER_TAIL_WRITE_TIMEOUT)."},
			[]string{"reason"}),
		replayed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "eventbus_logger_tail_replayed_total",
			Help: "Events tails read back from the record (bus history) to resume from a position the window no longer held."}),
	}
	h.cut.WithLabelValues("lagged")
	h.cut.WithLabelValues("stalled")
	reg.MustRegister(h.open, h.rejected, h.cut, h.replayed)
	mux.Handle("GET /v1/tail", h)
}

// ServeHTTP streams the last n events matching pattern from the log, then
// every new one. The SSE id of each event is a position (eventlog.Mark):
// where the tail stands, after that event, in the record of every
// namespace the pattern reaches. A client that reconnects with it as
// Last-Event-ID resumes right after that event: from the window while it
// holds that point, else by reading the record (bus.History) a page at a
// time up to its end and then the window, skipping what was sent. An
// event without a position (the bus keeps no history) has its envelope id
// as SSE id, and a Last-Event-ID that is no position is taken for one: the
// tail resumes after that event when the window holds it, else sends the
// last n. An envelope id that SSE cannot carry (one with CR, LF or NUL,
// which only a publisher going around the API can send) is left out, so
// that it can neither forge lines nor end the event.
//
// A tail costs the logger a goroutine, a few kilobytes and a send buffer
// of sendBuffer whatever its client does: it reads the window rather than
// queueing events of its own, so the recorder never waits for it, and it
// reads the record a page of replayPage events at a time. One that falls a
// window behind gets "event: lagged" and is closed; one whose client takes
// none of a write for WriteTimeout is closed.
func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !h.Keys.Allow(r.Header.Get("Authorization")) {
		apikey.Refuse(w)
		return
	}
	q := r.URL.Query()
	pattern := q.Get("pattern")
	if pattern == "" {
		pattern = "*"
	}
	if err := channel.ValidatePattern(pattern); err != nil {
		server.WriteError(w, http.StatusBadRequest, "invalid_argument", "pattern: "+err.Error())
		return
	}
	n := 20
	if v := q.Get("n"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 0 || n > h.MaxN {
			server.WriteError(w, http.StatusBadRequest, "invalid_argument", fmt.Sprintf("n: want a whole number from 0 to %d, got %q", h.MaxN, v))
			return
		}
	}
	last := r.Header.Get("Last-Event-ID")
	var resume *eventlog.Mark
	switch m, err := eventlog.ParseMark(last); {
	case errors.Is(err, eventlog.ErrNotMark):
	case err != nil:
		server.WriteError(w, http.StatusBadRequest, "invalid_argument",
			"Last-Event-ID: "+err.Error()+": send back an id this stream gave, or none")
		return
	default:
		resume = &m
	}
	select {
	case h.slots <- struct{}{}:
		defer func() { <-h.slots }()
	default:
		h.rejected.Inc()
		w.Header().Set("Retry-After", "1")
		server.WriteError(w, http.StatusServiceUnavailable, "unavailable",
			fmt.Sprintf("%d tails are open, the most this logger serves at once; try again later", h.MaxTails))
		return
	}
	h.open.Inc()
	defer h.open.Dec()
	if c, ok := r.Context().Value(connKey{}).(*net.TCPConn); ok {
		_ = c.SetWriteBuffer(sendBuffer) // best effort: a tail works without it
	}

	switch err := h.stream(w, r, pattern, n, last, resume); {
	case errors.Is(err, eventlog.ErrLagged):
		h.cut.WithLabelValues("lagged").Inc()
	case errors.Is(err, os.ErrDeadlineExceeded):
		h.cut.WithLabelValues("stalled").Inc()
	}
}

// lagged is the data of the event that ends a stream fallen too far behind.
const lagged = `{"error":"this stream fell too far behind and was closed; reconnect with Last-Event-ID to resume"}`

// stream writes events until the client goes, ctx ends or the tail is cut
// off, and returns why it stopped. resume, when not nil, is the position
// to resume from; else last is an envelope id to resume after, or "".
func (h *handler) stream(w http.ResponseWriter, r *http.Request, pattern string, n int, last string, resume *eventlog.Mark) error {
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	defer context.AfterFunc(h.ctx, cancel)()

	out := &sender{sw: sse.NewWriter(w), rc: http.NewResponseController(w), timeout: h.WriteTimeout}
	var t *eventlog.Tail
	switch {
	case resume == nil:
		t = h.Window.Follow(pattern, n, last)
	case h.History == nil:
		// No record to read: as for an envelope id the window has lost.
		var ok bool
		if t, ok = h.Window.FollowMark(pattern, *resume); !ok {
			t = h.Window.Follow(pattern, n, "")
		}
	default:
		t, _ = h.Window.FollowMark(pattern, *resume) // nil: read the record first
	}
	if t != nil {
		out.mark = t.Start()
	}
	hdr := w.Header()
	hdr.Set("Content-Type", "text/event-stream")
	hdr.Set("Cache-Control", "no-cache")
	hdr.Set("X-Accel-Buffering", "no") // tell nginx not to buffer the stream
	w.WriteHeader(http.StatusOK)
	if err := out.arm(); err != nil {
		return err
	}
	if err := out.rc.Flush(); err != nil {
		return err
	}
	if t == nil {
		out.mark = resume.Clone()
		top, err := h.replay(ctx, out, pattern)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		t = h.Window.FollowFrom(pattern, top)
	}

	buf := make([]eventlog.Record, batch)
	tick := time.NewTicker(heartbeat)
	defer tick.Stop()
	for {
		k, wait, err := t.Read(buf)
		if errors.Is(err, eventlog.ErrLagged) {
			if derr := out.arm(); derr == nil && out.sw.WriteEvent(sse.Event{Type: "lagged", Data: lagged}) == nil {
				_ = out.rc.Flush()
			}
			return err
		}
		if k > 0 {
			if err := out.arm(); err != nil {
				return err
			}
			for _, rec := range buf[:k] {
				if err := out.record(rec); err != nil {
					return err
				}
			}
			clear(buf[:k]) // hold no lines while waiting on the client
			if err := out.rc.Flush(); err != nil {
				return err
			}
			continue
		}
		select {
		case <-wait:
			continue
		case <-tick.C:
			if err := out.arm(); err != nil {
				return err
			}
			if err := out.sw.WriteComment("keep-alive"); err != nil {
				return err
			}
			if err := out.rc.Flush(); err != nil {
				return err
			}
		case <-ctx.Done():
			return nil
		}
	}
}

// sender writes a tail's events and keeps its mark.
type sender struct {
	sw      *sse.Writer
	rc      *http.ResponseController
	timeout time.Duration
	mark    eventlog.Mark // where the tail stands: the id of its next event
}

// arm gives the connection a fresh write deadline. Every write gets one
// before it starts: writes reach the connection whenever the response's
// buffer fills, not only on Flush.
func (s *sender) arm() error {
	if err := s.rc.SetWriteDeadline(time.Now().Add(s.timeout)); err != nil {
		return fmt.Errorf("set write deadline: %w", err)
	}
	return nil
}

// record writes rec, unless the tail has passed its position already (it
// was read back from the record, or is a repeat), with the tail's mark
// after it as id. A record without a position goes out with its envelope
// id, left out when SSE cannot carry it.
func (s *sender) record(rec eventlog.Record) error {
	if rec.Position.IsZero() {
		id := rec.ID
		if !sse.ValidID(id) {
			id = ""
		}
		return s.sw.WriteEventBytes(id, "", rec.Line)
	}
	if !s.mark.After(rec.Stream, rec.Position) {
		return nil
	}
	s.mark.Advance(rec.Stream, rec.Position)
	if s.mark.Floor == "" {
		// The window knew nothing when the tail began: the tail's
		// memory of the record starts here.
		s.mark.Floor = rec.Position.Offset
	}
	return s.sw.WriteEventBytes(s.mark.String(), "", rec.Line)
}
