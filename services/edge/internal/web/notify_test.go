package web

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/eventbus-suite/eventbus/pkg/servicetest"
	"github.com/eventbus-suite/eventbus/pkg/token"
)

const demoSecret = "demo-secret-0123456789"

// notifyCall is what the fake notification service saw of one request.
type notifyCall struct {
	method, path, auth, body string
}

// notifyMux serves Register's routes in demo mode in front of a fake
// notification service that records each request and answers 201 with a
// body of its own.
func notifyMux(t *testing.T) (*http.ServeMux, chan notifyCall) {
	t.Helper()
	calls := make(chan notifyCall, 4)
	notify := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		calls <- notifyCall{method: r.Method, path: r.URL.EscapedPath(), auth: r.Header.Get("Authorization"), body: string(b)}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, `{"id":"0123456789abcdef"}`)
	}))
	t.Cleanup(notify.Close)
	target, _ := url.Parse(notify.URL)
	mux := http.NewServeMux()
	Register(mux, Demo{Secret: []byte(demoSecret), Notify: target, APIKey: "k1"})
	return mux, calls
}

// demoToken is the token GET /demo/token mints for user.
func demoToken(t *testing.T, mux http.Handler, user string) string {
	t.Helper()
	w := httptest.NewRecorder()
	mux.ServeHTTP(w, httptest.NewRequestWithContext(t.Context(), http.MethodGet, "http://edge.test/demo/token?user="+user, nil))
	var reply struct{ Token string }
	if err := json.Unmarshal(w.Body.Bytes(), &reply); w.Code != http.StatusOK || err != nil || reply.Token == "" {
		t.Fatalf("GET /demo/token?user=%s = %d %s (%v), want a token", user, w.Code, w.Body, err)
	}
	return reply.Token
}

func send(t *testing.T, mux http.Handler, method, path, body string, header map[string]string) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequestWithContext(t.Context(), method, "http://edge.test"+path, strings.NewReader(body))
	for k, v := range header {
		r.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	mux.ServeHTTP(w, r)
	return w
}

// The page's Web Push requests reach the notification service's routes
// under /v1, with the edge's key in place of the page's demo token, and
// the service's reply comes back as it was.
func TestDemoNotifyPassesPushOn(t *testing.T) {
	t.Parallel()
	mux, calls := notifyMux(t)
	bearer := "Bearer " + demoToken(t, mux, "42")
	sub := `{"endpoint":"https://push.example/x","keys":{"p256dh":"B","auth":"a"}}`
	for _, tt := range []struct {
		name, method, path, body string
		header                   map[string]string
		want                     notifyCall
	}{
		{"the VAPID key", http.MethodGet, "/demo/notify/v1/push/vapid-public-key", "", nil,
			notifyCall{method: http.MethodGet, path: "/v1/push/vapid-public-key", auth: "Bearer k1"}},
		{"subscribe", http.MethodPost, "/demo/notify/v1/users/42/push-subscriptions", sub,
			map[string]string{"Authorization": bearer, "Origin": "http://edge.test"},
			notifyCall{method: http.MethodPost, path: "/v1/users/42/push-subscriptions", auth: "Bearer k1", body: sub}},
		{"unsubscribe", http.MethodDelete, "/demo/notify/v1/users/42/push-subscriptions", `{"endpoint":"https://push.example/x"}`,
			map[string]string{"Authorization": bearer},
			notifyCall{method: http.MethodDelete, path: "/v1/users/42/push-subscriptions", auth: "Bearer k1", body: `{"endpoint":"https://push.example/x"}`}},
	} {
		w := send(t, mux, tt.method, tt.path, tt.body, tt.header)
		if w.Code != http.StatusCreated || w.Body.String() != `{"id":"0123456789abcdef"}` {
			t.Errorf("%s: %s %s = %d %s, want the service's 201 and body", tt.name, tt.method, tt.path, w.Code, w.Body)
		}
		select {
		case got := <-calls:
			if got != tt.want {
				t.Errorf("%s: the notification service got %+v, want %+v", tt.name, got, tt.want)
			}
		default:
			t.Errorf("%s: the notification service got nothing", tt.name)
		}
	}
}

