package main

import (
	"context"
	"encoding/json"
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

// The demo page's MQTT tab drives MQTT.js in the browser: it receives an
// event under its filter "#", and its sensor/temp telemetry reaches a JSON
// WebSocket client subscribed to sensor:* as an event of the bus.
func TestDemoPageMQTTTab(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), map[string]string{"EDGE_DEMO": "true"})
	listener := e.dial(t, mint(t, "1", "sensor:*"))
	listener.subscribe("1", "sensor:*")
	browser := openBrowser(t, e.base+"/?user=42&tab=mqtt")
	ctx, cancel := context.WithTimeout(browser, 60*time.Second)
	defer cancel()
	wait := func(what string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, actions...); err != nil {
			t.Fatalf("wait for %s: %v; %s", what, err, browsertest.PageState(t, browser, "#mqtt-status"))
		}
	}
	wait("MQTT.js to connect and subscribe", chromedp.WaitVisible(chromedp.CSS(`#mqtt-status[data-state="open"]`)),
		chromedp.Poll[chromedp.Void](`document.querySelector("#mqtt-subscribed").textContent.startsWith("subscribed to #")`))
	e.publish(t, "order:placed", "o-mqtt", -1)
	wait("the event in the MQTT feed", chromedp.WaitVisible(chromedp.CSS(`#mqtt-feed li[data-topic="order/placed"]`)))

	wait("publishing", chromedp.Click(chromedp.CSS(`#mqtt-publish`)),
		chromedp.Poll[chromedp.Void](`document.querySelector("#mqtt-result").textContent.startsWith("published on sensor/temp")`))
	f := listener.next()
	var ev struct {
		Type, Source, Subject string
		Data                  map[string]float64
	}
	if err := json.Unmarshal(f.Event, &ev); err != nil {
		t.Fatal(err)
	}
	if f.Channel != "sensor:temp" || ev.Type != "sensor.temp" || !strings.HasPrefix(ev.Source, "mqtt:demo-42-") || ev.Subject != "42" || ev.Data["celsius"] != 21.5 {
		t.Errorf("the JSON client got %s %+v, want the page's telemetry", f.Channel, ev)
	}
	wait("its own telemetry back in the MQTT feed", chromedp.WaitVisible(chromedp.CSS(`#mqtt-feed li[data-topic="sensor/temp"]`)))
}
