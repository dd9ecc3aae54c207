// Package mqttapi serves MQTT 3.1.1 and 5.0 over WebSocket (GET /mqtt, and
// GET /ws when the client offers the mqtt subprotocol), over TCP and over
// TLS (Serve, tcp.go): one session, whatever carries it. It is the edge's
// third transport on the same hub as the JSON WebSocket and SSE: topics are
// channels ("order/placed" is "order:placed"), the password of CONNECT is
// the token, and PUBLISH from a client becomes an event on the bus.
package mqttapi

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coder/websocket"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/mqttwire"
	"github.com/eventbus-suite/eventbus/pkg/revocation"
	"github.com/eventbus-suite/eventbus/pkg/server"
	"github.com/eventbus-suite/eventbus/pkg/token"
	"github.com/eventbus-suite/eventbus/services/edge/internal/access"
	"github.com/eventbus-suite/eventbus/services/edge/internal/hub"
	"github.com/eventbus-suite/eventbus/services/edge/internal/protocol"
	edge "github.com/eventbus-suite/eventbus/services/edge/internal/session"
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
	// closeGrace is how long a closing connection has to write what it was
	// told before the socket is cut.
	closeGrace = 5 * time.Second
	// maxClientID bounds a client id, which names a session in Redis.
	maxClientID = 256
	// readBuffer and writeBuffer size a connection's buffers: most
	// connections are idle and read little, and a larger packet is read
	// past the read buffer. A WebSocket message that fits the write buffer
	// costs one write(2).
	readBuffer  = 1 << 10
	writeBuffer = 4 << 10
)

// Options configure the handler.
type Options struct {
	// Edge keeps every rule of a connection: tokens, grants, bounds.
	Edge   *edge.Sessions
	Hub    *hub.Hub
	Access *access.Policy
	// Bus takes what clients publish.
	Bus    bus.Publisher
	Logger *slog.Logger

	AllowedOrigins []string
	// ConnectTimeout bounds the wait for CONNECT after the upgrade.
	ConnectTimeout  time.Duration
	MaxMessageBytes int64
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
	// Retained keeps the retained messages of every topic; nil keeps
	// none. RetainLatest counts every channel's latest recorded event as
	// retained instead (EDGE_MQTT_RETAINED=latest), the edge's older way.
	Retained     *RetainedStore
	RetainLatest bool
	// Consumers makes the members of shared subscriptions' groups; nil
	// (no record) refuses shared subscriptions. ShareVisibility is how
	// long a member may hold an event unacknowledged before it goes to
	// another (EDGE_MQTT_SHARE_VISIBILITY).
	Consumers       bus.Consumers
	ShareVisibility time.Duration
	// IdleAfter is how long a connection over TCP goes without a byte
	// before its reader moves to a fresh goroutine, giving back the stack
	// that serving packets grew (EDGE_MQTT_IDLE_AFTER); 0 never moves.
	IdleAfter time.Duration
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
	moved       prometheus.Counter
	idle        prometheus.Gauge

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
		moved: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "eventbus_edge_mqtt_idle_readers_moved_total", Help: "Readers of MQTT connections over TCP moved to a fresh goroutine, idle for EDGE_MQTT_IDLE_AFTER."}),
		idle: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "eventbus_edge_mqtt_idle_readers", Help: "MQTT connections over TCP idle since their reader moved."}),
	}
	reg.MustRegister(h.packetsIn, h.publishes, h.redelivered, h.moved, h.idle)
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
	// Buffers of the edge's own sizes, not net/http's pair, which the
	// connection would keep for its life.
	small := server.SmallBuffers{ResponseWriter: w, ReadSize: readBuffer, WriteSize: writeBuffer}
	conn, err := websocket.Accept(small, r, &websocket.AcceptOptions{Subprotocols: []string{Subprotocol}, OriginPatterns: h.AllowedOrigins})
	if err != nil {
		h.Logger.Debug("mqtt upgrade refused", "error", err)
		return
	}
	go h.serveWebSocket(conn, h.Access.ClientAddr(r))
}

// serveWebSocket runs the session of an upgraded connection, its packets
// carried in binary messages.
func (h *Handler) serveWebSocket(conn *websocket.Conn, addr netip.Addr) {
	// The socket's reads and writes end when serve returns, not with the
	// session's context: a kick ends that, and the writer still says why
	// before it closes.
	netCtx, netCancel := context.WithCancel(context.Background())
	defer netCancel()
	h.serve(websocket.NetConn(netCtx, conn, websocket.MessageBinary), wsCloser{conn}, addr, nil)
}

