package token_test

import (
	"crypto/ed25519"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/eventbus-suite/eventbus/pkg/channel"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
	"github.com/eventbus-suite/eventbus/pkg/token"
	"github.com/eventbus-suite/eventbus/pkg/token/tokentest"
)

const (
	issuer   = "https://idp.example.com/"
	audience = "eventbus"
)

// clock is a test's clock: it moves only when the test says.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Now()} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// jwksVerifier returns a Verifier of idp's tokens with issuer and
// audience, on clk, with the options edit changes.
func jwksVerifier(t testing.TB, idp *tokentest.IdP, clk *clock, edit func(*token.Options)) (*token.Verifier, *servicetest.Buffer) {
	t.Helper()
	var logs servicetest.Buffer
	o := token.Options{
		JWKS:   &token.JWKSOptions{URL: idp.URL, Issuer: issuer, Audience: audience},
		Logger: slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Now:    clk.Now,
	}
	if edit != nil {
		edit(&o)
	}
	v, err := token.New(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	return v, &logs
}

// idpClaims are claims the verifier of jwksVerifier accepts.
func idpClaims(sub string, now time.Time, channels ...string) map[string]any {
	c := tokentest.Claims(sub, channels, now)
	c["iss"], c["aud"] = issuer, []string{"other", audience}
	return c
}

func wantRefused(t *testing.T, v *token.Verifier, name, tok, reason string) {
	t.Helper()
	c, err := v.Verify(tok)
	if !errors.Is(err, token.ErrInvalid) || !strings.Contains(err.Error(), reason) {
		t.Errorf("%s: Verify = %+v, %v; want ErrInvalid saying %q", name, c, err, reason)
	}
}

// A token signed by each kind of key in the JWKS is accepted, and keys
// already fetched are not fetched again.
func TestJWKSAcceptsEachKeyType(t *testing.T) {
	t.Parallel()
	idp := tokentest.NewIdP(t)
	clk := newClock()
	v, _ := jwksVerifier(t, idp, clk, nil)
	for _, kid := range []string{tokentest.RSA, tokentest.EC, tokentest.Ed25519} {
		c, err := v.Verify(idp.Sign(t, kid, idpClaims("42", clk.Now(), "order:*")))
		if err != nil || c.Subject != "42" || len(c.Channels) != 1 || c.Channels[0] != "order:*" {
			t.Errorf("Verify(token of %s) = %+v, %v; want sub 42 with order:*", kid, c, err)
		}
	}
	if n := idp.Fetches(); n != 1 {
		t.Errorf("JWKS fetched %d times, want once (at start)", n)
	}
}

func TestJWKSRefusals(t *testing.T) {
	t.Parallel()
	idp := tokentest.NewIdP(t)
	clk := newClock()
	now := clk.Now()
	secret := []byte("dev-secret-0123456789")
	both, _ := jwksVerifier(t, idp, clk, func(o *token.Options) { o.Secret = secret })
	jwksOnly, _ := jwksVerifier(t, idp, clk, nil)

	// Alg confusion: an HS256 token whose HMAC secret is the RSA public
	// key, as a verifier that hands "the key" to whatever alg says would
	// check it.
	der, err := x509.MarshalPKIXPublicKey(idp.PrivateKey(t, tokentest.RSA).Public())
	if err != nil {
		t.Fatal(err)
	}
	confused := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims(idpClaims("42", now, "*")))
	confused.Header["kid"] = tokentest.RSA
	var confusedToks []string
	for _, secret := range [][]byte{pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), der} {
		s, err := confused.SignedString(secret)
		if err != nil {
			t.Fatal(err)
		}
		confusedToks = append(confusedToks, s)
	}
	none := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.MapClaims(idpClaims("42", now)))
	none.Header["kid"] = tokentest.RSA
	noneTok, _ := none.SignedString(jwt.UnsafeAllowNoneSignatureType)
	// ES256 signed with the EC key but naming the RSA key.
	swapped := jwt.NewWithClaims(jwt.SigningMethodES256, jwt.MapClaims(idpClaims("42", now)))
	swapped.Header["kid"] = tokentest.RSA
	swappedTok, _ := swapped.SignedString(idp.PrivateKey(t, tokentest.EC))
	noKid := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims(idpClaims("42", now)))
	noKidTok, _ := noKid.SignedString(idp.PrivateKey(t, tokentest.RSA))

	with := func(edit func(map[string]any)) string {
		c := idpClaims("42", now, "order:*")
		edit(c)
		return idp.Sign(t, tokentest.RSA, c)
	}
	tests := []struct {
		name   string
		v      *token.Verifier
		tok    string
		reason string
	}{
		{"HS256 with the RSA public key (PEM) as secret", both, confusedToks[0], "signature"},
		{"HS256 with the RSA public key (DER) as secret", both, confusedToks[1], "signature"},
		{"HS256 with the RSA public key, no secret configured", jwksOnly, confusedToks[0], "signature"},
		{"alg none", both, noneTok, "signature"},
		{"ES256 naming an RSA key", both, swappedTok, "signature"},
		{"no kid", both, noKidTok, "no key id"},
		{"signature tampered", both, with(func(map[string]any) {}) + "x", "signature"},
		{"unknown kid", both, signUnknown(t, idp, now), "unknown signing key"},
		{"wrong issuer", both, with(func(c map[string]any) { c["iss"] = "https://evil.example.com/" }), "wrong issuer"},
		{"no issuer", both, with(func(c map[string]any) { delete(c, "iss") }), "wrong issuer"},
		{"wrong audience", both, with(func(c map[string]any) { c["aud"] = "someone-else" }), "wrong audience"},
		{"no audience", both, with(func(c map[string]any) { delete(c, "aud") }), "wrong audience"},
		{"expired", both, with(func(c map[string]any) { c["exp"] = now.Add(-time.Minute).Unix() }), "expired"},
		{"no exp", both, with(func(c map[string]any) { delete(c, "exp") }), "no expiry"},
		{"exp as a string", both, with(func(c map[string]any) { c["exp"] = "9999999999" }), "exp is"},
		{"iat in the future", both, with(func(c map[string]any) { c["iat"] = now.Add(time.Hour).Unix() }), "issued in the future"},
		{"subject with a colon", both, with(func(c map[string]any) { c["sub"] = "auth0|x:1" }), "subject"},
		{"bad pattern", both, with(func(c map[string]any) { c["channels"] = []string{"A B"} }), "channels"},
		{"channels a number", both, with(func(c map[string]any) { c["channels"] = 7 }), "channels"},
		{"RS256 to a verifier of HS256 only", token.NewVerifier(secret), with(func(map[string]any) {}), "signature"},
	}
	for _, tt := range tests {
		wantRefused(t, tt.v, tt.name, tt.tok, tt.reason)
	}
	// A JWKS verifier refuses HS256, even signed with a good secret; one
	// that also has the secret accepts it, without iss or aud: those
	// describe the identity provider's tokens.
	dev, err := token.Issue(secret, "7", []string{"dev:*"}, time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	wantRefused(t, jwksOnly, "HS256 to a verifier of the JWKS only", dev, "signature")
	if c, err := both.Verify(dev); err != nil || c.Subject != "7" || c.Channels[0] != "dev:*" {
		t.Errorf("Verify(HS256 dev token) = %+v, %v; want sub 7 with dev:*", c, err)
	}
}

