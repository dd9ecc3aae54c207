// Package mqttapi serves MQTT 3.1.1 and 5.0 over WebSocket: GET /mqtt, and
// GET /ws when the client offers the mqtt subprotocol. It is the edge's
// third transport on the same hub as the JSON WebSocket and SSE: topics are
// channels ("order/placed" is "order:placed"), the password of CONNECT is
// the token, and PUBLISH from a client becomes an event on the bus.
package mqttapi

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/channel"
	"github.com/eventbus-suite/eventbus/pkg/revocation"
	"github.com/eventbus-suite/eventbus/pkg/server"
	"github.com/eventbus-suite/eventbus/pkg/token"
	"github.com/eventbus-suite/eventbus/services/edge/internal/access"
	"github.com/eventbus-suite/eventbus/services/edge/internal/hub"
	"github.com/eventbus-suite/eventbus/services/edge/internal/protocol"
)

// Subprotocol is the WebSocket subprotocol of MQTT (MQTT-6.0.0-3).
const Subprotocol = "mqtt"

const (
	// maxInflight bounds the QoS 1 messages sent and not yet acknowledged
	// per connection, below the client's Receive Maximum when that is
	// larger.
	maxInflight = 64
	// maxPacked is the most bytes of packets one WebSocket message holds.
	maxPacked = 16 << 10
	// publishTimeout bounds the wait for Redis to take a client's PUBLISH.
	publishTimeout = 5 * time.Second
)

// DisconnectTakenOver closes a connection whose client id connected again.
var DisconnectTakenOver = hub.Disconnect{Code: 4005, Reason: "session taken over"}

// Options configure the handler.
type Options struct {
	Hub    *hub.Hub
	Access *access.Policy
	// Bus takes what clients publish.
	Bus    bus.Publisher
	Logger *slog.Logger

	AllowedOrigins []string
	// ConnectTimeout bounds the wait for CONNECT after the upgrade.
	ConnectTimeout   time.Duration
	MaxMessageBytes  int64
	MaxSubscriptions int
	RateLimit        float64
	RateBurst        int
	// RetryInterval is how long a QoS 1 message waits for its PUBACK
	// before it is sent again, with DUP.
	RetryInterval time.Duration
	// QueueBytes bounds the QoS 1 messages held back while the client's
	// window is full, as the hub bounds its queue.
	QueueBytes int
	// Sessions keeps the sessions that outlive their connection (5.0's
	// Session Expiry Interval, 3.1.1's clean session 0); nil keeps none.
	Sessions *Store
	// SessionExpiry is how long a kept session outlives its connection:
	// 3.1.1's, and the most a 5.0 client may ask for.
	SessionExpiry time.Duration
	// Record gives a new subscription its retained messages; nil, none.
	Record Record
	// Pacer spaces the writes of connections with events flowing, shared
	// by every transport of the edge.
	Pacer *hub.Pacer
	// Announce tells every edge of a command, through the control channel:
	// a client id connected here, so its connections elsewhere close. Nil
	// takes over on this edge only.
	Announce func(context.Context, revocation.Command) error
}

// Handler serves MQTT connections.
type Handler struct {
	Options
	packetsIn   prometheus.Counter
	publishes   *prometheus.CounterVec
	redelivered prometheus.Counter

	mu       sync.Mutex
	sessions map[string]*session // identity and client id → its connection
}

// New returns the handler, registering its metrics on reg.
func New(opts Options, reg prometheus.Registerer) *Handler {
	h := &Handler{
		Options:  opts,
		sessions: make(map[string]*session),
		packetsIn: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "eventbus_edge_mqtt_packets_in_total", Help: "MQTT packets received from clients."}),
		publishes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "eventbus_edge_mqtt_publishes_total", Help: "PUBLISH packets from clients, by result."}, []string{"result"}),
		redelivered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "eventbus_edge_mqtt_redelivered_total", Help: "QoS 1 messages sent again, with DUP, for want of a PUBACK."}),
	}
	reg.MustRegister(h.packetsIn, h.publishes, h.redelivered)
	return h
}

// Offered reports whether a WebSocket handshake offers the mqtt
// subprotocol.
func Offered(r *http.Request) bool {
	for _, v := range r.Header.Values("Sec-WebSocket-Protocol") {
		for p := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(p), Subprotocol) {
				return true
			}
		}
	}
	return false
}

