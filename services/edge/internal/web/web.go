// Package web serves the browser side of the edge: the demo page, the
// eventbus.js client, the page's service worker and, in demo mode, demo
// tokens and the demo page's way to the API and to the notification
// service.
package web

import (
	"bytes"
	"embed"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/eventbus-suite/eventbus/pkg/channel"
	"github.com/eventbus-suite/eventbus/pkg/server"
	"github.com/eventbus-suite/eventbus/pkg/token"
)

//go:embed static
var static embed.FS

// demoTTL is how long a demo token lives; the page fetches a new one on
// every reconnect.
const demoTTL = time.Hour

// demoPublish is where demo tokens may publish over MQTT: the MQTT tab's
// telemetry.
var demoPublish = []string{"sensor:*"}

// demoExcept keeps other users' notifications from a demo token, which
// grants "*" for the page's live feeds: its own notify:user:<id> stays
// granted (token.Claims.Except).
var demoExcept = []string{"notify:*"}

// demoBodyBytes bounds a request of the demo page's buttons.
const demoBodyBytes = 16 << 10

// DemoLobby is the channel of the demo page's "who is online" panel: the
// page subscribes to it with presence, and GET /demo/api/presence reads
// who is on it. A demo token grants it; its namespace, lobby, keeps
// presence only where EDGE_PRESENCE_NAMESPACES names it (make run does).
const DemoLobby = "lobby:demo"

// Demo turns on what only the demo page needs. The zero value leaves it
// off; never turn it on where real users connect.
type Demo struct {
	// Secret signs the tokens GET /demo/token mints for any user.
	Secret []byte
	// API is the api service the page's buttons publish through.
	API *url.URL
	// APIKey goes to the API and to the notification service as a bearer
	// token, when they want one (they share API_KEYS).
	APIKey string
	// Notify is the notification service the page subscribes to Web Push
	// through; nil leaves those routes out.
	Notify *url.URL
}

// Register adds GET /, GET /eventbus.js and GET /sw.js to mux and, when
// demo.Secret is set, the demo routes: GET /demo/token?user=ID, which mints
// a token for that user allowed every channel (DemoLobby among them) but
// other users' notifications and to publish on sensor:*; POST
// /demo/api/…, which passes the page's sign-up, order, shipping and
// payment requests on to the API's /v1/…; GET /demo/api/presence, which
// asks the API's GET /v1/presence of DemoLobby, and of no other channel
// whatever the page's query says; and /demo/notify/v1/…, which passes the
// page's Web Push requests on to the notification service (GET
// /v1/push/vapid-public-key, and POST and DELETE
// /v1/users/{id}/push-subscriptions for the user of the demo token the
// page sends).
func Register(mux *http.ServeMux, demo Demo) {
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		serve(w, "static/index.html", "text/html; charset=utf-8")
	})
	mux.HandleFunc("GET /eventbus.js", func(w http.ResponseWriter, r *http.Request) {
		serve(w, "static/eventbus.js", "text/javascript; charset=utf-8")
	})
	// The page's service worker, at the root so that its scope is the
	// whole origin.
	mux.HandleFunc("GET /sw.js", func(w http.ResponseWriter, r *http.Request) {
		serve(w, "static/sw.js", "application/javascript; charset=utf-8")
	})
	// MQTT.js's browser build (MIT), for the demo page's MQTT tab.
	mux.HandleFunc("GET /mqtt.js", func(w http.ResponseWriter, r *http.Request) {
		serve(w, "static/mqtt.js", "text/javascript; charset=utf-8")
	})
	if len(demo.Secret) == 0 {
		return
	}
	mux.HandleFunc("GET /demo/token", func(w http.ResponseWriter, r *http.Request) {
		user := r.URL.Query().Get("user")
		if err := channel.Validate(user); err != nil || len(user) > 64 || strings.ContainsRune(user, ':') {
			server.WriteError(w, http.StatusBadRequest, "invalid_argument", "user: want 1-64 characters of a-z, 0-9, _ and -")
			return
		}
		tok, err := token.IssueClaims(demo.Secret, token.Claims{Channels: []string{"*"}, Except: demoExcept, Publish: demoPublish,
			RegisteredClaims: jwt.RegisteredClaims{Subject: user}}, demoTTL, time.Now())
		if err != nil {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]string{"token": tok, "user_id": user})
	})
	if demo.API != nil {
		api := demoProxy(demo.API, demo.APIKey, "/demo/api", "the API", "EDGE_DEMO_API_URL", nil)
		for _, route := range []string{"users", "orders", "orders/{id}/ship", "payments"} {
			mux.Handle("POST /demo/api/"+route, api)
		}
		// Who is in the lobby, for the page's "who is online" panel when it
		// (re)subscribes: the joins and leaves it hears tell only what
		// happens after.
		mux.Handle("GET /demo/api/presence", demoProxy(demo.API, demo.APIKey, "/demo/api", "the API", "EDGE_DEMO_API_URL",
			url.Values{"channel": {DemoLobby}}))
	}
	if demo.Notify != nil {
		notify := demoProxy(demo.Notify, demo.APIKey, "/demo/notify/v1", "the notification service", "EDGE_DEMO_NOTIFY_URL", nil)
		mux.Handle("GET /demo/notify/v1/push/vapid-public-key", notify)
		own := demoUser(token.NewVerifier(demo.Secret), notify)
		mux.Handle("POST /demo/notify/v1/users/{id}/push-subscriptions", own)
		mux.Handle("DELETE /demo/notify/v1/users/{id}/push-subscriptions", own)
		// Anything else is refused here, in JSON, and never reaches the
		// notification service (its dead letters, say).
		mux.HandleFunc("/demo/notify/", func(w http.ResponseWriter, r *http.Request) {
			server.WriteError(w, http.StatusNotFound, "not_found", "the demo passes on only the Web Push routes of the notification service")
		})
	}
}

