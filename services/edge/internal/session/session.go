// Package session is the edge's one session, whatever transport carries
// it: who a connection is (its token, checked, renewed and expiring), what
// it may do (grants, bounds, rate), and how a refusal reads, as one of the
// protocol's error codes. A transport (wsapi, sseapi, mqttapi) accepts,
// frames and writes; it asks its session, and maps the session's answers
// to its own forms: a JSON reply, an HTTP status, an MQTT reason code.
package session

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/channel"
	"github.com/eventbus-suite/eventbus/pkg/token"
	"github.com/eventbus-suite/eventbus/services/edge/internal/access"
	"github.com/eventbus-suite/eventbus/services/edge/internal/hub"
	"github.com/eventbus-suite/eventbus/services/edge/internal/protocol"
	"github.com/eventbus-suite/eventbus/services/edge/internal/receipt"
)

// Options are the rules every session of the edge keeps.
type Options struct {
	Hub    *hub.Hub
	Access *access.Policy
	// MaxSubscriptions bounds a connection's subscriptions in the hub.
	// MaxUserPatterns and MaxUserConnections are the hub's bounds, named
	// in refusals.
	MaxSubscriptions   int
	MaxUserPatterns    int
	MaxUserConnections int
	// RateLimit and RateBurst bound the requests a connection makes.
	RateLimit float64
	RateBurst int
	// RefreshBefore is how long before its token expires a connection
	// whose transport can be told (Refresher) is asked for a fresh one.
	RefreshBefore time.Duration
	// Receipts publishes the acknowledgements of notifications; nil
	// publishes none.
	Receipts *receipt.Receipts
}

// Sessions opens the sessions of an edge, and counts what they refuse.
type Sessions struct {
	Options
	authFailures *prometheus.CounterVec
	revoked      prometheus.Counter
}

// New returns the sessions of an edge, registering their metrics on reg.
func New(opts Options, reg prometheus.Registerer) *Sessions {
	s := &Sessions{
		Options: opts,
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "eventbus_edge_auth_failures_total", Help: "Refused tokens and unauthenticated connections, by reason."},
			[]string{"reason"}),
		revoked: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "eventbus_edge_revoked_subscriptions_total", Help: "Subscriptions dropped because a new token no longer granted them."}),
	}
	reg.MustRegister(s.authFailures, s.revoked)
	return s
}

// Transport is what a session needs of the transport that carries it.
// The hub calls Ready and Kicked, and neither may wait.
type Transport interface {
	// Name is how presence names the transport: "ws", "sse", "mqtt",
	// "mqtt-tcp".
	Name() string
	// Ready says the hub queued frames for a writer that had stopped.
	Ready()
	// Kicked ends the connection with d, in the transport's own form.
	Kicked(d hub.Disconnect)
}

// Refresher is a Transport that can ask its client for a fresh token
// before the one it has expires.
type Refresher interface {
	Transport
	Expiring(in time.Duration)
}

// Verify checks a token, the one way every transport does: an error is
// CodeUnauthorized, or CodeUnavailable when Redis, which knows the
// revocations, is away and the client is to try again. It wraps the
// cause.
func (m *Sessions) Verify(tok string) (*token.Claims, *protocol.Error) {
	c, err := m.Access.Verify(tok)
	switch {
	case errors.Is(err, access.ErrUnavailable):
		m.authFailures.WithLabelValues("unavailable").Inc()
		return nil, protocol.Wrap(protocol.CodeUnavailable, err)
	case err != nil:
		m.authFailures.WithLabelValues("invalid_token").Inc()
		return nil, protocol.Wrap(protocol.CodeUnauthorized, err)
	}
	return c, nil
}

// Session is one connection's session.
type Session struct {
	m       *Sessions
	t       Transport
	client  *hub.Client
	addr    netip.Addr // the client's, for its bounds while it has no user
	limiter *rate.Limiter
	claims  atomic.Pointer[token.Claims] // nil until authenticated
	notes   receipt.Window               // the notifications written and not acknowledged

	mu     sync.Mutex
	expiry *time.Timer // kicks the connection as its token expires
	notice *time.Timer // asks a Refresher for a fresh token
	closed bool
}

