// Package wsapi serves GET /ws: the WebSocket transport of the edge.
package wsapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/eventbus-suite/eventbus/pkg/channel"
	"github.com/eventbus-suite/eventbus/pkg/server"
	"github.com/eventbus-suite/eventbus/pkg/token"
	"github.com/eventbus-suite/eventbus/services/edge/internal/access"
	"github.com/eventbus-suite/eventbus/services/edge/internal/hub"
	"github.com/eventbus-suite/eventbus/services/edge/internal/protocol"
	"github.com/eventbus-suite/eventbus/services/edge/internal/receipt"
)

const (
	// readBuffer and writeBuffer size a connection's buffers. A message
	// that fits the write buffer costs one write(2); a longer one, two,
	// whatever its length: the frames waiting are packed into messages of
	// up to maxPacked bytes (half of coder/websocket's default read limit).
	readBuffer  = 1 << 10
	writeBuffer = 4 << 10
	maxPacked   = 16 << 10
)

// Options configure the handler.
type Options struct {
	Hub    *hub.Hub
	Access *access.Policy
	Logger *slog.Logger

	AllowedOrigins []string
	PingInterval   time.Duration
	PongTimeout    time.Duration
	AuthTimeout    time.Duration
	// RefreshBefore is how long before its token expires a connection is
	// told, {"expiring":{"in_s":…}}, to send a fresh one.
	RefreshBefore    time.Duration
	MaxMessageBytes  int64
	MaxSubscriptions int
	// MaxUserPatterns and MaxUserConnections are the hub's bounds, named
	// in replies.
	MaxUserPatterns    int
	MaxUserConnections int
	RateLimit          float64
	RateBurst          int
	// Pacer spaces the writes of connections with events flowing, shared
	// by every transport of the edge.
	Pacer *hub.Pacer
	// Receipts publishes the acknowledgements of notifications.
	Receipts *receipt.Receipts
}

// Handler serves WebSocket connections.
type Handler struct {
	Options
	messagesIn   prometheus.Counter
	messagesOut  prometheus.Counter
	authFailures *prometheus.CounterVec
	revoked      prometheus.Counter
}

// New returns the handler, registering its metrics on reg.
func New(opts Options, reg prometheus.Registerer) *Handler {
	h := &Handler{
		Options: opts,
		messagesIn: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "eventbus_edge_messages_in_total", Help: "Frames received from clients."}),
		messagesOut: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "eventbus_edge_messages_out_total", Help: "WebSocket messages written to clients; several event frames may share one."}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "eventbus_edge_auth_failures_total", Help: "Refused tokens and unauthenticated connections, by reason."},
			[]string{"reason"}),
		revoked: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "eventbus_edge_revoked_subscriptions_total", Help: "Subscriptions dropped because a new token no longer granted them."}),
	}
	reg.MustRegister(h.messagesIn, h.messagesOut, h.authFailures, h.revoked)
	return h
}

// ServeHTTP checks the token given as ?token= and the Origin before it
// upgrades, so a bad token gets 401 and a foreign origin 403 over plain
// HTTP.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// What Accept would refuse in plain text is refused here in JSON.
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		w.Header().Set("Upgrade", "websocket")
		server.WriteError(w, http.StatusUpgradeRequired, protocol.CodeBadRequest,
			"GET /ws is a WebSocket endpoint: connect with a WebSocket client (or use GET /sse)")
		return
	}
	if origin := r.Header.Get("Origin"); origin != "" && !access.OriginAllowed(origin, r.Host, h.AllowedOrigins) {
		server.WriteError(w, http.StatusForbidden, protocol.CodeForbidden,
			fmt.Sprintf("origin %q is neither this edge's host nor one of EDGE_ALLOWED_ORIGINS", origin))
		return
	}
	var claims *token.Claims
	if tok := r.URL.Query().Get("token"); tok != "" {
		var err error
		if claims, err = h.Access.Verify(tok); errors.Is(err, access.ErrUnavailable) {
			w.Header().Set("Retry-After", "1")
			server.WriteError(w, http.StatusServiceUnavailable, protocol.CodeUnavailable, err.Error())
			return
		} else if err != nil {
			h.authFailures.WithLabelValues("invalid_token").Inc()
			server.WriteError(w, http.StatusUnauthorized, protocol.CodeUnauthorized, err.Error())
			return
		}
	}
	conn, err := websocket.Accept(smallBuffers{w}, r, &websocket.AcceptOptions{OriginPatterns: h.AllowedOrigins})
	if err != nil {
		h.Logger.Debug("websocket upgrade refused", "error", err, "origin", r.Header.Get("Origin"))
		return // Accept has answered: 403 for a foreign origin, 400 for a bad handshake
	}
	// net/http keeps the request and its own 8 KB of buffers while this
	// handler runs: the connection gets a goroutine of its own instead.
	go h.serve(conn, claims, h.Access.ClientAddr(r))
}

