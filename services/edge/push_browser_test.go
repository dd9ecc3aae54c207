package main

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/browser"
	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/serviceworker"
	"github.com/chromedp/chromedp"

	eventbusv1 "github.com/eventbus-suite/eventbus/proto/gen/eventbus/v1"

	"github.com/eventbus-suite/eventbus/pkg/browsertest"
	"github.com/eventbus-suite/eventbus/pkg/redistest"
)

// fakeNotify is the notification service's Web Push routes as the demo
// page reaches them through the edge: it hands out a VAPID public key and
// records the subscriptions it is given.
type fakeNotify struct {
	srv   *httptest.Server
	vapid string // the public key, base64url

	mu       sync.Mutex
	keyAsked int // GET /v1/push/vapid-public-key
	subs     []notifyRequest
}

type notifyRequest struct {
	Method, Path, Auth string
	Body               map[string]any
}

func newFakeNotify(t *testing.T) *fakeNotify {
	t.Helper()
	k, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeNotify{vapid: base64.RawURLEncoding.EncodeToString(k.PublicKey().Bytes())}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/push/vapid-public-key", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.keyAsked++
		f.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]string{"vapid_public_key": f.vapid})
	})
	record := func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		req := notifyRequest{Method: r.Method, Path: r.URL.Path, Auth: r.Header.Get("Authorization")}
		_ = json.Unmarshal(b, &req.Body)
		f.mu.Lock()
		f.subs = append(f.subs, req)
		f.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, `{"id":"0123456789abcdef"}`)
	}
	mux.HandleFunc("POST /v1/users/{id}/push-subscriptions", record)
	mux.HandleFunc("DELETE /v1/users/{id}/push-subscriptions", record)
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

// requests returns how often the key was asked for, and the requests to
// the subscription routes.
func (f *fakeNotify) requests() (keyAsked int, subs []notifyRequest) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.keyAsked, append([]notifyRequest(nil), f.subs...)
}

// shown is a notification of the service worker's registration, as
// getNotifications gives it.
type shown struct {
	Title, Body, Tag, Link, ID string
}

// shownJS reads the notifications of the page's service worker
// registration.
const shownJS = `navigator.serviceWorker.ready.then((r) => r.getNotifications()).then((ns) =>
	ns.map((n) => ({Title: n.title, Body: n.body, Tag: n.tag, Link: n.data?.link ?? "", ID: n.data?.notification_id ?? ""})))`

