package mqttapi

import (
	"context"
	"maps"
	"slices"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/services/edge/internal/hub"
)

// A session kept past its connection is its filters (with their QoS and
// options) and, per namespace,
// the position of the last event the client has for certain. It is saved
// when its filters change, every saveInterval while events flow, and when
// the connection ends; an edge that dies loses at most saveInterval of
// positions, which the next connection is sent again (at least once,
// never a gap). A resumed session subscribes from its positions: the hub
// replays from the record what was published meanwhile, up to
// EDGE_RECOVER_MAX events.

// saveInterval is how often a session whose positions moved is saved.
const saveInterval = time.Second

// storeTimeout bounds a session's reads and writes in Redis.
const storeTimeout = 2 * time.Second

// begin starts the connection's session: a clean start ends any kept
// one; otherwise it returns the kept session to resume, or nil. A kept
// session that cannot be read (Redis away, a cluster failing over) is an
// error, not a fresh start: the client connects again and resumes,
// rather than lose what was published while it was away.
func (s *session) begin(clean bool) (*state, error) {
	st := s.h.Sessions
	if st == nil {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(s.ctx, storeTimeout)
	defer cancel()
	if clean {
		if err := st.End(ctx, s.key, s.since.UnixNano()); err != nil {
			s.h.Logger.Warn("mqtt session not ended", "client_id", s.id, "error", err)
		}
		return nil, nil
	}
	kept, ok, err := st.Load(ctx, s.key)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, nil
	}
	return &kept, nil
}

// resume subscribes the kept filters, narrowed to what the token grants
// now (grants.go), from the session's positions.
func (s *session) resume(kept state) {
	s.mu.Lock()
	s.resumed = true
	s.cursor = kept.Cursor
	if s.cursor == nil {
		s.cursor = make(bus.Cursor)
	}
	s.floor = maps.Clone(s.cursor)
	since := maps.Clone(s.cursor)
	for _, id := range kept.Pubrel {
		s.inflight[id] = &pending{qos: 2, rec: true, sent: time.Now()}
		s.client.Send(encode(pubrel(id, s.version)))
	}
	s.mu.Unlock()
	for filter, qos := range kept.Filters {
		patterns, _, err := s.cover(filter)
		if err != nil || len(patterns) == 0 {
			continue // the new token grants nothing of it
		}
		s.setOptions(filter, kept.Options[filter])
		if code, _ := s.add(filter, qos, patterns, since); code != 0 {
			s.h.Logger.Warn("mqtt session filter not resumed", "client_id", s.id, "filter", filter, "reason_code", code)
		}
	}
}

