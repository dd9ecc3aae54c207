package token_test

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/eventbus-suite/eventbus/pkg/token"
)

func TestIssueAndVerify(t *testing.T) {
	t.Parallel()
	secret := []byte("s3cret-0123456789")
	now := time.Now()
	tok, err := token.Issue(secret, "42", []string{"order:*"}, time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	c, err := token.NewVerifier(secret).Verify(tok)
	if err != nil || c.Subject != "42" || len(c.Channels) != 1 || c.Channels[0] != "order:*" {
		t.Fatalf("Verify = %+v, %v; want sub 42 with order:*", c, err)
	}
}

// The publish claim comes back as the patterns it was issued with.
func TestIssueClaimsWithPublish(t *testing.T) {
	t.Parallel()
	secret := []byte("s3cret-0123456789")
	tok, err := token.IssueClaims(secret, token.Claims{Channels: []string{"order:*"}, Publish: []string{"sensor:*", "iss:telemetry"},
		RegisteredClaims: jwt.RegisteredClaims{Subject: "42"}}, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	c, err := token.NewVerifier(secret).Verify(tok)
	if err != nil || !slices.Equal(c.Publish, []string{"sensor:*", "iss:telemetry"}) || !slices.Equal(c.Channels, []string{"order:*"}) {
		t.Fatalf("Verify = %+v, %v; want the channels and publish patterns issued", c, err)
	}
	if _, err := token.IssueClaims(secret, token.Claims{Publish: []string{"Sensor"}, RegisteredClaims: jwt.RegisteredClaims{Subject: "42"}}, time.Hour, time.Now()); err == nil {
		t.Error("IssueClaims took a publish pattern outside the grammar")
	}
}

func TestVerifyRefusals(t *testing.T) {
	t.Parallel()
	secret := []byte("s3cret-0123456789")
	now := time.Now()
	good := func(sub string, ttl time.Duration) string {
		tok, err := token.Issue(secret, sub, nil, ttl, now)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	none, _ := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.MapClaims{"sub": "42", "exp": now.Add(time.Hour).Unix()}).SignedString(jwt.UnsafeAllowNoneSignatureType)
	noExp, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "42"}).SignedString(secret)
	badChan, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "42", "exp": now.Add(time.Hour).Unix(), "channels": []string{"A B"}}).SignedString(secret)
	other, _ := token.Issue([]byte("other-0123456789ab"), "42", nil, time.Hour, now)
	expString, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "42", "exp": "9999999999"}).SignedString(secret)
	iatString, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "42", "exp": now.Add(time.Hour).Unix(), "iat": "1"}).SignedString(secret)
	future, _ := token.Issue(secret, "42", nil, time.Hour, now.Add(time.Hour))
	badPublish, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "42", "exp": now.Add(time.Hour).Unix(), "publish": []string{"sensor/temp"}}).SignedString(secret)
	publishNumber, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "42", "exp": now.Add(time.Hour).Unix(), "publish": 7}).SignedString(secret)
	tests := []struct{ name, tok, reason string }{
		{"expired", good("42", -time.Minute), "expired"},
		{"wrong secret", other, "signature"},
		{"garbage", "not.a.jwt", "malformed"},
		{"alg none", none, "signature"},
		{"no exp", noExp, "no expiry"},
		{"no subject", good("", time.Hour), "no subject"},
		{"bad channels claim", badChan, "channels"},
		{"bad publish claim", badPublish, "publish"},
		{"publish claim not a list", publishNumber, "publish"},
		{"exp as a string", expString, "exp is"},
		{"iat as a string", iatString, "iat is"},
		{"iat in the future", future, "issued in the future"},
	}
	for _, tt := range tests {
		_, err := token.NewVerifier(secret).Verify(tt.tok)
		if !errors.Is(err, token.ErrInvalid) || !strings.Contains(err.Error(), tt.reason) {
			t.Errorf("%s: Verify = %v, want ErrInvalid saying %q", tt.name, err, tt.reason)
		}
	}
}

// FuzzVerify feeds Verify whatever a client could send: it never panics,
// and whatever it accepts has a subject and a numeric expiry.
func FuzzVerify(f *testing.F) {
	secret := []byte("fuzz-secret-0123456789")
	good, _ := token.Issue(secret, "42", []string{"order:*"}, time.Hour, time.Now())
	f.Add(good)
	f.Add("a.b.c")
	f.Add(good[:len(good)-3])
	v := token.NewVerifier(secret)
	f.Fuzz(func(t *testing.T, tok string) {
		c, err := v.Verify(tok)
		if err != nil {
			if !errors.Is(err, token.ErrInvalid) {
				t.Fatalf("Verify error %v does not wrap ErrInvalid", err)
			}
			return
		}
		if c.Subject == "" || c.ExpiresAt == nil {
			t.Fatalf("Verify accepted %+v without subject or expiry", c)
		}
	})
}

// A secret the edge would refuse signs nothing, and every token has an id
// to revoke it by.
func TestIssueRefusesShortSecretsAndNamesEveryToken(t *testing.T) {
	t.Parallel()
	if _, err := token.Issue([]byte("fifteen-bytes!!"), "42", nil, time.Hour, time.Now()); err == nil {
		t.Fatal("Issue with a 15-byte secret succeeded, want a refusal")
	}
	secret := []byte("sixteen-bytes!!!")
	v := token.NewVerifier(secret)
	seen := map[string]bool{}
	for range 3 {
		tok, err := token.Issue(secret, "42", nil, time.Hour, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		c, err := v.Verify(tok)
		if err != nil || c.ID == "" || seen[c.ID] {
			t.Fatalf("Verify = %+v, %v; want a token with an id of its own", c, err)
		}
		seen[c.ID] = true
	}
}

func TestFromAuthorization(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name, header, want string
		ok                 bool
	}{
		{"Bearer", "Bearer abc", "abc", true},
		{"lower case", "bearer abc", "abc", true},
		{"upper case", "BEARER abc", "abc", true},
		{"Basic", "Basic abc", "", false},
		{"no token", "Bearer ", "", false},
		{"no space", "Bearerabc", "", false},
		{"empty", "", "", false},
	} {
		if got, ok := token.FromAuthorization(tt.header); got != tt.want || ok != tt.ok {
			t.Errorf("%s: FromAuthorization(%q) = %q, %v, want %q, %v", tt.name, tt.header, got, ok, tt.want, tt.ok)
		}
	}
}

func FuzzFromAuthorization(f *testing.F) {
	for _, s := range []string{"Bearer abc", "bearer abc", "Basic abc", "", "Bearer  x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		tok, ok := token.FromAuthorization(v)
		if ok && (tok == "" || !strings.HasSuffix(v, tok) || !strings.EqualFold(v[:6], "bearer")) {
			t.Fatalf("FromAuthorization(%q) = %q, true", v, tok)
		}
		if !ok && tok != "" {
			t.Fatalf("FromAuthorization(%q) = %q, false", v, tok)
		}
	})
}

func TestVerifyRefusesATokenLongerThanMaxBytes(t *testing.T) {
	t.Parallel()
	v, err := token.New(t.Context(), token.Options{Secret: []byte("0123456789abcdef0123")})
	if err != nil {
		t.Fatal(err)
	}
	_, err = v.Verify(strings.Repeat("a", token.MaxBytes+1))
	if !errors.Is(err, token.ErrInvalid) || !errors.Is(err, token.ErrTooLong) {
		t.Errorf("Verify(%d bytes) = %v, want token.ErrInvalid and token.ErrTooLong", token.MaxBytes+1, err)
	}
}
