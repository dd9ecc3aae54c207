package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/eventbus-suite/eventbus/pkg/browsertest"
	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
)

// The quick start without a terminal: on the demo page, a newcomer signs
// up, places an order, ships it and pays, with the page's buttons. Each
// press goes through the API; each event shows as a card with its key
// fields and its raw JSON, each notification pops up, the emails are sent
// (dry run), and the user id survives a reload. The MQTT tab, open all
// along, shows the same events as the same cards, and nothing of the
// bus's own eventbus/… topics. Its screenshots, demo-flow.png and
// demo-mqtt.png, are what docs/demo-page.png is made from.
func TestDemoPageButtonsWalkTheFlow(t *testing.T) {
	srv := redistest.Shared(t)
	prefix := strings.TrimSuffix(redistest.Prefix(t), ":")
	apiHTTP, apiGRPC, edgeHTTP, notifyHTTP := servicetest.FreeAddr(t), servicetest.FreeAddr(t), servicetest.FreeAddr(t), servicetest.FreeAddr(t)
	common := map[string]string{"REDIS_URL": srv.URL, "REDIS_PREFIX": prefix}
	api := start(t, "api", merge(common, map[string]string{"API_HTTP_ADDR": apiHTTP, "API_GRPC_ADDR": apiGRPC}))
	edge := start(t, "edge", merge(common, map[string]string{"EDGE_HTTP_ADDR": edgeHTTP, "EDGE_DEMO": "true", "EDGE_DEMO_API_URL": "http://" + apiHTTP}))
	notification := start(t, "notification", merge(common, map[string]string{"NOTIFICATION_HTTP_ADDR": notifyHTTP}))
	for p, addr := range map[*process]string{api: apiHTTP, edge: edgeHTTP, notification: notifyHTTP} {
		waitReady(t, p, "http://"+addr+"/readyz")
	}

	base := "http://" + edgeHTTP
	browser := browsertest.Open(t, base+"/?user=42")
	ctx, cancel := context.WithTimeout(browser, 90*time.Second)
	defer cancel()
	step := func(what string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, actions...); err != nil {
			t.Fatalf("%s: %v; %s", what, err, browsertest.PageState(t, browser, "#status"))
		}
	}
	text := func(sel string) string {
		t.Helper()
		return browsertest.Do(t, ctx, chromedp.Text(chromedp.CSS(sel)))
	}

	step("the page connects, with nothing to show yet",
		chromedp.WaitVisible(chromedp.CSS(`#status[data-state="open"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#empty`)))
	if n := browsertest.Do(t, ctx, chromedp.Evaluate[int](`document.querySelectorAll("#feed li").length`)); n != 0 {
		t.Fatalf("a fresh page shows %d events, want the empty state alone", n)
	}

	step("the MQTT tab connects and subscribes",
		chromedp.Click(chromedp.CSS(`#tab-mqtt-button`)),
		chromedp.WaitVisible(chromedp.CSS(`#mqtt-status[data-state="open"]`)),
		chromedp.Poll[chromedp.Void](`document.querySelector("#mqtt-subscribed").textContent.includes("subscribed to notify/user/42 at")`),
		chromedp.Click(chromedp.CSS(`#tab-ws-button`)),
		chromedp.WaitVisible(chromedp.CSS(`#feed`)))

	card := func(typ string) string { return fmt.Sprintf(`#feed li.card[data-type=%q]`, typ) }
	field := func(typ, name string) string {
		t.Helper()
		return text(fmt.Sprintf(`%s [data-field=%q] dd`, card(typ), name))
	}
	toast := func(title string) chromedp.Action[chromedp.Void] {
		return chromedp.Poll[chromedp.Void](fmt.Sprintf(`[...document.querySelectorAll("#toasts .toast strong")].some((el) => el.textContent === %q)`, title))
	}

	step("signing up", chromedp.Click(chromedp.CSS(`#signup`)), chromedp.WaitVisible(chromedp.CSS(card("user.created"))))
	if got := field("user.created", "email"); got != "user42@example.com" {
		t.Errorf("the sign-up card's email = %q, want user42@example.com", got)
	}
	if browsertest.Do(t, ctx, chromedp.Evaluate[bool](`document.querySelector("#empty").hidden`)) != true {
		t.Error("the empty state stays after the first event")
	}
	servicetest.WaitFor(t, "the dry-run welcome email", func() bool {
		return strings.Contains(notification.out.String(), "Welcome to eventbus, User 42!")
	})

	step("placing an order",
		chromedp.Click(chromedp.CSS(`#order`)),
		chromedp.WaitVisible(chromedp.CSS(card("order.placed"))),
		toast("Order received"),
		chromedp.WaitEnabled(chromedp.CSS(`#ship`)))
	orderID := field("order.placed", "order_id")
	if got := field("order.placed", "total"); got != "4900" {
		t.Errorf("the order card's total = %q, want 4900 (2 × 1250 + 2400)", got)
	}
	step("shipping it", chromedp.Click(chromedp.CSS(`#ship`)), chromedp.WaitVisible(chromedp.CSS(card("order.shipped"))), toast("Order shipped"))
	if got := field("order.shipped", "order_id"); got != orderID {
		t.Errorf("shipped order %q, want the one placed, %q", got, orderID)
	}
	step("paying", chromedp.Click(chromedp.CSS(`#pay`)), chromedp.WaitVisible(chromedp.CSS(card("payment.completed"))), toast("Payment received"))
	if got := field("payment.completed", "amount"); got != "4900" {
		t.Errorf("the payment card's amount = %q, want the order's total, 4900", got)
	}
	servicetest.WaitFor(t, "the dry-run receipt", func() bool {
		return strings.Contains(notification.out.String(), "Receipt for your payment")
	})
	if got := text(`#result`); !strings.Contains(got, "Payment: accepted") {
		t.Errorf("after paying the page says %q, want the API's acceptance", got)
	}

	step("opening an event's raw JSON", chromedp.Click(chromedp.CSS(card("order.placed")+` summary`)),
		chromedp.WaitVisible(chromedp.CSS(card("order.placed")+` pre`)))
	if raw := text(card("order.placed") + ` pre`); !strings.Contains(raw, `"type": "order.placed"`) || !strings.Contains(raw, orderID) {
		t.Errorf("the order's raw JSON = %s, want the whole frame", raw)
	}
	png := browsertest.Do(t, ctx, chromedp.FullScreenshot(100))
	if err := os.WriteFile(filepath.Join(t.ArtifactDir(), "demo-flow.png"), png, 0o644); err != nil {
		t.Fatal(err)
	}

	mqttCard := func(topic string) chromedp.Action[chromedp.Void] {
		return chromedp.WaitVisible(chromedp.CSS(fmt.Sprintf(`#mqtt-feed li.card[data-topic=%q]`, topic)))
	}
	step("the same events on the MQTT tab", chromedp.Click(chromedp.CSS(`#tab-mqtt-button`)),
		mqttCard("user/created"), mqttCard("order/placed"), mqttCard("order/shipped"), mqttCard("payment/completed"), mqttCard("notify/user/42"))
	if got := text(`#mqtt-feed li[data-topic="payment/completed"] [data-field="amount"] dd`); got != "4900" {
		t.Errorf("the MQTT tab's payment card shows amount %q, want 4900, as the WebSocket tab does", got)
	}
	wrong := browsertest.Do(t, ctx, chromedp.Evaluate[[]string](`[...document.querySelectorAll("#mqtt-feed li")].flatMap((li) =>
		li.dataset.topic.startsWith("eventbus/") ? [li.dataset.topic + " shown"] :
		li.querySelector("dl.summary [data-field] dd") ? [] : [li.dataset.topic + " without its summary"])`))
	if len(wrong) > 0 {
		t.Errorf("the MQTT tab has %q", wrong)
	}
	png = browsertest.Do(t, ctx, chromedp.FullScreenshot(100))
	if err := os.WriteFile(filepath.Join(t.ArtifactDir(), "demo-mqtt.png"), png, 0o644); err != nil {
		t.Fatal(err)
	}

	step("reloading without ?user", chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.CSS(`#status[data-state="open"]`)))
	if got := browsertest.Do(t, ctx, chromedp.Evaluate[string](`document.querySelector("#user").value`)); got != "42" {
		t.Errorf("after a reload the page is user %q, want 42 kept", got)
	}
	if browsertest.Do(t, ctx, chromedp.Evaluate[bool](`document.querySelector("#pay").disabled`)) {
		t.Error("after a reload the last order is forgotten: Pay is disabled")
	}
}
