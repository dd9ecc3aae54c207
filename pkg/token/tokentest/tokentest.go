// Package tokentest is an identity provider for tests, in the spirit of
// net/http/httptest: it serves a JWKS on a local port and signs tokens
// with the private halves of its keys. A test controls whether it answers
// and counts its fetches, so nothing needs to wait on a clock.
package tokentest

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
)

// The keys every IdP starts with, by kid.
const (
	RSA     = "rsa-1"     // RS256, 2048 bits
	EC      = "ec-1"      // ES256, P-256
	Ed25519 = "ed25519-1" // EdDSA
)

// IdP serves a JWKS at URL. Its methods are safe for concurrent use.
type IdP struct {
	URL string // the JWKS document

	srv     *httptest.Server
	mu      sync.Mutex
	keys    map[string]key // by kid, published or not
	served  []string       // kids in the JWKS, in order
	down    bool           // answer 503
	fetches int
	fetched chan struct{} // closed and replaced on every fetch
}

type key struct {
	alg     string
	private crypto.Signer
}

// NewIdP starts an identity provider publishing an RSA, an EC (P-256) and
// an Ed25519 key, kids RSA, EC and Ed25519; it stops when the test ends.
func NewIdP(t testing.TB) *IdP {
	t.Helper()
	p := &IdP{keys: map[string]key{}, fetched: make(chan struct{})}
	for _, k := range []struct{ kid, alg string }{{RSA, "RS256"}, {EC, "ES256"}, {Ed25519, "EdDSA"}} {
		p.AddKey(t, k.kid, k.alg)
	}
	p.srv = httptest.NewServer(http.HandlerFunc(p.serve))
	p.URL = p.srv.URL + "/.well-known/jwks.json"
	t.Cleanup(p.srv.Close)
	return p
}

func (p *IdP) serve(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fetches++
	close(p.fetched)
	p.fetched = make(chan struct{})
	if p.down {
		http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
		return
	}
	var set jwkset.JWKSMarshal
	for _, kid := range p.served {
		k := p.keys[kid]
		jwk, err := jwkset.NewJWKFromKey(k.private.Public(), jwkset.JWKOptions{
			Metadata: jwkset.JWKMetadataOptions{KID: kid, ALG: jwkset.ALG(k.alg), USE: jwkset.UseSig},
		})
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		set.Keys = append(set.Keys, jwk.Marshal())
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(set)
}

// AddKey generates a key for alg (RS256, ES256 or EdDSA) and publishes it
// under kid from the next fetch on: a key rotation.
func (p *IdP) AddKey(t testing.TB, kid, alg string) {
	t.Helper()
	var (
		priv crypto.Signer
		err  error
	)
	switch alg {
	case "RS256":
		priv, err = rsa.GenerateKey(rand.Reader, 2048)
	case "ES256":
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "EdDSA":
		_, priv, err = ed25519.GenerateKey(rand.Reader)
	default:
		t.Fatalf("tokentest: AddKey(%s, %s): unknown algorithm", kid, alg)
	}
	if err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.keys[kid] = key{alg: alg, private: priv}
	p.served = append(slices.DeleteFunc(p.served, func(k string) bool { return k == kid }), kid)
}

// Unpublish takes kid out of the JWKS from the next fetch on; tokens
// can still be signed with it.
func (p *IdP) Unpublish(kid string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.served = slices.DeleteFunc(p.served, func(k string) bool { return k == kid })
}

// PrivateKey returns kid's private key, to sign what Sign would not.
func (p *IdP) PrivateKey(t testing.TB, kid string) crypto.Signer {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	k, ok := p.keys[kid]
	if !ok {
		t.Fatalf("tokentest: no key %s", kid)
	}
	return k.private
}

// Sign returns a token with claims, signed with kid by its algorithm and
// naming kid in its header.
func (p *IdP) Sign(t testing.TB, kid string, claims map[string]any) string {
	t.Helper()
	p.mu.Lock()
	k, ok := p.keys[kid]
	p.mu.Unlock()
	if !ok {
		t.Fatalf("tokentest: no key %s", kid)
	}
	tok := jwt.NewWithClaims(jwt.GetSigningMethod(k.alg), jwt.MapClaims(maps.Clone(claims)))
	tok.Header["kid"] = kid
	s, err := tok.SignedString(k.private)
	if err != nil {
		t.Fatalf("tokentest: sign with %s: %v", kid, err)
	}
	return s
}

// Claims returns claims for user sub granting channels, issued now and
// valid for an hour; add iss, aud or other claims to the map as needed.
func Claims(sub string, channels []string, now time.Time) map[string]any {
	return map[string]any{
		"sub": sub, "channels": channels, "iat": now.Unix(), "exp": now.Add(time.Hour).Unix(),
	}
}

// SetDown makes the JWKS endpoint answer 503 (true) or serve the keys
// again (false).
func (p *IdP) SetDown(down bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = down
}

// Close stops the server: fetches fail to connect from then on.
func (p *IdP) Close() { p.srv.Close() }

// Fetches returns how many times the JWKS was asked for.
func (p *IdP) Fetches() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.fetches
}

// WaitFetches returns once the JWKS has been asked for n times, and fails
// the test if ctx ends first.
func (p *IdP) WaitFetches(ctx context.Context, t testing.TB, n int) {
	t.Helper()
	for {
		p.mu.Lock()
		got, next := p.fetches, p.fetched
		p.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-next:
		case <-ctx.Done():
			t.Fatalf("tokentest: the JWKS was fetched %d times, want %d", got, n)
		}
	}
}
