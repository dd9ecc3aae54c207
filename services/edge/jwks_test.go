package main

import (
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/token/tokentest"
)

const (
	idpIssuer   = "https://idp.example.com/"
	idpAudience = "eventbus-edge"
)

// idpToken is a token of idp signed with kid, for user sub with scope.
func idpToken(t *testing.T, idp *tokentest.IdP, kid, sub, scope string) string {
	t.Helper()
	c := tokentest.Claims(sub, nil, time.Now())
	c["iss"], c["aud"], c["scope"] = idpIssuer, idpAudience, scope
	return idp.Sign(t, kid, c)
}

// unauthorized dials with tok and returns the body of the 401 it expects.
func (e *edge) unauthorized(t *testing.T, tok string) string {
	t.Helper()
	conn, resp, err := websocket.Dial(t.Context(), e.ws+"?token="+tok, nil)
	if err == nil {
		conn.CloseNow()
		t.Fatalf("dial with a bad token succeeded, want 401")
	}
	if resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("dial with a bad token = %v, %v; want 401", resp, err)
	}
	body, _ := io.ReadAll(resp.Body)
	return string(body)
}

func (e *edge) ready(t *testing.T) bool {
	t.Helper()
	resp, err := http.Get(e.base + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// An edge with EDGE_JWKS_URL and EDGE_JWT_SECRET: an identity provider's
// RS256 token (patterns in its scope) connects and receives, and so does
// an ES256 one in an auth frame and an HS256 dev token; the algorithm
// decides the key, so an HS256 token made with the RSA public key is
// refused; and with the JWKS endpoint gone the edge stays ready and goes
// on accepting tokens of the keys it fetched.
func TestJWKSTokensConnect(t *testing.T) {
	t.Parallel()
	idp := tokentest.NewIdP(t)
	e := startEdge(t, redistest.Shared(t), map[string]string{
		"EDGE_JWKS_URL": idp.URL, "EDGE_JWT_ISSUER": idpIssuer, "EDGE_JWT_AUDIENCE": idpAudience,
		"EDGE_JWT_CHANNELS_CLAIM": "scope",
	})
	c := e.dial(t, idpToken(t, idp, tokentest.RSA, "42", "jw:* news"))
	c.subscribe("1", "jw:*")
	e.publish(t, "jw:placed", "rs256", 1)
	if f := c.next(); f.Channel != "jw:placed" || f.subject() != "rs256" {
		t.Fatalf("event = %+v, want jw:placed rs256", f)
	}
	if r := c.do(`{"action":"subscribe","channel":"other:*","id":"2"}`); r.Error == nil || r.Error.Code != "forbidden" {
		t.Errorf("subscribe beyond the scope = %+v, want forbidden", r)
	}

	es := e.dial(t, "")
	if r := es.do(fmt.Sprintf(`{"action":"auth","token":%q,"id":"a"}`, idpToken(t, idp, tokentest.EC, "43", "jw:*"))); !r.OK {
		t.Fatalf("auth with an ES256 token = %+v, want ok", r)
	}
	dev := e.dial(t, mint(t, "44", "jw:*"))
	dev.subscribe("1", "jw:*")

	der, err := x509.MarshalPKIXPublicKey(idp.PrivateKey(t, tokentest.RSA).Public())
	if err != nil {
		t.Fatal(err)
	}
	claims := tokentest.Claims("42", []string{"*"}, time.Now())
	claims["iss"], claims["aud"] = idpIssuer, idpAudience
	confused := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims(claims))
	confused.Header["kid"] = tokentest.RSA
	confusedTok, err := confused.SignedString(der)
	if err != nil {
		t.Fatal(err)
	}
	if body := e.unauthorized(t, confusedTok); !strings.Contains(body, "signature does not verify") {
		t.Errorf("HS256 token signed with the RSA public key: body %s, want signature does not verify", body)
	}
	wrongAud := tokentest.Claims("42", nil, time.Now())
	wrongAud["iss"], wrongAud["aud"] = idpIssuer, "another-app"
	if body := e.unauthorized(t, idp.Sign(t, tokentest.Ed25519, wrongAud)); !strings.Contains(body, "wrong audience") {
		t.Errorf("token for another audience: body %s, want wrong audience", body)
	}

	idp.Close()
	later := e.dial(t, idpToken(t, idp, tokentest.Ed25519, "45", "jw:*"))
	later.subscribe("1", "jw:*")
	if !e.ready(t) {
		t.Error("/readyz with the JWKS endpoint closed is not 200")
	}
	e.publish(t, "jw:shipped", "after", 1)
	for _, cl := range []*client{c, dev, later} {
		if f := cl.next(); f.Channel != "jw:shipped" {
			t.Errorf("event = %+v, want jw:shipped", f)
		}
	}
}

// An identity provider that is down when the edge starts: the edge starts
// and says so, refuses its tokens, and accepts them once the JWKS can be
// fetched, without a restart.
func TestJWKSDownAtStart(t *testing.T) {
	t.Parallel()
	idp := tokentest.NewIdP(t)
	idp.SetDown(true)
	e := startEdge(t, redistest.Shared(t), map[string]string{
		"EDGE_JWT_SECRET": "", "EDGE_JWKS_URL": idp.URL, "EDGE_JWKS_MIN_REFRESH": "1ns",
	})
	if !strings.Contains(e.svc.Logs(), "no signing keys from the JWKS at start") {
		t.Errorf("log does not say the JWKS is missing:\n%s", e.svc.Logs())
	}
	if !e.ready(t) {
		t.Error("/readyz without the JWKS is not 200")
	}
	c := tokentest.Claims("42", []string{"jd:*"}, time.Now())
	tok := idp.Sign(t, tokentest.RSA, c)
	if body := e.unauthorized(t, tok); !strings.Contains(body, "not loaded yet") {
		t.Errorf("token while the JWKS is down: body %s, want not loaded yet", body)
	}
	idp.SetDown(false)
	e.dial(t, tok).subscribe("1", "jd:*")
}

func TestJWKSConfigErrors(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		env  map[string]string
	}{
		{"bad values", map[string]string{"EDGE_JWKS_URL": "idp.example.com/jwks", "EDGE_JWKS_MIN_REFRESH": "soon",
			"EDGE_JWT_CHANNELS_CLAIM": "exp"}},
		{"provider settings without a JWKS", map[string]string{"EDGE_JWT_SECRET": secret, "EDGE_JWT_ISSUER": idpIssuer,
			"EDGE_JWT_AUDIENCE": idpAudience, "EDGE_JWT_CHANNELS_CLAIM": "scope"}},
	} {
		err := run(t.Context(), func(k string) string { return tt.env[k] }, io.Discard)
		if err == nil {
			t.Errorf("%s: run = nil, want a configuration error", tt.name)
			continue
		}
		for k := range tt.env {
			if k != "EDGE_JWT_SECRET" && !strings.Contains(err.Error(), k) {
				t.Errorf("%s: error %q does not name %s", tt.name, err, k)
			}
		}
	}
}
