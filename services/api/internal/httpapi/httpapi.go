// Package httpapi is the HTTP transport of the API service.
package httpapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"

	"github.com/eventbus-suite/eventbus/pkg/apikey"
	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/bus/redisbus"
	"github.com/eventbus-suite/eventbus/pkg/envelope"
	"github.com/eventbus-suite/eventbus/pkg/presence"
	"github.com/eventbus-suite/eventbus/pkg/revocation"
	"github.com/eventbus-suite/eventbus/pkg/server"
	"github.com/eventbus-suite/eventbus/services/api/internal/inflight"
	"github.com/eventbus-suite/eventbus/services/api/internal/ingest"
)

// Options configure the handler.
type Options struct {
	Ingest      *ingest.Service
	Idempotency *ingest.Idempotency
	// Stats reads the pub/sub state of Redis for GET /v1/stats.
	Stats func(context.Context) (redisbus.Stats, error)
	// History reads the record for GET /v1/history.
	History bus.History
	// Presence is who is on which channel, for GET /v1/presence.
	Presence *presence.Store
	// Revocations is where POST /v1/revocations records revoked tokens.
	Revocations   revocation.Store
	Keys          apikey.Keys
	Logger        *slog.Logger
	MaxBodyBytes  int64
	MaxBatchBytes int64
	// Budget is shared by every request with a body: one that does not
	// fit is refused with 503 unavailable and Retry-After.
	Budget *inflight.Budget
}

type handler struct{ Options }

// Register adds the /v1 routes to mux.
func Register(mux *http.ServeMux, opts Options) {
	h := &handler{opts}
	route := func(path string, limit int64, fn func(http.ResponseWriter, *http.Request) error) {
		mux.Handle("POST "+path, h.Keys.Require(h.budget(limit, h.limit(limit, h.idempotent(fn)))))
		mux.Handle(path, methodNotAllowed("POST"))
	}
	route("/v1/events", opts.MaxBodyBytes, h.publishEvent)
	route("/v1/events:batch", opts.MaxBatchBytes, h.publishBatch)
	route("/v1/users", opts.MaxBodyBytes, h.domain(users))
	route("/v1/orders", opts.MaxBodyBytes, h.domain(orders))
	route("/v1/orders/{id}/ship", opts.MaxBodyBytes, h.domain(shipments))
	route("/v1/payments", opts.MaxBodyBytes, h.domain(payments))
	route("/v1/revocations", opts.MaxBodyBytes, h.revoke)
	route("/v1/users/{id}/disconnect", opts.MaxBodyBytes, h.disconnect)
	route("/v1/users/{id}/unsubscribe", opts.MaxBodyBytes, h.unsubscribe)
	mux.Handle("GET /v1/stats", h.Keys.Require(h.handle(h.stats)))
	mux.Handle("/v1/stats", methodNotAllowed("GET"))
	mux.Handle("GET /v1/history", h.Keys.Require(h.handle(h.history)))
	mux.Handle("/v1/history", methodNotAllowed("GET"))
	mux.Handle("GET /v1/presence", h.Keys.Require(h.handle(h.presence)))
	mux.Handle("/v1/presence", methodNotAllowed("GET"))
	// Anything else under /v1 gets a JSON 404 rather than the mux's text.
	mux.Handle("/v1/", h.Keys.Require(h.handle(func(w http.ResponseWriter, r *http.Request) error {
		return &apiError{status: http.StatusNotFound, code: "not_found", message: "no route " + r.Method + " " + r.URL.Path}
	})))
}

// retryAfter is the Retry-After of a request refused for want of room in
// the in-flight budget: a second is about how long a batch of the largest
// size takes to publish and give its bytes back.
const retryAfter = "1"

// statusClientClosedRequest is nginx's status for a request whose client
// hung up before the reply.
const statusClientClosedRequest = 499

// apiError is an error with its HTTP status and a message fit for the
// caller.
type apiError struct {
	status  int
	code    string
	message string
}

func (e *apiError) Error() string { return e.message }

func badRequest(code string, err error) error {
	return &apiError{status: http.StatusBadRequest, code: code, message: err.Error()}
}