// ServeHTTP upgrades a request offering the mqtt subprotocol; anything
// else is refused in JSON before the upgrade.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch origin := r.Header.Get("Origin"); {
	case !strings.EqualFold(r.Header.Get("Upgrade"), "websocket"):
		w.Header().Set("Upgrade", "websocket")
		server.WriteError(w, http.StatusUpgradeRequired, protocol.CodeBadRequest,
			"GET /mqtt is MQTT over WebSocket: connect with an MQTT client offering the mqtt subprotocol")
		return
	case !Offered(r):
		server.WriteError(w, http.StatusBadRequest, protocol.CodeBadRequest,
			"GET /mqtt wants Sec-WebSocket-Protocol: mqtt (for JSON over WebSocket, use GET /ws)")
		return
	case origin != "" && !access.OriginAllowed(origin, r.Host, h.AllowedOrigins):
		server.WriteError(w, http.StatusForbidden, protocol.CodeForbidden,
			fmt.Sprintf("origin %q is neither this edge's host nor one of EDGE_ALLOWED_ORIGINS", origin))
		return
	}
	conn, err := websocket.Accept(w, r, &websocket.AcceptOptions{Subprotocols: []string{Subprotocol}, OriginPatterns: h.AllowedOrigins})
	if err != nil {
		h.Logger.Debug("mqtt upgrade refused", "error", err)
		return
	}
	go h.serve(conn, h.Access.ClientAddr(r))
}

// session is one MQTT connection: its reader runs in serve, its writer in
// write, and both share the subscriptions and the QoS 1 window.
type session struct {
	h       *Handler
	conn    *websocket.Conn
	nc      net.Conn
	ctx     context.Context // ends with the connection
	cancel  context.CancelFunc
	addr    netip.Addr
	version byte
	id      string    // the client id
	who     string    // the hub identity
	name    string    // this connection's own, for takeovers
	since   time.Time // when it connected
	key     string    // identity and client id, for takeovers
	claims  *token.Claims
	client  *hub.Client
	limiter *rate.Limiter
	expiry  time.Duration // how long the session outlives the connection; 0: not at all
	wake    chan struct{} // the hub queued frames, or the window opened
	kick    chan hub.Disconnect

	writeMu sync.Mutex // one writer of the socket at a time

	mu        sync.Mutex
	filters   map[string]byte     // topic filter → granted QoS
	byPattern map[string][]string // hub pattern → the filters it serves
	window    int                 // QoS 1 messages the client takes unacknowledged
	inflight  map[uint16]*pending // QoS 1 sent, awaiting PUBACK
	held      []*pending          // QoS 1 waiting for room in the window
	heldBytes int
	nextID    uint16
	cursor    bus.Cursor // where each namespace stands, as sent (persist.go)
	dirty     bool       // cursor or filters changed since the last save
	saved     time.Time  // when the session was last saved
	gone      bool       // taken over: the newer connection keeps the session
	resumed   bool       // a kept session was resumed
}

// pending is a QoS 1 message on its way, with its event's position and
// where its namespace stood before it, for the session to resume from.
type pending struct {
	pk   packets.Packet
	sent time.Time
	ns   string
	pos  bus.Position
	prev bus.Position
}

func (h *Handler) serve(conn *websocket.Conn, addr netip.Addr) {
	defer conn.CloseNow()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The socket's reads and writes end when serve returns, not with ctx:
	// a kick cancels ctx, and the writer still says why before it closes.
	netCtx, netCancel := context.WithCancel(context.Background())
	defer netCancel()
	nc := websocket.NetConn(netCtx, conn, websocket.MessageBinary)
	s := &session{h: h, conn: conn, nc: nc, ctx: ctx, cancel: cancel, addr: addr,
		limiter: rate.NewLimiter(rate.Limit(h.RateLimit), h.RateBurst),
		wake:    make(chan struct{}, 1), kick: make(chan hub.Disconnect, 1),
		filters: make(map[string]byte), byPattern: make(map[string][]string), inflight: make(map[uint16]*pending)}
	br := bufio.NewReaderSize(nc, 4<<10)
	_ = nc.SetReadDeadline(time.Now().Add(h.ConnectTimeout))
	pk, err := readPacket(br, 0, int(h.MaxMessageBytes))
	if err != nil || pk.FixedHeader.Type != packets.Connect {
		h.Logger.Debug("mqtt connection without CONNECT", "error", err)
		return
	}
	_ = nc.SetReadDeadline(time.Time{})
	keepAlive, ok := s.connect(pk)
	if !ok {
		return
	}
	defer h.forget(s)
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.write()
	}()
	s.read(br, keepAlive)
	s.end()
	h.Hub.Leave(s.client)
	cancel()
	<-done
}

