// Package apikey checks API keys sent as "Authorization: Bearer <key>", the
// one scheme every eventbus HTTP endpoint that takes a key uses.
package apikey

import (
	"crypto/sha256"
	"crypto/subtle"

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
