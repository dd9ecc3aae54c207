// Package access decides who a connection to the edge is and what it may
// subscribe to, the same for every transport: tokens, grants, public
// channels and the client's address behind trusted proxies.
package access

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/eventbus-suite/eventbus/pkg/channel"
	"github.com/eventbus-suite/eventbus/pkg/revocation"
	"github.com/eventbus-suite/eventbus/pkg/token"
)

// Policy is the edge's access configuration.
type Policy struct {
	Verifier       *token.Verifier // nil when the edge accepts no tokens
	AllowAnonymous bool
	PublicChannels []string
	// PublicPublish are the patterns a connection without a token may
	// publish on (MQTT), with AllowAnonymous.
	PublicPublish []string
	// TrustedProxies may say who the client is in X-Forwarded-For.
	TrustedProxies []netip.Prefix
	// Revocations, when set, refuse revoked tokens; MaxTokenAge, when
	// set, refuses tokens that live longer (a revocation is kept that
	// long).
	Revocations *revocation.Store
	MaxTokenAge time.Duration
}

// ErrRevoked is wrapped by Verify's error for a revoked token.
var ErrRevoked = errors.New("revoked")

// Verify checks a token.
func (p *Policy) Verify(tok string) (*token.Claims, error) {
	if p.Verifier == nil {
		return nil, errors.New("this edge accepts no tokens (neither EDGE_JWT_SECRET nor EDGE_JWKS_URL is set)")
	}
	c, err := p.Verifier.Verify(tok)
	if err != nil {
		return nil, err
	}
	if err := p.admit(c); err != nil {
		if errors.Is(err, ErrUnavailable) {
			return nil, err // the token may be good: ask again later
		}
		return nil, fmt.Errorf("%w: %w", token.ErrInvalid, err)
	}
	return c, nil
}

// ErrUnavailable is Verify's error when the revocations cannot be read
// (Redis away): the token is neither good nor bad yet, and the client is
// to try again, not to give up.
var ErrUnavailable = errors.New("cannot check revocations: the event bus (Redis) is unavailable")

// admit checks what the signature cannot: the token's life, and whether
// it was revoked since it was issued.
func (p *Policy) admit(c *token.Claims) error {
	if p.MaxTokenAge > 0 {
		from := time.Now()
		if c.IssuedAt != nil {
			from = c.IssuedAt.Time
		}
		if c.ExpiresAt.Sub(from) > p.MaxTokenAge+time.Minute {
			return fmt.Errorf("lives longer than EDGE_MAX_TOKEN_AGE (%v)", p.MaxTokenAge)
		}
	}
	if p.Revocations == nil {
		return nil
	}
	var iat time.Time
	if c.IssuedAt != nil {
		iat = c.IssuedAt.Time
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	revoked, err := p.Revocations.Revoked(ctx, c.ID, c.Subject, iat)
	switch {
	case err != nil:
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	case revoked:
		return ErrRevoked
	}
	return nil
}

// MayPublish reports whether a connection with claims c (nil: none) may
// publish on channel ch: its token's publish claim covers it, or, without
// a token and with AllowAnonymous, PublicPublish does. Never in the bus's
// own namespace.
func (p *Policy) MayPublish(c *token.Claims, ch string) bool {
	if channel.Reserved(ch) {
		return false
	}
	grants := p.PublicPublish
	switch {
	case c != nil:
		grants = c.Publish
	case !p.AllowAnonymous:
		return false
	}
	return anyCovers(grants, ch)
}

// anyCovers reports whether one of patterns covers p (channel.Covers).
func anyCovers(patterns []string, p string) bool {
	return slices.ContainsFunc(patterns, func(a string) bool { return channel.Covers(a, p) })
}

// Allowed reports whether pattern is covered by one of the patterns a
// connection with claims c (nil: none) may use: the token's channels and
// its own notify:user:<sub>, and the public channels when anonymous access
// is on. A pattern in the bus's own namespace (channel.Reserved) is never
// allowed, and neither is one the token's Except patterns cover whole
// (but its own notifications); a wider pattern is allowed, and the hub
// withholds the excepted events.
func (p *Policy) Allowed(c *token.Claims, pattern string) bool {
	if channel.Reserved(pattern) {
		return false
	}
	if c != nil && channel.Covers(token.Own(c.Subject), pattern) {
		return true
	}
	if c != nil && !anyCovers(c.Except, pattern) && anyCovers(c.Channels, pattern) {
		return true
	}
	return p.AllowAnonymous && anyCovers(p.PublicChannels, pattern)
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

// OriginAllowed reports whether a browser page at origin may connect: the
// edge's own host, or a host pattern of allowed (path.Match syntax, as
// coder/websocket checks them).
func OriginAllowed(origin, host string, allowed []string) bool {
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false
	}
	if strings.EqualFold(u.Host, host) {
		return true
	}
	for _, p := range allowed {
		if ok, _ := path.Match(strings.ToLower(p), strings.ToLower(u.Host)); ok {
			return true
		}
	}
	return false
}