// connect authenticates CONNECT and joins the hub, answering CONNACK. It
// reports the keep-alive, and false when the connection is refused.
func (s *session) connect(pk packets.Packet) (time.Duration, bool) {
	h := s.h
	s.version = pk.ProtocolVersion
	refuse := func(code packets.Code, why string) (time.Duration, bool) {
		h.Logger.Debug("mqtt connect refused", "reason", why, "client_id", pk.Connect.ClientIdentifier)
		_, _ = s.nc.Write(encode(s.connack(code, packets.Properties{})))
		_ = s.conn.Close(websocket.StatusPolicyViolation, protocol.CloseReason(why))
		return 0, false
	}
	if s.version != 4 && s.version != 5 {
		s.version = 4 // a 3.1.1 CONNACK is what an older client reads
		return refuse(packets.ErrUnsupportedProtocolVersion, "MQTT 3.1.1 (4) or 5.0 (5) only")
	}
	if code := pk.ConnectValidate(); code != packets.CodeSuccess {
		return refuse(code, code.Reason)
	}
	if pk.Connect.PasswordFlag {
		c, err := h.Access.Verify(string(pk.Connect.Password))
		if err != nil {
			return refuse(packets.ErrNotAuthorized, err.Error())
		}
		s.claims = c
	} else if !h.Access.AllowAnonymous {
		return refuse(packets.ErrNotAuthorized, "no token: send it as the CONNECT password")
	}
	var props packets.Properties
	s.id = pk.Connect.ClientIdentifier
	if s.id == "" {
		if s.version == 4 && !pk.Connect.Clean {
			return refuse(packets.ErrClientIdentifierNotValid, "a session to keep needs a client id")
		}
		s.id = "auto-" + strings.ToLower(rand.Text())
		props.AssignedClientID = s.id
	}
	if h.Sessions != nil {
		switch {
		case s.version == 5:
			s.expiry = min(time.Duration(pk.Properties.SessionExpiryInterval)*time.Second, h.SessionExpiry)
		case !pk.Connect.Clean:
			s.expiry = h.SessionExpiry
		}
	}
	s.window = maxInflight
	if rm := int(pk.Properties.ReceiveMaximum); s.version == 5 && rm > 0 {
		s.window = min(rm, maxInflight)
	}
	who := access.Identity(s.claims, s.addr)
	c, err := h.Hub.Join(who, publish{s.version}, s.ready, s.kicked)
	switch {
	case errors.Is(err, hub.ErrTooManyConnections):
		return refuse(packets.ErrQuotaExceeded, "too many connections")
	case err != nil:
		return refuse(packets.ErrServerUnavailable, err.Error())
	}
	s.client = c
	if s.claims != nil {
		c.SetToken(hub.TokenOf(s.claims))
		expiry := time.AfterFunc(time.Until(s.claims.ExpiresAt.Time), func() {
			c.Kick(hub.Disconnect{Code: protocol.CloseUnauthorized, Reason: "token expired"})
		})
		context.AfterFunc(s.ctx, func() { expiry.Stop() })
	}
	s.who, s.name, s.key, s.since = who, rand.Text(), sessionKey(who, s.id), time.Now()
	h.takeOver(s)
	props.ReceiveMaximum = maxInflight
	props.MaximumQos, props.MaximumQosFlag = 1, true
	props.SharedSubAvailable, props.SharedSubAvailableFlag = 0, true
	props.SubIDAvailable, props.SubIDAvailableFlag = 0, true
	props.MaximumPacketSize = uint32(h.MaxMessageBytes)
	resume := s.begin(pk.Connect.Clean)
	ack := s.connack(packets.CodeSuccess, props)
	ack.SessionPresent = resume != nil
	c.Send(encode(ack))
	if resume != nil {
		s.resume(*resume)
	}
	return time.Duration(pk.Connect.Keepalive) * time.Second, true
}

// connack is the CONNACK of code, in the connection's version.
func (s *session) connack(code packets.Code, props packets.Properties) packets.Packet {
	if s.version == 4 {
		code = v3Connack(code)
	}
	return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}, ProtocolVersion: s.version,
		ReasonCode: code.Code, Properties: props}
}

