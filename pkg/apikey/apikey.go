// Package apikey checks API keys sent as "Authorization: Bearer <key>", the
// one scheme every eventbus HTTP endpoint that takes a key uses.
package apikey

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"

	"github.com/eventbus-suite/eventbus/pkg/server"
	"github.com/eventbus-suite/eventbus/pkg/token"
)

// Keys is a set of accepted API keys. The zero value accepts every caller.
// It is safe for concurrent use.
type Keys struct {
	hashes [][32]byte
}

// New returns the set of keys; with none, Open reports true.
func New(keys []string) Keys {
	k := Keys{}
	for _, key := range keys {
		k.hashes = append(k.hashes, sha256.Sum256([]byte(key)))
	}
	return k
}

// Open reports whether no key is required.
func (k Keys) Open() bool { return len(k.hashes) == 0 }

// Allow reports whether the Authorization header value carries an accepted
// key, or no key is required. It compares hashes in constant time, so the
// time taken does not reveal how much of a key was right.
func (k Keys) Allow(authorization string) bool {
	if k.Open() {
		return true
	}
	key, ok := token.FromAuthorization(authorization)
	if !ok {
		return false
	}
	h := sha256.Sum256([]byte(key))
	allowed := 0
	for _, want := range k.hashes {
		allowed |= subtle.ConstantTimeCompare(h[:], want[:])
	}
	return allowed == 1
}

// Require serves next to requests whose Authorization header Allow
// accepts, and answers the others 401 unauthorized, in the JSON every
// eventbus endpoint errs with, saying how to send a key.
func (k Keys) Require(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !k.Allow(r.Header.Get("Authorization")) {
			Refuse(w)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// Refuse answers a request without an accepted key: 401 unauthorized,
// with WWW-Authenticate, saying how to send one.
func Refuse(w http.ResponseWriter) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="eventbus"`)
	server.WriteError(w, http.StatusUnauthorized, "unauthorized", "missing or unknown API key: send Authorization: Bearer <key>")
}