// closer ends a connection the way its transport can. The session writes
// MQTT packets to its net.Conn and leaves the closing to this.
type closer interface {
	// Close ends the connection for d: over WebSocket with a close frame
	// of d's code and reason; over TCP and TLS, where MQTT has no word
	// but the DISCONNECT already sent to a 5.0 client, by closing the
	// socket.
	Close(d hub.Disconnect)
	// CloseNow cuts the connection at once, saying nothing. It is safe to
	// call from any goroutine, and again.
	CloseNow()
}

// wsCloser closes an MQTT WebSocket.
type wsCloser struct{ conn *websocket.Conn }

func (c wsCloser) Close(d hub.Disconnect) {
	_ = c.conn.Close(websocket.StatusCode(d.Code), protocol.CloseReason(d.Reason))
}

func (c wsCloser) CloseNow() { _ = c.conn.CloseNow() }

// session is one MQTT connection: its reader runs in run, its writer in
// write, and both share the subscriptions and the QoS 1 window.
type session struct {
	h      *Handler
	nc     net.Conn // MQTT's bytes, in and out
	closer closer   // how the transport ends the connection
	// move starts a function on a goroutine the listener waits for at
	// shutdown: the reader of a connection gone idle moves to a fresh one
	// (read). Nil where it cannot move; rc is then nil too, else the
	// socket whose readiness a moved reader waits for.
	move func(func())
	rc   syscall.RawConn
	// keepAlive closes the connection when no packet comes within
	// keepAliveAfter, 1.5 times the client's keep-alive; nil without one.
	// lastPacket is when the last packet came (since), which the timer
	// reads when it fires rather than being reset for every packet.
	// Guarded by mu: keepAlive's timer. The reader's alone: served, when
	// it last finished serving a packet, from which IdleAfter counts; and
	// armed, whether the socket has a read deadline for it.
	keepAlive      *time.Timer
	keepAliveAfter time.Duration
	lastPacket     atomic.Int64
	served         int64
	armed          bool
	ctx            context.Context // ends with the connection
	cancel         context.CancelFunc
	addr           netip.Addr
	version        byte
	id             string        // the client id
	who            string        // the hub identity
	name           string        // this connection's own, for takeovers
	since          time.Time     // when it connected
	key            string        // identity and client id, for takeovers
	edge           *edge.Session // its claims are CONNECT's, which an MQTT connection keeps
	client         *hub.Client   // the session's
	expiry         time.Duration // how long the session outlives the connection; 0: not at all
	asked          uint32        // the Session Expiry Interval CONNECT asked for, in seconds (5.0)
	will           *will         // published unless the client says goodbye
	bye            bool          // the client sent DISCONNECT without its will; read by the reader only
	// writer runs the writer only while there is work (writer.go), and
	// Ready wakes a resting one through wake, made by its first rest;
	// closed ends when it has closed the connection.
	writer atomic.Int32
	wake   chan struct{}
	closed chan struct{}
	// resendDue asks the writer to resend what is unacknowledged, when
	// retry, armed while messages are in flight, fires; saver saves a kept
	// session now and then. The timers and retrying are guarded by mu.
	resendDue atomic.Bool
	retry     *time.Timer
	retrying  bool
	saver     *time.Timer
	// kickedWith is why the hub or the session ended the connection.
	kickedWith atomic.Pointer[hub.Disconnect]
	maxPacket  int                      // the most bytes the client takes in a packet (5.0); 0: no bound
	quiet      bool                     // a 5.0 client asked for no reason strings but in DISCONNECT (Request Problem Information 0)
	saidBye    bool                     // a DISCONNECT was written; the writer's only
	endExpiry  *time.Duration           // the expiry DISCONNECT set, replacing expiry as the connection ends; guarded by mu
	shares     map[string]*shared       // "$share/…" filter → its shared subscription; guarded by mu
	awaiting   awaitingRelease          // QoS 2 messages waiting for their PUBREL; the reader's
	options    map[string]filterOptions // a 5.0 filter's No Local and Retain As Published; guarded by mu

	writeMu sync.Mutex // one writer of the socket at a time

	mu        sync.Mutex
	filters   map[string]byte     // topic filter → granted QoS
	byPattern map[string][]string // hub pattern → the filters it serves
	window    int                 // QoS 1 messages the client takes unacknowledged
	inflight  map[uint16]*pending // QoS 1 sent, awaiting PUBACK
	held      []*pending          // QoS 1 waiting for room in the window
	dropped   *pending            // the QoS 1 message that overflowed the window, closing the connection
	heldBytes int
	nextID    uint16
	cursor    bus.Cursor // where each namespace stands, as sent (persist.go)
	floor     bus.Cursor // where each stood as the connection began
	dirty     bool       // cursor or filters changed since the last save
	saved     time.Time  // when the session was last saved
	gone      bool       // taken over: the newer connection keeps the session
	ending    bool       // the connection ends: end saves the session, nothing else
	saving    sync.Mutex // held while a save writes to Redis; taken before mu
	resumed   bool       // a kept session was resumed
}

