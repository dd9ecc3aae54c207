package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/token"
)

// A connection whose tokens live 2 s is told, before each expires, to send
// a fresh one; it does, five times, without reconnecting, and gets every
// event published meanwhile. One that does not is closed with 4001 at
// expiry.
func TestTokenRefreshWithoutReconnecting(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), map[string]string{"EDGE_TOKEN_REFRESH_BEFORE": "1s"})
	short := func() string {
		tok, err := token.Issue([]byte(secret), "42", []string{"rf:*"}, 2*time.Second, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	c := e.dial(t, "")
	if r := c.do(fmt.Sprintf(`{"action":"auth","token":%q,"id":"a"}`, short())); !r.OK {
		t.Fatalf("auth = %+v", r)
	}
	c.subscribe("s", "rf:*")
	var published atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond): // a steady trickle: the scenario, not a wait
			}
			e.publish(t, "rf:x", fmt.Sprint(i), -1)
			published.Add(1)
		}
	}()
	refreshes, events := 0, 0
	for refreshes < 5 {
		_, msg, err := c.conn.Read(t.Context())
		if err != nil {
			t.Fatalf("after %d refreshes and %d events: %v (close %d)", refreshes, events, err, websocket.CloseStatus(err))
		}
		for line := range strings.SplitSeq(string(msg), "\n") {
			var f struct {
				Expiring *struct {
					InS int `json:"in_s"`
				}
				ID    string
				OK    bool
				Event json.RawMessage
			}
			if err := json.Unmarshal([]byte(line), &f); err != nil {
				t.Fatalf("frame %s: %v", line, err)
			}
			switch {
			case f.Expiring != nil:
				if f.Expiring.InS < 1 || f.Expiring.InS > 2 {
					t.Fatalf("expiring in %d s, want 1 or 2", f.Expiring.InS)
				}
				c.send(fmt.Sprintf(`{"action":"auth","token":%q,"id":"r%d"}`, short(), refreshes))
			case strings.HasPrefix(f.ID, "r"):
				if !f.OK {
					t.Fatalf("refresh refused: %s", line)
				}
				refreshes++
			case f.Event != nil:
				events++
			}
		}
	}
	close(stop)
	<-done
	// Everything published until now arrives, on the same connection.
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for int64(events) < published.Load() {
		_, msg, err := c.conn.Read(ctx)
		if err != nil {
			t.Fatalf("%d of %d events, then %v", events, published.Load(), err)
		}
		events += strings.Count(string(msg), `"event":`)
	}
	// Left to expire, the connection is closed.
	if code := c.closeStatus(); code != 4001 {
		t.Fatalf("close %d after the token expired unrefreshed, want 4001", code)
	}
}