// v3Connack is the 3.1.1 return code for a 5.0 reason code.
func v3Connack(code packets.Code) packets.Code {
	switch code.Code {
	case packets.CodeSuccess.Code:
		return packets.CodeSuccess
	case packets.ErrNotAuthorized.Code:
		return packets.Err3NotAuthorized
	case packets.ErrUnsupportedProtocolVersion.Code:
		return packets.Err3UnsupportedProtocolVersion
	case packets.ErrClientIdentifierNotValid.Code:
		return packets.Err3ClientIdentifierNotValid
	}
	return packets.Err3ServerUnavailable
}

// takeOver registers s under its client id, closing the connection that
// held it here and telling the other edges to close theirs: a client id is
// one connection at a time, per user.
func (h *Handler) takeOver(s *session) {
	h.mu.Lock()
	old := h.sessions[s.key]
	h.sessions[s.key] = s
	h.mu.Unlock()
	if old != nil {
		old.takenOver()
	}
	if h.Announce == nil {
		return
	}
	c := revocation.Command{Action: revocation.ActionTakeover, Identity: s.who, ClientID: s.id, Conn: s.name, ConnectedBefore: s.since}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), publishTimeout)
		defer cancel()
		if err := h.Announce(ctx, c); err != nil {
			h.Logger.Warn("mqtt takeover not announced to the other edges", "client_id", s.id, "error", err)
		}
	}()
}

// TakenOver closes the connection of the client id and identity c names
// when it connected before c's: another edge took the client id over. A
// command that comes late finds a newer connection, and leaves it; across
// edges "before" is as their clocks tell it.
func (h *Handler) TakenOver(c revocation.Command) int {
	h.mu.Lock()
	s := h.sessions[sessionKey(c.Identity, c.ClientID)]
	h.mu.Unlock()
	if s == nil || s.name == c.Conn || !s.since.Before(c.ConnectedBefore) {
		return 0
	}
	s.takenOver()
	return 1
}

func (h *Handler) forget(s *session) {
	h.mu.Lock()
	if h.sessions[s.key] == s {
		delete(h.sessions, s.key)
	}
	h.mu.Unlock()
}

// read serves the client's packets until the connection ends, closing it
// when no packet comes within 1.5 times the keep-alive.
func (s *session) read(br *bufio.Reader, keepAlive time.Duration) {
	var idle *time.Timer
	if keepAlive > 0 {
		idle = time.AfterFunc(keepAlive*3/2, func() {
			s.disconnect(packets.ErrKeepAliveTimeout, hub.Disconnect{Code: protocol.CloseHeartbeatTimeout,
				Reason: fmt.Sprintf("no packet within 1.5 × the keep-alive of %v", keepAlive)})
		})
		defer idle.Stop()
	}
	for {
		pk, err := readPacket(br, s.version, int(s.h.MaxMessageBytes))
		var code packets.Code
		switch {
		case errors.Is(err, errTooLarge):
			s.disconnect(packets.ErrPacketTooLarge, hub.Disconnect{Code: int(websocket.StatusMessageTooBig), Reason: err.Error()})
			return
		case errors.As(err, &code):
			s.disconnect(code, hub.Disconnect{Code: int(websocket.StatusProtocolError), Reason: code.Reason})
			return
		case err != nil:
			return // closed, by the peer or by a kick
		}
		s.h.packetsIn.Inc()
		if idle != nil {
			idle.Reset(keepAlive * 3 / 2)
		}
		if s.client.Closing() {
			continue
		}
		if !s.limiter.Allow() {
			s.disconnect(packets.ErrMessageRateTooHigh, hub.Disconnect{Code: int(websocket.StatusPolicyViolation),
				Reason: fmt.Sprintf("more than %g packets per second (burst %d)", s.h.RateLimit, s.h.RateBurst)})
			return
		}
		if !s.handle(pk) {
			return
		}
	}
}

// handle serves one packet; false ends the connection.
func (s *session) handle(pk packets.Packet) bool {
	switch pk.FixedHeader.Type {
	case packets.Publish:
		return s.publish(pk)
	case packets.Puback:
		s.acked(pk.PacketID)
	case packets.Subscribe:
		s.subscribe(pk)
	case packets.Unsubscribe:
		s.unsubscribe(pk)
	case packets.Pingreq:
		s.client.Send(encode(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingresp}}))
	case packets.Disconnect:
		s.client.CloseAfter(hub.Disconnect{Code: int(websocket.StatusNormalClosure), Reason: "bye"})
		return false
	case packets.Connect:
		s.disconnect(packets.ErrProtocolViolationSecondConnect, hub.Disconnect{Code: int(websocket.StatusProtocolError), Reason: "second CONNECT"})
		return false
	default: // QoS 2 flows
		s.disconnect(packets.ErrQosNotSupported, hub.Disconnect{Code: int(websocket.StatusPolicyViolation), Reason: "QoS 2 is not supported"})
		return false
	}
	return true
}