func (h *Handler) serve(conn *websocket.Conn, claims *token.Claims, addr netip.Addr) {
	defer conn.CloseNow()
	conn.SetReadLimit(h.MaxMessageBytes)
	// ctx ends writing, pings and requests to the hub: cancelled when the
	// client is kicked or when the reader is done.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := &session{h: h, conn: conn, ctx: ctx, cancel: cancel, addr: addr, limiter: rate.NewLimiter(rate.Limit(h.RateLimit), h.RateBurst)}
	c, err := h.Hub.Join(access.Identity(claims, addr), "ws", protocol.JSON, s.ready, s.kicked)
	switch {
	case errors.Is(err, hub.ErrTooManyConnections):
		d := hub.DisconnectTooManyConnections
		conn.Close(websocket.StatusCode(d.Code), fmt.Sprintf("%s: at most %d per user (or address)", d.Reason, h.MaxUserConnections))
		return
	case err != nil:
		conn.Close(websocket.StatusGoingAway, err.Error())
		return
	}
	s.client = c
	if claims != nil {
		s.authenticate(claims)
	}
	s.run()
	h.Hub.Leave(c) // after it no writer starts
	cancel()
	s.writers.Wait()
}

// smallBuffers hands coder/websocket buffers of its own instead of
// net/http's 4 KB pair, which it keeps for the life of the connection: most
// connections are idle and read little, so the read buffer is small.
type smallBuffers struct{ http.ResponseWriter }

func (w smallBuffers) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	// Frames the client sent right behind its handshake may wait in
	// net/http's buffer: they must wait in the new one, where
	// coder/websocket looks for them.
	early, _ := brw.Reader.Peek(brw.Reader.Buffered())
	br := bufio.NewReaderSize(io.MultiReader(bytes.NewReader(bytes.Clone(early)), conn), max(readBuffer, len(early)))
	if _, err := br.Peek(len(early)); err != nil {
		conn.Close()
		return nil, nil, err
	}
	return conn, bufio.NewReadWriter(br, bufio.NewWriterSize(conn, writeBuffer)), nil
}

// session is one connection. Only its reading goroutine lives as long as
// the connection: a writer runs while events wait, a ping while one is in
// flight, so an idle connection costs one goroutine.
type session struct {
	h       *Handler
	conn    *websocket.Conn
	ctx     context.Context // ends writing, pings and requests to the hub
	cancel  context.CancelFunc
	client  *hub.Client
	addr    netip.Addr // the client's, for its bounds while it has no user
	limiter *rate.Limiter
	claims  atomic.Pointer[token.Claims] // nil until authenticated
	expiry  *time.Timer                  // touched by the reading goroutine only
	notice  *time.Timer                  // the expiring notice; likewise
	pinger  atomic.Pointer[time.Timer]
	writers sync.WaitGroup
	notes   receipt.Window // the notifications written and not acknowledged
}

// authenticate makes c the connection's claims and drops, telling the
// client, every subscription they no longer grant.
func (s *session) authenticate(c *token.Claims) {
	s.claims.Store(c)
	s.client.SetToken(hub.TokenOf(c))
	s.stopTokenTimers()
	exp := c.ExpiresAt.Time
	s.expiry = time.AfterFunc(time.Until(exp), func() {
		s.client.Kick(hub.Disconnect{Code: hub.CloseUnauthorized, Reason: "token expired"})
	})
	s.notice = time.AfterFunc(time.Until(exp)-s.h.RefreshBefore, func() {
		s.client.Send(protocol.Expiring(time.Until(exp)))
	})
	if n := s.h.Hub.Revoke(s.client, s.allowed, forbidden); n > 0 {
		s.h.revoked.Add(float64(n))
	}
}

