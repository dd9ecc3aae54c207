package push_test

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"

	"github.com/eventbus-suite/eventbus/services/notification/internal/push"
)

var b64 = base64.RawURLEncoding

// keys returns a subscription's keys as a browser makes them.
func keys(t testing.TB) (p256dh, auth string) {
	t.Helper()
	k, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	a := make([]byte, push.AuthBytes)
	_, _ = rand.Read(a)
	return b64.EncodeToString(k.PublicKey().Bytes()), b64.EncodeToString(a)
}

// body is a PushSubscription's JSON, as toJSON() gives it.
func body(endpoint, p256dh, auth string) string {
	b, _ := json.Marshal(map[string]any{"endpoint": endpoint, "expirationTime": nil, "keys": map[string]string{"p256dh": p256dh, "auth": auth}})
	return string(b)
}

func TestParseSubscription(t *testing.T) {
	t.Parallel()
	p, a := keys(t)
	for _, tt := range []struct {
		name, body string
		allowHTTP  bool
	}{
		{"as toJSON gives it", body("https://fcm.googleapis.com/fcm/send/abc:def", p, a), false},
		{"no expirationTime", fmt.Sprintf(`{"endpoint":"https://push.example/x","keys":{"p256dh":%q,"auth":%q}}`, p, a), false},
		{"padded keys", body("https://push.example/x", p+"=", a+"=="), false},
		{"http on loopback, allowed", body("http://127.0.0.1:4000/push/1", p, a), true},
		{"http on localhost, allowed", body("http://localhost:4000/push/1", p, a), true},
		{"http on ::1, allowed", body("http://[::1]:4000/push/1", p, a), true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := push.ParseSubscription([]byte(tt.body), tt.allowHTTP)
			if err != nil || got.Keys.P256dh != p || got.Keys.Auth != a || got.Endpoint == "" {
				t.Errorf("ParseSubscription(%s) = %+v, %v; want the keys unpadded", tt.body, got, err)
			}
		})
	}
}

func TestParseSubscriptionRefuses(t *testing.T) {
	t.Parallel()
	p, a := keys(t)
	short := b64.EncodeToString(make([]byte, 15))
	notOnCurve := b64.EncodeToString(append([]byte{4}, bytes.Repeat([]byte{1}, 64)...))
	compressed := b64.EncodeToString(append([]byte{2}, bytes.Repeat([]byte{1}, 32)...))
	for _, tt := range []struct {
		name, body, says string
		allowHTTP        bool
	}{
		{"empty", "", "empty", false},
		{"not JSON", "{", "want", false},
		{"a list", "[]", "want", false},
		{"two objects", body("https://p.example/x", p, a) + "{}", "one JSON object", false},
		{"unknown field", `{"endpoint":"https://p.example/x","key":{}}`, "unknown field", false},
		{"no endpoint", fmt.Sprintf(`{"keys":{"p256dh":%q,"auth":%q}}`, p, a), "endpoint is missing", false},
		{"http", body("http://push.example/x", p, a), "not https", false},
		{"http on loopback, not allowed", body("http://127.0.0.1/x", p, a), "not https", false},
		{"http elsewhere, allowed on loopback only", body("http://10.0.0.1/x", p, a), "loopback", true},
		{"relative", body("/push/x", p, a), "absolute URL", false},
		{"user in URL", body("https://u:p@push.example/x", p, a), "absolute URL", false},
		{"other scheme", body("ftp://push.example/x", p, a), "not https", false},
		{"long endpoint", body("https://push.example/"+strings.Repeat("x", push.MaxEndpointBytes), p, a), "bytes; want at most", false},
		{"no keys", `{"endpoint":"https://p.example/x"}`, "keys are missing", false},
		{"no p256dh", body("https://p.example/x", "", a), "keys.p256dh is missing", false},
		{"no auth", body("https://p.example/x", p, ""), "keys.auth is missing", false},
		{"p256dh not base64url", body("https://p.example/x", strings.Replace(p, p[:2], "+/", 1), a), "keys.p256dh is not base64url", false},
		{"p256dh compressed", body("https://p.example/x", compressed, a), "keys.p256dh is 33 bytes; want 65", false},
		{"p256dh not on the curve", body("https://p.example/x", notOnCurve, a), "not an uncompressed point", false},
		{"auth short", body("https://p.example/x", p, short), "keys.auth is 15 bytes; want 16", false},
		{"keys a string", `{"endpoint":"https://p.example/x","keys":"k"}`, "want", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := push.ParseSubscription([]byte(tt.body), tt.allowHTTP)
			if !errors.Is(err, push.ErrInvalid) || !strings.Contains(err.Error(), tt.says) {
				t.Errorf("ParseSubscription(%.60q) = %+v, %v; want ErrInvalid saying %q", tt.body, got, err, tt.says)
			}
		})
	}
}

