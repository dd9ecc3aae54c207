package access

import (
	"net/http/httptest"
	"net/netip"
	"testing"

	"github.com/golang-jwt/jwt/v5"

	"github.com/eventbus-suite/eventbus/pkg/token"
)

func TestClientAddrTrustsOnlyTrustedProxies(t *testing.T) {
	t.Parallel()
	p := &Policy{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}
	for _, tt := range []struct {
		name, remote string
		forwarded    []string
		want         string
	}{
		{"direct", "192.0.2.1:5000", nil, "192.0.2.1"},
		{"untrusted peer's header is ignored", "192.0.2.1:5000", []string{"198.51.100.7"}, "192.0.2.1"},
		{"through a trusted proxy", "10.1.2.3:5000", []string{"198.51.100.7"}, "198.51.100.7"},
		{"a forged first hop stays behind the real one", "10.1.2.3:5000", []string{"203.0.113.9, 198.51.100.7"}, "198.51.100.7"},
		{"two trusted proxies", "10.1.2.3:5000", []string{"198.51.100.7", "10.9.9.9"}, "198.51.100.7"},
		{"garbage ends the walk", "10.1.2.3:5000", []string{"not-an-ip"}, "10.1.2.3"},
		{"a hop with a port", "10.1.2.3:5000", []string{"198.51.100.7:4242"}, "198.51.100.7"},
		{"IPv6", "[2001:db8::1]:5000", nil, "2001:db8::1"},
	} {
		r := httptest.NewRequest("GET", "/ws", nil)
		r.RemoteAddr = tt.remote
		for _, f := range tt.forwarded {
			r.Header.Add("X-Forwarded-For", f)
		}
		if got := p.ClientAddr(r).String(); got != tt.want {
			t.Errorf("%s: clientAddr = %s, want %s", tt.name, got, tt.want)
		}
	}
}

// The bus's own namespace is never granted, whatever the token says, and
// a token's Except patterns refuse what they cover whole but the user's
// own notifications.
func TestAllowedNeverTheReservedNamespaceNorWhatIsExcepted(t *testing.T) {
	t.Parallel()
	p := &Policy{}
	all := &token.Claims{Channels: []string{"*"}, RegisteredClaims: jwt.RegisteredClaims{Subject: "42"}}
	demo := &token.Claims{Channels: []string{"*"}, Except: []string{"notify:*"}, RegisteredClaims: jwt.RegisteredClaims{Subject: "42"}}
	for _, tt := range []struct {
		name    string
		c       *token.Claims
		pattern string
		want    bool
	}{
		{"* may use *", all, "*", true},
		{"* may not use the control channel", all, "eventbus:control", false},
		{"* may not use eventbus:*", all, "eventbus:*", false},
		{"* may not use the namespace alone", all, "eventbus", false},
		{"a wider pattern is allowed, its reserved events withheld", all, "eventbus*", true},
		{"demo: *, its excepted events withheld", demo, "*", true},
		{"demo: order:*", demo, "order:*", true},
		{"demo: own notifications", demo, "notify:user:42", true},
		{"demo: another user's notifications", demo, "notify:user:7", false},
		{"demo: every user's notifications", demo, "notify:user:*", false},
		{"demo: notify:*", demo, "notify:*", false},
	} {
		if got := p.Allowed(tt.c, tt.pattern); got != tt.want {
			t.Errorf("%s: Allowed(%s) = %v, want %v", tt.name, tt.pattern, got, tt.want)
		}
	}
	if !demo.Withholds("notify:user:7") || demo.Withholds("notify:user:42") || demo.Withholds("order:placed") {
		t.Errorf("Withholds: want notify:user:7 only, not the user's own nor order:placed")
	}
}