// filterOptions are a 5.0 subscription's options besides its QoS: No
// Local (none of the client's own messages) and Retain As Published (a
// live message keeps the RETAIN it was published with). A kept session
// keeps them with its filters.
type filterOptions struct {
	NoLocal           bool `json:"no_local,omitempty"`
	RetainAsPublished bool `json:"retain_as_published,omitempty"`
}

// pending is a QoS 1 message on its way, with its event's position and
// where its namespace stood before it, for a kept session to resume from
// until it is acknowledged.
type pending struct {
	// qos and retain are the PUBLISH's flags: its packet is made from ev
	// when it is sent (so that a message that waited for room in the
	// window has its expiry counted down) and made again, as it was then,
	// for a resend; nothing of it is kept meanwhile but the event every
	// subscriber shares. size is its payload's length, counted in
	// heldBytes while it waits; first is when it was first sent, sent when
	// last.
	qos    byte
	retain bool
	size   int
	first  time.Time
	sent   time.Time
	ns     string
	pos    bus.Position
	prev   bus.Position
	note   string     // the notification it carries, whose PUBACK is its receipt
	ev     *hub.Event // the event it is, while it may wait for room
	rec    bool       // QoS 2: PUBREC came, the client has it; PUBREL is what is resent
	// share and delivery: the shared subscription it goes out for, and
	// its delivery in the group, which its PUBACK acknowledges.
	share    *shared
	delivery bus.Delivery
}

// serve runs the session of a connection whose MQTT bytes nc carries and
// which c closes, from addr, until it ends; then nc is closed. The
// session's reads and writes of nc must not end with a kick: the writer
// still says why before it closes.
func (h *Handler) serve(nc net.Conn, c closer, addr netip.Addr, move func(func())) {
	s, br := h.open(nc, c, addr)
	if s == nil {
		return
	}
	if move != nil && h.IdleAfter > 0 {
		s.move, s.rc = move, rawConn(nc)
	}
	s.run(br)
}

// run reads the client's packets, then ends the session; unless the
// reader moved to a fresh goroutine, which then does. Its frame stays
// small, and open's and finish's are gone while the session reads: an
// idle connection's goroutine keeps a shallow stack.
func (s *session) run(br *bufio.Reader) {
	if s.read(br) {
		s.finish()
	}
}

// open admits a connection and serves its CONNECT. It returns the session
// and its reader, or nil when the connection ended there.
func (h *Handler) open(nc net.Conn, c closer, addr netip.Addr) (*session, *bufio.Reader) {
	ctx, cancel := context.WithCancel(context.Background())
	s := &session{h: h, nc: nc, closer: c, ctx: ctx, cancel: cancel, addr: addr, closed: make(chan struct{}),
		filters: make(map[string]byte), byPattern: make(map[string][]string), inflight: make(map[uint16]*pending)}
	// Until CONNECT is served, what the hub queues (the CONNACK) waits for
	// the writer started then.
	s.writer.Store(writerRunning)
	if err := h.admit(s); err != nil {
		d := hub.DisconnectTooManyConnections
		if err.Code != protocol.CodeTooManyConnections {
			d = hub.DisconnectShutdown
		}
		c.Close(hub.Disconnect{Code: d.Code, Reason: fmt.Sprintf("%s: %v", d.Reason, err.Message)})
		cancel()
		c.CloseNow()
		return nil, nil
	}
	br := borrow(nc)
	keepAlive, ok := s.accept(br)
	if !ok {
		giveBack(br)
		s.edge.Close()
		cancel()
		c.CloseNow()
		return nil, nil
	}
	s.served = since()
	s.lastPacket.Store(s.served)
	if keepAlive > 0 {
		s.keepAliveAfter = keepAlive * 3 / 2
		s.mu.Lock()
		s.keepAlive = time.AfterFunc(s.keepAliveAfter, s.checkKeepAlive)
		s.mu.Unlock()
	}
	go s.write()
	if s.expiry > 0 {
		s.mu.Lock()
		s.saver = time.AfterFunc(saveInterval, s.saveEvery)
		s.mu.Unlock()
	}
	return s, br
}

