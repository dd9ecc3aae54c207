// Package wsapi serves GET /ws: the WebSocket transport of the edge.
package wsapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"

	"github.com/eventbus-suite/eventbus/pkg/channel"
	"github.com/eventbus-suite/eventbus/pkg/server"
	"github.com/eventbus-suite/eventbus/pkg/token"
	"github.com/eventbus-suite/eventbus/services/edge/internal/hub"
	"github.com/eventbus-suite/eventbus/services/edge/internal/protocol"
)

const (
	// writeTimeout bounds the write of a reply; a client that takes longer
	// is gone. Event writes have no deadline of their own: a client that
	// stops reading overflows its queue or misses a pong, and is kicked,
	// which aborts the write.
	writeTimeout = 10 * time.Second
	// maxBatch caps the frames packed into one WebSocket message.
	maxBatch = 64
)

// Options configure the handler.
type Options struct {
	Hub      *hub.Hub
	Verifier *token.Verifier // nil when the edge accepts no tokens
	Logger   *slog.Logger

	AllowAnonymous   bool
	PublicChannels   []string
	AllowedOrigins   []string
	PingInterval     time.Duration
	PongTimeout      time.Duration
	AuthTimeout      time.Duration
	MaxMessageBytes  int64
	MaxSubscriptions int
	RateLimit        float64
	RateBurst        int
}

// Handler serves WebSocket connections.
type Handler struct {
	Options
	messagesIn   prometheus.Counter
	messagesOut  prometheus.Counter
	authFailures *prometheus.CounterVec
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
	}
	reg.MustRegister(h.messagesIn, h.messagesOut, h.authFailures)
	return h
}

func (h *Handler) verify(tok string) (*token.Claims, error) {
	if h.Verifier == nil {
		return nil, errors.New("this edge accepts no tokens (EDGE_JWT_SECRET is not set)")
	}
	return h.Verifier.Verify(tok)
}

// ServeHTTP checks the token given as ?token= and the Origin before it
// upgrades, so a bad token gets 401 and a foreign origin 403 over plain
// HTTP.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var claims *token.Claims
	if tok := r.URL.Query().Get("token"); tok != "" {
		var err error
		if claims, err = h.verify(tok); err != nil {
			h.authFailures.WithLabelValues("invalid_token").Inc()
			server.WriteError(w, http.StatusUnauthorized, protocol.CodeUnauthorized, err.Error())
			return
		}
	}
	conn, err := websocket.Accept(w, r, &websocket.AcceptOptions{OriginPatterns: h.AllowedOrigins})
	if err != nil {
		h.Logger.Debug("websocket upgrade refused", "error", err, "origin", r.Header.Get("Origin"))
		return // Accept has answered: 403 for a foreign origin, 400 for a bad handshake
	}
	defer conn.CloseNow()
	conn.SetReadLimit(h.MaxMessageBytes)
	// Kicking the client cancels writes in progress.
	ctx, kick := context.WithCancel(r.Context())
	defer kick()
	c, err := h.Hub.Join(kick)
	if err != nil {
		conn.Close(websocket.StatusGoingAway, err.Error())
		return
	}
	defer h.Hub.Leave(c)
	s := &session{h: h, conn: conn, client: c, limiter: rate.NewLimiter(rate.Limit(h.RateLimit), h.RateBurst)}
	s.authenticate(claims)
	s.run(r.Context(), ctx)
}

// session is one connection.
type session struct {
	h       *Handler
	conn    *websocket.Conn
	client  *hub.Client
	limiter *rate.Limiter
	claims  atomic.Pointer[token.Claims] // nil until authenticated
	expiry  *time.Timer                  // touched by the reading goroutine only
}

func (s *session) authenticate(c *token.Claims) {
	if c == nil {
		return
	}
	s.claims.Store(c)
	if s.expiry != nil {
		s.expiry.Stop()
	}
	s.expiry = time.AfterFunc(time.Until(c.ExpiresAt.Time), func() {
		s.client.Kick(protocol.CloseUnauthorized, "token expired: reconnect with a fresh one")
	})
}

func (s *session) authenticated() bool { return s.claims.Load() != nil || s.h.AllowAnonymous }

// run serves the connection with two goroutines: this one reads, the
// other writes and pings. kctx ends when the hub kicks the client.
func (s *session) run(ctx, kctx context.Context) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, ctx := errgroup.WithContext(ctx)
	if !s.authenticated() {
		t := time.AfterFunc(s.h.AuthTimeout, func() {
			if s.claims.Load() == nil {
				s.h.authFailures.WithLabelValues("timeout").Inc()
				s.client.Kick(protocol.CloseUnauthorized, fmt.Sprintf(`authentication required: send {"action":"auth","token":…} within %v`, s.h.AuthTimeout))
			}
		})
		defer t.Stop()
	}
	defer func() {
		if s.expiry != nil {
			s.expiry.Stop()
		}
	}()
	g.Go(func() error { return s.write(ctx, kctx, g) })
	_ = s.read(ctx)
	cancel() // the peer is gone: stop the writer too
	_ = g.Wait()
}

// errClosed ends a session's goroutines once the connection is closed.
var errClosed = errors.New("connection closed")

