// Package access decides who a connection to the edge is and what it may
// subscribe to, the same for every transport: tokens, grants, public
// channels and the client's address behind trusted proxies.
package access

import (
	"errors"
	"net/http"
	"net/netip"
	"strings"

	"github.com/eventbus-suite/eventbus/pkg/channel"
	"github.com/eventbus-suite/eventbus/pkg/token"
)

// Policy is the edge's access configuration.
type Policy struct {
	Verifier       *token.Verifier // nil when the edge accepts no tokens
	AllowAnonymous bool
	PublicChannels []string
	// TrustedProxies may say who the client is in X-Forwarded-For.
	TrustedProxies []netip.Prefix
}

// Verify checks a token.
func (p *Policy) Verify(tok string) (*token.Claims, error) {
	if p.Verifier == nil {
		return nil, errors.New("this edge accepts no tokens (EDGE_JWT_SECRET is not set)")
	}
	return p.Verifier.Verify(tok)
}

// Allowed reports whether pattern is covered by one of the patterns a
// connection with claims c (nil: none) may use: the token's channels and
// its own notify:user:<sub>, and the public channels when anonymous access
// is on.
func (p *Policy) Allowed(c *token.Claims, pattern string) bool {
	var grants []string
	if c != nil {
		grants = append(grants, "notify:user:"+c.Subject)
		grants = append(grants, c.Channels...)
	}
	if p.AllowAnonymous {
		grants = append(grants, p.PublicChannels...)
	}
	for _, a := range grants {
		if channel.Covers(a, pattern) {
			return true
		}
	}
	return false
}

// Identity is who a connection counts against for the hub's bounds: its
// user, or without a token, its address.
func Identity(c *token.Claims, addr netip.Addr) string {
	if c != nil {
		return "user:" + c.Subject
	}
	return "addr:" + addr.String()
}

// ClientAddr is the address of the client: the peer's, or, when the peer
// is a trusted proxy, the last address in X-Forwarded-For that is not.
func (p *Policy) ClientAddr(r *http.Request) netip.Addr {
	peer, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	addr := peer.Addr().Unmap()
	hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
	for i := len(hops) - 1; i >= 0 && p.trusted(addr); i-- {
		hop, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			withPort, perr := netip.ParseAddrPort(strings.TrimSpace(hops[i]))
			if perr != nil {
				break
			}
			hop = withPort.Addr()
		}
		addr = hop.Unmap()
	}
	return addr
}

func (p *Policy) trusted(a netip.Addr) bool {
	for _, t := range p.TrustedProxies {
		if t.Contains(a) {
			return true
		}
	}
	return false
}