// EDGE_JWT_CHANNELS_CLAIM: the provider's own claim, an array or a
// space-separated string; HS256 tokens keep "channels".
func TestJWKSChannelsClaim(t *testing.T) {
	t.Parallel()
	idp := tokentest.NewIdP(t)
	clk := newClock()
	now := clk.Now()
	secret := []byte("dev-secret-0123456789")
	v, _ := jwksVerifier(t, idp, clk, func(o *token.Options) { o.JWKS.ChannelsClaim = "scope"; o.Secret = secret })
	sign := func(scope any) string {
		c := idpClaims("42", now, "ignored:*")
		c["scope"] = scope
		return idp.Sign(t, tokentest.Ed25519, c)
	}
	for _, tt := range []struct {
		name  string
		scope any
		want  []string
	}{
		{"space-separated", " order:*  user:created\tnews ", []string{"order:*", "user:created", "news"}},
		{"array", []string{"order:*", "user:created"}, []string{"order:*", "user:created"}},
		{"empty string", "", nil},
		{"null", nil, nil},
	} {
		c, err := v.Verify(sign(tt.scope))
		if err != nil || strings.Join(c.Channels, ",") != strings.Join(tt.want, ",") {
			t.Errorf("%s: Verify = %+v, %v; want channels %q", tt.name, c, err, tt.want)
		}
	}
	wantRefused(t, v, "a bad pattern in the string", sign("order:* Bad"), "scope")
	wantRefused(t, v, "an object", sign(map[string]any{"order:*": true}), "scope")
	wantRefused(t, v, "an array of numbers", sign([]int{1}), "scope")
	dev, _ := token.Issue(secret, "7", []string{"dev:*"}, time.Hour, now)
	if c, err := v.Verify(dev); err != nil || len(c.Channels) != 1 || c.Channels[0] != "dev:*" {
		t.Errorf("Verify(HS256 dev token) = %+v, %v; want its channels claim", c, err)
	}
}