func TestParseEndpoint(t *testing.T) {
	t.Parallel()
	p, a := keys(t)
	for _, tt := range []struct{ name, body, want, says string }{
		{"endpoint", `{"endpoint":"https://p.example/x"}`, "https://p.example/x", ""},
		{"whole subscription", body("https://p.example/x", p, a), "https://p.example/x", ""},
		{"http still removable", `{"endpoint":"http://10.0.0.1/x"}`, "http://10.0.0.1/x", ""},
		{"missing", `{}`, "", "endpoint is missing"},
		{"unknown field", `{"url":"https://p.example/x"}`, "", "unknown field"},
		{"not a URL", `{"endpoint":"p.example"}`, "", "absolute URL"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := push.ParseEndpoint([]byte(tt.body))
			if tt.says == "" && (err != nil || got != tt.want) || tt.says != "" && (!errors.Is(err, push.ErrInvalid) || !strings.Contains(err.Error(), tt.says)) {
				t.Errorf("ParseEndpoint(%s) = %q, %v; want %q or an error saying %q", tt.body, got, err, tt.want, tt.says)
			}
		})
	}
}

func TestCheckVAPID(t *testing.T) {
	t.Parallel()
	k, _ := ecdh.P256().GenerateKey(rand.Reader)
	other, _ := ecdh.P256().GenerateKey(rand.Reader)
	pub, priv := b64.EncodeToString(k.PublicKey().Bytes()), b64.EncodeToString(k.Bytes())
	for _, tt := range []struct {
		name, pub, priv string
		pubBad, privBad bool
	}{
		{"a pair", pub, priv, false, false},
		{"a padded pair", base64.URLEncoding.EncodeToString(k.PublicKey().Bytes()), base64.URLEncoding.EncodeToString(k.Bytes()), false, false},
		{"not a pair", pub, b64.EncodeToString(other.Bytes()), false, true},
		{"public not base64url", "not base64!", priv, true, false},
		{"public short", b64.EncodeToString(k.PublicKey().Bytes()[:33]), priv, true, false},
		{"private short", pub, b64.EncodeToString(k.Bytes()[:31]), false, true},
		{"private zero", pub, b64.EncodeToString(make([]byte, 32)), false, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			pubErr, privErr := push.CheckVAPID(tt.pub, tt.priv)
			if (pubErr != nil) != tt.pubBad || (privErr != nil) != tt.privBad {
				t.Errorf("CheckVAPID(%q, …) = %v, %v; want errors %v, %v", tt.pub, pubErr, privErr, tt.pubBad, tt.privBad)
			}
		})
	}
}

func TestCheckUserID(t *testing.T) {
	t.Parallel()
	for id, ok := range map[string]bool{"42": true, "ada_l-1": true, "": false, "a:b": false, "Ada": false, "a b": false, "*": false, strings.Repeat("x", 300): false} {
		if err := push.CheckUserID(id); (err == nil) != ok {
			t.Errorf("CheckUserID(%.20q) = %v, want ok %v", id, err, ok)
		}
	}
}

