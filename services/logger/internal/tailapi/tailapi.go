// Package tailapi serves GET /v1/tail: the logger's events as a
// Server-Sent-Events stream.
package tailapi

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/eventbus-suite/eventbus/pkg/channel"
	"github.com/eventbus-suite/eventbus/pkg/server"
	"github.com/eventbus-suite/eventbus/pkg/sse"
	"github.com/eventbus-suite/eventbus/services/logger/internal/eventlog"
)

// heartbeat keeps proxies from closing a quiet stream.
const heartbeat = 15 * time.Second

// Register adds GET /v1/tail to mux. Streams end when ctx ends, so that the
// server can shut down.
func Register(ctx context.Context, mux *http.ServeMux, w *eventlog.Window, maxN int) {
	mux.HandleFunc("GET /v1/tail", func(rw http.ResponseWriter, r *http.Request) {
		tail(ctx, rw, r, w, maxN)
	})
}

// tail streams the last n events matching pattern from the log, then every
// new one. The SSE id of each event is its envelope id; a client that
// reconnects with Last-Event-ID resumes after that event when the logger
// still holds it. An id that SSE cannot carry (one with CR, LF or NUL,
// which only a publisher going around the API can send) is left out, so
// that it can neither forge lines nor end the event.
func tail(ctx context.Context, w http.ResponseWriter, r *http.Request, win *eventlog.Window, maxN int) {
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
		if n, err = strconv.Atoi(v); err != nil || n < 0 || n > maxN {
			server.WriteError(w, http.StatusBadRequest, "invalid_argument", fmt.Sprintf("n: want a whole number from 0 to %d, got %q", maxN, v))
			return
		}
	}
	rc := http.NewResponseController(w)
	backlog, t := win.Follow(pattern, n, r.Header.Get("Last-Event-ID"))
	defer t.Close()

	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no") // tell nginx not to buffer the stream
	w.WriteHeader(http.StatusOK)
	sw := sse.NewWriter(w)
	for _, rec := range backlog {
		writeEvent(sw, rec)
	}
	if err := rc.Flush(); err != nil {
		return
	}
	tick := time.NewTicker(heartbeat)
	defer tick.Stop()
	for {
		select {
		case rec, ok := <-t.C():
			if !ok {
				if t.Lagged {
					_ = sw.WriteEvent(sse.Event{Type: "lagged", Data: lagged})
					_ = rc.Flush()
				}
				return
			}
			writeEvent(sw, rec)
			// Write whatever else is already waiting before flushing once.
			for more := len(t.C()); more > 0; more-- {
				rec, ok := <-t.C()
				if !ok {
					break
				}
				writeEvent(sw, rec)
			}
		case <-tick.C:
			_ = sw.WriteComment("keep-alive")
		case <-r.Context().Done():
			return
		case <-ctx.Done():
			return
		}
		if err := rc.Flush(); err != nil {
			return
		}
	}
}

// lagged is the data of the event that ends a stream fallen too far behind.
const lagged = `{"error":"this stream fell too far behind and was closed; reconnect with Last-Event-ID to resume"}`

// writeEvent writes rec; a write error shows at the next flush.
func writeEvent(w *sse.Writer, rec eventlog.Record) {
	ev := sse.Event{ID: rec.ID, Data: string(rec.Line)}
	if !sse.ValidID(ev.ID) {
		ev.ID = ""
	}
	_ = w.WriteEvent(ev)
}
