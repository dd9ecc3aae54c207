// Package web serves the browser side of the edge: the demo page, the
// eventbus.js client and, in demo mode, demo tokens.
package web

import (
	"embed"
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"github.com/eventbus-suite/eventbus/pkg/channel"
	"github.com/eventbus-suite/eventbus/pkg/server"
	"github.com/eventbus-suite/eventbus/pkg/token"
)

//go:embed static
var static embed.FS

// demoTTL is how long a demo token lives; the page fetches a new one on
// every reconnect.
const demoTTL = time.Hour

// Register adds GET / and GET /eventbus.js to mux and, when demoSecret is
// set, GET /demo/token?user=ID, which mints a token for that user allowed
// every channel. Never enable it where real users connect.
func Register(mux *http.ServeMux, demoSecret []byte) {
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		serve(w, "static/index.html", "text/html; charset=utf-8")
	})
	mux.HandleFunc("GET /eventbus.js", func(w http.ResponseWriter, r *http.Request) {
		serve(w, "static/eventbus.js", "text/javascript; charset=utf-8")
	})
	if len(demoSecret) == 0 {
		return
	}
	mux.HandleFunc("GET /demo/token", func(w http.ResponseWriter, r *http.Request) {
		user := r.URL.Query().Get("user")
		if err := channel.Validate(user); err != nil || len(user) > 64 || strings.ContainsRune(user, ':') {
			server.WriteError(w, http.StatusBadRequest, "invalid_argument", "user: want 1-64 characters of a-z, 0-9, _ and -")
			return
		}
		tok, err := token.Issue(demoSecret, user, []string{"*"}, demoTTL, time.Now())
		if err != nil {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]string{"token": tok, "user_id": user})
	})
}

func serve(w http.ResponseWriter, name, contentType string) {
	b, err := static.ReadFile(name)
	if err != nil {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Cache-Control", "no-cache")
	_, _ = w.Write(b)
}
