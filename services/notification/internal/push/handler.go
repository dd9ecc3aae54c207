package push

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"

	"github.com/eventbus-suite/eventbus/pkg/apikey"
	"github.com/eventbus-suite/eventbus/pkg/channel"
	"github.com/eventbus-suite/eventbus/pkg/server"
)

// Register adds to mux, behind keys (none: open to anyone who reaches the
// port), the routes of a user's push subscriptions:
//
//	POST   /v1/users/{id}/push-subscriptions   a PushSubscription → 201 {"id":…,"endpoint":…}
//	DELETE /v1/users/{id}/push-subscriptions   {"endpoint":…}     → 204, or 404 when there was none
//
// A malformed body is 400 invalid_argument, one over MaxBodyBytes 413
// payload_too_large, a user with MaxPerUser subscriptions 409
// too_many_subscriptions. allowHTTP accepts http endpoints on loopback
// addresses (ParseSubscription).
//
// It also adds, open whatever keys says (the key is public: browsers
// subscribe with it), the route a page asks for the VAPID public key:
//
//	GET    /v1/push/vapid-public-key           → 200 {"vapid_public_key":…}, or 404 push_off
//
// vapidPublicKey is that key, base64url; empty means Web Push is off.
func Register(mux *http.ServeMux, s *Store, keys apikey.Keys, allowHTTP bool, vapidPublicKey string, log *slog.Logger) {
	h := &handler{store: s, keys: keys, allowHTTP: allowHTTP, log: log}
	mux.Handle("POST /v1/users/{id}/push-subscriptions", h.keys.Require(http.HandlerFunc(h.add)))
	mux.Handle("DELETE /v1/users/{id}/push-subscriptions", h.keys.Require(http.HandlerFunc(h.remove)))
	mux.HandleFunc("GET /v1/push/vapid-public-key", func(w http.ResponseWriter, r *http.Request) {
		if vapidPublicKey == "" {
			server.WriteError(w, http.StatusNotFound, "push_off",
				"Web Push is off: NOTIFY_VAPID_PUBLIC_KEY and NOTIFY_VAPID_PRIVATE_KEY are not set")
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]string{"vapid_public_key": vapidPublicKey})
	})
}

type handler struct {
	store     *Store
	keys      apikey.Keys
	allowHTTP bool
	log       *slog.Logger
}

// CheckUserID reports whether id can be a user id: one token of a channel,
// as the user's notifications go to notify:user:<id>.
func CheckUserID(id string) error {
	if strings.Contains(id, ":") || channel.Validate("notify:user:"+id) != nil {
		return errors.New("the user id must be one channel token: lower-case letters, digits, '_' and '-'")
	}
	return nil
}

// body reads the request body, answering 400 or 413 itself when it
// cannot: ok is false then.
func body(w http.ResponseWriter, r *http.Request) (b []byte, ok bool) {
	if err := CheckUserID(r.PathValue("id")); err != nil {
		server.WriteError(w, http.StatusBadRequest, "invalid_argument", err.Error())
		return nil, false
	}
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if mbe := (*http.MaxBytesError)(nil); errors.As(err, &mbe) {
		server.WriteError(w, http.StatusRequestEntityTooLarge, "payload_too_large", fmt.Sprintf("request body is larger than %d bytes", mbe.Limit))
		return nil, false
	} else if err != nil {
		server.WriteError(w, http.StatusBadRequest, "invalid_argument", "read the request body: "+err.Error())
		return nil, false
	}
	return b, true
}

func (h *handler) add(w http.ResponseWriter, r *http.Request) {
	b, ok := body(w, r)
	if !ok {
		return
	}
	sub, err := ParseSubscription(b, h.allowHTTP)
	if err != nil {
		server.WriteError(w, http.StatusBadRequest, "invalid_argument", err.Error())
		return
	}
	user := r.PathValue("id")
	switch err := h.store.Add(r.Context(), user, sub); {
	case errors.Is(err, ErrTooMany):
		server.WriteError(w, http.StatusConflict, "too_many_subscriptions",
			fmt.Sprintf("user %s has %d push subscriptions already: remove one first", user, MaxPerUser))
		return
	case err != nil:
		h.log.Error("record push subscription", "user_id", user, "error", err)
		server.WriteError(w, http.StatusServiceUnavailable, "unavailable", "the push subscriptions (Redis) are unavailable; try again later")
		return
	}
	h.log.Info("push subscription recorded", "user_id", user, "subscription", sub.ID())
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	_ = json.NewEncoder(w).Encode(map[string]string{"id": sub.ID(), "endpoint": sub.Endpoint})
}

func (h *handler) remove(w http.ResponseWriter, r *http.Request) {
	b, ok := body(w, r)
	if !ok {
		return
	}
	endpoint, err := ParseEndpoint(b)
	if err != nil {
		server.WriteError(w, http.StatusBadRequest, "invalid_argument", err.Error())
		return
	}
	user := r.PathValue("id")
	found, err := h.store.Remove(r.Context(), user, endpoint)
	switch {
	case err != nil:
		h.log.Error("remove push subscription", "user_id", user, "error", err)
		server.WriteError(w, http.StatusServiceUnavailable, "unavailable", "the push subscriptions (Redis) are unavailable; try again later")
	case !found:
		server.WriteError(w, http.StatusNotFound, "not_found", "user "+user+" has no push subscription at that endpoint")
	default:
		h.log.Info("push subscription removed", "user_id", user, "subscription", EndpointID(endpoint))
		w.WriteHeader(http.StatusNoContent)
	}
}