// Open joins a connection from addr, with claims (nil: none yet), to the
// hub, in encoding enc. It is refused with CodeTooManyConnections past
// the user's (or address's) bound, or CodeUnavailable when the edge shuts
// down. An open session ends with Close.
func (m *Sessions) Open(claims *token.Claims, addr netip.Addr, t Transport, enc hub.Encoding) (*Session, *protocol.Error) {
	s := &Session{m: m, t: t, addr: addr, limiter: rate.NewLimiter(rate.Limit(m.RateLimit), m.RateBurst)}
	c, err := m.Hub.Join(access.Identity(claims, addr), t.Name(), enc, t.Ready, t.Kicked)
	switch {
	case errors.Is(err, hub.ErrTooManyConnections):
		return nil, protocol.Errorf(protocol.CodeTooManyConnections, "at most %d connections per user (or address)", m.MaxUserConnections)
	case err != nil:
		return nil, protocol.Wrap(protocol.CodeUnavailable, err)
	}
	s.client = c
	if claims != nil {
		s.adopt(claims)
	}
	return s, nil
}

// Close ends the session: its timers stop, and it leaves the hub.
func (s *Session) Close() {
	s.mu.Lock()
	s.closed = true
	s.stopTimers()
	s.mu.Unlock()
	s.m.Hub.Leave(s.client)
}

// Client is the session's client in the hub, whose queue the transport
// writes.
func (s *Session) Client() *hub.Client { return s.client }

// Claims are the connection's token's; nil without one.
func (s *Session) Claims() *token.Claims { return s.claims.Load() }

// Authenticated reports whether the connection may do more than
// authenticate: it has a token, or the edge lets anyone in.
func (s *Session) Authenticated() bool {
	return s.claims.Load() != nil || s.m.Access.AllowAnonymous
}

// Identify makes c the connection's claims, moving it to c's user in the
// hub (nil, for a connection without a token: to its address). A
// connection never changes users: a token of another is
// CodeUnauthorized. Past the user's bounds it is CodeTooManyPatterns (the
// connection stays as it was) or CodeTooManyConnections.
func (s *Session) Identify(c *token.Claims) *protocol.Error {
	if old := s.claims.Load(); old != nil && c != nil && old.Subject != c.Subject {
		s.m.authFailures.WithLabelValues("other_user").Inc()
		return protocol.Errorf(protocol.CodeUnauthorized,
			"token is for user %q, this connection is user %q: reconnect to change users", c.Subject, old.Subject)
	}
	switch err := s.m.Hub.Identify(s.client, access.Identity(c, s.addr)); {
	case errors.Is(err, hub.ErrTooManyPatterns):
		return protocol.Errorf(protocol.CodeTooManyPatterns,
			"%v: at most %d distinct patterns per user; unsubscribe some first", err, s.m.MaxUserPatterns)
	case err != nil:
		return protocol.Errorf(protocol.CodeTooManyConnections, "%v: at most %d connections per user", err, s.m.MaxUserConnections)
	}
	if c != nil {
		s.adopt(c)
	}
	return nil
}

// Reauthenticate serves a fresh token, tok, sent over the connection: a
// good one replaces its claims (Identify), and the subscriptions they no
// longer grant are dropped. A bad one leaves an authenticated connection
// as it was. The error, if any, is for the client; the disconnect, if
// any, follows it: a token of another user, one past the user's
// connections, and a bad one on a connection not yet authenticated close
// the connection (one that cannot be checked, Redis away, with
// CloseTryAgain).
func (s *Session) Reauthenticate(tok string) (*hub.Disconnect, *protocol.Error) {
	c, err := s.m.Verify(tok)
	if err == nil {
		err = s.Identify(c)
	}
	switch {
	case err == nil:
		return nil, nil
	case err.Code == protocol.CodeTooManyPatterns:
		return nil, err // the connection stays as it was, without the user's grants
	case err.Code == protocol.CodeTooManyConnections:
		return &hub.DisconnectTooManyConnections, err
	case c != nil: // a good token, of another user
		return &hub.Disconnect{Code: hub.CloseUnauthorized, Reason: "token of another user"}, err
	case s.Authenticated():
		return nil, err
	case err.Code == protocol.CodeUnavailable:
		return &hub.Disconnect{Code: hub.CloseTryAgain, Reason: err.Message}, err
	}
	return &hub.Disconnect{Code: hub.CloseUnauthorized, Reason: err.Message}, err
}

