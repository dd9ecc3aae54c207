package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/eventbus-suite/eventbus/pkg/presence"
	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/services/edge/internal/web"
)

// The demo page acknowledges each notification it shows: the edge turns
// the page's ack into a notification.delivered event on the bus, which
// keeps the notification service from sending it again by Web Push or
// email once NOTIFY_ACK_TIMEOUT passes.
func TestDemoPageAcknowledgesItsNotifications(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), map[string]string{"EDGE_DEMO": "true"})
	rs := e.receipts(t)
	browser := openBrowser(t, e.base+"/?user=42&pattern=order:*")
	ctx, cancel := context.WithTimeout(browser, 60*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(`#status[data-state="open"]`))); err != nil {
		t.Fatalf("wait for the page to connect: %v; %s", err, pageState(t, browser))
	}
	id := e.notification(t, "42")
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(`#toasts .toast`))); err != nil {
		t.Fatalf("wait for the notification: %v; %s", err, pageState(t, browser))
	}
	r := nextReceipt(t, rs)
	if r.GetNotificationId() != id || r.GetUserId() != "42" || r.GetTransport() != "ws" || r.GetClientId() == "" {
		t.Fatalf("receipt %v, want %s of user 42 over ws: the page's ack", r, id)
	}
	if got := do(t, ctx, chromedp.Evaluate[string](`document.querySelector("#status").dataset.state`)); got != "open" {
		t.Errorf("the page's status is %q after its ack, want open: %s", got, pageState(t, browser))
	}
}

// fakePresenceAPI is the api's GET /v1/presence, answered from the same
// Redis the edge records presence in, for a demo page's "who is online"
// panel: the edge cannot import the api service, and this is all of it
// the panel reads. It wants key as a bearer token, as the api with
// API_KEYS does.
func fakePresenceAPI(store *presence.Store, key string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/presence", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+key {
			http.Error(w, `{"error":{"code":"unauthorized","message":"no key"}}`, http.StatusUnauthorized)
			return
		}
		ch := r.URL.Query().Get("channel")
		members, stats, err := store.List(r.Context(), ch, 1000)
		if err != nil {
			http.Error(w, `{"error":{"code":"unavailable","message":"redis"}}`, http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"channel": ch, "clients": members, "presence_stats": stats, "complete": len(members) == stats.Clients})
	})
	return mux
}

// Two pages, two users, on the demo: each shows the other in "who is
// online", the first through the lobby's join, the second, which came
// later, through the lobby's presence read when it subscribed; when the
// second page's tab closes, the first shows its user gone.
func TestDemoPageShowsWhoIsOnline(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	api := httptest.NewUnstartedServer(nil)
	t.Cleanup(api.Close)
	e := startEdge(t, srv, map[string]string{"EDGE_DEMO": "true", "EDGE_PRESENCE_NAMESPACES": "notify,lobby",
		"EDGE_DEMO_API_URL": "http://" + api.Listener.Addr().String(), "EDGE_DEMO_API_KEY": "k1"})
	api.Config.Handler = fakePresenceAPI(presence.New(srv.Client(t), e.bus.KeyOf, time.Minute), "k1")
	api.Start()

	ada := openBrowser(t, e.base+"/?user=ada&pattern=order:*")
	adaCtx, cancel := context.WithTimeout(ada, 90*time.Second)
	defer cancel()
	// shows holds while a page lists user, connected by transport; gone
	// while it lists no such user.
	shows := func(user, transport string) string {
		return fmt.Sprintf(`document.querySelector(%q)?.dataset.transports === %q`, fmt.Sprintf(`#online-list li[data-user=%q]`, user), transport)
	}
	gone := func(user string) string {
		return fmt.Sprintf(`!document.querySelector(%q)`, fmt.Sprintf(`#online-list li[data-user=%q]`, user))
	}
	wait := func(ctx, page context.Context, what string, conds ...string) {
		t.Helper()
		for _, c := range conds {
			if err := chromedp.Do(ctx, chromedp.Poll[chromedp.Void](c)); err != nil {
				t.Fatalf("wait for %s: %v; %s; who is online: %s", what, err, pageState(t, page), panel(page))
			}
		}
	}
	wait(adaCtx, ada, "ada's page to list herself", shows("ada", "ws"), `document.querySelector("#online-state").textContent === ""`)
	// The lobby the page joins is the one /demo/api/presence reads.
	if got := do(t, adaCtx, chromedp.Text(chromedp.CSS(`#lobby`))); got != web.DemoLobby {
		t.Fatalf("the page joins %s, want %s", got, web.DemoLobby)
	}

	// bob, in another tab of the same browser: ada joined before him, so
	// only the lobby's presence read through /demo/api/presence tells him.
	bob, closeBob := chromedp.NewContext(ada)
	defer closeBob()
	if err := chromedp.Do(bob, chromedp.Navigate(e.base+"/?user=bob&pattern=order:*")); err != nil {
		t.Fatalf("open bob's page: %v", err)
	}
	bobCtx, cancelBob := context.WithTimeout(bob, 90*time.Second)
	defer cancelBob()
	wait(bobCtx, bob, "bob's page to list ada and himself", shows("ada", "ws"), shows("bob", "ws"))
	wait(adaCtx, ada, "ada's page to list bob, who joined", shows("bob", "ws"))
	if got := do(t, adaCtx, chromedp.Text(chromedp.CSS(`#online-count`))); got != "2" {
		t.Errorf("ada's page counts %s online, want 2", got)
	}
	shot := filepath.Join(t.ArtifactDir(), "who-is-online.png")
	if err := os.WriteFile(shot, do(t, adaCtx, chromedp.FullScreenshot(100)), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", shot)
	if got := do(t, bobCtx, chromedp.Evaluate[[]string](`[...document.querySelectorAll("#online-list li[data-you]")].map((li) => li.dataset.user)`)); len(got) != 1 || got[0] != "bob" {
		t.Errorf("bob's page marks %q as its own user, want bob", got)
	}

	// Closing bob's tab closes its WebSocket: the edge announces his leave.
	cancelBob()
	closeBob()
	wait(adaCtx, ada, "ada's page to see bob go", gone("bob"), shows("ada", "ws"))
	if got := do(t, adaCtx, chromedp.Text(chromedp.CSS(`#online-count`))); got != "1" {
		t.Errorf("ada's page counts %s online after bob left, want 1", got)
	}
}

// panel is what a page's "who is online" says, for a failure message.
func panel(page context.Context) string {
	ctx, cancel := context.WithTimeout(page, 5*time.Second)
	defer cancel()
	got, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector("#online").innerText`))
	if err != nil {
		return "unreadable: " + err.Error()
	}
	return fmt.Sprintf("%q", got)
}