// finish ends a session whose reading ended: its will, its state, its
// writer, then the connection.
func (s *session) finish() {
	s.mu.Lock()
	if s.keepAlive != nil {
		s.keepAlive.Stop()
		s.keepAlive = nil
	}
	s.mu.Unlock()
	defer s.closer.CloseNow()
	defer s.cancel()
	defer s.h.forget(s)
	s.endShared() // what a member took and did not acknowledge goes to another
	if s.client.Closing() {
		// What the edge queued to say why (a DISCONNECT, a last PUBACK)
		// goes out before the writer stops.
		select {
		case <-s.ctx.Done():
		case <-time.After(closeGrace):
		}
	}
	s.publishWill()
	s.end()
	s.edge.Close()
	s.cancel()
	s.Ready() // to close the connection
	// A writer stuck on a client that stopped reading gets a grace, then
	// the socket is cut under it.
	cut := time.AfterFunc(closeGrace, s.closer.CloseNow)
	defer cut.Stop()
	<-s.closed
}

// Name names how s is connected, as presence says it: "mqtt" over
// WebSocket, "mqtt-tcp" over TCP or TLS.
func (s *session) Name() string {
	if _, ok := s.closer.(wsCloser); ok {
		return "mqtt"
	}
	return "mqtt-tcp"
}

// admit joins s to the hub before its CONNECT, counted against its
// address: a socket that never sends CONNECT is bounded as a tokenless
// WebSocket is, EDGE_MAX_USER_CONNECTIONS per address and
// EDGE_MAX_ADDRESS_CONNECTIONS over all of them, and holds its place
// until CONNECT moves it to its user or ConnectTimeout closes it. Every
// listener of MQTT (over WebSocket, TCP and TLS alike) admits its
// sockets through it first and closes one refused with
// protocol.CodeTooManyConnections; one admitted is followed by one
// Close of its session.
func (h *Handler) admit(s *session) *protocol.Error {
	e, err := h.Edge.Open(nil, s.addr, s, publish{})
	if err != nil {
		return err
	}
	s.edge, s.client = e, e.Client()
	return nil
}

