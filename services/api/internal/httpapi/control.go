package httpapi

import (
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/eventbus-suite/eventbus/pkg/revocation"
)

// The routes that act on every edge: POST /v1/revocations,
// /v1/users/{id}/disconnect and /v1/users/{id}/unsubscribe.

// revoke serves POST /v1/revocations: {"jti":"…"} or {"sub":"42",
// "issued_before":"<RFC 3339>"}.
func (h *handler) revoke(w http.ResponseWriter, r *http.Request) error {
	var body struct {
		JTI          string    `json:"jti"`
		Sub          string    `json:"sub"`
		IssuedBefore time.Time `json:"issued_before"`
	}
	if err := h.readStrict(r, &body); err != nil {
		return err
	}
	c := revocation.Command{Action: revocation.ActionRevoke, JTI: body.JTI, Sub: body.Sub, IssuedBefore: body.IssuedBefore}
	return h.control(w, r, c, map[string]any{"revoked": true})
}

// disconnect serves POST /v1/users/{id}/disconnect.
func (h *handler) disconnect(w http.ResponseWriter, r *http.Request) error {
	c := revocation.Command{Action: revocation.ActionDisconnect, Sub: r.PathValue("id")}
	return h.control(w, r, c, map[string]any{"disconnected": c.Sub})
}

// unsubscribe serves POST /v1/users/{id}/unsubscribe: {"pattern":"order:*"}.
func (h *handler) unsubscribe(w http.ResponseWriter, r *http.Request) error {
	var body struct {
		Pattern string `json:"pattern"`
	}
	if err := h.readStrict(r, &body); err != nil {
		return err
	}
	c := revocation.Command{Action: revocation.ActionUnsubscribe, Sub: r.PathValue("id"), Pattern: body.Pattern}
	return h.control(w, r, c, map[string]any{"unsubscribed": c.Pattern, "sub": c.Sub})
}

func (h *handler) readStrict(r *http.Request, v any) error {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return err
	}
	return decodeStrict(body, v)
}

// control hands c to the edges and answers 202 with reply.
func (h *handler) control(w http.ResponseWriter, r *http.Request, c revocation.Command, reply map[string]any) error {
	if err := c.Validate(); err != nil {
		return badRequest("invalid_argument", fmt.Errorf("%v", err))
	}
	if err := h.Ingest.Control(r.Context(), h.Revocations, c); err != nil {
		return err
	}
	writeJSON(w, http.StatusAccepted, reply)
	return nil
}