// demoUser lets a request of the demo page through only with a demo token
// (Authorization: Bearer, as GET /demo/token mints it) of the user its path
// names: 401 without one, 403 for another user's. Demo tokens are minted
// for anyone, so this guards nothing against a visitor; it keeps the page
// to the user it is connected as.
func demoUser(v *token.Verifier, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, ok := token.FromAuthorization(r.Header.Get("Authorization"))
		if !ok {
			server.WriteError(w, http.StatusUnauthorized, "unauthorized", "send the page's demo token as Authorization: Bearer <token>")
			return
		}
		c, err := v.Verify(tok)
		if err != nil {
			server.WriteError(w, http.StatusUnauthorized, "unauthorized", "demo token: "+err.Error())
			return
		}
		if user := r.PathValue("id"); c.Subject != user {
			server.WriteError(w, http.StatusForbidden, "forbidden",
				fmt.Sprintf("the demo token is user %s's: it may not change the push subscriptions of user %s", c.Subject, user))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// demoProxy passes a request of the demo page on to target: its path less
// strip, under /v1 of target's path, with query (nil: none) in place of
// the page's query string. It sends key (if any) instead of the browser's
// credentials, and names what (its service) and variable (where it is
// configured) when target does not answer. It serves the page's own origin
// only, so that another site cannot act through a visitor's browser.
func demoProxy(target *url.URL, key, strip, what, variable string, query url.Values) http.Handler {
	proxy := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(target)
			rest := strings.TrimPrefix(r.In.URL.EscapedPath(), strip)
			r.Out.URL.RawPath = strings.TrimSuffix(target.EscapedPath(), "/") + "/v1" + rest
			r.Out.URL.Path, _ = url.PathUnescape(r.Out.URL.RawPath)
			r.Out.URL.RawQuery = query.Encode()
			r.Out.Header.Del("Cookie")
			r.Out.Header.Del("Authorization")
			if key != "" {
				r.Out.Header.Set("Authorization", "Bearer "+key)
			}
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			server.WriteError(w, http.StatusBadGateway, "unavailable",
				fmt.Sprintf("the demo could not reach %s at %s (%s): %v", what, target.Redacted(), variable, err))
		},
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if o := r.Header.Get("Origin"); o != "" {
			if u, err := url.Parse(o); err != nil || u.Host != r.Host {
				server.WriteError(w, http.StatusForbidden, "forbidden", "the demo's way to "+what+" serves the demo page's own origin only")
				return
			}
		}
		// Read first, so that an oversize body is refused here and never
		// half-sent to the API.
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, demoBodyBytes))
		if err != nil {
			server.WriteError(w, http.StatusRequestEntityTooLarge, "payload_too_large",
				fmt.Sprintf("a demo request is at most %d bytes", demoBodyBytes))
			return
		}
		r.Body, r.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
		proxy.ServeHTTP(w, r)
	})
}

func serve(w http.ResponseWriter, name, contentType string) {
	b, err := static.ReadFile(name)
	if err != nil {
		server.WriteError(w, http.StatusNotFound, "not_found", name+" is not built into this edge")
		return
	}
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Cache-Control", "no-cache")
	_, _ = w.Write(b)
}
