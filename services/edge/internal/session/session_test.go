package session

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/eventbus-suite/eventbus/pkg/bus/redisbus"
	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/token"
	"github.com/eventbus-suite/eventbus/services/edge/internal/access"
	"github.com/eventbus-suite/eventbus/services/edge/internal/hub"
	"github.com/eventbus-suite/eventbus/services/edge/internal/protocol"
)

func TestMain(m *testing.M) { redistest.Main(m) }

var secret = []byte("session-test-secret-of-32-bytes!")

// transport records what the session and the hub tell it.
type transport struct {
	ready  chan struct{}
	kicked chan hub.Disconnect
}

func newTransport() *transport {
	return &transport{ready: make(chan struct{}, 1), kicked: make(chan hub.Disconnect, 1)}
}

func (t *transport) Name() string { return "test" }

func (t *transport) Ready() {
	select {
	case t.ready <- struct{}{}:
	default:
	}
}

func (t *transport) Kicked(d hub.Disconnect) { t.kicked <- d }

// sessions returns the sessions of an edge on a real Redis, with opts'
// bounds (the rest filled in), accepting tokens signed with secret.
func sessions(t *testing.T, opts Options) *Sessions {
	t.Helper()
	srv := redistest.Shared(t)
	b, err := redisbus.New(srv.Client(t), redisbus.Options{Prefix: redistest.Prefix(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	sub, err := b.Subscribe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h := hub.New(sub, hub.Options{QueueBytes: 1 << 20, MaxUserPatterns: 100, MaxUserConnections: 10, MaxRedisPatterns: 100,
		MaxAddressConnections: 100}, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = h.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		_ = sub.Close()
	})
	opts.Hub = h
	if opts.Access == nil {
		opts.Access = &access.Policy{Verifier: token.NewVerifier(secret)}
	}
	opts.MaxSubscriptions = max(opts.MaxSubscriptions, 1)
	opts.MaxUserPatterns, opts.MaxUserConnections = 100, 10
	opts.RateLimit, opts.RateBurst = 1000, 1000
	return New(opts, prometheus.NewRegistry())
}

func issue(t *testing.T, sub string, channels ...string) string {
	t.Helper()
	tok, err := token.Issue(secret, sub, channels, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

var addr = netip.MustParseAddr("192.0.2.7")

// open opens a session without a token.
func open(t *testing.T, m *Sessions, tr Transport) *Session {
	t.Helper()
	s, err := m.Open(nil, addr, tr, protocol.JSON)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// frames takes what the hub queued for s, whose transport is t, as a
// writer would: woken by Ready, until at least n came.
func frames(t *testing.T, s *Session, tr *transport, n int) []hub.Frame {
	t.Helper()
	var got []hub.Frame
	for len(got) < n {
		select {
		case <-tr.ready:
		case <-t.Context().Done():
			t.Fatalf("%d frames queued, want %d: %v", len(got), n, got)
		}
		for {
			k := len(got)
			if got = s.Client().Take(got); len(got) == k {
				break // the next frame calls Ready
			}
		}
	}
	return got
}

func TestVerifySaysUnauthorizedAndWrapsTheCause(t *testing.T) {
	m := sessions(t, Options{})
	if c, err := m.Verify(issue(t, "7", "order:*")); err != nil || c.Subject != "7" {
		t.Fatalf("Verify(good) = %v, %v", c, err)
	}
	tooLong := strings.Repeat("x", 64<<10)
	for _, tok := range []string{"", "not-a-token", issue(t, "7")[:40], tooLong} {
		_, err := m.Verify(tok)
		if err == nil || err.Code != protocol.CodeUnauthorized || err.Err == nil {
			t.Errorf("Verify(%.20q) = %v, want unauthorized with its cause", tok, err)
		}
	}
}

// Reauthenticate's rules: a connection never changes users; a bad token
// leaves an authenticated connection as it was and closes one that is not.
func TestReauthenticate(t *testing.T) {
	m := sessions(t, Options{MaxSubscriptions: 10})

	s := open(t, m, newTransport())
	if s.Authenticated() {
		t.Fatal("a session without a token and without anonymous access is authenticated")
	}
	if d, err := s.Reauthenticate("garbage"); err == nil || err.Code != protocol.CodeUnauthorized || d == nil || d.Code != hub.CloseUnauthorized {
		t.Fatalf("a bad first token: %v, %v; want unauthorized and closed with %d", err, d, hub.CloseUnauthorized)
	}

	s = open(t, m, newTransport())
	if d, err := s.Reauthenticate(issue(t, "7", "order:*")); err != nil || d != nil {
		t.Fatalf("a good token: %v, %v", err, d)
	}
	if !s.Authenticated() || s.Claims().Subject != "7" {
		t.Fatalf("authenticated %v as %v, want user 7", s.Authenticated(), s.Claims())
	}
	if d, err := s.Reauthenticate("garbage"); err == nil || d != nil || s.Claims().Subject != "7" {
		t.Fatalf("a bad token on an authenticated connection: %v, %v, claims %v; want refused, open, as it was", err, d, s.Claims())
	}
	if d, err := s.Reauthenticate(issue(t, "8", "order:*")); err == nil || err.Code != protocol.CodeUnauthorized || d == nil || d.Code != hub.CloseUnauthorized {
		t.Fatalf("a token of another user: %v, %v; want unauthorized and closed", err, d)
	}
	if s.Claims().Subject != "7" {
		t.Fatalf("claims after another user's token: %v, want user 7's", s.Claims())
	}
}

// A fresh token that grants less drops the subscriptions it no longer
// covers, each with a frame that says which.
func TestAFreshTokenDropsWhatItNoLongerGrants(t *testing.T) {
	m := sessions(t, Options{MaxSubscriptions: 10})
	tr := newTransport()
	s := open(t, m, tr)
	if err := s.Identify(mustVerify(t, m, issue(t, "7", "order:*", "user:*"))); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"order:*", "user:*"} {
		if err := s.Subscribe(t.Context(), p, nil, false, func(hub.Recovery) []byte { return []byte(p) }); err != nil {
			t.Fatalf("Subscribe(%s): %v", p, err)
		}
	}
	subscribed := frames(t, s, tr, 2)
	for i, f := range subscribed {
		if f.Kind != hub.FrameSubscribed || f.Recovery == nil || f.Channel != string(f.Data) {
			t.Fatalf("reply %d: %+v, want a FrameSubscribed of its channel with its recovery", i, f)
		}
	}
	if d, err := s.Reauthenticate(issue(t, "7", "user:*")); err != nil || d != nil {
		t.Fatalf("Reauthenticate: %v, %v", err, d)
	}
	dropped := frames(t, s, tr, 1)
	if len(dropped) != 1 || dropped[0].Kind != hub.FrameDropped || dropped[0].Channel != "order:*" {
		t.Fatalf("after a token without order:*: %+v, want one FrameDropped of order:*", dropped)
	}
	if m.Hub.Count(s.Client()) != 1 {
		t.Fatalf("%d subscriptions left, want 1 (user:*)", m.Hub.Count(s.Client()))
	}
}

func mustVerify(t *testing.T, m *Sessions, tok string) *token.Claims {
	t.Helper()
	c, err := m.Verify(tok)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Subscribe refuses each thing it promises to refuse, and holds its bound
// with more patterns offered than it allows.
func TestSubscribeRefusals(t *testing.T) {
	const most = 3
	m := sessions(t, Options{MaxSubscriptions: most})
	s := open(t, m, newTransport())
	if err := s.Identify(mustVerify(t, m, issue(t, "7", "order:*", "user:*"))); err != nil {
		t.Fatal(err)
	}
	ok := func(hub.Recovery) []byte { return []byte("ok") }
	for p, want := range map[string]string{
		"Order:*":        protocol.CodeInvalidChannel,
		"payment:*":      protocol.CodeForbidden,
		"eventbus:*":     protocol.CodeForbidden,
		"order:placed:x": "",
	} {
		err := s.Subscribe(t.Context(), p, nil, false, ok)
		if got := codeOf(err); got != want {
			t.Errorf("Subscribe(%s) = %v, want %q", p, err, want)
		}
	}
	if err := s.Subscribe(t.Context(), "order:placed", nil, true, ok); codeOf(err) != protocol.CodePresenceOff {
		t.Errorf("presence of a channel that keeps none = %v, want %s", err, protocol.CodePresenceOff)
	}
	offered := []string{"order:a", "order:b", "order:c", "user:a", "user:b"}
	accepted := 1 // order:placed:x
	for _, p := range offered {
		switch err := s.Subscribe(t.Context(), p, nil, false, ok); {
		case err == nil:
			accepted++
		case err.Code != protocol.CodeTooManySubscriptions:
			t.Fatalf("Subscribe(%s) = %v", p, err)
		}
	}
	if accepted != most || m.Hub.Count(s.Client()) != most {
		t.Fatalf("%d accepted, %d in the hub, want %d", accepted, m.Hub.Count(s.Client()), most)
	}
	if err := s.Unsubscribe("order:*:", nil); codeOf(err) != protocol.CodeInvalidChannel {
		t.Fatalf("Unsubscribe of a bad pattern = %v", err)
	}
}

func codeOf(err *protocol.Error) string {
	if err == nil {
		return ""
	}
	return err.Code
}

// The rate holds its burst and refuses the next request.
func TestAllowHoldsTheBurst(t *testing.T) {
	m := sessions(t, Options{})
	m.RateLimit, m.RateBurst = 0.001, 5
	s := open(t, m, newTransport())
	for i := range 5 {
		if err := s.Allow(); err != nil {
			t.Fatalf("request %d of a burst of 5: %v", i+1, err)
		}
	}
	if err := s.Allow(); codeOf(err) != protocol.CodeRateLimited {
		t.Fatalf("request 6 of a burst of 5: %v, want %s", err, protocol.CodeRateLimited)
	}
}

// Open holds the user's connections, and a session closed gives its place
// back.
func TestOpenHoldsTheUsersConnections(t *testing.T) {
	m := sessions(t, Options{})
	claims := mustVerify(t, m, issue(t, "9"))
	var open []*Session
	for {
		s, err := m.Open(claims, addr, newTransport(), protocol.JSON)
		if err != nil {
			if err.Code != protocol.CodeTooManyConnections || len(open) != m.MaxUserConnections {
				t.Fatalf("connection %d: %v, want %s after %d", len(open)+1, err, protocol.CodeTooManyConnections, m.MaxUserConnections)
			}
			break
		}
		open = append(open, s)
	}
	open[0].Close()
	s, err := m.Open(claims, addr, newTransport(), protocol.JSON)
	if err != nil {
		t.Fatalf("after one closed: %v", err)
	}
	s.Close()
	for _, s := range open[1:] {
		s.Close()
	}
}