// connect authenticates CONNECT and moves the connection to its user in
// the hub, answering CONNACK. It
// reports the keep-alive, and false when the connection is refused.
func (s *session) connect(pk packets.Packet) (time.Duration, bool) {
	h := s.h
	s.version = pk.ProtocolVersion
	refuse := func(code packets.Code, why string) (time.Duration, bool) {
		h.Logger.Debug("mqtt connect refused", "reason", why, "client_id", pk.Connect.ClientIdentifier)
		_, _ = s.nc.Write(encode(s.connack(code, packets.Properties{})))
		s.closer.Close(hub.Disconnect{Code: int(websocket.StatusPolicyViolation), Reason: why})
		return 0, false
	}
	if s.version != 4 && s.version != 5 {
		s.version = 4 // a 3.1.1 CONNACK is what an older client reads
		return refuse(packets.ErrUnsupportedProtocolVersion, "MQTT 3.1.1 (4) or 5.0 (5) only")
	}
	if code := pk.ConnectValidate(); code != packets.CodeSuccess {
		return refuse(code, code.Reason)
	}
	var claims *token.Claims
	if pk.Connect.PasswordFlag {
		c, err := h.Edge.Verify(string(pk.Connect.Password))
		if err != nil {
			switch {
			case errors.Is(err, token.ErrTooLong):
				return refuse(packets.ErrBadUsernameOrPassword, err.Message)
			case err.Code == protocol.CodeUnavailable:
				return refuse(packets.ErrServerUnavailable, err.Message)
			}
			return refuse(packets.ErrNotAuthorized, err.Message)
		}
		claims = c
	} else if !h.Access.AllowAnonymous {
		return refuse(packets.ErrNotAuthorized, "no token: send it as the CONNECT password")
	}
	if err := s.edge.Identify(claims); err != nil {
		return refuse(packets.ErrQuotaExceeded, err.Message)
	}
	if pk.Connect.WillFlag {
		w, code, why := s.willOf(pk)
		if w == nil {
			return refuse(code, why)
		}
		s.will = w
	}
	var props packets.Properties
	s.id = pk.Connect.ClientIdentifier
	if len(s.id) > maxClientID {
		return refuse(packets.ErrClientIdentifierNotValid, fmt.Sprintf("a client id of at most %d bytes", maxClientID))
	}
	if s.id == "" {
		if s.version == 4 && !pk.Connect.Clean {
			return refuse(packets.ErrClientIdentifierNotValid, "a session to keep needs a client id")
		}
		s.id = "auto-" + strings.ToLower(rand.Text())
		props.AssignedClientID = s.id
	}
	s.asked = pk.Properties.SessionExpiryInterval
	if h.Sessions != nil {
		switch {
		case s.version == 5:
			s.expiry = min(time.Duration(pk.Properties.SessionExpiryInterval)*time.Second, h.SessionExpiry)
		case !pk.Connect.Clean:
			s.expiry = h.SessionExpiry
		}
	}
	s.window, s.maxPacket = maxInflight, int(pk.Properties.MaximumPacketSize)
	s.quiet = pk.Properties.RequestProblemInfoFlag && pk.Properties.RequestProblemInfo == 0
	if rm := int(pk.Properties.ReceiveMaximum); s.version == 5 && rm > 0 {
		s.window = min(rm, maxInflight)
	}
	who := access.Identity(claims, s.addr)
	h.Hub.SetEncoding(s.client, publish{s.version})
	s.who, s.name, s.key, s.since = who, rand.Text(), sessionKey(who, s.id), time.Now()
	h.takeOver(s)
	props.ReceiveMaximum = maxInflight
	props.SharedSubAvailable, props.SharedSubAvailableFlag = 0, true
	if h.Consumers != nil {
		props.SharedSubAvailable = 1
	}
	props.SubIDAvailable, props.SubIDAvailableFlag = 0, true
	props.MaximumPacketSize = uint32(h.MaxMessageBytes)
	resume, err := s.begin(pk.Connect.Clean)
	if err != nil {
		h.Logger.Warn("mqtt session not read: the client is to connect again", "client_id", s.id, "error", err)
		h.forget(s)
		return refuse(packets.ErrServerUnavailable, "the session could not be read (Redis unavailable): connect again")
	}
	if h.Sessions != nil {
		// Only a connection that is made takes its session's will back.
		s.takeBackWill(pk.Connect.Clean)
	}
	actx, cancel := context.WithTimeout(s.ctx, storeTimeout)
	// A session not resumed starts afresh: what QoS 2 state an ended one
	// left (its key outlives it) is not this one's.
	s.awaiting = s.awaitingFor(actx, pk.Connect.Clean || resume == nil)
	cancel()
	ack := s.connack(packets.CodeSuccess, props)
	ack.SessionPresent = resume != nil
	s.client.Send(encode(ack))
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

// v3Connack is the 3.1.1 return code for a 5.0 reason code. 3.1.1 has
// only 0x01-0x05, and clients retry 0x03 (server unavailable) for ever:
// it is kept for what passes (the edge or Redis busy or away, a bound
// reached). A refusal of the CONNECT itself, which sending it again cannot
// change (a will outside the grammar or at QoS 2, a malformed packet), is
// 0x05 not authorized, the one code left that says "not like this" without
// naming the protocol level (0x01), the client id (0x02) or the
// credentials (0x04).
func v3Connack(code packets.Code) packets.Code {
	switch code.Code {
	case packets.CodeSuccess.Code:
		return packets.CodeSuccess
	case packets.ErrUnsupportedProtocolVersion.Code:
		return packets.Err3UnsupportedProtocolVersion
	case packets.ErrClientIdentifierNotValid.Code:
		return packets.Err3ClientIdentifierNotValid
	case packets.ErrBadUsernameOrPassword.Code:
		return packets.ErrMalformedUsernameOrPassword // 0x04 bad user name or password
	case packets.ErrServerUnavailable.Code, packets.ErrServerBusy.Code, packets.ErrQuotaExceeded.Code,
		packets.ErrConnectionRateExceeded.Code, packets.ErrImplementationSpecificError.Code, packets.ErrUnspecifiedError.Code:
		return packets.Err3ServerUnavailable
	}
	return packets.Err3NotAuthorized
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

// accept reads and serves the connection's CONNECT, which must come
// within ConnectTimeout, and reports the keep-alive, and false when the
// connection is refused.
func (s *session) accept(br *bufio.Reader) (time.Duration, bool) {
	_ = s.nc.SetReadDeadline(time.Now().Add(s.h.ConnectTimeout))
	pk, err := readPacket(br, 0, int(s.h.MaxMessageBytes))
	if err != nil || pk.FixedHeader.Type != packets.Connect {
		s.h.Logger.Debug("mqtt connection without CONNECT", "error", err)
		return 0, false
	}
	_ = s.nc.SetReadDeadline(time.Time{})
	return s.connect(pk)
}

// read serves the client's packets until the connection ends, and says
// so; false when it moved to a fresh goroutine, which goes on. It waits
// for each packet in a shallow frame of its own, the goroutine of an idle
// connection keeping only that. Over plain TCP, a connection without a
// byte for IdleAfter gives its read buffer back (readers) and moves its
// reader to a fresh goroutine, which waits for the socket to become
// readable with no buffer: the stack that serving packets grew is given
// back at once, not at garbage collections that an idle edge seldom
// runs. A nil br is a reader that moved.
//
// A busy connection reads as any other; an idle spell costs a goroutine's
// start, and a look at the socket (awaitReadable) when it ends.
func (s *session) read(br *bufio.Reader) (ended bool) {
	defer func() {
		if br != nil {
			giveBack(br)
		}
	}()
	for {
		switch {
		case br == nil:
			ok := awaitReadable(s.rc)
			s.h.idle.Dec()
			if !ok {
				return true // closed by a kick or the keep-alive
			}
			br = borrow(s.nc)
		case s.rc != nil && br.Buffered() == 0:
			switch s.peek(br) {
			case waitClosed:
				return true // closed, by the peer or by a kick
			case waitIdle:
				giveBack(br)
				br = nil
				s.h.moved.Inc()
				s.h.idle.Inc()
				s.move(func() { s.run(nil) })
				return false
			}
		default:
			if _, err := br.Peek(1); err != nil {
				return true // closed, by the peer or by a kick
			}
		}
		s.lastPacket.Store(since()) // a packet comes
		if s.armed && !whole(br) {
			// The rest of the packet is read without the idle deadline.
			_ = s.nc.SetReadDeadline(time.Time{})
			s.armed = false
		}
		if !s.next(br) {
			return true
		}
		s.served = since()
	}
}

// next reads and serves the client's next packet; false ends the
// connection.
func (s *session) next(br *bufio.Reader) bool {
	pk, err := readPacket(br, s.version, int(s.h.MaxMessageBytes))
	var code packets.Code
	switch {
	case errors.Is(err, mqttwire.ErrTooLarge):
		s.disconnect(packets.ErrPacketTooLarge, hub.Disconnect{Code: int(websocket.StatusMessageTooBig), Reason: err.Error()})
		return false
	case errors.As(err, &code):
		s.disconnect(code, hub.Disconnect{Code: int(websocket.StatusProtocolError), Reason: code.Reason})
		return false
	case err != nil:
		return false // closed, by the peer or by a kick
	}
	s.h.packetsIn.Inc()
	if s.client.Closing() {
		return true
	}
	// PUBACKs answer the edge's own messages: only requests count.
	if pk.FixedHeader.Type != packets.Puback {
		if err := s.edge.Allow(); err != nil {
			s.disconnect(packets.ErrMessageRateTooHigh, hub.Disconnect{Code: int(websocket.StatusPolicyViolation), Reason: err.Message})
			return false
		}
	}
	return s.handle(pk)
}

// handle serves one packet; false ends the connection.
func (s *session) handle(pk packets.Packet) bool {
	switch pk.FixedHeader.Type {
	case packets.Publish:
		return s.publish(pk)
	case packets.Puback:
		s.acked(pk.PacketID)
	case packets.Pubrel:
		s.released(pk.PacketID)
	case packets.Pubrec:
		s.recorded(pk.PacketID)
	case packets.Pubcomp:
		s.acked(pk.PacketID)
	case packets.Subscribe:
		if code := pk.SubscribeValidate(); code != packets.CodeSuccess {
			s.disconnect(code, hub.Disconnect{Code: int(websocket.StatusProtocolError), Reason: code.Reason})
			return false
		}
		if subscriptionIDs(pk) {
			// CONNACK said Subscription Identifiers Available 0.
			code := packets.ErrSubscriptionIdentifiersNotSupported
			s.disconnect(code, hub.Disconnect{Code: int(websocket.StatusProtocolError), Reason: code.Reason})
			return false
		}
		s.subscribe(pk)
	case packets.Unsubscribe:
		if code := pk.UnsubscribeValidate(); code != packets.CodeSuccess {
			s.disconnect(code, hub.Disconnect{Code: int(websocket.StatusProtocolError), Reason: code.Reason})
			return false
		}
		s.unsubscribe(pk)
	case packets.Pingreq:
		s.client.Send(encode(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingresp}}))
	case packets.Disconnect:
		if !s.expireAtEnd(pk) {
			return false
		}
		s.bye = pk.ReasonCode != packets.CodeDisconnectWillMessage.Code
		s.client.CloseAfter(hub.Disconnect{Code: int(websocket.StatusNormalClosure), Reason: "bye"})
		return false
	case packets.Connect:
		s.disconnect(packets.ErrProtocolViolationSecondConnect, hub.Disconnect{Code: int(websocket.StatusProtocolError), Reason: "second CONNECT"})
		return false
	default:
		s.disconnect(packets.ErrProtocolViolation, hub.Disconnect{Code: int(websocket.StatusProtocolError),
			Reason: fmt.Sprintf("a packet of type %d from a client", pk.FixedHeader.Type)})
		return false
	}
	return true
}

