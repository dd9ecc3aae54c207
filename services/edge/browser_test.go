package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"google.golang.org/protobuf/proto"

	eventbusv1 "github.com/eventbus-suite/eventbus/proto/gen/eventbus/v1"

	"github.com/eventbus-suite/eventbus/pkg/browsertest"
	"github.com/eventbus-suite/eventbus/pkg/envelope"
	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/revocation"
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

// The demo page's MQTT tab drives MQTT.js in the browser and looks like
// the WebSocket tab: cards without bullets in a box that scrolls, each
// with its event's key fields on one line. It subscribes to what a demo
// token is for, the shop's topics, sensor/# and the user's own
// notifications; under those and under "#" it shows neither another
// user's notification nor the bus's own eventbus/… topics, though the
// edges are commanded on eventbus:control while it watches. Its
// sensor/temp telemetry reaches a JSON WebSocket client subscribed to
// sensor:* as an event of the bus, and comes back to the tab.
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
	subscribed := func(filter string) chromedp.Action[chromedp.Void] {
		return chromedp.Poll[chromedp.Void](fmt.Sprintf(`document.querySelector("#mqtt-subscribed").textContent.includes(%q)`, "subscribed to "+filter+" at"))
	}
	item := func(topic string) chromedp.Action[chromedp.Void] {
		return chromedp.WaitVisible(chromedp.CSS(fmt.Sprintf(`#mqtt-feed li[data-topic=%q]`, topic)))
	}
	wait("MQTT.js to connect and subscribe", chromedp.WaitVisible(chromedp.CSS(`#mqtt-status[data-state="open"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#mqtt-empty`)), subscribed("notify/user/42"))
	if got, want := do(t, ctx, chromedp.Value(chromedp.CSS(`#mqtt-filter`))), "user/#, order/#, payment/#, sensor/#, notify/user/42"; got != want {
		t.Errorf("the MQTT tab's filters = %q, want %q", got, want)
	}

	// The look: computed, so that a stylesheet that loses the rule fails.
	type look struct{ List, MaxHeight, Overflow string }
	style := func(sel string) look {
		return do(t, ctx, chromedp.Evaluate[look](fmt.Sprintf(`(() => {
			const s = getComputedStyle(document.querySelector(%q));
			return {List: s.listStyleType, MaxHeight: s.maxHeight, Overflow: s.overflowY};
		})()`, sel)))
	}
	mqttLook, wsLook := style("#mqtt-feed"), style("#feed")
	if mqttLook.List != "none" || mqttLook.MaxHeight == "none" || (mqttLook.Overflow != "auto" && mqttLook.Overflow != "scroll") {
		t.Errorf("the MQTT feed's style = %+v, want no bullets, a max height and overflow auto or scroll", mqttLook)
	}
	if mqttLook != wsLook {
		t.Errorf("the MQTT feed's style = %+v, want the WebSocket feed's, %+v", mqttLook, wsLook)
	}

	// wrong lists what the feed must not show, and every item without the
	// summary line.
	wrong := func() []string {
		return do(t, ctx, chromedp.Evaluate[[]string](`[...document.querySelectorAll("#mqtt-feed li")].flatMap((li) => {
			const topic = li.dataset.topic;
			if (topic.startsWith("eventbus/") || topic === "notify/user/7") return [topic + " shown"];
			return li.querySelector("dl.summary [data-field] dd") ? [] : [topic + " without its summary"];
		})`))
	}
	command := func() {
		t.Helper()
		e.command(t, revocation.Command{Action: revocation.ActionDisconnect, Sub: "8"})
	}
	commanded := func(n float64) {
		t.Helper()
		servicetest.WaitFor(t, "the edge to take the command", func() bool {
			return servicetest.Count(t, e.base, `eventbus_edge_control_commands_total{action="disconnect"}`) == n
		})
	}

	command()
	commanded(1)
	publishData(t, e, "notify:user:7", "notification.created", &eventbusv1.Notification{NotificationId: "n7", UserId: "7", Title: "For 7"})
	publishData(t, e, "notify:user:42", "notification.created", &eventbusv1.Notification{NotificationId: "n42", UserId: "42", Title: "For 42", Body: "yours"})
	publishData(t, e, "order:placed", "order.placed", &eventbusv1.OrderPlaced{OrderId: "o-mqtt", UserId: "42", Total: 4900, Currency: "EUR"})
	wait("the events in the MQTT feed", item("notify/user/42"), item("order/placed"))
	if got := do(t, ctx, chromedp.Text(chromedp.CSS(`#mqtt-feed li[data-topic="order/placed"] [data-field="order_id"] dd`))); got != "o-mqtt" {
		t.Errorf("the order's card shows order_id %q, want o-mqtt", got)
	}
	if do(t, ctx, chromedp.Evaluate[bool](`document.querySelector("#mqtt-empty").hidden`)) != true {
		t.Error("the MQTT tab's empty state stays after the first message")
	}

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
	wait("its own telemetry back in the MQTT feed", item("sensor/temp"))
	if got := wrong(); len(got) > 0 {
		t.Errorf("under its own filters the MQTT feed has %q", got)
	}

	// Under "#", what the token withholds and the bus's own namespace stay
	// out all the same. The edge takes the command before the order that
	// follows it, so the feed would show it by then.
	wait("subscribing to #", chromedp.SetValue(chromedp.CSS(`#mqtt-filter`), "#"), chromedp.Click(chromedp.CSS(`#mqtt-subscribe`)), subscribed("#"))
	command()
	commanded(2)
	publishData(t, e, "notify:user:7", "notification.created", &eventbusv1.Notification{NotificationId: "n7b", UserId: "7", Title: "For 7 again"})
	publishData(t, e, "order:shipped", "order.shipped", &eventbusv1.OrderShipped{OrderId: "o-mqtt", UserId: "42", Carrier: "DHL", TrackingNumber: "JD0001"})
	wait("the shipment in the MQTT feed", item("order/shipped"))
	if got := wrong(); len(got) > 0 {
		t.Errorf("under # the MQTT feed has %q", got)
	}
}

// publishData publishes an event of type typ on ch carrying data, as the
// API would, and fails the test unless the edge is listening.
func publishData(t *testing.T, e *edge, ch, typ string, data proto.Message) {
	t.Helper()
	packed, err := envelope.PackData(data)
	if err != nil {
		t.Fatal(err)
	}
	env := &envelope.Envelope{Type: typ, Channel: ch, Data: packed}
	if err := envelope.Fill(env, "test", time.Now()); err != nil {
		t.Fatal(err)
	}
	payload, err := envelope.Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := e.bus.Publish(t.Context(), ch, payload); err != nil || r.Receivers < 1 {
		t.Fatalf("Publish(%s) = %d, %v; want the edge among the receivers", ch, r.Receivers, err)
	}
}