// disconnect ends the connection for code: MQTT 5.0 is told with a
// DISCONNECT (MQTT 3.1.1 has none from the server) behind what is queued
// for it, and the WebSocket closes with d.
func (s *session) disconnect(code packets.Code, d hub.Disconnect) {
	if s.version == 5 {
		s.client.Send(encode(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}, ProtocolVersion: 5,
			ReasonCode: code.Code, Properties: packets.Properties{ReasonString: d.Reason}}))
	}
	s.client.CloseAfter(d)
}

// kicked closes the connection with d, in the background: the hub calls
// it and must not wait. The writer, which may hold the socket, sends a 5.0
// client a DISCONNECT with the reason first.
func (s *session) kicked(d hub.Disconnect) {
	select {
	case s.kick <- d:
	default:
	}
	s.cancel()
}

// ready wakes the writer: frames wait in the hub's queue.
func (s *session) ready() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// publish is the MQTT encoding of events: the QoS 0 PUBLISH of an event
// on its channel's topic, with the envelope in JSON as its payload, made
// once for every connection of the MQTT version it goes to. A writer
// sends it as it is at QoS 0 and makes its own at QoS 1.
type publish struct{ version byte }

func (e publish) Encode(ev *hub.Event, _ []string) ([]byte, error) {
	pk, err := publishOf(ev, e.version)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if err := pk.PublishEncode(&buf); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// publishOf is the QoS 0 PUBLISH of ev in MQTT version.
func publishOf(ev *hub.Event, version byte) (packets.Packet, error) {
	payload, err := ev.JSON()
	if err != nil {
		return packets.Packet{}, err
	}
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, ProtocolVersion: version,
		TopicName: topicOf(ev.Channel), Payload: payload}
	if version == 5 {
		pk.Properties.PayloadFormat, pk.Properties.PayloadFormatFlag = 1, true // UTF-8
		pk.Properties.ContentType = "application/json"
	}
	return pk, nil
}

// write sends what the hub queues, and what the QoS 1 window holds back,
// until the connection ends; it resends unacknowledged QoS 1 messages
// every RetryInterval.
func (s *session) write() {
	retry := time.NewTicker(s.h.RetryInterval)
	defer retry.Stop()
	var save <-chan time.Time
	if s.expiry > 0 {
		t := time.NewTicker(saveInterval)
		defer t.Stop()
		save = t.C
	}
	var frames []hub.Frame
	var buf bytes.Buffer
	for {
		select {
		case <-s.wake:
		case <-retry.C:
			s.resend(&buf)
			continue
		case <-save:
			s.save(false)
			continue
		case <-s.ctx.Done():
			s.closeWith(<-s.kickOr(hub.DisconnectBroken))
			return
		}
		s.h.Pacer.Start()
		for {
			frames = s.client.Take(frames[:0])
			s.mu.Lock()
			for len(s.held) > 0 && len(s.inflight) < s.window {
				p := s.held[0]
				s.held = s.held[1:]
				s.heldBytes -= len(p.pk.Payload)
				s.send(&buf, p)
			}
			s.mu.Unlock()
			if len(frames) == 0 && buf.Len() == 0 {
				break
			}
			for _, f := range frames {
				s.frame(&buf, f)
				if buf.Len() >= maxPacked {
					s.flush(&buf)
				}
			}
			clear(frames)
			s.flush(&buf)
			s.h.Pacer.Pause(s.client)
		}
		s.h.Pacer.Stop()
	}
}

// kickOr returns the disconnect a kick asked for, or d.
func (s *session) kickOr(d hub.Disconnect) <-chan hub.Disconnect {
	select {
	case k := <-s.kick:
		d = k
	default:
	}
	ch := make(chan hub.Disconnect, 1)
	ch <- d
	return ch
}

