package wsapi

import (
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"
)

func TestGapKeepsTheEdgeWithinItsWriteRate(t *testing.T) {
	for _, tt := range []struct {
		rate    int
		flowing int64
		want    time.Duration
	}{
		{rate: 0, flowing: 1000, want: 0},  // pacing off
		{rate: 30000, flowing: 1, want: 0}, // 33 µs: not worth a pause
		{rate: 30000, flowing: 300, want: 10 * time.Millisecond},
		{rate: 30000, flowing: 1000, want: time.Second / 30}, // each of 1,000 writes 30 times a second
		{rate: 30000, flowing: 3000, want: maxGap},           // 100 ms would be too late
	} {
		h := &Handler{Options: Options{WriteRate: tt.rate}}
		h.flowing.Store(tt.flowing)
		if got := h.gap(); got != tt.want {
			t.Errorf("rate %d, %d flowing: gap %v, want %v", tt.rate, tt.flowing, got, tt.want)
		}
	}
}

func TestClientAddrTrustsOnlyTrustedProxies(t *testing.T) {
	t.Parallel()
	h := &Handler{Options: Options{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}}
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
		if got := h.clientAddr(r).String(); got != tt.want {
			t.Errorf("%s: clientAddr = %s, want %s", tt.name, got, tt.want)
		}
	}
}