// stopTokenTimers stops the timers of the connection's current token.
func (s *session) stopTokenTimers() {
	for _, t := range []*time.Timer{s.expiry, s.notice} {
		if t != nil {
			t.Stop()
		}
	}
}

func forbidden(p string) []byte { return protocol.Unsubscribed(p, "forbidden") }

func (s *session) authenticated() bool { return s.claims.Load() != nil || s.h.Access.AllowAnonymous }

// run reads the client's requests until the connection ends, with the
// timers that ping the client and enforce authentication.
func (s *session) run() {
	if !s.authenticated() {
		t := time.AfterFunc(s.h.AuthTimeout, func() {
			if s.claims.Load() == nil {
				s.h.authFailures.WithLabelValues("timeout").Inc()
				s.client.Kick(hub.Disconnect{Code: hub.CloseUnauthorized,
					Reason: fmt.Sprintf(`authentication required: send {"action":"auth","token":…} within %v`, s.h.AuthTimeout)})
			}
		})
		defer t.Stop()
	}
	s.schedulePing()
	defer func() { s.pinger.Load().Stop() }()
	defer s.stopTokenTimers()
	s.read()
}

// kicked closes the connection with d, in the background: the hub calls
// it and must not wait. The close handshake ends when the reader sees the
// peer's reply, or when serve's CloseNow cuts it short. A broken
// connection is cut without a close frame, which could not be sent.
func (s *session) kicked(d hub.Disconnect) {
	s.cancel()
	if d == hub.DisconnectBroken {
		go s.conn.CloseNow()
		return
	}
	go func() { _ = s.conn.Close(websocket.StatusCode(d.Code), protocol.CloseReason(d.Reason)) }()
}

// batch is a writer's scratch space, pooled: an idle connection keeps none.
type batch struct {
	frames []hub.Frame
	msg    []byte
}

var batches = sync.Pool{New: func() any { return new(batch) }}

// ready starts a writer for the frames the hub queued.
func (s *session) ready() {
	s.writers.Go(s.flush)
}

// flush writes queued events until none wait, packing the frames that
// wait together into one WebSocket message separated by newlines: under
// load one write carries many events, idle it carries one.
func (s *session) flush() {
	b := batches.Get().(*batch)
	defer func() {
		clear(b.frames)
		batches.Put(b)
	}()
	s.h.Pacer.Start()
	defer s.h.Pacer.Stop()
	for {
		b.frames = s.client.Take(b.frames[:0])
		if len(b.frames) == 0 {
			return
		}
		frames := b.frames
		for _, f := range frames {
			s.notes.AddEvent(f.Event)
		}
		for len(frames) > 0 {
			// Pack frames while the message stays within maxPacked; a
			// frame too big for it goes alone.
			b.msg = append(b.msg[:0], frames[0].Data...)
			n := 1
			for ; n < len(frames) && len(b.msg)+1+len(frames[n].Data) <= maxPacked; n++ {
				b.msg = append(append(b.msg, '\n'), frames[n].Data...)
			}
			frames = frames[n:]
			// Writes take no context, which would cost an allocation and
			// a timer per write. A kick stops the loop before the next
			// write; a write stuck on a client that stopped reading ends
			// when the kick's close handshake gives up (5 s) and closes
			// the socket.
			if s.ctx.Err() != nil {
				return
			}
			if err := s.conn.Write(context.Background(), websocket.MessageText, b.msg); err != nil {
				// Kicked, or the connection broke: either way it is done,
				// and the hub must stop queueing for it.
				s.client.Kick(hub.DisconnectBroken)
				return
			}
			s.h.messagesOut.Inc()
		}
		clear(b.frames)
		s.h.Pacer.Pause(s.client)
	}
}