// A key added to the JWKS after start is fetched by the first token that
// names it, once EDGE_JWKS_MIN_REFRESH has passed since the last fetch;
// unknown kids fetch at most once per MinRefresh; a key taken out is gone
// after the next fetch.
func TestJWKSKeyRotation(t *testing.T) {
	t.Parallel()
	idp := tokentest.NewIdP(t)
	clk := newClock()
	v, _ := jwksVerifier(t, idp, clk, func(o *token.Options) { o.JWKS.MinRefresh = time.Minute })
	old := idp.Sign(t, tokentest.RSA, idpClaims("42", clk.Now()))

	idp.AddKey(t, "rsa-2", "RS256")
	rotated := idp.Sign(t, "rsa-2", idpClaims("42", clk.Now()))
	wantRefused(t, v, "new kid within MinRefresh of the fetch at start", rotated, "unknown signing key")
	if n := idp.Fetches(); n != 1 {
		t.Fatalf("JWKS fetched %d times, want 1: the start's fetch is less than MinRefresh ago", n)
	}
	clk.Advance(time.Minute)
	if _, err := v.Verify(rotated); err != nil {
		t.Fatalf("Verify(token of the new key) = %v, want it fetched and accepted", err)
	}
	if n := idp.Fetches(); n != 2 {
		t.Fatalf("JWKS fetched %d times, want 2", n)
	}
	for range 3 {
		wantRefused(t, v, "another unknown kid", signUnknown(t, idp, clk.Now()), "unknown signing key")
	}
	if n := idp.Fetches(); n != 2 {
		t.Fatalf("JWKS fetched %d times after unknown kids within MinRefresh, want still 2", n)
	}

	idp.Unpublish(tokentest.RSA)
	clk.Advance(time.Minute)
	wantRefused(t, v, "unknown kid after MinRefresh", signUnknown(t, idp, clk.Now()), "unknown signing key")
	if n := idp.Fetches(); n != 3 {
		t.Fatalf("JWKS fetched %d times, want 3", n)
	}
	wantRefused(t, v, "a key taken out of the JWKS", old, "unknown signing key")
	if _, err := v.Verify(rotated); err != nil {
		t.Errorf("Verify(token of the new key) = %v after the old one went, want ok", err)
	}
}

