package web

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/eventbus-suite/eventbus/pkg/servicetest"
)

// apiCall is what the fake API saw of one request.
type apiCall struct {
	path, query, auth, cookie, body string
}

// demoMux serves Register's routes in demo mode in front of a fake API
// that records each request and answers 202 with a body of its own.
func demoMux(t testing.TB) (*http.ServeMux, chan apiCall) {
	t.Helper()
	calls := make(chan apiCall, 1)
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		calls <- apiCall{path: r.URL.EscapedPath(), query: r.URL.RawQuery, auth: r.Header.Get("Authorization"), cookie: r.Header.Get("Cookie"), body: string(b)}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		_, _ = io.WriteString(w, `{"order_id":"o1","event_id":"e1"}`)
	}))
	t.Cleanup(api.Close)
	target, _ := url.Parse(api.URL)
	mux := http.NewServeMux()
	Register(mux, Demo{Secret: []byte("demo-secret-0123456789"), API: target, APIKey: "k1"})
	return mux, calls
}

func post(mux http.Handler, path, body string, header map[string]string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodPost, "http://edge.test"+path, strings.NewReader(body))
	for k, v := range header {
		r.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	mux.ServeHTTP(w, r)
	return w
}

// The page's buttons reach the same route under /v1, with the edge's API
// key in place of whatever credentials the browser sent, and the API's
// reply comes back as it was.
func TestDemoAPIPassesTheButtonsOn(t *testing.T) {
	mux, calls := demoMux(t)
	body := `{"user_id":"42","carrier":"DHL","tracking_number":"JD1"}`
	w := post(mux, "/demo/api/orders/o1/ship", body, map[string]string{
		"Origin": "http://edge.test", "Authorization": "Bearer the-browser's", "Cookie": "session=secret"})
	if w.Code != http.StatusAccepted || w.Body.String() != `{"order_id":"o1","event_id":"e1"}` {
		t.Fatalf("reply %d %s, want the API's 202 and body", w.Code, w.Body)
	}
	got := <-calls
	if want := (apiCall{path: "/v1/orders/o1/ship", auth: "Bearer k1", body: body}); got != want {
		t.Errorf("the API got %+v, want %+v", got, want)
	}
}

// The page's "who is online" panel reads the lobby's presence: the API's
// GET /v1/presence of DemoLobby, with the edge's key, whatever channel the
// query names; another origin is refused, and nothing but GET is served.
func TestDemoAPIPresenceIsTheLobbys(t *testing.T) {
	mux, calls := demoMux(t)
	for _, path := range []string{"/demo/api/presence", "/demo/api/presence?channel=notify:user:7&limit=0", "/demo/api/presence?channel=eventbus:control"} {
		r := httptest.NewRequest(http.MethodGet, "http://edge.test"+path, nil)
		r.Header.Set("Authorization", "Bearer the-browser's")
		w := httptest.NewRecorder()
		mux.ServeHTTP(w, r)
		if w.Code != http.StatusAccepted || w.Body.String() != `{"order_id":"o1","event_id":"e1"}` {
			t.Fatalf("GET %s: reply %d %s, want the API's as it came", path, w.Code, w.Body)
		}
		if got, want := <-calls, (apiCall{path: "/v1/presence", query: "channel=lobby%3Ademo", auth: "Bearer k1"}); got != want {
			t.Errorf("GET %s: the API got %+v, want %+v", path, got, want)
		}
	}
	r := httptest.NewRequest(http.MethodGet, "http://edge.test/demo/api/presence", nil)
	r.Header.Set("Origin", "https://evil.example")
	w := httptest.NewRecorder()
	mux.ServeHTTP(w, r)
	if code, _, _ := servicetest.ErrorReply(w.Result()); w.Code != http.StatusForbidden || code != "forbidden" {
		t.Errorf("GET /demo/api/presence from another origin: %d %s, want 403 forbidden", w.Code, code)
	}
	if w := post(mux, "/demo/api/presence", `{}`, nil); w.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST /demo/api/presence: %d, want 405", w.Code)
	}
	select {
	case c := <-calls:
		t.Fatalf("the API got %+v from a refused request", c)
	default:
	}
}