func (s *session) schedulePing() {
	if s.ctx.Err() == nil {
		s.pinger.Store(time.AfterFunc(s.h.PingInterval, s.ping))
	}
}

// ping kicks the client unless it answers a ping within PongTimeout, then
// schedules the next one.
func (s *session) ping() {
	ctx, cancel := context.WithTimeout(s.ctx, s.h.PongTimeout)
	defer cancel()
	if err := s.conn.Ping(ctx); err != nil {
		if s.ctx.Err() == nil {
			s.client.Kick(hub.Disconnect{Code: hub.CloseHeartbeatTimeout, Reason: fmt.Sprintf("no pong within %v", s.h.PongTimeout)})
		}
		return
	}
	s.schedulePing()
}

// read serves the client's requests until the connection is closed: by
// the peer, by a kick, or by a too large frame (1009). Reads need no
// context of their own: closing the connection ends them.
func (s *session) read() {
	for {
		typ, b, err := s.conn.Read(context.Background())
		if err != nil {
			return
		}
		s.h.messagesIn.Inc()
		if s.client.Closing() {
			continue // nothing more is served while the connection closes
		}
		if !s.limiter.Allow() {
			s.reply(protocol.Fail(idOf(b), protocol.Errorf(protocol.CodeRateLimited,
				"more than %g frames per second (burst %d); this one was ignored", s.h.RateLimit, s.h.RateBurst)))
			continue
		}
		if typ != websocket.MessageText {
			s.reply(protocol.Fail("", protocol.Errorf(protocol.CodeBadRequest, "binary frames are not supported; send JSON text")))
			continue
		}
		if !utf8.Valid(b) {
			// RFC 6455 §8.1: text must be UTF-8, and an endpoint that gets
			// anything else fails the connection with 1007.
			s.client.Kick(hub.Disconnect{Code: int(websocket.StatusInvalidFramePayloadData), Reason: "text frame is not valid UTF-8"})
			continue // reading on lets the close handshake end
		}
		req, perr := protocol.ParseRequest(b)
		if perr != nil {
			s.reply(protocol.Fail(req.ID, perr))
			continue
		}
		s.reply(s.handle(req))
	}
}

// idOf digs the id out of a frame that will not be parsed, so the error can
// still name the request.
func idOf(b []byte) string {
	var v struct{ ID string }
	_ = json.Unmarshal(b, &v)
	return v.ID
}

// reply queues the answer to a request behind what the client is already
// owed, so replies and events arrive in the order they were decided.
func (s *session) reply(frame []byte) {
	if frame != nil { // nil: answered already
		s.client.Send(frame)
	}
}

func (s *session) handle(req protocol.Request) []byte {
	switch req.Action {
	case protocol.ActionPing:
		return protocol.Pong(req.ID)
	case protocol.ActionAuth:
		return s.reauthenticate(req)
	}
	if !s.authenticated() {
		return protocol.Fail(req.ID, protocol.Errorf(protocol.CodeUnauthorized, `authenticate first: send {"action":"auth","token":…}`))
	}
	if req.Action == protocol.ActionAck {
		return s.ack(req)
	}
	if err := channel.ValidatePattern(req.Channel); err != nil {
		return protocol.Fail(req.ID, protocol.Errorf(protocol.CodeInvalidChannel, "%v", err))
	}
	if req.Action == protocol.ActionUnsubscribe {
		s.h.Hub.Unsubscribe(s.client, req.Channel, protocol.OK(req.ID))
		return nil
	}
	if !s.allowed(req.Channel) {
		return protocol.Fail(req.ID, protocol.Errorf(protocol.CodeForbidden, "%s is not among the channels this connection may subscribe to", req.Channel))
	}
	if s.h.Hub.Count(s.client) >= s.h.MaxSubscriptions {
		return protocol.Fail(req.ID, protocol.Errorf(protocol.CodeTooManySubscriptions, "at most %d subscriptions per connection", s.h.MaxSubscriptions))
	}
	if req.Presence && !s.h.Hub.KeepsPresence(req.Channel) {
		return protocol.Fail(req.ID, protocol.Errorf(protocol.CodePresenceOff,
			"%s keeps no presence: only channels (no wildcard) of the namespaces in EDGE_PRESENCE_NAMESPACES do", req.Channel))
	}
	// A subscription made anew says again whether it wants the news.
	s.h.Hub.WantPresence(s.client, req.Channel, req.Presence)
	ctx, cancel := context.WithTimeout(s.ctx, hub.SubscribeTimeout)
	defer cancel()
	reply := func(r hub.Recovery) []byte { return protocol.Subscribed(req.ID, r) }
	err := s.h.Hub.Subscribe(ctx, s.client, req.Channel, req.Cursor(), reply)
	if err != nil && req.Presence {
		s.h.Hub.WantPresence(s.client, req.Channel, false)
	}
	switch {
	case errors.Is(err, hub.ErrTooManyPatterns):
		return protocol.Fail(req.ID, protocol.Errorf(protocol.CodeTooManyPatterns,
			"at most %d distinct patterns per user across its connections", s.h.MaxUserPatterns))
	case err != nil:
		return protocol.Fail(req.ID, protocol.Errorf(protocol.CodeUnavailable, "%v", err))
	}
	return nil
}

