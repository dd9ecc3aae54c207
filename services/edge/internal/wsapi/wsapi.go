// Package wsapi serves GET /ws: the WebSocket transport of the edge.
package wsapi

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/eventbus-suite/eventbus/pkg/server"
	"github.com/eventbus-suite/eventbus/pkg/token"
	"github.com/eventbus-suite/eventbus/services/edge/internal/access"
	"github.com/eventbus-suite/eventbus/services/edge/internal/hub"
	"github.com/eventbus-suite/eventbus/services/edge/internal/protocol"
	"github.com/eventbus-suite/eventbus/services/edge/internal/session"
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
	// Sessions keeps every rule of a connection: tokens, grants, bounds.
	Sessions *session.Sessions
	Access   *access.Policy
	Logger   *slog.Logger

	AllowedOrigins  []string
	PingInterval    time.Duration
	PongTimeout     time.Duration
	AuthTimeout     time.Duration
	MaxMessageBytes int64
	// Pacer spaces the writes of connections with events flowing, shared
	// by every transport of the edge.
	Pacer *hub.Pacer
}

// Handler serves WebSocket connections.
type Handler struct {
	Options
	messagesIn  prometheus.Counter
	messagesOut prometheus.Counter
}

// New returns the handler, registering its metrics on reg.
func New(opts Options, reg prometheus.Registerer) *Handler {
	h := &Handler{
		Options: opts,
		messagesIn: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "eventbus_edge_messages_in_total", Help: "Frames received from clients."}),
		messagesOut: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "eventbus_edge_messages_out_total", Help: "WebSocket messages written to clients; several event frames may share one."}),
	}
	reg.MustRegister(h.messagesIn, h.messagesOut)
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
		var err *protocol.Error
		if claims, err = h.Sessions.Verify(tok); err != nil {
			if err.Code == protocol.CodeUnavailable {
				w.Header().Set("Retry-After", "1")
			}
			server.WriteError(w, protocol.Status(err.Code), err.Code, err.Message)
			return
		}
	}
	conn, err := websocket.Accept(server.SmallBuffers{ResponseWriter: w, ReadSize: readBuffer, WriteSize: writeBuffer}, r, &websocket.AcceptOptions{OriginPatterns: h.AllowedOrigins})
	if err != nil {
		h.Logger.Debug("websocket upgrade refused", "error", err, "origin", r.Header.Get("Origin"))
		return // Accept has answered: 403 for a foreign origin, 400 for a bad handshake
	}
	// net/http keeps the request and its own 8 KB of buffers while this
	// handler runs: the connection gets a goroutine of its own instead.
	go h.serve(conn, claims, h.Access.ClientAddr(r))
}

func (h *Handler) serve(ws *websocket.Conn, claims *token.Claims, addr netip.Addr) {
	defer ws.CloseNow()
	ws.SetReadLimit(h.MaxMessageBytes)
	// ctx ends writing, pings and requests to the hub: cancelled when the
	// client is kicked or when the reader is done.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := &conn{h: h, ws: ws, ctx: ctx, cancel: cancel}
	s, err := h.Sessions.Open(claims, addr, c, protocol.JSON)
	switch {
	case err != nil && err.Code == protocol.CodeTooManyConnections:
		d := hub.DisconnectTooManyConnections
		ws.Close(websocket.StatusCode(d.Code), protocol.CloseReason(d.Reason+": "+err.Message))
		return
	case err != nil:
		ws.Close(websocket.StatusGoingAway, protocol.CloseReason(err.Message))
		return
	}
	c.s, c.client = s, s.Client()
	c.run()
	s.Close() // after it no writer starts
	cancel()
	c.writers.Wait()
}

// conn is one connection, the transport of its session. Only its reading
// goroutine lives as long as the connection: a writer runs while events
// wait, a ping while one is in flight, so an idle connection costs one
// goroutine.
type conn struct {
	h       *Handler
	ws      *websocket.Conn
	ctx     context.Context // ends writing, pings and requests to the hub
	cancel  context.CancelFunc
	s       *session.Session
	client  *hub.Client // the session's
	pinger  atomic.Pointer[time.Timer]
	writers sync.WaitGroup
}

// Name names the transport to presence.
func (c *conn) Name() string { return "ws" }

// Expiring asks the client for a fresh token before its token expires.
func (c *conn) Expiring(in time.Duration) { c.client.Send(protocol.Expiring(in)) }

// run reads the client's requests until the connection ends, with the
// timers that ping the client and enforce authentication.
func (c *conn) run() {
	if !c.s.Authenticated() {
		defer c.s.AuthTimeout(c.h.AuthTimeout)()
	}
	c.schedulePing()
	defer func() { c.pinger.Load().Stop() }()
	c.read()
}

// Kicked closes the connection with d, in the background: the hub calls
// it and must not wait. The close handshake ends when the reader sees the
// peer's reply, or when serve's CloseNow cuts it short. A broken
// connection is cut without a close frame, which could not be sent.
func (c *conn) Kicked(d hub.Disconnect) {
	c.cancel()
	if d == hub.DisconnectBroken {
		go c.ws.CloseNow()
		return
	}
	go func() { _ = c.ws.Close(websocket.StatusCode(d.Code), protocol.CloseReason(d.Reason)) }()
}