// signUnknown returns a token whose kid is in no JWKS, signed with the EC
// key.
func signUnknown(t testing.TB, idp *tokentest.IdP, now time.Time) string {
	t.Helper()
	tok := jwt.NewWithClaims(jwt.SigningMethodES256, jwt.MapClaims(idpClaims("42", now)))
	tok.Header["kid"] = "nobody"
	s, err := tok.SignedString(idp.PrivateKey(t, tokentest.EC))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Tokens with unknown kids arriving together cause one fetch.
func TestJWKSConcurrentUnknownKidsFetchOnce(t *testing.T) {
	t.Parallel()
	idp := tokentest.NewIdP(t)
	clk := newClock()
	v, _ := jwksVerifier(t, idp, clk, nil)
	idp.AddKey(t, "ed-2", "EdDSA")
	tok := idp.Sign(t, "ed-2", idpClaims("42", clk.Now()))
	clk.Advance(token.DefaultJWKSMinRefresh)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 16 {
		wg.Go(func() {
			_, err := v.Verify(tok)
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil && !strings.Contains(err.Error(), "unknown signing key") {
			t.Errorf("Verify = %v, want ok or unknown signing key", err)
		}
	}
	if n := idp.Fetches(); n != 2 {
		t.Errorf("JWKS fetched %d times, want 2: at start and once for the new kid", n)
	}
	if _, err := v.Verify(tok); err != nil {
		t.Errorf("Verify after the fetch = %v, want ok", err)
	}
}

// With the JWKS endpoint gone after start, the keys fetched stay in use,
// through failed fetches too.
func TestJWKSDownAfterStartKeepsCachedKeys(t *testing.T) {
	t.Parallel()
	idp := tokentest.NewIdP(t)
	clk := newClock()
	v, logs := jwksVerifier(t, idp, clk, nil)

	idp.SetDown(true) // 503
	clk.Advance(token.DefaultJWKSMinRefresh)
	wantRefused(t, v, "unknown kid while the JWKS answers 503", signUnknown(t, idp, clk.Now()), "unknown signing key")
	if n := idp.Fetches(); n != 2 {
		t.Fatalf("JWKS fetched %d times, want 2", n)
	}
	idp.Close() // connection refused
	clk.Advance(token.DefaultJWKSMinRefresh)
	wantRefused(t, v, "unknown kid while the JWKS is closed", signUnknown(t, idp, clk.Now()), "unknown signing key")
	for _, kid := range []string{tokentest.RSA, tokentest.EC, tokentest.Ed25519} {
		if _, err := v.Verify(idp.Sign(t, kid, idpClaims("42", clk.Now()))); err != nil {
			t.Errorf("Verify(token of %s) with the JWKS down = %v, want the cached key to verify it", kid, err)
		}
	}
	if !strings.Contains(logs.String(), "fetch JWKS: keeping the keys fetched before") {
		t.Errorf("log has no failed fetch:\n%s", logs)
	}
}

// A JWKS that cannot be fetched at start: New succeeds and says so, its
// tokens are refused until a fetch succeeds, one a token may cause at most
// once per MinRefresh.
func TestJWKSDownAtStart(t *testing.T) {
	t.Parallel()
	idp := tokentest.NewIdP(t)
	idp.SetDown(true)
	clk := newClock()
	v, logs := jwksVerifier(t, idp, clk, nil)
	if !strings.Contains(logs.String(), "no signing keys from the JWKS at start") || !strings.Contains(logs.String(), `"level":"ERROR"`) {
		t.Errorf("log at start does not say the keys are missing:\n%s", logs)
	}
	tok := idp.Sign(t, tokentest.RSA, idpClaims("42", clk.Now()))
	wantRefused(t, v, "token with no keys loaded", tok, "not loaded yet")
	idp.SetDown(false)
	wantRefused(t, v, "token within MinRefresh of the failed fetch", tok, "not loaded yet")
	if n := idp.Fetches(); n != 1 {
		t.Fatalf("JWKS fetched %d times, want 1", n)
	}
	clk.Advance(token.DefaultJWKSMinRefresh)
	if _, err := v.Verify(tok); err != nil {
		t.Fatalf("Verify once the JWKS is back = %v, want ok", err)
	}
	if n := idp.Fetches(); n != 2 {
		t.Errorf("JWKS fetched %d times, want 2", n)
	}
}

// The JWKS is fetched every Refresh without any token asking.
func TestJWKSRefreshesPeriodically(t *testing.T) {
	t.Parallel()
	idp := tokentest.NewIdP(t)
	clk := newClock() // stands still: no token may cause a fetch
	v, _ := jwksVerifier(t, idp, clk, func(o *token.Options) { o.JWKS.Refresh = 10 * time.Millisecond })
	idp.AddKey(t, "ec-2", "ES256")
	// The fetch after next started after the next one was stored: both
	// come from the one refreshing goroutine.
	idp.WaitFetches(t.Context(), t, idp.Fetches()+2)
	if _, err := v.Verify(idp.Sign(t, "ec-2", idpClaims("42", clk.Now()))); err != nil {
		t.Errorf("Verify(token of a key added after start) = %v, want it refreshed in", err)
	}
}

func TestNewRefusesOptionsThatCannotWork(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name   string
		o      token.Options
		reason string
	}{
		{"nothing", token.Options{}, "neither"},
		{"short secret", token.Options{Secret: []byte("short")}, "bytes"},
		{"relative URL", token.Options{JWKS: &token.JWKSOptions{URL: "/jwks.json"}}, "URL"},
		{"ftp URL", token.Options{JWKS: &token.JWKSOptions{URL: "ftp://idp.example.com/jwks"}}, "URL"},
		{"channels claim sub", token.Options{JWKS: &token.JWKSOptions{URL: "https://idp.example.com/jwks", ChannelsClaim: "sub"}}, "registered"},
	} {
		if v, err := token.New(t.Context(), tt.o); err == nil || !strings.Contains(err.Error(), tt.reason) {
			t.Errorf("%s: New = %v, %v; want an error saying %q", tt.name, v, err, tt.reason)
		}
	}
}

// FuzzVerifyJWKS feeds a Verifier with a secret and a JWKS whatever a
// client could send: it never panics, errors wrap ErrInvalid, what it
// accepts has a valid subject, an expiry and valid patterns, and the
// provider's issuer and audience unless it is HS256; and no token makes
// it fetch the JWKS while its clock stands still.
func FuzzVerifyJWKS(f *testing.F) {
	idp := tokentest.NewIdP(f)
	clk := newClock()
	now := clk.Now()
	secret := []byte("fuzz-secret-0123456789")
	v, _ := jwksVerifier(f, idp, clk, func(o *token.Options) { o.Secret = secret; o.JWKS.ChannelsClaim = "scope" })
	for _, kid := range []string{tokentest.RSA, tokentest.EC, tokentest.Ed25519} {
		c := idpClaims("42", now)
		c["scope"] = "order:* news"
		good := idp.Sign(f, kid, c)
		f.Add(good)
		f.Add(good[:len(good)-2])
	}
	dev, _ := token.Issue(secret, "7", []string{"dev:*"}, time.Hour, now)
	f.Add(dev)
	confused := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims(idpClaims("42", now)))
	confused.Header["kid"] = tokentest.RSA
	der, _ := x509.MarshalPKIXPublicKey(idp.PrivateKey(f, tokentest.RSA).Public())
	confusedTok, _ := confused.SignedString(der)
	f.Add(confusedTok)
	f.Add(signUnknown(f, idp, now))
	f.Add("a.b.c")
	f.Fuzz(func(t *testing.T, tok string) {
		c, err := v.Verify(tok)
		if n := idp.Fetches(); n != 1 {
			t.Fatalf("JWKS fetched %d times, want only at start", n)
		}
		if err != nil {
			if !errors.Is(err, token.ErrInvalid) {
				t.Fatalf("Verify error %v does not wrap ErrInvalid", err)
			}
			return
		}
		checkAccepted(t, c)
		if alg := header(tok)["alg"]; alg != "HS256" && (c.Issuer != issuer || !slices.Contains(c.Audience, audience)) {
			t.Fatalf("Verify accepted a %v token of iss %q aud %q", alg, c.Issuer, c.Audience)
		}
	})
}

// FuzzVerifySignedClaims signs whatever claims a provider could put in a
// token with the Ed25519 key, and checks what Verify makes of them.
func FuzzVerifySignedClaims(f *testing.F) {
	idp := tokentest.NewIdP(f)
	clk := newClock()
	v, _ := jwksVerifier(f, idp, clk, func(o *token.Options) { o.JWKS.ChannelsClaim = "scope" })
	exp := clk.Now().Add(time.Hour).Unix()
	for _, s := range []string{
		`{"sub":"42","exp":%d,"iss":"https://idp.example.com/","aud":"eventbus","scope":"order:* news"}`,
		`{"sub":"42","exp":%d,"iss":"https://idp.example.com/","aud":["x","eventbus"],"scope":["order:*"]}`,
		`{"sub":"42","exp":"%d","iss":"https://idp.example.com/","aud":"eventbus"}`,
		`{"sub":"42","exp":%d,"iss":"https://idp.example.com/","aud":"eventbus","scope":7}`,
		`{"sub":"42","exp":%d,"iss":"https://idp.example.com/","aud":"eventbus","scope":"a","scope":["B"]}`,
		`{"sub":"auth0|42","exp":%d,"iss":"https://idp.example.com/","aud":"eventbus"}`,
		`{"sub":"42","exp":%d,"nbf":1e3,"iat":-1,"iss":"https://idp.example.com/","aud":"eventbus"}`,
	} {
		f.Add(strings.Replace(s, "%d", strconv.FormatInt(exp, 10), 1))
	}
	priv := idp.PrivateKey(f, tokentest.Ed25519).(ed25519.PrivateKey)
	head := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"EdDSA","kid":"` + tokentest.Ed25519 + `","typ":"JWT"}`))
	f.Fuzz(func(t *testing.T, payload string) {
		signing := head + "." + base64.RawURLEncoding.EncodeToString([]byte(payload))
		sig := ed25519.Sign(priv, []byte(signing))
		c, err := v.Verify(signing + "." + base64.RawURLEncoding.EncodeToString(sig))
		if err != nil {
			if !errors.Is(err, token.ErrInvalid) {
				t.Fatalf("Verify error %v does not wrap ErrInvalid", err)
			}
			return
		}
		checkAccepted(t, c)
		if c.Issuer != issuer || !slices.Contains(c.Audience, audience) {
			t.Fatalf("Verify accepted iss %q aud %q", c.Issuer, c.Audience)
		}
	})
}

func checkAccepted(t *testing.T, c *token.Claims) {
	t.Helper()
	if c.Subject == "" || channel.Validate(c.Subject) != nil || c.ExpiresAt == nil {
		t.Fatalf("Verify accepted %+v without a valid subject or an expiry", c)
	}
	for _, p := range c.Channels {
		if channel.ValidatePattern(p) != nil {
			t.Fatalf("Verify accepted pattern %q", p)
		}
	}
}

func header(tok string) map[string]any {
	h := map[string]any{}
	if i := strings.IndexByte(tok, '.'); i > 0 {
		b, _ := jwt.NewParser().DecodeSegment(tok[:i])
		_ = json.Unmarshal(b, &h)
	}
	return h
}
