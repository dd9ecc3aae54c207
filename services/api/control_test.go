package main

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/eventbus-suite/eventbus/pkg/bus/bustest"
	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/revocation"
)

// The control routes record revocations and tell every edge, through the
// control channel; what they are given is checked first.
func TestControlRoutes(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	a := startAPI(t, srv, nil)
	sub := a.subscribe(t, revocation.ControlChannel)
	command := func() revocation.Command {
		t.Helper()
		m := bustest.Receive(t, sub)
		c, err := revocation.Parse(m.Payload)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	if r := a.post(t, "/v1/revocations", "application/json", `{"jti":"j-1"}`); r.status != http.StatusAccepted {
		t.Fatalf("revoke by jti = %d %s", r.status, r.raw)
	}
	if c := command(); c.Action != revocation.ActionRevoke || c.JTI != "j-1" {
		t.Fatalf("command %+v, want revoke j-1", c)
	}
	store := revocation.Store{Redis: srv.Client(t), Prefix: a.prefix + ":", MaxAge: time.Hour}
	if revoked, err := store.Revoked(t.Context(), "j-1", "anyone", time.Now()); err != nil || !revoked {
		t.Fatalf("Revoked(j-1) = %v, %v; want recorded", revoked, err)
	}
	before := time.Now().UTC().Truncate(time.Second)
	if r := a.post(t, "/v1/revocations", "application/json", `{"sub":"42","issued_before":"`+before.Format(time.RFC3339)+`"}`); r.status != http.StatusAccepted {
		t.Fatalf("revoke by sub = %d %s", r.status, r.raw)
	}
	if c := command(); c.Sub != "42" || !c.IssuedBefore.Equal(before) {
		t.Fatalf("command %+v, want revoke 42 before %v", c, before)
	}
	if r := a.post(t, "/v1/users/42/disconnect", "application/json", ``); r.status != http.StatusAccepted {
		t.Fatalf("disconnect = %d %s", r.status, r.raw)
	}
	if c := command(); c.Action != revocation.ActionDisconnect || c.Sub != "42" {
		t.Fatalf("command %+v, want disconnect 42", c)
	}
	if r := a.post(t, "/v1/users/42/unsubscribe", "application/json", `{"pattern":"order:*"}`); r.status != http.StatusAccepted {
		t.Fatalf("unsubscribe = %d %s", r.status, r.raw)
	}
	if c := command(); c.Action != revocation.ActionUnsubscribe || c.Pattern != "order:*" {
		t.Fatalf("command %+v, want unsubscribe 42 from order:*", c)
	}
	for _, tt := range []struct{ path, body string }{
		{"/v1/revocations", `{}`},
		{"/v1/revocations", `{"jti":"a","sub":"42"}`},
		{"/v1/revocations", `{"sub":"42"}`},
		{"/v1/revocations", `{"sub":"42","issued_before":"yesterday"}`},
		{"/v1/revocations", `{"jti":"a","extra":1}`},
		{"/v1/users/4:2/disconnect", ``},
		{"/v1/users/42/unsubscribe", `{"pattern":"a b"}`},
		{"/v1/users/42/unsubscribe", `{}`},
	} {
		if r := a.post(t, tt.path, "application/json", tt.body); r.status != http.StatusBadRequest || r.errorCode() == "" {
			t.Errorf("POST %s %s = %d %s, want 400 with a code", tt.path, tt.body, r.status, r.raw)
		}
	}
	// Nobody outside publishes on the bus's own namespace.
	if r := a.post(t, "/v1/events", "application/json", `{"type":"eventbus.control","channel":"eventbus:control","data":{"action":"disconnect","sub":"42"}}`); r.status != http.StatusBadRequest {
		t.Fatalf("an event on eventbus:control = %d %s, want 400", r.status, r.raw)
	}
	// Nor fakes a presence or a delivery receipt: the edge's own types.
	for _, body := range []string{
		`{"type":"presence.join","channel":"room:1","data":{"client_id":"c","transport":"ws"}}`,
		`{"type":"presence.leave","channel":"room:1","data":{"client_id":"c","transport":"ws"}}`,
		`{"type":"notification.delivered","data":{"notification_id":"n-1","user_id":"42","transport":"ws"}}`,
	} {
		if r := a.post(t, "/v1/events", "application/json", body); r.status != http.StatusBadRequest || !strings.Contains(string(r.raw), "only the edge publishes it") {
			t.Errorf("POST /v1/events %s = %d %s, want 400: only the edge publishes it", body, r.status, r.raw)
		}
	}
}