// subscriptionIDs reports whether a SUBSCRIBE carries a Subscription
// Identifier, which the edge does not offer.
func subscriptionIDs(pk packets.Packet) bool {
	if len(pk.Properties.SubscriptionIdentifier) > 0 {
		return true
	}
	for _, f := range pk.Filters {
		if f.Identifier > 0 {
			return true
		}
	}
	return false
}

// expireAtEnd takes the Session Expiry Interval a 5.0 DISCONNECT sets:
// the session is kept that long (within SessionExpiry) after this
// connection, or ended with it when 0. A session that CONNECT said ends
// with its connection cannot be kept at DISCONNECT (MQTT-3.14.2-2): that
// is a protocol error, and false.
func (s *session) expireAtEnd(pk packets.Packet) bool {
	if s.version != 5 || !pk.Properties.SessionExpiryIntervalFlag {
		return true
	}
	if s.asked == 0 && pk.Properties.SessionExpiryInterval > 0 {
		s.disconnect(packets.ErrProtocolViolation, hub.Disconnect{Code: int(websocket.StatusProtocolError),
			Reason: "a session expiry at DISCONNECT for a session that CONNECT said ends with its connection"})
		return false
	}
	if s.h.Sessions == nil {
		return true // no session is kept without history, whatever either says
	}
	d := min(time.Duration(pk.Properties.SessionExpiryInterval)*time.Second, s.h.SessionExpiry)
	s.mu.Lock()
	s.endExpiry = &d
	s.mu.Unlock()
	return true
}