// FuzzParseSubscription: no body panics the parser; it refuses with
// ErrInvalid, or returns an https (or loopback http) endpoint of bounded
// size and keys of the right sizes, unpadded, which parse again to the same.
func FuzzParseSubscription(f *testing.F) {
	p, a := keys(f)
	for _, s := range []string{
		body("https://fcm.googleapis.com/fcm/send/x", p, a), body("http://127.0.0.1:1/x", p, a), body("https://p.example/x", p+"=", a),
		body("https://p.example/x", a, p), `{"endpoint":"https://p.example/x"}`, `{"keys":{}}`, "", "{}", "null", `{}{}`,
		`{"endpoint":"https://\u0000/x"}`, "\xff", `{"endpoint":"https://p.example/x","expirationTime":1e400}`,
	} {
		f.Add([]byte(s), true)
		f.Add([]byte(s), false)
	}
	f.Fuzz(func(t *testing.T, in []byte, allowHTTP bool) {
		sub, err := push.ParseSubscription(in, allowHTTP)
		if err != nil {
			if !errors.Is(err, push.ErrInvalid) || sub != (push.Subscription{}) {
				t.Fatalf("ParseSubscription(%q) = %+v, %v; want nothing and ErrInvalid", in, sub, err)
			}
			return
		}
		u, err := url.Parse(sub.Endpoint)
		if err != nil || len(sub.Endpoint) > push.MaxEndpointBytes || !(u.Scheme == "https" || allowHTTP && u.Scheme == "http") {
			t.Fatalf("ParseSubscription(%q) accepted endpoint %q", in, sub.Endpoint)
		}
		pk, perr := b64.DecodeString(sub.Keys.P256dh)
		ak, aerr := b64.DecodeString(sub.Keys.Auth)
		if perr != nil || aerr != nil || len(pk) != push.P256dhBytes || len(ak) != push.AuthBytes {
			t.Fatalf("ParseSubscription(%q) = keys %+v, want unpadded base64url of 65 and 16 bytes", in, sub.Keys)
		}
		again, err := push.ParseSubscription([]byte(body(sub.Endpoint, sub.Keys.P256dh, sub.Keys.Auth)), allowHTTP)
		if err != nil || again != sub {
			t.Fatalf("ParseSubscription of %+v again = %+v, %v; want the same", sub, again, err)
		}
	})
}

// FuzzParseEndpoint: no removal body panics the parser; it refuses with
// ErrInvalid, or returns an absolute URL of bounded size, without user or
// fragment (of any scheme: one stored under NOTIFY_PUSH_ALLOW_HTTP can go),
// that a removal of just that endpoint reads back the same.
func FuzzParseEndpoint(f *testing.F) {
	p, a := keys(f)
	for _, s := range []string{
		`{"endpoint":"https://fcm.googleapis.com/fcm/send/x"}`, body("https://p.example/x", p, a), `{"endpoint":"http://127.0.0.1:1/x"}`,
		`{"endpoint":"ftp://p.example/x"}`, `{"endpoint":"/x"}`, `{"endpoint":1}`, `{"endpoint":"https://p.example/x","extra":1}`,
		"", "{}", "null", `{}{}`, "\xff", `{"endpoint":"https://\u0000/x"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		endpoint, err := push.ParseEndpoint(in)
		if err != nil {
			if !errors.Is(err, push.ErrInvalid) || endpoint != "" {
				t.Fatalf("ParseEndpoint(%q) = %q, %v; want nothing and ErrInvalid", in, endpoint, err)
			}
			return
		}
		u, err := url.Parse(endpoint)
		if err != nil || !u.IsAbs() || u.Host == "" || u.User != nil || u.Fragment != "" || len(endpoint) > push.MaxEndpointBytes {
			t.Fatalf("ParseEndpoint(%q) accepted endpoint %q", in, endpoint)
		}
		b, _ := json.Marshal(map[string]string{"endpoint": endpoint})
		if again, err := push.ParseEndpoint(b); err != nil || again != endpoint {
			t.Fatalf("ParseEndpoint of %q again = %q, %v; want the same", endpoint, again, err)
		}
	})
}
