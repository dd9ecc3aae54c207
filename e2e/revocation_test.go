package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/token"
)

// As compose runs it (the API and two edges): a revocation through the API
// closes the token's connections on both edges with 4003, and the token is
// refused on reconnect; a forced disconnect closes a user's connections on
// both with 4004.
func TestRevocationAndDisconnectThroughTheAPI(t *testing.T) {
	srv := redistest.Shared(t)
	prefix := strings.TrimSuffix(redistest.Prefix(t), ":")
	common := map[string]string{"REDIS_URL": srv.URL, "REDIS_PREFIX": prefix}
	const secret = "revocation-e2e-secret-0123456789"
	apiHTTP := startAPI(t, common)
	edges, _ := startEdges(t, 2, merge(common, map[string]string{"EDGE_JWT_SECRET": secret}))
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	issue := func(sub string) (string, string) {
		tok, err := token.Issue([]byte(secret), sub, []string{"rv:*"}, time.Hour, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		c, err := token.NewVerifier([]byte(secret)).Verify(tok)
		if err != nil {
			t.Fatal(err)
		}
		return tok, c.ID
	}
	dial := func(edge, tok string) *websocket.Conn {
		t.Helper()
		conn, err := dialWS(ctx, t, edge, tok)
		if err != nil {
			t.Fatalf("dial %s: %v", edge, err)
		}
		subscribeOK(ctx, t, conn, "rv:*")
		return conn
	}
	closed := func(conn *websocket.Conn) websocket.StatusCode {
		t.Helper()
		for {
			if _, _, err := conn.Read(ctx); err != nil {
				return websocket.CloseStatus(err)
			}
		}
	}

	tok, jti := issue("u1")
	a, b := dial(edges[0], tok), dial(edges[1], tok)
	postAccepted(t, apiHTTP, "/v1/revocations", fmt.Sprintf(`{"jti":%q}`, jti))
	for _, c := range []*websocket.Conn{a, b} {
		if code := closed(c); code != 4003 {
			t.Fatalf("close %d after the revocation, want 4003", code)
		}
	}
	for _, e := range edges {
		if _, resp, err := websocket.Dial(ctx, "ws://"+e+"/ws?token="+tok, nil); err == nil || resp == nil || resp.StatusCode != 401 {
			t.Fatalf("the revoked token on %s: %v, want 401", e, err)
		}
	}

	tok2, _ := issue("u2")
	a, b = dial(edges[0], tok2), dial(edges[1], tok2)
	postAccepted(t, apiHTTP, "/v1/users/u2/disconnect", ``)
	for _, c := range []*websocket.Conn{a, b} {
		if code := closed(c); code != 4004 {
			t.Fatalf("close %d after the disconnect, want 4004", code)
		}
	}
}