// Another origin, another route, an oversize body and an API that does not
// answer are each refused in JSON, and nothing reaches the API.
func TestDemoAPIRefuses(t *testing.T) {
	mux, calls := demoMux(t)
	for _, tt := range []struct {
		name, path, body string
		header           map[string]string
		status           int
		code             string
	}{
		{"foreign origin", "/demo/api/users", `{}`, map[string]string{"Origin": "https://evil.example"}, http.StatusForbidden, "forbidden"},
		{"oversize body", "/demo/api/users", `{"name":"` + strings.Repeat("a", demoBodyBytes) + `"}`, nil, http.StatusRequestEntityTooLarge, "payload_too_large"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			w := post(mux, tt.path, tt.body, tt.header)
			code, msg, err := servicetest.ErrorReply(w.Result())
			if w.Code != tt.status || code != tt.code || err != nil {
				t.Errorf("%s: %d %q %q (%v), want %d %s", tt.name, w.Code, code, msg, err, tt.status, tt.code)
			}
		})
	}
	for _, path := range []string{"/demo/api/revocations", "/demo/api/users/42/disconnect", "/demo/api/events"} {
		if w := post(mux, path, `{}`, nil); w.Code != http.StatusNotFound && w.Code != http.StatusMethodNotAllowed {
			t.Errorf("POST %s: %d, want it not served", path, w.Code)
		}
	}
	select {
	case c := <-calls:
		t.Fatalf("the API got %+v from a refused request", c)
	default:
	}

	target, _ := url.Parse("http://127.0.0.1:1") // nothing listens on port 1
	down := http.NewServeMux()
	Register(down, Demo{Secret: []byte("demo-secret-0123456789"), API: target})
	w := post(down, "/demo/api/users", `{}`, nil)
	code, msg, _ := servicetest.ErrorReply(w.Result())
	if w.Code != http.StatusBadGateway || code != "unavailable" || !strings.Contains(msg, "EDGE_DEMO_API_URL") {
		t.Errorf("API down: %d %s %q, want 502 unavailable naming EDGE_DEMO_API_URL", w.Code, code, msg)
	}
}

// servedPath is every path the demo may POST to the API.
var servedPath = regexp.MustCompile(`^/v1/(users|orders|payments|orders/[^/]+/ship)$`)

// Whatever path a caller sends, the API is asked for one of the button
// routes, the lobby's presence or nothing: no revocation, disconnect, raw
// event or other channel's presence goes through.
func FuzzDemoAPIPath(f *testing.F) {
	for _, s := range []string{"/demo/api/users", "/demo/api/orders/o1/ship", "/demo/api/orders/..%2f..%2frevocations/ship",
		"/demo/api/orders/a%2Fb/ship", "/demo/api/../v1/revocations", "/demo/api//users", "/demo/api/users?x=1",
		"/demo/api/presence?channel=notify:user:7", "/demo/api/presence/../users", "/demo/api/%70resence"} {
		f.Add(s)
	}
	mux, calls := demoMux(f)
	f.Fuzz(func(t *testing.T, path string) {
		u, err := url.Parse("http://edge.test" + path)
		if err != nil || !strings.HasPrefix(path, "/") {
			return
		}
		for _, method := range []string{http.MethodPost, http.MethodGet} {
			r := &http.Request{Method: method, URL: u, Host: "edge.test", Header: http.Header{}, Body: http.NoBody}
			mux.ServeHTTP(httptest.NewRecorder(), r)
			select {
			case c := <-calls:
				switch {
				case method == http.MethodPost && servedPath.MatchString(c.path) && c.query == "":
				case method == http.MethodGet && unescaped(c.path) == "/v1/presence" && c.query == "channel=lobby%3Ademo":
				default:
					t.Fatalf("%s %q reached the API as %q?%s", method, path, c.path, c.query)
				}
			default:
			}
		}
	})
}

// unescaped is path as a server routes it.
func unescaped(path string) string {
	p, err := url.PathUnescape(path)
	if err != nil {
		return path
	}
	return p
}