// subscribed takes what the hub says of a new subscription: where its
// namespaces stand, for a fresh one, as the session's positions where it
// has none. The hub queues the returned frame: none, as SUBACK answers
// for every filter.
func (s *session) subscribed(p string, r hub.Recovery) []byte {
	if r.Resumed && !r.Recovered {
		s.h.Logger.Warn("mqtt session resumed without what it missed", "client_id", s.id, "pattern", p, "reason", r.Reason)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cursor == nil {
		s.cursor = make(bus.Cursor)
	}
	if s.floor == nil {
		s.floor = make(bus.Cursor)
	}
	for ns, pos := range r.Positions {
		if _, ok := s.cursor[ns]; !ok {
			s.cursor[ns] = pos
			s.dirty = true
		}
		if _, ok := s.floor[ns]; !ok {
			s.floor[ns] = pos
		}
	}
	return nil
}

// advance moves ns's position to pos. Call with mu held.
func (s *session) advance(ns string, pos bus.Position) {
	if pos.IsZero() {
		return
	}
	if s.cursor == nil {
		s.cursor = make(bus.Cursor)
	}
	if cur, ok := s.cursor[ns]; ok && cur.Epoch == pos.Epoch && bus.CompareOffsets(pos.Offset, cur.Offset) <= 0 {
		return
	}
	s.cursor[ns] = pos
	s.dirty = true
}

// state is the session as it is to be kept: its positions, each held
// back to before the earliest QoS 1 message of its namespace the client
// has not acknowledged. Call with mu held.
func (s *session) state() state {
	cursor := maps.Clone(s.cursor)
	earliest := map[string]*pending{}
	unsent := s.held
	if s.dropped != nil {
		unsent = append(unsent[:len(unsent):len(unsent)], s.dropped)
	}
	for _, ps := range [][]*pending{unsent, slices.Collect(maps.Values(s.inflight))} {
		for _, p := range ps {
			if p.pos.IsZero() || p.rec {
				continue // the client has a recorded QoS 2 message: only its PUBREL is owed
			}
			if e, ok := earliest[p.ns]; !ok || bus.CompareOffsets(p.pos.Offset, e.pos.Offset) < 0 {
				earliest[p.ns] = p
			}
		}
	}
	// Hold each back to where its namespace stood before its earliest
	// message: a position the record holds, as a resume needs. Replays of
	// several patterns may interleave a namespace's events; when that
	// position is not before the message, fall back to where the
	// namespace stood when this connection began.
	for ns, p := range earliest {
		hold := p.prev
		if !hold.IsZero() && bus.CompareOffsets(hold.Offset, p.pos.Offset) >= 0 {
			hold = s.floor[ns]
		}
		if hold.IsZero() {
			delete(cursor, ns) // from the start of what the record holds of ns
		} else {
			cursor[ns] = hold
		}
	}
	var pubrel []uint16
	for id, p := range s.inflight {
		if p.rec {
			pubrel = append(pubrel, id)
		}
	}
	slices.Sort(pubrel)
	return state{Filters: maps.Clone(s.filters), Options: maps.Clone(s.options), Cursor: cursor, Since: s.since.UnixNano(), Pubrel: pubrel}
}

// save keeps the session, when it is kept and changed since its last
// save, for its expiry and, while the connection lasts, an hour more. With
// refresh it also saves an unchanged session whose last save is half its
// expiry old, so that it does not expire while its connection lasts.
func (s *session) save(refresh bool) {
	if s.expiry == 0 {
		return
	}
	// One save at a time, and end's after any under way: a late one would
	// bring back a session end ended, or outlive its expiry.
	s.saving.Lock()
	defer s.saving.Unlock()
	s.mu.Lock()
	stale := refresh && time.Since(s.saved) >= s.expiry/2
	if s.gone || s.ending || !s.dirty && !stale {
		s.mu.Unlock()
		return
	}
	st := s.state()
	s.dirty, s.saved = false, time.Now()
	s.mu.Unlock()
	s.store(st, s.expiry+time.Hour)
}

func (s *session) store(st state, ttl time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	if err := s.h.Sessions.Save(ctx, s.key, st, ttl); err != nil {
		s.h.Logger.Warn("mqtt session not saved", "client_id", s.id, "error", err)
	}
}

// end keeps the session for its expiry as the connection ends, or ends
// it when it is not to outlive the connection.
func (s *session) end() {
	if s.h.Sessions == nil {
		return
	}
	s.mu.Lock()
	s.ending = true // no save from here on but this one
	if s.saver != nil {
		s.saver.Stop()
	}
	s.mu.Unlock()
	s.saving.Lock() // a save under way lands first
	defer s.saving.Unlock()
	expiry := s.expiryAtEnd()
	s.mu.Lock()
	gone, resumed, st := s.gone, s.resumed, s.state()
	s.mu.Unlock()
	switch {
	case gone:
	case expiry > 0:
		s.store(st, expiry)
	case resumed || s.expiry > 0: // a 5.0 session resumed, or saved, with an expiry of 0 at the end ends now
		ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
		defer cancel()
		_ = s.h.Sessions.End(ctx, s.key, s.since.UnixNano())
	}
}

// expiryAtEnd is how long the session outlives its connection: as CONNECT
// said, or DISCONNECT changed it.
func (s *session) expiryAtEnd() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.endExpiry != nil {
		return *s.endExpiry
	}
	return s.expiry
}

// takenOver closes the connection for a newer one of its client id, which
// keeps the session from now on.
func (s *session) takenOver() {
	s.mu.Lock()
	s.gone = true
	s.mu.Unlock()
	s.disconnect(packets.ErrSessionTakenOver, hub.DisconnectTakenOver)
}