// adopt makes c the connection's claims: the hub withholds what they
// except, the connection ends as the token expires (a Refresher is asked
// for a fresh one RefreshBefore that), and every subscription they no
// longer grant is dropped, with a notice.
func (s *Session) adopt(c *token.Claims) {
	s.claims.Store(c)
	s.client.SetToken(hub.TokenOf(c))
	exp := c.ExpiresAt.Time
	s.mu.Lock()
	if !s.closed {
		s.stopTimers()
		s.expiry = time.AfterFunc(time.Until(exp), func() {
			s.client.Kick(hub.Disconnect{Code: hub.CloseUnauthorized, Reason: "token expired"})
		})
		if r, ok := s.t.(Refresher); ok {
			s.notice = time.AfterFunc(time.Until(exp)-s.m.RefreshBefore, func() { r.Expiring(time.Until(exp)) })
		}
	}
	s.mu.Unlock()
	if n := s.m.Hub.Revoke(s.client, s.Allowed, forbidden); n > 0 {
		s.m.revoked.Add(float64(n))
	}
}

func forbidden(p string) []byte { return protocol.Unsubscribed(p, "forbidden") }

// stopTimers stops the timers of the connection's token; s.mu is held.
func (s *Session) stopTimers() {
	for _, t := range []*time.Timer{s.expiry, s.notice} {
		if t != nil {
			t.Stop()
		}
	}
}

// AuthTimeout closes the connection unless it is authenticated within d,
// and returns what stops the wait.
func (s *Session) AuthTimeout(d time.Duration) (stop func() bool) {
	t := time.AfterFunc(d, func() {
		if s.claims.Load() == nil {
			s.m.authFailures.WithLabelValues("timeout").Inc()
			s.client.Kick(hub.Disconnect{Code: hub.CloseUnauthorized,
				Reason: fmt.Sprintf(`authentication required: send {"action":"auth","token":…} within %v`, d)})
		}
	})
	return t.Stop
}

// Forbidden refuses with CodeForbidden a pattern p that a connection with
// claims (nil: none) may not subscribe to (access.Policy.Allowed): a
// transport that checks a whole request before it opens its session asks
// here.
func (m *Sessions) Forbidden(claims *token.Claims, p string) *protocol.Error {
	if m.Access.Allowed(claims, p) {
		return nil
	}
	return protocol.Errorf(protocol.CodeForbidden, "%s is not among the channels this connection may subscribe to", p)
}

// Allowed reports whether the connection may subscribe to pattern p
// (access.Policy.Allowed).
func (s *Session) Allowed(p string) bool { return s.m.Access.Allowed(s.claims.Load(), p) }

// MayPublish reports whether the connection may publish on channel ch
// (access.Policy.MayPublish).
func (s *Session) MayPublish(ch string) bool { return s.m.Access.MayPublish(s.claims.Load(), ch) }

// Withholds reports whether the connection's token withholds the events
// of channel ch (its except patterns): the hub does not deliver them, and
// neither does a transport that reads events of its own (retained
// messages, shared subscriptions).
func (s *Session) Withholds(ch string) bool {
	c := s.claims.Load()
	return c != nil && c.Withholds(ch)
}

// Grants are the patterns the connection may subscribe within: its
// token's channels and its own notifications, and the public channels
// when anyone may come in.
func (s *Session) Grants() []string {
	var g []string
	if c := s.claims.Load(); c != nil {
		g = append(g, token.Own(c.Subject))
		g = append(g, c.Channels...)
	}
	if s.m.Access.AllowAnonymous {
		g = append(g, s.m.Access.PublicChannels...)
	}
	return g
}

// Allow takes one request from the connection's rate, or refuses it with
// CodeRateLimited.
func (s *Session) Allow() *protocol.Error {
	if s.limiter.Allow() {
		return nil
	}
	return protocol.Errorf(protocol.CodeRateLimited, "more than %g requests per second (burst %d)", s.m.RateLimit, s.m.RateBurst)
}

