package main

import (
	"net/http"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/revocation"
	"github.com/eventbus-suite/eventbus/pkg/token"
)

// command does what the API does for c: records a revocation, and tells
// every edge.
func (e *edge) command(t *testing.T, c revocation.Command) {
	t.Helper()
	if c.Action == revocation.ActionRevoke {
		s := revocation.Store{Redis: e.redis.Client(t), Prefix: e.prefix, MaxAge: time.Hour}
		if err := s.Record(t.Context(), c); err != nil {
			t.Fatal(err)
		}
	}
	b, err := c.Payload("test", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.bus.Publish(t.Context(), revocation.ControlChannel, b); err != nil {
		t.Fatal(err)
	}
}

// refused reports whether the edge turns tok away at the upgrade.
func (e *edge) refused(t *testing.T, tok string) bool {
	t.Helper()
	conn, resp, err := websocket.Dial(t.Context(), e.ws+"?token="+tok, nil)
	if err == nil {
		conn.CloseNow()
		return false
	}
	return resp != nil && resp.StatusCode == http.StatusUnauthorized
}

// Commands reach every edge: a revoked token's connections close with 4003
// on both, and the token is refused afterwards, also by an edge started
// later; a forced disconnect closes a user's connections with 4004; a
// forced unsubscribe drops a subscription with a notice.
func TestControlCommandsReachEveryEdge(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	prefix := redistest.Prefix(t)
	edges := []*edge{startEdgeWithPrefix(t, srv, prefix[:len(prefix)-1], nil), startEdgeWithPrefix(t, srv, prefix[:len(prefix)-1], nil)}
	issue := func(sub string) string {
		tok, err := token.Issue([]byte(secret), sub, []string{"ct:*"}, time.Hour, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	claims := func(tok string) *token.Claims {
		c, err := token.NewVerifier([]byte(secret)).Verify(tok)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}

	t.Run("revoke by jti", func(t *testing.T) {
		tok := issue("u1")
		a, b := edges[0].dial(t, tok), edges[1].dial(t, tok)
		a.subscribe("1", "ct:*")
		b.subscribe("1", "ct:*")
		other := edges[0].dial(t, issue("u1")) // the same user, another token
		other.subscribe("1", "ct:*")
		edges[0].command(t, revocation.Command{Action: revocation.ActionRevoke, JTI: claims(tok).ID})
		for _, c := range []*client{a, b} {
			if code := c.closeStatus(); code != 4003 {
				t.Fatalf("close %d, want 4003 revoked", code)
			}
		}
		if r := other.do(`{"action":"ping","id":"p"}`); !r.OK {
			t.Fatalf("the other token's connection: %+v, want it open", r)
		}
		later := startEdgeWithPrefix(t, srv, prefix[:len(prefix)-1], nil)
		for _, e := range append(edges, later) {
			if !e.refused(t, tok) {
				t.Fatal("a revoked token was accepted again")
			}
		}
	})

	t.Run("revoke by sub and issued_before", func(t *testing.T) {
		old := issue("u2")
		a, b := edges[0].dial(t, old), edges[1].dial(t, old)
		a.subscribe("1", "ct:*")
		b.subscribe("1", "ct:*")
		edges[1].command(t, revocation.Command{Action: revocation.ActionRevoke, Sub: "u2", IssuedBefore: time.Now().Add(time.Second)})
		for _, c := range []*client{a, b} {
			if code := c.closeStatus(); code != 4003 {
				t.Fatalf("close %d, want 4003 revoked", code)
			}
		}
		if !edges[0].refused(t, old) {
			t.Fatal("a token issued before the cut was accepted again")
		}
	})

	t.Run("disconnect", func(t *testing.T) {
		a, b := edges[0].dial(t, issue("u3")), edges[1].dial(t, issue("u3"))
		a.subscribe("1", "ct:*")
		b.subscribe("1", "ct:*")
		edges[0].command(t, revocation.Command{Action: revocation.ActionDisconnect, Sub: "u3"})
		for _, c := range []*client{a, b} {
			if code := c.closeStatus(); code != 4004 {
				t.Fatalf("close %d, want 4004 disconnected", code)
			}
		}
	})

	t.Run("unsubscribe", func(t *testing.T) {
		a, b := edges[0].dial(t, issue("u4")), edges[1].dial(t, issue("u4"))
		for _, c := range []*client{a, b} {
			c.subscribe("1", "ct:x")
			c.subscribe("2", "ct:*")
		}
		edges[0].command(t, revocation.Command{Action: revocation.ActionUnsubscribe, Sub: "u4", Pattern: "ct:x"})
		for _, c := range []*client{a, b} {
			if f := c.next(); f.Unsubscribed != "ct:x" || f.Reason != "removed" {
				t.Fatalf("got %+v, want ct:x unsubscribed, removed", f)
			}
		}
	})
}