// write sends queued events, packing the frames that wait together into
// one WebSocket message separated by newlines: under load one write
// carries many events, idle it carries one. It also pings the client.
func (s *session) write(ctx, kctx context.Context, g *errgroup.Group) error {
	ping := time.NewTicker(s.h.PingInterval)
	defer ping.Stop()
	pinging := make(chan struct{}, 1) // holds a token while a ping is in flight
	var batch []byte
	for {
		select {
		case frame := <-s.client.Send():
			batch = append(batch[:0], frame...)
		fill:
			for range maxBatch - 1 {
				select {
				case f := <-s.client.Send():
					batch = append(append(batch, '\n'), f...)
				default:
					break fill
				}
			}
			if err := s.conn.Write(kctx, websocket.MessageText, batch); err != nil {
				return err
			}
			s.h.messagesOut.Inc()
		case <-ping.C:
			select {
			case pinging <- struct{}{}:
				g.Go(func() error {
					defer func() { <-pinging }()
					return s.ping(ctx)
				})
			default: // the last ping is still waiting for its pong
			}
		case <-s.client.Quit():
			code, reason := s.client.CloseReason()
			_ = s.conn.Close(code, reason)
			return errClosed
		case <-ctx.Done():
			return nil
		}
	}
}

// ping kicks the client unless it answers a ping within PongTimeout.
func (s *session) ping(ctx context.Context) error {
	pctx, cancel := context.WithTimeout(ctx, s.h.PongTimeout)
	defer cancel()
	if err := s.conn.Ping(pctx); err != nil && ctx.Err() == nil {
		s.client.Kick(protocol.CloseHeartbeatTimeout, fmt.Sprintf("no pong within %v", s.h.PongTimeout))
	}
	return nil
}

func (s *session) writeFrame(ctx context.Context, frame []byte) error {
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	return s.conn.Write(ctx, websocket.MessageText, frame)
}

func (s *session) read(ctx context.Context) error {
	for {
		typ, b, err := s.conn.Read(ctx)
		if err != nil {
			return errClosed // closed by the peer, by a kick, or by a too large frame (1009)
		}
		s.h.messagesIn.Inc()
		if !s.limiter.Allow() {
			s.reply(ctx, protocol.Fail(idOf(b), protocol.Errorf(protocol.CodeRateLimited,
				"more than %g frames per second (burst %d); this one was ignored", s.h.RateLimit, s.h.RateBurst)))
			continue
		}
		if typ != websocket.MessageText {
			s.reply(ctx, protocol.Fail("", protocol.Errorf(protocol.CodeBadRequest, "binary frames are not supported; send JSON text")))
			continue
		}
		req, perr := protocol.ParseRequest(b)
		if perr != nil {
			s.reply(ctx, protocol.Fail(req.ID, perr))
			continue
		}
		s.reply(ctx, s.handle(ctx, req))
	}
}

// idOf digs the id out of a frame that will not be parsed, so the error can
// still name the request.
func idOf(b []byte) string {
	var v struct{ ID string }
	_ = json.Unmarshal(b, &v)
	return v.ID
}

func (s *session) reply(ctx context.Context, frame []byte) {
	if err := s.writeFrame(ctx, frame); err == nil {
		s.h.messagesOut.Inc()
	}
}

func (s *session) handle(ctx context.Context, req protocol.Request) []byte {
	switch req.Action {
	case protocol.ActionPing:
		return protocol.Pong(req.ID)
	case protocol.ActionAuth:
		c, err := s.h.verify(req.Token)
		if err != nil {
			s.h.authFailures.WithLabelValues("invalid_token").Inc()
			if !s.authenticated() {
				s.client.Kick(protocol.CloseUnauthorized, err.Error())
			}
			return protocol.Fail(req.ID, protocol.Errorf(protocol.CodeUnauthorized, "%v", err))
		}
		s.authenticate(c)
		return protocol.OK(req.ID)
	}
	if !s.authenticated() {
		return protocol.Fail(req.ID, protocol.Errorf(protocol.CodeUnauthorized, `authenticate first: send {"action":"auth","token":…}`))
	}
	if err := channel.ValidatePattern(req.Channel); err != nil {
		return protocol.Fail(req.ID, protocol.Errorf(protocol.CodeInvalidChannel, "%v", err))
	}
	if req.Action == protocol.ActionUnsubscribe {
		if err := s.h.Hub.Unsubscribe(ctx, s.client, req.Channel); err != nil {
			return protocol.Fail(req.ID, protocol.Errorf(protocol.CodeUnavailable, "%v", err))
		}
		return protocol.OK(req.ID)
	}
	if !s.allowed(req.Channel) {
		return protocol.Fail(req.ID, protocol.Errorf(protocol.CodeForbidden, "%s is not among the channels this connection may subscribe to", req.Channel))
	}
	if s.h.Hub.Count(s.client) >= s.h.MaxSubscriptions {
		return protocol.Fail(req.ID, protocol.Errorf(protocol.CodeTooManySubscriptions, "at most %d subscriptions per connection", s.h.MaxSubscriptions))
	}
	if err := s.h.Hub.Subscribe(ctx, s.client, req.Channel); err != nil {
		return protocol.Fail(req.ID, protocol.Errorf(protocol.CodeUnavailable, "%v", err))
	}
	return protocol.OK(req.ID)
}

// allowed reports whether p is covered by one of the patterns this
// connection may use: its token's channels and its own notify:user:<sub>,
// and the public channels when anonymous access is on.
func (s *session) allowed(p string) bool {
	var grants []string
	if c := s.claims.Load(); c != nil {
		grants = append(grants, "notify:user:"+c.Subject)
		grants = append(grants, c.Channels...)
	}
	if s.h.AllowAnonymous {
		grants = append(grants, s.h.PublicChannels...)
	}
	for _, a := range grants {
		if channel.Covers(a, p) {
			return true
		}
	}
	return false
}