// batch is a writer's scratch space, pooled: an idle connection keeps none.
type batch struct {
	frames []hub.Frame
	msg    []byte
}

var batches = sync.Pool{New: func() any { return new(batch) }}

// Ready starts a writer for the frames the hub queued.
func (c *conn) Ready() {
	c.writers.Go(c.flush)
}

// flush writes queued events until none wait, packing the frames that
// wait together into one WebSocket message separated by newlines: under
// load one write carries many events, idle it carries one.
func (c *conn) flush() {
	b := batches.Get().(*batch)
	defer func() {
		clear(b.frames)
		batches.Put(b)
	}()
	c.h.Pacer.Start()
	defer c.h.Pacer.Stop()
	for {
		b.frames = c.client.Take(b.frames[:0])
		if len(b.frames) == 0 {
			return
		}
		frames := b.frames
		for _, f := range frames {
			c.s.Noted(f.Event)
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
			if c.ctx.Err() != nil {
				return
			}
			if err := c.ws.Write(context.Background(), websocket.MessageText, b.msg); err != nil {
				// Kicked, or the connection broke: either way it is done,
				// and the hub must stop queueing for it.
				c.client.Kick(hub.DisconnectBroken)
				return
			}
			c.h.messagesOut.Inc()
		}
		clear(b.frames)
		c.h.Pacer.Pause(c.client)
	}
}

func (c *conn) schedulePing() {
	if c.ctx.Err() == nil {
		c.pinger.Store(time.AfterFunc(c.h.PingInterval, c.ping))
	}
}

// ping kicks the client unless it answers a ping within PongTimeout, then
// schedules the next one.
func (c *conn) ping() {
	ctx, cancel := context.WithTimeout(c.ctx, c.h.PongTimeout)
	defer cancel()
	if err := c.ws.Ping(ctx); err != nil {
		if c.ctx.Err() == nil {
			c.client.Kick(hub.Disconnect{Code: hub.CloseHeartbeatTimeout, Reason: fmt.Sprintf("no pong within %v", c.h.PongTimeout)})
		}
		return
	}
	c.schedulePing()
}

// read serves the client's requests until the connection is closed: by
// the peer, by a kick, or by a too large frame (1009). Reads need no
// context of their own: closing the connection ends them.
func (c *conn) read() {
	for {
		typ, b, err := c.ws.Read(context.Background())
		if err != nil {
			return
		}
		c.h.messagesIn.Inc()
		if c.client.Closing() {
			continue // nothing more is served while the connection closes
		}
		if err := c.s.Allow(); err != nil {
			c.reply(protocol.Fail(idOf(b), protocol.Errorf(err.Code, "%s; this one was ignored", err.Message)))
			continue
		}
		if typ != websocket.MessageText {
			c.reply(protocol.Fail("", protocol.Errorf(protocol.CodeBadRequest, "binary frames are not supported; send JSON text")))
			continue
		}
		if !utf8.Valid(b) {
			// RFC 6455 §8.1: text must be UTF-8, and an endpoint that gets
			// anything else fails the connection with 1007.
			c.client.Kick(hub.Disconnect{Code: int(websocket.StatusInvalidFramePayloadData), Reason: "text frame is not valid UTF-8"})
			continue // reading on lets the close handshake end
		}
		req, perr := protocol.ParseRequest(b)
		if perr != nil {
			c.reply(protocol.Fail(req.ID, perr))
			continue
		}
		c.reply(c.handle(req))
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
func (c *conn) reply(frame []byte) {
	if frame != nil { // nil: answered already
		c.client.Send(frame)
	}
}

// handle serves a request, and returns its reply (nil: the hub queues it).
func (c *conn) handle(req protocol.Request) []byte {
	switch req.Action {
	case protocol.ActionPing:
		return protocol.Pong(req.ID)
	case protocol.ActionAuth:
		d, err := c.s.Reauthenticate(req.Token)
		if err == nil {
			return protocol.OK(req.ID)
		}
		if d == nil {
			return protocol.Fail(req.ID, err)
		}
		c.reply(protocol.Fail(req.ID, err))
		c.client.CloseAfter(*d)
		return nil
	}
	if !c.s.Authenticated() {
		return protocol.Fail(req.ID, protocol.Errorf(protocol.CodeUnauthorized, `authenticate first: send {"action":"auth","token":…}`))
	}
	var err *protocol.Error
	switch req.Action {
	case protocol.ActionAck:
		err = c.s.Ack(c.ctx, req.ID, time.Now())
	case protocol.ActionUnsubscribe:
		if err = c.s.Unsubscribe(req.Channel, protocol.OK(req.ID)); err == nil {
			return nil
		}
	default:
		reply := func(r hub.Recovery) []byte { return protocol.Subscribed(req.ID, r) }
		if err = c.s.Subscribe(c.ctx, req.Channel, req.Cursor(), req.Presence, reply); err == nil {
			return nil
		}
	}
	if err != nil {
		return protocol.Fail(req.ID, err)
	}
	return protocol.OK(req.ID)
}
