package token

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/time/rate"

	"github.com/eventbus-suite/eventbus/pkg/envconfig"
)

// JWKSOptions describe an identity provider whose tokens are signed with
// the keys it publishes in a JWKS (RFC 7517), such as
// https://idp.example.com/.well-known/jwks.json.
type JWKSOptions struct {
	// URL is the JWKS document, http or https.
	URL string
	// MinRefresh is how often at most a token naming an unknown key (kid)
	// makes the Verifier fetch the JWKS again; 0 is 1 minute. The fetch at
	// start counts.
	MinRefresh time.Duration
	// Refresh is how often the JWKS is fetched regardless; 0 is 1 hour.
	Refresh time.Duration
	// Timeout bounds one fetch; 0 is 5 s.
	Timeout time.Duration
	// Client fetches the JWKS; nil is http.DefaultClient.
	Client *http.Client

	// Issuer, when set, must equal the iss of every token verified with
	// the JWKS.
	Issuer string
	// Audience, when set, must be in the aud of every token verified with
	// the JWKS.
	Audience string
	// ChannelsClaim names the claim of the provider's tokens that holds the
	// patterns they grant, as a JSON array of strings or one
	// space-separated string (as scopes are); "" is "channels".
	ChannelsClaim string
}

// Defaults of JWKSOptions.
const (
	DefaultJWKSMinRefresh = time.Minute
	DefaultJWKSRefresh    = time.Hour
	DefaultJWKSTimeout    = 5 * time.Second
	DefaultChannelsClaim  = "channels"
)

// The algorithms a JWKS key may sign with. HS256 is never among them: a
// token names its algorithm, and one that says HS256 is checked against
// the secret only, never against a public key used as an HMAC secret.
var jwksAlgorithms = []string{"RS256", "ES256", "EdDSA"}

// Reasons a JWKS token is refused before its signature is checked.
var (
	errNoKeyID     = errors.New("no key id (kid)")
	errUnknownKey  = errors.New("unknown signing key (kid)")
	errNoKeys      = errors.New("the identity provider's signing keys are not loaded yet")
	errKeyMismatch = errors.New("signing key does not fit the algorithm")
)

// CheckJWKSURL reports whether u can be a JWKS URL: absolute, http or
// https, with a host.
func CheckJWKSURL(u string) error {
	return envconfig.CheckHTTPURL(u, "https://idp.example.com/.well-known/jwks.json")
}

// CheckChannelsClaim reports whether name can hold the patterns of a
// token: not empty, and none of the registered claims the Verifier reads
// for something else.
func CheckChannelsClaim(name string) error {
	switch name {
	case "":
		return errors.New("want a claim name")
	case "sub", "exp", "iat", "nbf", "iss", "aud", "jti":
		return fmt.Errorf("%s is a registered claim with a meaning of its own", name)
	}
	return nil
}

// jwks holds the keys of an identity provider: keyfunc and jwkset fetch,
// cache and parse them; jwks decides when a token may cause a fetch.
type jwks struct {
	ctx     context.Context
	cached  jwkset.Storage  // the keys as last fetched; reading it never fetches
	keyfunc keyfunc.Keyfunc // reads cached, and fetches once when the kid is not there
	now     func() time.Time
	log     *slog.Logger
	url     string

	minRefresh time.Duration
	mu         sync.Mutex
	lastFetch  time.Time // the fetch at start, or the last a token caused
}