// frame appends a queued frame: a packet of the session's own, or an
// event as a PUBLISH when one of the client's filters takes it.
func (s *session) frame(buf *bytes.Buffer, f hub.Frame) {
	if f.Event == nil {
		// The JSON transports' notices ({"unsubscribed":…}) reach every
		// connection a control command names; MQTT has no packet for
		// them, and its own packets never start with '{' (PUBCOMP).
		if len(f.Data) > 0 && f.Data[0] != '{' {
			buf.Write(f.Data)
		}
		return
	}
	topic := topicOf(f.Event.Channel)
	s.mu.Lock()
	defer s.mu.Unlock()
	ns, prev := f.Event.Namespace(), s.cursor[f.Event.Namespace()]
	s.advance(ns, f.Event.Position)
	qos, ok := s.grant(f.Subs, topic)
	switch {
	case !ok:
		return
	case qos == 0:
		buf.Write(f.Data) // the shared QoS 0 PUBLISH
		return
	}
	pk, err := publishOf(f.Event, s.version)
	if err != nil {
		return
	}
	pk.FixedHeader.Qos = qos
	p := &pending{pk: pk, ns: ns, pos: f.Event.Position, prev: prev}
	if len(s.inflight) < s.window {
		s.send(buf, p)
		return
	}
	if s.heldBytes+len(pk.Payload) > s.h.QueueBytes && len(s.held) > 0 {
		go s.client.Kick(hub.DisconnectSlow)
		return
	}
	s.held = append(s.held, p)
	s.heldBytes += len(pk.Payload)
}

// grant returns the QoS an event on topic goes out with: the highest of
// the client's filters that match it with MQTT's semantics, among those
// served by the hub patterns it came through. Call with mu held.
func (s *session) grant(patterns []string, topic string) (qos byte, ok bool) {
	for _, p := range patterns {
		for _, f := range s.byPattern[p] {
			if match(f, topic) {
				qos, ok = max(qos, s.filters[f]), true
			}
		}
	}
	return qos, ok
}

// send appends p, numbering it and keeping it for a PUBACK when it is
// QoS 1. Call with mu held.
func (s *session) send(buf *bytes.Buffer, p *pending) {
	if p.pk.FixedHeader.Qos > 0 {
		for {
			s.nextID++
			if _, used := s.inflight[s.nextID]; s.nextID != 0 && !used {
				break
			}
		}
		p.pk.PacketID = s.nextID
		p.sent = time.Now()
		s.inflight[p.pk.PacketID] = p
	}
	_ = appendPacket(buf, &p.pk)
}

// resend sends again, with DUP, every QoS 1 message unacknowledged for
// RetryInterval.
func (s *session) resend(buf *bytes.Buffer) {
	s.mu.Lock()
	now := time.Now()
	ids := make([]uint16, 0, len(s.inflight))
	for id, p := range s.inflight {
		if now.Sub(p.sent) >= s.h.RetryInterval {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids) // in the order they were first sent, within a wrap
	for _, id := range ids {
		p := s.inflight[id]
		p.pk.FixedHeader.Dup = true
		p.sent = now
		_ = appendPacket(buf, &p.pk)
		s.h.redelivered.Inc()
	}
	s.mu.Unlock()
	s.flush(buf)
}

// acked frees the window's place of a PUBACKed message.
func (s *session) acked(id uint16) {
	s.mu.Lock()
	_, ok := s.inflight[id]
	delete(s.inflight, id)
	s.mu.Unlock()
	if ok {
		s.ready()
	}
}

// flush writes buf as one WebSocket message.
func (s *session) flush(buf *bytes.Buffer) {
	if buf.Len() == 0 {
		return
	}
	s.writeMu.Lock()
	_, err := s.nc.Write(buf.Bytes())
	s.writeMu.Unlock()
	buf.Reset()
	if err != nil {
		s.client.Kick(hub.DisconnectBroken)
	}
}

// closeWith closes the WebSocket with d; a 5.0 client whose connection
// the hub or a control command ends is told why with a DISCONNECT first.
func (s *session) closeWith(d hub.Disconnect) {
	if d == hub.DisconnectBroken {
		_ = s.conn.CloseNow()
		return
	}
	if code, ok := reasonOf(d); ok && s.version == 5 {
		var buf bytes.Buffer
		_ = appendPacket(&buf, &packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}, ProtocolVersion: 5,
			ReasonCode: code.Code, Properties: packets.Properties{ReasonString: d.Reason}})
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = s.conn.Write(ctx, websocket.MessageBinary, buf.Bytes())
		cancel()
	}
	_ = s.conn.Close(websocket.StatusCode(d.Code), protocol.CloseReason(d.Reason))
}

