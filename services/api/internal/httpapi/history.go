package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/channel"
	"github.com/eventbus-suite/eventbus/pkg/envelope"
	"github.com/eventbus-suite/eventbus/services/api/internal/ingest"
)

// historyEvent is one event of GET /v1/history.
type historyEvent struct {
	Offset  string          `json:"offset"`
	Epoch   string          `json:"epoch"`
	Channel string          `json:"channel"`
	Event   json.RawMessage `json:"event"`
}

// history serves GET /v1/history?pattern=…&since=…&epoch=…&limit=…
func (h *handler) history(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	pattern := q.Get("pattern")
	if err := channel.ValidatePattern(pattern); err != nil {
		return badRequest("invalid_argument", fmt.Errorf("pattern: %w", err))
	}
	limit := ingest.DefaultHistoryLimit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > ingest.MaxHistoryLimit {
			return badRequest("invalid_argument", fmt.Errorf("limit: %q is not a whole number from 1 to %d", v, ingest.MaxHistoryLimit))
		}
		limit = n
	}
	since, err := bus.Since(pattern, q.Get("since"), q.Get("epoch"))
	if err != nil {
		return badRequest("invalid_argument", err)
	}
	page, err := h.History.History(r.Context(), pattern, since, limit)
	switch {
	case errors.Is(err, bus.ErrTruncated):
		return &apiError{status: http.StatusGone, code: "history_truncated",
			message: err.Error() + ": the history asked for is gone; reload the state and read on from a fresh position"}
	case err != nil:
		return fmt.Errorf("%w: %w", ingest.ErrUnavailable, err)
	}
	events := make([]historyEvent, 0, len(page.Events))
	for _, e := range page.Events {
		env, err := envelope.Unmarshal(e.Payload)
		var js []byte
		if err == nil {
			js, err = envelope.MarshalJSON(env)
		}
		if err != nil {
			h.Logger.WarnContext(r.Context(), "recorded event is no envelope; left out of the history", "channel", e.Channel, "offset", e.Position.Offset, "error", err)
			continue
		}
		events = append(events, historyEvent{Offset: e.Position.Offset, Epoch: e.Position.Epoch, Channel: e.Channel, Event: js})
	}
	writeJSON(w, http.StatusOK, struct {
		Events []historyEvent `json:"events"`
		Next   string         `json:"next"`
		More   bool           `json:"more"`
	}{events, page.Next.String(), page.More})
	return nil
}