// toAPIError maps an error to its status once, for every route.
func toAPIError(err error) (ae *apiError, internal bool) {
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &ae):
		return ae, false
	case errors.Is(err, inflight.ErrOverBudget):
		return &apiError{http.StatusServiceUnavailable, "unavailable",
			"the api is holding as many request bytes as it may (API_MAX_INFLIGHT_BYTES); nothing was published, retry later"}, false
	case errors.Is(err, server.ErrBodyTimeout):
		return &apiError{http.StatusRequestTimeout, "request_timeout",
			"the request body did not arrive in time; nothing was published"}, false
	case errors.As(err, &mbe):
		return &apiError{http.StatusRequestEntityTooLarge, "payload_too_large",
			fmt.Sprintf("request body is larger than %d bytes", mbe.Limit)}, false
	case errors.Is(err, envelope.ErrInvalid):
		return &apiError{http.StatusBadRequest, "invalid_argument", err.Error()}, false
	case errors.Is(err, ingest.ErrKeyReused):
		return &apiError{http.StatusUnprocessableEntity, "idempotency_key_reused", err.Error()}, false
	case errors.Is(err, ingest.ErrInProgress):
		return &apiError{http.StatusConflict, "idempotency_key_in_progress", err.Error()}, false
	case errors.Is(err, ingest.ErrOutcomeUnknown):
		return &apiError{http.StatusServiceUnavailable, "unavailable",
			"the event bus (Redis) did not answer in time; the event may have been published"}, true
	case errors.Is(err, ingest.ErrUnavailable):
		return &apiError{http.StatusServiceUnavailable, "unavailable",
			"the event bus (Redis) is unavailable; nothing was published, retry later"}, true
	case errors.Is(err, ingest.ErrCallerGone):
		// Nobody reads this reply: nginx's code for it, for the access log.
		return &apiError{statusClientClosedRequest, "canceled", "the request ended before anything was published"}, false
	default:
		return &apiError{http.StatusInternalServerError, "internal", "internal error"}, true
	}
}

// methodNotAllowed answers in JSON where the mux would answer in text.
func methodNotAllowed(allow string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", allow)
		server.WriteError(w, http.StatusMethodNotAllowed, "method_not_allowed",
			fmt.Sprintf("%s %s: use %s", r.Method, r.URL.Path, allow))
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// handle turns a handler that returns an error into an http.Handler that
// writes it: caller errors are echoed, everything else is logged once and
// reported without internals.
func (h *handler) handle(fn func(http.ResponseWriter, *http.Request) error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := fn(w, r); err != nil {
			h.writeError(w, r, err)
		}
	})
}

// writeError answers err as toAPIError maps it.
func (h *handler) writeError(w http.ResponseWriter, r *http.Request, err error) {
	ae, internal := toAPIError(err)
	if internal {
		h.Logger.ErrorContext(r.Context(), "request failed", "method", r.Method, "path", r.URL.Path, "error", err)
	}
	if errors.Is(err, inflight.ErrOverBudget) {
		w.Header().Set("Retry-After", retryAfter)
	}
	server.WriteError(w, ae.status, ae.code, ae.message)
}

// budget holds the request's body against the in-flight budget until the
// request ends: its Content-Length (at most limit, which the body cannot
// pass) before anything is read, or each byte as it is read when the
// length is not known.
func (h *handler) budget(limit int64, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hold := h.Budget.Hold()
		defer hold.Release()
		if r.ContentLength >= 0 {
			if err := hold.Take(min(r.ContentLength, limit)); err != nil {
				h.writeError(w, r, err)
				return
			}
		} else {
			r.Body = hold.Reader(r.Body)
		}
		next.ServeHTTP(w, r)
	})
}

func (h *handler) limit(n int64, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, n)
		next.ServeHTTP(w, r)
	})
}

// idempotent honours the Idempotency-Key header: the first request with a
// key runs and its 2xx reply is kept for 24 h; a repeat gets that reply
// again, marked Idempotent-Replayed, and publishes nothing.
func (h *handler) idempotent(fn func(http.ResponseWriter, *http.Request) error) http.Handler {
	return h.handle(func(w http.ResponseWriter, r *http.Request) error {
		key := r.Header.Get("Idempotency-Key")
		if key == "" {
			return fn(w, r)
		}
		if err := ingest.ValidKey(key); err != nil {
			return badRequest("invalid_argument", err)
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return err
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		sum := sha256.Sum256(body)
		request := fmt.Appendf(nil, "%s %s %s %x", r.Method, r.URL.Path, r.Header.Get("Content-Type"), sum)

		reply, replayed, err := h.Idempotency.Do(r.Context(), key, request, func() ([]byte, error) {
			rec := &recorder{header: make(http.Header)}
			if err := fn(rec, r); err != nil {
				return nil, err
			}
			if rec.status < 200 || rec.status > 299 {
				return nil, &apiError{rec.status, "internal", "unexpected reply"}
			}
			return json.Marshal(storedReply{Status: rec.status, Body: rec.body.Bytes()})
		})
		if err != nil {
			return err
		}
		var sr storedReply
		if err := json.Unmarshal(reply, &sr); err != nil {
			return fmt.Errorf("decode stored reply: %w", err)
		}
		w.Header().Set("Content-Type", "application/json")
		if replayed {
			w.Header().Set("Idempotent-Replayed", "true")
		}
		w.WriteHeader(sr.Status)
		_, _ = w.Write(sr.Body)
		return nil
	})
}

type storedReply struct {
	Status int    `json:"status"`
	Body   []byte `json:"body"`
}

// recorder keeps a reply so that it can be stored before it is sent.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.body.Write(b)
}

func (r *recorder) WriteHeader(status int) { r.status = status }

func (h *handler) stats(w http.ResponseWriter, r *http.Request) error {
	st, err := h.Stats(r.Context())
	if err != nil {
		return fmt.Errorf("%w: %w", ingest.ErrUnavailable, err)
	}
	writeJSON(w, http.StatusOK, st)
	return nil
}
