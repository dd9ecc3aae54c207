package deadletter

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"unicode/utf8"

	"github.com/eventbus-suite/eventbus/pkg/apikey"
	"github.com/eventbus-suite/eventbus/pkg/server"
)

// MaxBodyBytes bounds the body of POST /v1/dead-letters/retry: room for
// MaxPerCall ids of MaxIDBytes, escaped.
const MaxBodyBytes = 2 << 20

// MaxIDBytes bounds one id: an event id (at most 255 characters) and a
// notification name.
const MaxIDBytes = 1024

// ErrInvalidRequest is wrapped by every error of ParseRetryRequest.
var ErrInvalidRequest = errors.New("invalid request")

// ParseRetryRequest reads the body of POST /v1/dead-letters/retry:
// nothing, or {"ids":["<id>",…]} with at most MaxPerCall distinct non-empty
// ids of at most MaxIDBytes. No ids means every dead letter (nil). Ids
// given twice are taken once.
func ParseRetryRequest(body []byte) ([]string, error) {
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, nil
	}
	var req struct {
		IDs []string `json:"ids"`
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return nil, fmt.Errorf(`%w: want {"ids":["<id>",…]} or no body: %v`, ErrInvalidRequest, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: want one JSON object, found more after it", ErrInvalidRequest)
	}
	if len(req.IDs) > MaxPerCall {
		return nil, fmt.Errorf("%w: ids: %d given; want at most %d a call", ErrInvalidRequest, len(req.IDs), MaxPerCall)
	}
	var ids []string
	seen := make(map[string]bool, len(req.IDs))
	for i, id := range req.IDs {
		switch {
		case id == "":
			return nil, fmt.Errorf("%w: ids[%d] is empty", ErrInvalidRequest, i)
		case len(id) > MaxIDBytes:
			return nil, fmt.Errorf("%w: ids[%d] is %d bytes; want at most %d", ErrInvalidRequest, i, len(id), MaxIDBytes)
		case !utf8.ValidString(id):
			return nil, fmt.Errorf("%w: ids[%d] is not valid UTF-8", ErrInvalidRequest, i)
		}
		if !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// Register adds to mux, behind keys (none: open to anyone who reaches the
// port), GET /v1/dead-letters, the newest MaxPerCall dead letters without
// their bodies and how many there are:
//
//	{"dead_letters":[{"id",…,"attempts","reason","failed_at"}],"total":N}
//
// and POST /v1/dead-letters/retry, which retries the dead letters with the
// ids of the body ({"ids":[…]}), or with none the oldest MaxPerCall, and
// answers the Summary.
func Register(mux *http.ServeMux, s *Store, keys apikey.Keys, log *slog.Logger) {
	h := &handler{store: s, keys: keys, log: log}
	mux.Handle("GET /v1/dead-letters", h.keys.Require(http.HandlerFunc(h.list)))
	mux.Handle("POST /v1/dead-letters/retry", h.keys.Require(http.HandlerFunc(h.retry)))
}

type handler struct {
	store *Store
	keys  apikey.Keys
	log   *slog.Logger
}

func (h *handler) list(w http.ResponseWriter, r *http.Request) {
	letters, total, err := h.store.List(r.Context(), MaxPerCall)
	if err != nil {
		h.log.Error("list dead letters", "error", err)
		server.WriteError(w, http.StatusServiceUnavailable, "unavailable", "the dead letters (Redis) are unavailable; try again later")
		return
	}
	writeJSON(w, struct {
		DeadLetters []Letter `json:"dead_letters"`
		Total       int64    `json:"total"`
	}{letters, total})
}

func (h *handler) retry(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if mbe := (*http.MaxBytesError)(nil); errors.As(err, &mbe) {
		server.WriteError(w, http.StatusRequestEntityTooLarge, "payload_too_large", fmt.Sprintf("request body is larger than %d bytes", mbe.Limit))
		return
	} else if err != nil {
		server.WriteError(w, http.StatusBadRequest, "invalid_argument", "read the request body: "+err.Error())
		return
	}
	ids, err := ParseRetryRequest(body)
	if err != nil {
		server.WriteError(w, http.StatusBadRequest, "invalid_argument", err.Error())
		return
	}
	sum, err := h.store.Retry(r.Context(), ids)
	if err != nil {
		h.log.Error("retry dead letters", "error", err)
		server.WriteError(w, http.StatusServiceUnavailable, "unavailable", "the dead letters (Redis) are unavailable; nothing was retried, try again later")
		return
	}
	h.log.Info("dead letters retried", "sent", sum.Sent, "skipped", len(sum.Skipped), "failed", len(sum.Failed), "remaining", sum.Remaining)
	writeJSON(w, sum)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