// newJWKS fetches the JWKS at o.URL once, and again every o.Refresh until
// ctx ends. A failed fetch is logged and leaves the keys as they were: no
// keys at all when the first fails, so that every token of the provider is
// refused until a later fetch succeeds.
func newJWKS(ctx context.Context, o JWKSOptions, now func() time.Time, log *slog.Logger) (*jwks, error) {
	if err := CheckJWKSURL(o.URL); err != nil {
		return nil, fmt.Errorf("JWKS URL %q: %w", o.URL, err)
	}
	if o.MinRefresh <= 0 {
		o.MinRefresh = DefaultJWKSMinRefresh
	}
	if o.Refresh <= 0 {
		o.Refresh = DefaultJWKSRefresh
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultJWKSTimeout
	}
	if u, _ := url.Parse(o.URL); u.Scheme == "http" && !loopback(u.Hostname()) {
		log.Warn("the JWKS is fetched over plain http: whoever sits on the path can make the edge accept any token; use https outside a trusted network", "jwks_url", o.URL)
	}
	onError := func(ctx context.Context, err error) {
		log.Error("fetch JWKS: keeping the keys fetched before", "jwks_url", o.URL, "error", err)
	}
	cached, err := jwkset.NewStorageFromHTTP(o.URL, jwkset.HTTPClientStorageOptions{
		Client: o.Client, Ctx: ctx, HTTPTimeout: o.Timeout,
		NoErrorReturnFirstHTTPReq: true, RefreshErrorHandler: onError, RefreshInterval: o.Refresh,
	})
	if err != nil {
		return nil, fmt.Errorf("JWKS at %s: %w", o.URL, err)
	}
	// This storage refetches on every unknown kid it is asked for (an
	// unlimited rate): jwks.key lets only one token per MinRefresh ask,
	// without making others wait for the limiter as jwkset would.
	fetching, err := jwkset.NewHTTPClient(jwkset.HTTPClientOptions{
		HTTPURLs:          map[string]jwkset.Storage{o.URL: cached},
		RateLimitWaitMax:  o.Timeout,
		RefreshUnknownKID: rate.NewLimiter(rate.Inf, 1),
	})
	if err != nil {
		return nil, fmt.Errorf("JWKS at %s: %w", o.URL, err)
	}
	kf, err := keyfunc.New(keyfunc.Options{Ctx: ctx, Storage: fetching, UseWhitelist: []jwkset.USE{jwkset.UseSig, ""}})
	if err != nil {
		return nil, fmt.Errorf("JWKS at %s: %w", o.URL, err)
	}
	j := &jwks{ctx: ctx, cached: cached, keyfunc: kf, now: now, log: log, url: o.URL, minRefresh: o.MinRefresh, lastFetch: now()}
	if j.empty() {
		log.Error("no signing keys from the JWKS at start: tokens of the identity provider are refused until it is fetched, on a token at most every min_refresh and every refresh",
			"jwks_url", o.URL, "min_refresh", o.MinRefresh.String(), "refresh", o.Refresh.String())
	}
	return j, nil
}

func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (j *jwks) empty() bool {
	keys, err := j.cached.KeyReadAll(j.ctx)
	return err != nil || len(keys) == 0
}

// mayFetch reports whether a token with an unknown kid may fetch the
// JWKS now, and if so counts it as the last fetch.
func (j *jwks) mayFetch() bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	now := j.now()
	if now.Sub(j.lastFetch) < j.minRefresh {
		return false
	}
	j.lastFetch = now
	return true
}

// key returns the public key that t names in its kid, fetching the JWKS
// first when the kid is unknown and a fetch is allowed.
func (j *jwks) key(t *jwt.Token) (any, error) {
	kid, ok := t.Header["kid"].(string)
	if !ok || kid == "" {
		return nil, errNoKeyID
	}
	if _, err := j.cached.KeyRead(j.ctx, kid); err != nil {
		if !j.mayFetch() {
			return nil, j.notFound()
		}
		j.log.Debug("fetching the JWKS for an unknown kid", "jwks_url", j.url)
	}
	k, err := j.keyfunc.Keyfunc(t)
	if errors.Is(err, jwkset.ErrKeyNotFound) {
		return nil, j.notFound()
	}
	if err != nil {
		return nil, err
	}
	if !fits(t.Method.Alg(), k) {
		return nil, errKeyMismatch
	}
	return k, nil
}

func (j *jwks) notFound() error {
	if j.empty() {
		return errNoKeys
	}
	return errUnknownKey
}

// fits reports whether key is the kind alg verifies with, ES256 on P-256
// only.
func fits(alg string, key any) bool {
	switch alg {
	case "RS256":
		_, ok := key.(*rsa.PublicKey)
		return ok
	case "ES256":
		k, ok := key.(*ecdsa.PublicKey)
		return ok && k.Curve == elliptic.P256()
	case "EdDSA":
		_, ok := key.(ed25519.PublicKey)
		return ok
	}
	return false
}
