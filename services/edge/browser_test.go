package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	eventbusv1 "github.com/eventbus-suite/eventbus/proto/gen/eventbus/v1"

	"github.com/eventbus-suite/eventbus/pkg/browsertest"
	"github.com/eventbus-suite/eventbus/pkg/envelope"
	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
)

// TestDemoPageShowsANotification opens the demo page in headless Chromium,
// publishes a notification for the page's user and waits for it to appear.
func TestDemoPageShowsANotification(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), map[string]string{"EDGE_DEMO": "true"})
	browser := openBrowser(t, e.base+"/?user=42&pattern=order:*")
	ctx, cancel := context.WithTimeout(browser, 60*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(`#status[data-state="open"]`))); err != nil {
		t.Fatalf("wait for the page to connect: %v; %s", err, pageState(t, browser))
	}
	// The page subscribes once the socket is open; wait until Redis has it.
	servicetest.WaitFor(t, "the page's subscriptions", func() bool {
		st, err := e.bus.Stats(t.Context())
		return err == nil && st.NumSub["notify:user:42"] == 1
	})

	data, err := envelope.PackData(&eventbusv1.Notification{
		NotificationId: "n1", UserId: "42", Title: "Your order has shipped", Body: "DHL JD0001", CauseEventId: "e1"})
	if err != nil {
		t.Fatal(err)
	}
	env := &envelope.Envelope{Type: "notification.created", Channel: "notify:user:42", Data: data}
	if err := envelope.Fill(env, "test", time.Now()); err != nil {
		t.Fatal(err)
	}
	payload, err := envelope.Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := e.bus.Publish(t.Context(), env.GetChannel(), payload); err != nil || r.Receivers != 1 {
		t.Fatalf("Publish = %d, %v; want the page's edge as the 1 receiver", r.Receivers, err)
	}
	e.publish(t, "order:placed", "o-feed", 1) // the live feed watches order:*

	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(`#toasts .toast`)), chromedp.WaitVisible(chromedp.CSS(`#feed li`))); err != nil {
		t.Fatalf("wait for the notification: %v; %s", err, pageState(t, browser))
	}
	title := do(t, ctx, chromedp.Text(chromedp.CSS(`#toasts .toast strong`)))
	body := do(t, ctx, chromedp.Text(chromedp.CSS(`#toasts .toast span`)))
	feed := do(t, ctx, chromedp.Text(chromedp.CSS(`#feed`)))
	png := do(t, ctx, chromedp.FullScreenshot(100))
	if title != "Your order has shipped" || body != "DHL JD0001" {
		t.Errorf("toast = %q / %q, want the notification's title and body", title, body)
	}
	if !strings.Contains(feed, "order:placed") {
		t.Errorf("live feed = %q, want the order:placed event", feed)
	}
	shot := filepath.Join(t.ArtifactDir(), "demo-page.png")
	if err := os.WriteFile(shot, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", shot)
}

// openBrowser starts a headless Chromium of the test's own on url.
func openBrowser(t *testing.T, url string) context.Context { return browsertest.Open(t, url) }

// do runs one browser action and returns its value, failing the test on
// error.
func do[T any](t *testing.T, ctx context.Context, a chromedp.Action[T]) T {
	t.Helper()
	return browsertest.Do(t, ctx, a)
}

// pageState describes the demo page for a failure message.
func pageState(t *testing.T, browser context.Context) string {
	return browsertest.PageState(t, browser, "#status")
}

// A subscription the edge refuses shows on the demo page as an error with
// the edge's reason (here the channel grammar's suggestion), never as a
// feed that is watching.
func TestDemoPageShowsARefusedSubscription(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), map[string]string{"EDGE_DEMO": "true"})
	browser := openBrowser(t, e.base+"/?user=42&pattern=iss.telemetry")
	ctx, cancel := context.WithTimeout(browser, 60*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(`#feed-state.error`))); err != nil {
		t.Fatalf("wait for the refusal: %v; %s", err, pageState(t, browser))
	}
	if got := do(t, ctx, chromedp.Text(chromedp.CSS(`#feed-state`))); !strings.Contains(got, "iss.telemetry refused") || !strings.Contains(got, "iss:telemetry") {
		t.Errorf("the feed says %q, want the refusal with its suggestion", got)
	}
}