// disconnect ends the connection for code: MQTT 5.0 is told with a
// DISCONNECT (MQTT 3.1.1 has none from the server) behind what is queued
// for it, and the WebSocket closes with d.
func (s *session) disconnect(code packets.Code, d hub.Disconnect) {
	// The client is told; the log is where its operator finds why (a
	// client whose packets arrive torn reads as malformed here).
	s.h.Logger.Debug("mqtt connection closed by the edge", "client_id", s.id, "reason_code", code.Code, "reason", d.Reason)
	if s.version == 5 {
		s.client.Send(encode(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}, ProtocolVersion: 5,
			ReasonCode: code.Code, Properties: packets.Properties{ReasonString: d.Reason}}))
	}
	s.client.CloseAfter(d)
	// What is queued goes out first, within a grace: a client that stopped
	// reading holds the writer, and is kicked.
	time.AfterFunc(closeGrace, func() { s.client.Kick(d) })
}

// Kicked closes the connection with d, in the background: the hub calls
// it and must not wait. The writer, which may hold the socket, sends a 5.0
// client a DISCONNECT with the reason first.
func (s *session) Kicked(d hub.Disconnect) {
	s.kickedWith.Store(&d)
	s.cancel()
	s.Ready() // to close the connection
	// A writer stuck on a client that stopped reading never gets to close:
	// the socket is cut after a grace.
	time.AfterFunc(closeGrace, s.closer.CloseNow)
}