// reasonOf is the DISCONNECT reason code of a disconnect the hub or a
// control command decided on; the session's own decisions sent theirs.
func reasonOf(d hub.Disconnect) (packets.Code, bool) {
	switch d.Code {
	case hub.DisconnectShutdown.Code:
		return packets.ErrServerShuttingDown, true
	case hub.DisconnectSlow.Code, hub.DisconnectTooManyConnections.Code:
		return packets.ErrQuotaExceeded, true
	case protocol.CloseUnauthorized, 4003: // token expired, revoked
		return packets.ErrNotAuthorized, true
	case 4004: // disconnected by the API
		return packets.ErrAdministrativeAction, true
	case DisconnectTakenOver.Code:
		return packets.ErrSessionTakenOver, true
	}
	return packets.Code{}, false
}

// subscribe serves SUBSCRIBE: each filter is granted its QoS (at most 1)
// or refused with a reason, in one SUBACK.
// The retained messages of a new subscription, after its SUBACK, are
// the latest event of each channel it matches (5.0's Retain Handling 1:
// only for a filter the session did not have; 2: none).
func (s *session) subscribe(pk packets.Packet) {
	codes := make([]byte, len(pk.Filters))
	var retained [][]byte
	for i, f := range pk.Filters {
		code, fresh := s.subscribeOne(f)
		if code < 0x80 && (f.RetainHandling == 0 || f.RetainHandling == 1 && fresh) {
			retained = append(retained, s.retained(f.Filter)...)
		}
		if s.version == 4 && code >= 0x80 {
			code = 0x80 // 3.1.1 has one failure code
		}
		codes[i] = code
	}
	s.client.Send(encode(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Suback}, ProtocolVersion: s.version,
		PacketID: pk.PacketID, ReasonCodes: codes}))
	for _, r := range retained {
		s.client.Send(r)
	}
}

// subscribeOne returns the granted QoS or the reason for refusing f, and
// whether the session did not have f before.
func (s *session) subscribeOne(f packets.Subscription) (code byte, fresh bool) {
	if len(f.ShareName) > 0 {
		return packets.ErrSharedSubscriptionsNotSupported.Code, false
	}
	patterns, err := patternsOf(f.Filter)
	if err != nil {
		return packets.ErrTopicFilterInvalid.Code, false
	}
	if !s.allowedAll(patterns) {
		return packets.ErrNotAuthorized.Code, false
	}
	qos := min(f.Qos, 1)
	s.mu.Lock()
	_, had := s.filters[f.Filter]
	full := !had && len(s.filters) >= s.h.MaxSubscriptions
	s.mu.Unlock()
	if full {
		return packets.ErrQuotaExceeded.Code, false
	}
	if code := s.add(f.Filter, qos, patterns, nil); code != 0 {
		return code, false
	}
	s.save(true)
	return qos, !had
}

// add subscribes the hub to what filter needs of patterns, from since
// when the session resumes, and returns 0 or the reason it could not.
func (s *session) add(filter string, qos byte, patterns []string, since bus.Cursor) byte {
	s.mu.Lock()
	// The filter is in place before the hub delivers: no event of the
	// subscription finds it missing.
	s.filters[filter] = qos
	s.dirty = true
	var fresh []string
	for _, p := range patterns {
		if !slices.Contains(s.byPattern[p], filter) {
			if len(s.byPattern[p]) == 0 {
				fresh = append(fresh, p)
			}
			s.byPattern[p] = append(s.byPattern[p], filter)
		}
	}
	s.mu.Unlock()
	for _, p := range fresh {
		ctx, cancel := context.WithTimeout(s.ctx, hub.SubscribeTimeout)
		err := s.h.Hub.Subscribe(ctx, s.client, p, since, func(r hub.Recovery) []byte { return s.subscribed(p, r) })
		cancel()
		if err != nil {
			s.h.Logger.Debug("mqtt subscribe failed", "filter", filter, "pattern", p, "error", err)
			s.drop(filter)
			if errors.Is(err, hub.ErrTooManyPatterns) {
				return packets.ErrQuotaExceeded.Code
			}
			return packets.ErrUnspecifiedError.Code
		}
	}
	return 0
}