// Subscribe subscribes the connection to pattern p, from since when it
// resumes (nil: from now), asking for the channel's joins and leaves with
// presence; reply is the frame that answers it, queued before its events.
// A pattern outside the grammar is CodeInvalidChannel; one no grant
// covers CodeForbidden; one past the connection's subscriptions
// CodeTooManySubscriptions, or its user's patterns CodeTooManyPatterns;
// presence of a channel that keeps none CodePresenceOff; Redis away
// CodeUnavailable.
func (s *Session) Subscribe(ctx context.Context, p string, since bus.Cursor, presence bool, reply func(hub.Recovery) []byte) *protocol.Error {
	if err := channel.ValidatePattern(p); err != nil {
		return protocol.Errorf(protocol.CodeInvalidChannel, "%v", err)
	}
	if err := s.m.Forbidden(s.claims.Load(), p); err != nil {
		return err
	}
	h := s.m.Hub
	if h.Count(s.client) >= s.m.MaxSubscriptions {
		return protocol.Errorf(protocol.CodeTooManySubscriptions, "at most %d subscriptions per connection", s.m.MaxSubscriptions)
	}
	if presence && !h.KeepsPresence(p) {
		return protocol.Errorf(protocol.CodePresenceOff,
			"%s keeps no presence: only channels (no wildcard) of the namespaces in EDGE_PRESENCE_NAMESPACES do", p)
	}
	// A subscription made anew says again whether it wants the news.
	h.WantPresence(s.client, p, presence)
	err := s.SubscribeCovered(ctx, p, since, reply)
	if err != nil && presence {
		h.WantPresence(s.client, p, false)
	}
	return err
}

// SubscribeCovered subscribes the connection to pattern p, as Subscribe
// does, for a transport that checked p against the grants itself and
// bounds the subscriptions its own way: MQTT, whose filters each take
// one or more patterns, narrowed to the grants, and count as one.
func (s *Session) SubscribeCovered(ctx context.Context, p string, since bus.Cursor, reply func(hub.Recovery) []byte) *protocol.Error {
	ctx, cancel := context.WithTimeout(ctx, hub.SubscribeTimeout)
	defer cancel()
	switch err := s.m.Hub.Subscribe(ctx, s.client, p, since, reply); {
	case errors.Is(err, hub.ErrTooManyPatterns):
		return protocol.Errorf(protocol.CodeTooManyPatterns,
			"at most %d distinct patterns per user across its connections", s.m.MaxUserPatterns)
	case err != nil:
		return protocol.Wrap(protocol.CodeUnavailable, err)
	}
	return nil
}

// Unsubscribe ends the connection's subscription to p; ok, if not nil,
// is queued behind its last event. A pattern outside the grammar is
// CodeInvalidChannel.
func (s *Session) Unsubscribe(p string, ok []byte) *protocol.Error {
	if err := channel.ValidatePattern(p); err != nil {
		return protocol.Errorf(protocol.CodeInvalidChannel, "%v", err)
	}
	s.m.Hub.Unsubscribe(s.client, p, ok)
	return nil
}

// Noted keeps, for Ack, the notification ev carries, if any: the frame
// that carries it is being written.
func (s *Session) Noted(ev *hub.Event) { s.notes.AddEvent(ev) }

// Note keeps notification n for Ack.
func (s *Session) Note(n receipt.Note) { s.notes.Add(n) }

// Ack publishes the receipt of notification id, acknowledged at: one the
// connection was not given is CodeUnknownNotification, one Redis did not
// take CodeUnavailable (the client acknowledges it again).
func (s *Session) Ack(ctx context.Context, id string, at time.Time) *protocol.Error {
	if s.m.Receipts == nil {
		return nil
	}
	err := s.m.Receipts.Ack(ctx, &s.notes, id, s.client.ID(), s.t.Name(), at)
	switch {
	case errors.Is(err, receipt.ErrUnknown):
		return protocol.Errorf(protocol.CodeUnknownNotification, "%s: %v", id, err)
	case err != nil:
		return protocol.Errorf(protocol.CodeUnavailable, "%v; acknowledge it again", err)
	}
	return nil
}