// ack serves an ack: the receipt of a notification written to this
// connection.
func (s *session) ack(req protocol.Request) []byte {
	err := s.h.Receipts.Ack(s.ctx, &s.notes, req.ID, s.client.ID(), "ws", time.Now())
	switch {
	case errors.Is(err, receipt.ErrUnknown):
		return protocol.Fail(req.ID, protocol.Errorf(protocol.CodeUnknownNotification, "%s: %v", req.ID, err))
	case err != nil:
		return protocol.Fail(req.ID, protocol.Errorf(protocol.CodeUnavailable, "%v; acknowledge it again", err))
	}
	return protocol.OK(req.ID)
}

// reauthenticate serves an auth request. A good token replaces the
// connection's claims, and the subscriptions they no longer grant are
// dropped; a token of another user closes the connection, which never
// changes users. A bad token closes a connection not yet authenticated and
// leaves an authenticated one as it was.
func (s *session) reauthenticate(req protocol.Request) []byte {
	c, err := s.h.Access.Verify(req.Token)
	if err == nil {
		if old := s.claims.Load(); old != nil && old.Subject != c.Subject {
			err = fmt.Errorf("token is for user %q, this connection is user %q: reconnect to change users", c.Subject, old.Subject)
			s.h.authFailures.WithLabelValues("other_user").Inc()
			s.reply(protocol.Fail(req.ID, protocol.Errorf(protocol.CodeUnauthorized, "%v", err)))
			s.client.CloseAfter(hub.Disconnect{Code: hub.CloseUnauthorized, Reason: "token of another user"})
			return nil
		}
		switch err := s.h.Hub.Identify(s.client, access.Identity(c, s.addr)); {
		case errors.Is(err, hub.ErrTooManyPatterns):
			// The connection stays as it was, without the user's grants.
			return protocol.Fail(req.ID, protocol.Errorf(protocol.CodeTooManyPatterns,
				"%v: at most %d distinct patterns per user; unsubscribe some first", err, s.h.MaxUserPatterns))
		case err != nil:
			s.reply(protocol.Fail(req.ID, protocol.Errorf(protocol.CodeTooManyConnections,
				"%v: at most %d connections per user", err, s.h.MaxUserConnections)))
			s.client.CloseAfter(hub.DisconnectTooManyConnections)
			return nil
		}
		s.authenticate(c)
		return protocol.OK(req.ID)
	}
	s.h.authFailures.WithLabelValues("invalid_token").Inc()
	fail := protocol.Fail(req.ID, protocol.Errorf(protocol.CodeUnauthorized, "%v", err))
	if s.authenticated() {
		return fail
	}
	s.reply(fail)
	s.client.CloseAfter(hub.Disconnect{Code: hub.CloseUnauthorized, Reason: err.Error()})
	return nil
}

// allowed reports whether the connection may subscribe to p.
func (s *session) allowed(p string) bool { return s.h.Access.Allowed(s.claims.Load(), p) }
