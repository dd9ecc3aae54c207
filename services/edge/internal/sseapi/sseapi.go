// Package sseapi serves GET /sse: the Server-Sent Events transport of the
// edge, for networks that let no WebSocket through. A connection
// subscribes to the channel parameters it opens with; tokens, grants,
// bounds and the slow-consumer rule are those of the WebSocket transport,
// and every event's SSE id holds the connection's positions, so that
// EventSource's own reconnection, which sends the last id back as
// Last-Event-ID, resumes every subscription where it stopped.
package sseapi

import (
	"cmp"
	"encoding/base64"
	"encoding/json"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/channel"
	"github.com/eventbus-suite/eventbus/pkg/server"
	"github.com/eventbus-suite/eventbus/pkg/sse"
	"github.com/eventbus-suite/eventbus/pkg/token"
	"github.com/eventbus-suite/eventbus/services/edge/internal/access"
	"github.com/eventbus-suite/eventbus/services/edge/internal/hub"
	"github.com/eventbus-suite/eventbus/services/edge/internal/protocol"
	"github.com/eventbus-suite/eventbus/services/edge/internal/session"
)

const (
	// maxLastEventID bounds the Last-Event-ID a client may send back: the
	// positions of at most protocol.MaxSince namespaces.
	maxLastEventID = 16 << 10
)

// Options configure the handler.
type Options struct {
	// Sessions keeps every rule of a connection: tokens, grants, bounds.
	Sessions *session.Sessions
	Hub      *hub.Hub
	Access   *access.Policy
	Logger   *slog.Logger

	// KeepAlive is how often an idle stream gets a comment, which proxies
	// see as traffic.
	KeepAlive time.Duration
	// WriteTimeout closes a stream whose client takes none of a write for
	// that long.
	WriteTimeout time.Duration
}

// Handler serves SSE connections.
type Handler struct{ Options }

// presence reads ?presence=true, which asks for the joins and leaves of
// the channels of the stream that keep presence, and returns them: at
// least one must.
func (h *Handler) presence(q url.Values, patterns []string) ([]string, *protocol.Error) {
	v := q.Get("presence")
	if v == "" {
		return nil, nil
	}
	on, err := strconv.ParseBool(v)
	if err != nil || !on {
		if err != nil {
			return nil, protocol.Errorf(protocol.CodeBadRequest, "presence: want true or false, got %q", v)
		}
		return nil, nil
	}
	var kept []string
	for _, p := range patterns {
		if h.Hub.KeepsPresence(p) {
			kept = append(kept, p)
		}
	}
	if len(kept) == 0 {
		return nil, protocol.Errorf(protocol.CodePresenceOff,
			"none of the channels keeps presence: only channels (no wildcard) of the namespaces in EDGE_PRESENCE_NAMESPACES do")
	}
	return kept, nil
}

// New returns the handler.
func New(opts Options) *Handler { return &Handler{opts} }

// ServeHTTP checks everything it can before the stream begins, so that a
// refusal is an HTTP status with a JSON error: 400 for bad parameters, 401
// for a missing or bad token, 403 for a channel no grant covers, 429 past
// a bound, 503 when Redis cannot be reached.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	patterns, err := h.patterns(q["channel"])
	if err != nil {
		server.WriteError(w, http.StatusBadRequest, err.Code, err.Message)
		return
	}
	claims, err := h.authenticate(r)
	if err != nil {
		if err.Code == protocol.CodeUnauthorized {
			w.Header().Set("WWW-Authenticate", `Bearer realm="eventbus"`)
		}
		server.WriteError(w, protocol.Status(err.Code), err.Code, err.Message)
		return
	}
	for _, p := range patterns {
		if err := h.Sessions.Forbidden(claims, p); err != nil {
			server.WriteError(w, protocol.Status(err.Code), err.Code, err.Message)
			return
		}
	}
	since, err := lastEventID(cmp.Or(r.Header.Get("Last-Event-ID"), q.Get("last_event_id")), patterns)
	if err != nil {
		server.WriteError(w, http.StatusBadRequest, err.Code, err.Message)
		return
	}
	withPresence, err := h.presence(q, patterns)
	if err != nil {
		server.WriteError(w, http.StatusBadRequest, err.Code, err.Message)
		return
	}

	s := &stream{h: h, ready: make(chan struct{}, 1), kick: make(chan hub.Disconnect, 1), positions: make(positions)}
	for p, c := range since {
		s.positions[p] = maps.Clone(c)
	}
	sess, err := h.Sessions.Open(claims, h.Access.ClientAddr(r), s, protocol.JSON)
	if err != nil {
		server.WriteError(w, protocol.Status(err.Code), err.Code, err.Message)
		return
	}
	defer sess.Close()
	s.client = sess.Client()
	for _, p := range patterns {
		reply := func(rec hub.Recovery) []byte { return subscribed(p, rec) }
		if err := sess.Subscribe(r.Context(), p, since[p], slices.Contains(withPresence, p), reply); err != nil {
			server.WriteError(w, protocol.Status(err.Code), err.Code, err.Message)
			return
		}
	}
	s.run(w, r)
}