// Another user's subscriptions, a request without a demo token or with a
// foreign one, another origin and any other route are refused in JSON,
// and nothing reaches the notification service; a service that does not
// answer is a 502 naming EDGE_DEMO_NOTIFY_URL.
func TestDemoNotifyRefuses(t *testing.T) {
	t.Parallel()
	mux, calls := notifyMux(t)
	own := map[string]string{"Authorization": "Bearer " + demoToken(t, mux, "42")}
	foreign, err := token.Issue([]byte("another-secret-0123456789"), "42", []string{"*"}, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	const path = "/demo/notify/v1/users/42/push-subscriptions"
	for _, tt := range []struct {
		name, method, path string
		header             map[string]string
		status             int
		code               string
	}{
		{"another user's", http.MethodPost, "/demo/notify/v1/users/7/push-subscriptions", own, http.StatusForbidden, "forbidden"},
		{"another user's, removed", http.MethodDelete, "/demo/notify/v1/users/7/push-subscriptions", own, http.StatusForbidden, "forbidden"},
		{"an escaped slash", http.MethodPost, "/demo/notify/v1/users/42%2F..%2F7/push-subscriptions", own, http.StatusForbidden, "forbidden"},
		{"no token", http.MethodPost, path, nil, http.StatusUnauthorized, "unauthorized"},
		{"a token not minted here", http.MethodPost, path, map[string]string{"Authorization": "Bearer " + foreign}, http.StatusUnauthorized, "unauthorized"},
		{"foreign origin", http.MethodPost, path, map[string]string{"Authorization": own["Authorization"], "Origin": "https://evil.example"}, http.StatusForbidden, "forbidden"},
		{"dead letters", http.MethodGet, "/demo/notify/v1/dead-letters", own, http.StatusNotFound, "not_found"},
		{"a retry", http.MethodPost, "/demo/notify/v1/dead-letters/x/retry", own, http.StatusNotFound, "not_found"},
		{"the subscriptions listed", http.MethodGet, path, own, http.StatusNotFound, "not_found"},
		{"below a subscription route", http.MethodPost, path + "/x", own, http.StatusNotFound, "not_found"},
		{"without /v1", http.MethodGet, "/demo/notify/push/vapid-public-key", nil, http.StatusNotFound, "not_found"},
		{"the metrics", http.MethodGet, "/demo/notify/metrics", nil, http.StatusNotFound, "not_found"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			w := send(t, mux, tt.method, tt.path, `{"endpoint":"https://push.example/x"}`, tt.header)
			code, msg, err := servicetest.ErrorReply(w.Result())
			if w.Code != tt.status || code != tt.code || msg == "" || err != nil {
				t.Errorf("%s %s = %d %q %q (%v), want %d %s with a message", tt.method, tt.path, w.Code, code, msg, err, tt.status, tt.code)
			}
		})
	}
	select {
	case c := <-calls:
		t.Fatalf("the notification service got %+v from a refused request", c)
	default:
	}

	target, _ := url.Parse("http://127.0.0.1:1") // nothing listens on port 1
	down := http.NewServeMux()
	Register(down, Demo{Secret: []byte(demoSecret), Notify: target})
	w := send(t, down, http.MethodGet, "/demo/notify/v1/push/vapid-public-key", "", nil)
	code, msg, _ := servicetest.ErrorReply(w.Result())
	if w.Code != http.StatusBadGateway || code != "unavailable" || !strings.Contains(msg, "EDGE_DEMO_NOTIFY_URL") {
		t.Errorf("notification service down: %d %s %q, want 502 unavailable naming EDGE_DEMO_NOTIFY_URL", w.Code, code, msg)
	}
}

// The service worker is served at the root, as JavaScript, so that the
// page can register it for the whole origin.
func TestServiceWorkerServed(t *testing.T) {
	t.Parallel()
	mux := http.NewServeMux()
	Register(mux, Demo{})
	w := send(t, mux, http.MethodGet, "/sw.js", "", nil)
	if ct := w.Header().Get("Content-Type"); w.Code != http.StatusOK || !strings.HasPrefix(ct, "application/javascript") ||
		!strings.Contains(w.Body.String(), "showNotification") {
		t.Errorf("GET /sw.js = %d %q, want 200 application/javascript with the worker", w.Code, ct)
	}
}