// TestDemoPageWebPush allows browser notifications on the demo page in
// headless Chromium: the page registers its service worker and tries to
// subscribe to Web Push through the edge. Then a push, in the form the
// notifier sends, is delivered to the worker through DevTools
// (ServiceWorker.deliverPushMessage), and the worker must show it.
//
// Chromium's pushManager.subscribe needs its vendor's push service (FCM),
// which a test machine does not reach: when it fails, the page must say so
// and keep its own notifications, which this test then checks; when it
// works, the subscription must have reached the notification service for
// the page's user.
func TestDemoPageWebPush(t *testing.T) {
	t.Parallel()
	notify := newFakeNotify(t)
	e := startEdge(t, redistest.Shared(t), map[string]string{
		"EDGE_DEMO": "true", "EDGE_DEMO_NOTIFY_URL": notify.srv.URL, "EDGE_DEMO_API_KEY": "k1"})
	page := openBrowser(t, e.base+"/?user=42")
	ctx, cancel := context.WithTimeout(page, 60*time.Second)
	defer cancel()
	wait := func(what string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, actions...); err != nil {
			t.Fatalf("wait for %s: %v; %s; %s", what, err, pageState(t, page), browsertest.PageState(t, page, "#push-state"))
		}
	}
	wait("the page to connect", chromedp.WaitVisible(chromedp.CSS(`#status[data-state="open"]`)))

	// The permission a person would grant in the prompt.
	if _, err := chromedp.CallBrowser(ctx, browser.SetPermission, browser.SetPermissionParams{
		Permission: &browser.PermissionDescriptor{Name: string(browser.PermissionTypeNotifications)},
		Setting:    browser.PermissionSettingGranted, Origin: e.base,
	}); err != nil {
		t.Fatalf("grant notifications: %v", err)
	}
	registrations := chromedp.Events(ctx, serviceworker.WorkerRegistrationUpdated)
	if _, err := chromedp.Call(ctx, serviceworker.Enable, cdp.Empty{}); err != nil {
		t.Fatalf("ServiceWorker.enable: %v", err)
	}
	wait("the push subscription to be made or refused", chromedp.Click(chromedp.CSS(`#allow`)),
		chromedp.Poll[chromedp.Void](`["subscribed", "error"].includes(document.querySelector("#push-state").dataset.state)`))
	state := do(t, ctx, chromedp.Evaluate[string](`document.querySelector("#push-state").dataset.state`))
	text := do(t, ctx, chromedp.Text(chromedp.CSS(`#push-state`)))
	offShown := do(t, ctx, chromedp.Evaluate[bool](`!document.querySelector("#push-off").hidden`))
	keyAsked, reqs := notify.requests()
	if keyAsked != 1 {
		t.Errorf("the page asked the notification service for the VAPID key %d times, want once", keyAsked)
	}
	switch state {
	case "subscribed":
		if len(reqs) != 1 || reqs[0].Method != http.MethodPost || reqs[0].Path != "/v1/users/42/push-subscriptions" ||
			reqs[0].Auth != "Bearer k1" || reqs[0].Body["endpoint"] == nil || reqs[0].Body["keys"] == nil {
			t.Errorf("the notification service got %+v, want user 42's subscription with the edge's key", reqs)
		}
		if !strings.Contains(text, "push: subscribed") || !offShown {
			t.Errorf("the page says %q (turn off shown: %v), want push: subscribed and a way to turn it off", text, offShown)
		}
	default:
		t.Logf("pushManager.subscribe failed, as without a push service: %q", text)
		if !strings.HasPrefix(text, "push: ") || !strings.Contains(text, "push service") || !strings.Contains(text, "while this page is open") || offShown {
			t.Errorf("the page says %q (turn off shown: %v), want the push service's failure and that notifications show while it is open", text, offShown)
		}
		if len(reqs) != 0 {
			t.Errorf("the notification service got %+v without a subscription", reqs)
		}
	}

	// The registration the page made, by its id.
	var id serviceworker.RegistrationID
	for ev, err := range registrations {
		if err != nil {
			t.Fatalf("ServiceWorker.workerRegistrationUpdated: %v", err)
		}
		for _, r := range ev.Registrations {
			if r.ScopeURL == e.base+"/" && !r.IsDeleted {
				id = r.RegistrationID
			}
		}
		if id != "" {
			break
		}
	}

	payload, _ := json.Marshal(map[string]string{
		"type": "notification.created", "notification_id": "n-push", "user_id": "42",
		"title": "Order shipped", "body": "DHL JD0001", "link": "/orders/o1", "cause_event_id": "e1",
	})
	if _, err := chromedp.Call(ctx, serviceworker.DeliverPushMessage, serviceworker.DeliverPushMessageParams{
		Origin: e.base, RegistrationID: id, Data: string(payload)}); err != nil {
		t.Fatalf("ServiceWorker.deliverPushMessage: %v", err)
	}
	// The page hears from the worker once the notification shows; only
	// then is it read back, as Chromium may drop a notification that
	// getNotifications asks for while showNotification is storing it.
	wait("the worker to show the push", chromedp.Poll[chromedp.Void](`document.querySelector("#push-last").dataset.notificationId === "n-push"`))
	want := shown{Title: "Order shipped", Body: "DHL JD0001", Tag: "n-push", Link: "/orders/o1", ID: "n-push"}
	if got := do(t, ctx, chromedp.Evaluate[[]shown](shownJS, chromedp.EvalAwaitPromise)); len(got) != 1 || got[0] != want {
		t.Errorf("the worker shows %+v, want %+v", got, want)
	}
	if got := do(t, ctx, chromedp.Text(chromedp.CSS(`#push-last`))); got != "last push: Order shipped" {
		t.Errorf("the page says %q, want last push: Order shipped", got)
	}

	// The page's own notifications go on, shown through the worker's
	// registration with their id as the tag.
	publishData(t, e, "notify:user:42", "notification.created", &eventbusv1.Notification{
		NotificationId: "n-page", UserId: "42", Title: "Payment received", Body: "12.99 EUR", Link: "/orders/o1"})
	wait("the toast, shown by the browser too", chromedp.WaitVisible(chromedp.CSS(`#toasts .toast[data-shown="browser"]`)))
	got := do(t, ctx, chromedp.Evaluate[[]shown](shownJS, chromedp.EvalAwaitPromise))
	if len(got) != 2 || !slices.Contains(got, shown{Title: "Payment received", Body: "12.99 EUR", Tag: "n-page", Link: "/orders/o1", ID: "n-page"}) {
		t.Errorf("the registration shows %+v, want the push and the page's own, tagged n-page", got)
	}
}