// unsubscribe serves UNSUBSCRIBE.
func (s *session) unsubscribe(pk packets.Packet) {
	codes := make([]byte, len(pk.Filters))
	for i, f := range pk.Filters {
		if !s.drop(f.Filter) {
			codes[i] = packets.CodeNoSubscriptionExisted.Code
		}
	}
	s.client.Send(encode(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsuback}, ProtocolVersion: s.version,
		PacketID: pk.PacketID, ReasonCodes: codes}))
	s.save(true)
}

// drop removes filter, and from the hub the patterns no other filter
// needs. It reports whether the client had the filter.
func (s *session) drop(filter string) bool {
	s.mu.Lock()
	_, had := s.filters[filter]
	delete(s.filters, filter)
	s.dirty = true
	var orphans []string
	for p, fs := range s.byPattern {
		if i := slices.Index(fs, filter); i >= 0 {
			if fs = slices.Delete(fs, i, i+1); len(fs) == 0 {
				delete(s.byPattern, p)
				orphans = append(orphans, p)
			} else {
				s.byPattern[p] = fs
			}
		}
	}
	s.mu.Unlock()
	for _, p := range orphans {
		s.h.Hub.Unsubscribe(s.client, p, nil)
	}
	return had
}

// publish serves a client's PUBLISH: the payload becomes an event on the
// topic's channel when the token's publish claim covers it. A QoS 1
// PUBACK goes out only once Redis has the event.
func (s *session) publish(pk packets.Packet) bool {
	refuse := func(code packets.Code, why string) bool {
		s.h.publishes.WithLabelValues(strings.ReplaceAll(code.Reason, " ", "_")).Inc()
		switch {
		case s.version == 5 && pk.FixedHeader.Qos == 1:
			s.client.Send(s.puback(pk.PacketID, code, why))
			return true
		case s.version == 5:
			s.disconnect(code, hub.Disconnect{Code: int(websocket.StatusPolicyViolation), Reason: why})
		default: // 3.1.1 has no refusal but to close
			s.client.CloseAfter(hub.Disconnect{Code: int(websocket.StatusPolicyViolation), Reason: why})
		}
		return false
	}
	if pk.FixedHeader.Qos > 1 {
		s.disconnect(packets.ErrQosNotSupported, hub.Disconnect{Code: int(websocket.StatusPolicyViolation), Reason: "QoS 2 is not supported"})
		return false
	}
	ch, err := channelOf(pk.TopicName)
	if err != nil {
		return refuse(packets.ErrTopicNameInvalid, fmt.Sprintf("topic %q: %v", pk.TopicName, err))
	}
	if !s.mayPublish(ch) {
		return refuse(packets.ErrNotAuthorized, fmt.Sprintf("topic %s is not among the token's publish patterns", pk.TopicName))
	}
	env, err := eventOf(ch, s.id, s.claims, pk.Payload, time.Now())
	if err != nil {
		return refuse(packets.ErrPayloadFormatInvalid, err.Error())
	}
	ctx, cancel := context.WithTimeout(s.ctx, publishTimeout)
	defer cancel()
	if _, err := s.h.Bus.Publish(ctx, ch, env); err != nil {
		s.h.Logger.Warn("mqtt publish failed", "channel", ch, "error", err)
		if s.version == 4 {
			// No PUBACK: the client sends it again when it reconnects.
			s.h.publishes.WithLabelValues("unavailable").Inc()
			s.client.CloseAfter(hub.Disconnect{Code: int(websocket.StatusTryAgainLater), Reason: "the event bus is unavailable"})
			return false
		}
		return refuse(packets.ErrImplementationSpecificError, "the event bus (Redis) is unavailable: "+ctxErr(err))
	}
	s.h.publishes.WithLabelValues("ok").Inc()
	if pk.FixedHeader.Qos == 1 {
		s.client.Send(s.puback(pk.PacketID, packets.CodeSuccess, ""))
	}
	return true
}

func ctxErr(err error) string {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, io.EOF) {
		return "no answer in time"
	}
	return err.Error()
}

func (s *session) puback(id uint16, code packets.Code, why string) []byte {
	return encode(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, ProtocolVersion: s.version,
		PacketID: id, ReasonCode: code.Code, Properties: packets.Properties{ReasonString: why}})
}

// mayPublish reports whether the token's publish claim covers ch.
func (s *session) mayPublish(ch string) bool {
	if s.claims == nil {
		return false
	}
	for _, p := range s.claims.Publish {
		if channel.Covers(p, ch) {
			return true
		}
	}
	return false
}
