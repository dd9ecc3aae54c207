package httpapi

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"

	"github.com/eventbus-suite/eventbus/pkg/channel"
	"github.com/eventbus-suite/eventbus/pkg/presence"
	"github.com/eventbus-suite/eventbus/services/api/internal/ingest"
)

// Presence limits: a channel's connections come DefaultPresenceLimit at a
// time unless limit says otherwise, up to MaxPresenceLimit; the counts
// (presence_stats) always cover them all.
const (
	DefaultPresenceLimit = 1000
	MaxPresenceLimit     = 10000
)

// presence serves GET /v1/presence?channel=…[&limit=n]: who is connected
// to the channel, on every edge, and how many connections and users that
// is. limit=0 gives the counts alone, for large channels.
func (h *handler) presence(w http.ResponseWriter, r *http.Request) error {
	ch, limit, err := presenceQuery(r.URL.Query())
	if err != nil {
		return err
	}
	var (
		members []presence.Member
		stats   presence.Stats
	)
	if limit == 0 {
		_, stats, err = h.Presence.List(r.Context(), ch, -1)
	} else {
		members, stats, err = h.Presence.List(r.Context(), ch, limit)
	}
	if err != nil {
		return fmt.Errorf("%w: %w", ingest.ErrUnavailable, err)
	}
	if members == nil {
		members = []presence.Member{}
	}
	writeJSON(w, http.StatusOK, struct {
		Channel  string            `json:"channel"`
		Clients  []presence.Member `json:"clients"`
		Stats    presence.Stats    `json:"presence_stats"`
		Complete bool              `json:"complete"`
	}{ch, members, stats, len(members) == stats.Clients})
	return nil
}

// presenceQuery reads GET /v1/presence's query: a channel that keeps
// presence, and a limit from 0 to MaxPresenceLimit (DefaultPresenceLimit
// when absent). Its error is the caller's (400).
func presenceQuery(q url.Values) (ch string, limit int, err error) {
	ch = q.Get("channel")
	if err := channel.Validate(ch); err != nil {
		return "", 0, badRequest("invalid_argument", fmt.Errorf("channel: %w", err))
	}
	if channel.Reserved(ch) {
		return "", 0, badRequest("invalid_argument", fmt.Errorf("channel: %s is the bus's own and keeps no presence", ch))
	}
	limit = DefaultPresenceLimit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > MaxPresenceLimit {
			return "", 0, badRequest("invalid_argument", fmt.Errorf("limit: %q is not a whole number from 0 to %d", v, MaxPresenceLimit))
		}
		limit = n
	}
	return ch, limit, nil
}