// patterns reads the channel parameters: one to MaxSubscriptions patterns,
// each in the grammar; repeats count once.
func (h *Handler) patterns(params []string) ([]string, *protocol.Error) {
	if len(params) == 0 {
		return nil, protocol.Errorf(protocol.CodeBadRequest, "no channel: give one or more, as /sse?channel=order:*&channel=user:*")
	}
	var out []string
	for _, p := range params {
		if err := channel.ValidatePattern(p); err != nil {
			return nil, protocol.Errorf(protocol.CodeInvalidChannel, "channel %q: %v", p, err)
		}
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	if len(out) > h.Sessions.MaxSubscriptions {
		return nil, protocol.Errorf(protocol.CodeTooManySubscriptions, "at most %d subscriptions per connection", h.Sessions.MaxSubscriptions)
	}
	return out, nil
}

// authenticate reads the token of an Authorization: Bearer header, or of
// ?token= for EventSource, which cannot set headers.
func (h *Handler) authenticate(r *http.Request) (*token.Claims, *protocol.Error) {
	tok := r.URL.Query().Get("token")
	if v := r.Header.Get("Authorization"); v != "" {
		var ok bool
		if tok, ok = token.FromAuthorization(v); !ok {
			return nil, protocol.Errorf(protocol.CodeUnauthorized, "Authorization: want Bearer <token>")
		}
	}
	if tok == "" {
		if h.Access.AllowAnonymous {
			return nil, nil
		}
		return nil, protocol.Errorf(protocol.CodeUnauthorized, "no token: send Authorization: Bearer <token>, or ?token=<token>")
	}
	return h.Sessions.Verify(tok)
}

// positions are where a connection stands, for each of its
// subscriptions: pattern → namespace → position. Each subscription has its
// own, as one may still be replaying what another has passed.
type positions map[string]bus.Cursor

// idPrefix starts an id of per-subscription positions: "s1." then
// base64url of {"pattern":{"namespace":["offset","epoch"]}}.
const idPrefix = "s1."

// String encodes ps as an SSE id.
func (ps positions) String() string {
	m := make(map[string]map[string][2]string, len(ps))
	for p, c := range ps {
		if len(c) == 0 {
			continue
		}
		m[p] = make(map[string][2]string, len(c))
		for ns, pos := range c {
			m[p][ns] = [2]string{pos.Offset, pos.Epoch}
		}
	}
	if len(m) == 0 {
		return ""
	}
	b, _ := json.Marshal(m) // strings always marshal
	return idPrefix + base64.RawURLEncoding.EncodeToString(b)
}

// lastEventID reads the positions a reconnecting client sends back, for
// the stream's patterns: an id this transport wrote ("s1.…", a position
// per subscription; a subscription missing from it starts afresh), or a
// bare cursor (bus.Cursor.String), which every subscription resumes from.
// Empty means none.
func lastEventID(id string, patterns []string) (map[string]bus.Cursor, *protocol.Error) {
	if id == "" {
		return nil, nil
	}
	bad := func(format string, args ...any) (map[string]bus.Cursor, *protocol.Error) {
		return nil, protocol.Errorf(protocol.CodeBadRequest, "Last-Event-ID: "+format, args...)
	}
	if len(id) > maxLastEventID {
		return bad("longer than %d bytes", maxLastEventID)
	}
	out := make(map[string]bus.Cursor, len(patterns))
	rest, ok := strings.CutPrefix(id, idPrefix)
	if !ok {
		c, err := bus.ParseCursor(id)
		if err != nil || len(c) > protocol.MaxSince {
			return bad("not an id of this stream: send back the id of its last event")
		}
		for _, p := range patterns {
			out[p] = c
		}
		return out, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(rest)
	if err != nil {
		return bad("not base64url after %s", idPrefix)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return bad("not an id of this stream")
	}
	for p, raw := range m {
		if !slices.Contains(patterns, p) {
			continue // a subscription this stream does not have
		}
		c, err := bus.ParseCursor(base64.RawURLEncoding.EncodeToString(raw))
		if err != nil || len(c) > protocol.MaxSince {
			return bad("bad positions of %s", p)
		}
		out[p] = c
	}
	return out, nil
}

// subscribedReply is the data of a "subscribed" event: how the
// subscription to channel began, as the WebSocket reply says it.
type subscribedReply struct {
	Channel string `json:"channel"`
	protocol.Begun
}

func subscribed(p string, rec hub.Recovery) []byte {
	b, _ := json.Marshal(subscribedReply{p, protocol.BegunOf(rec)}) // strings, bools and ints always marshal
	return b
}

// stream is one connection: the handler's goroutine writes what the hub
// queues.
type stream struct {
	h         *Handler
	client    *hub.Client
	ready     chan struct{} // the hub queued frames for a writer that had stopped
	kick      chan hub.Disconnect
	positions positions // where the client stands, sent as every event's id
}

// Name names the transport to presence.
func (s *stream) Name() string { return "sse" }

// Ready wakes the stream's writer.
func (s *stream) Ready() {
	select {
	case s.ready <- struct{}{}:
	default:
	}
}

// Kicked ends the stream with d.
func (s *stream) Kicked(d hub.Disconnect) { s.kick <- d } // once: buffered

// run writes the stream until the client goes or is kicked.
func (s *stream) run(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	hdr := w.Header()
	hdr.Set("Content-Type", "text/event-stream")
	hdr.Set("Cache-Control", "no-cache")
	hdr.Set("X-Accel-Buffering", "no") // tell nginx not to buffer the stream
	w.WriteHeader(http.StatusOK)
	sw := sse.NewWriter(w)
	write := func(do func() error) bool {
		if err := rc.SetWriteDeadline(time.Now().Add(s.h.WriteTimeout)); err != nil {
			return false
		}
		if do() != nil || rc.Flush() != nil {
			s.client.Kick(hub.DisconnectBroken)
			return false
		}
		return true
	}
	if !write(func() error { return sw.WriteComment("eventbus") }) {
		return
	}
	tick := time.NewTicker(s.h.KeepAlive)
	defer tick.Stop()
	var frames []hub.Frame
	for {
		select {
		case <-s.ready:
			for {
				if frames = s.client.Take(frames[:0]); len(frames) == 0 {
					break // the hub calls onReady for the next
				}
				if !write(func() error { return s.writeFrames(sw, frames) }) {
					return
				}
				clear(frames)
			}
		case <-tick.C:
			if !write(func() error { return sw.WriteComment("keep-alive") }) {
				return
			}
		case d := <-s.kick:
			if d != hub.DisconnectBroken {
				data, _ := json.Marshal(map[string]any{"code": d.Code, "reason": d.Reason})
				write(func() error { return sw.WriteEventBytes("", "close", data) })
			}
			return
		case <-r.Context().Done():
			return
		}
	}
}

// writeFrames writes events as "message" events whose id is the
// connection's positions after them, and subscription replies as
// "subscribed" events, whose positions become part of the id.
func (s *stream) writeFrames(sw *sse.Writer, frames []hub.Frame) error {
	for _, f := range frames {
		if ev := f.Event; ev != nil {
			if !ev.Position.IsZero() {
				for _, p := range f.Subs {
					if s.positions[p] == nil {
						s.positions[p] = make(bus.Cursor)
					}
					s.positions[p][ev.Stream] = ev.Position
				}
			}
			if err := sw.WriteEventBytes(s.id(), "", f.Data); err != nil {
				return err
			}
			continue
		}
		if f.Kind == hub.FrameDropped {
			if err := sw.WriteEventBytes(s.id(), "unsubscribed", f.Data); err != nil {
				return err
			}
			continue
		}
		if f.Kind == hub.FrameSubscribed {
			s.began(f.Channel, *f.Recovery)
		}
		if err := sw.WriteEventBytes(s.id(), "subscribed", f.Data); err != nil {
			return err
		}
	}
	return nil
}

// began takes the positions a subscription to p begins from, as rec says:
// a subscription that could not recover starts over from them, any other
// keeps those it has and adds those of namespaces new to it.
func (s *stream) began(p string, rec hub.Recovery) {
	if rec.Resumed && !rec.Recovered {
		delete(s.positions, p)
	}
	if s.positions[p] == nil {
		s.positions[p] = make(bus.Cursor)
	}
	for ns, pos := range rec.Positions {
		if _, ok := s.positions[p][ns]; !ok {
			s.positions[p][ns] = pos
		}
	}
}

// id is the connection's positions as an SSE id, empty while it has none.
func (s *stream) id() string {
	return s.positions.String()
}
