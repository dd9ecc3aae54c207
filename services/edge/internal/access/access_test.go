package access

import (
	"net/http/httptest"
	"net/netip"
	"testing"
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
