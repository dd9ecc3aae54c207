package mqttapi

import (
	"maps"
	"slices"
	"strings"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/services/edge/internal/hub"
	"github.com/eventbus-suite/eventbus/services/edge/internal/protocol"
)

// subscribe serves SUBSCRIBE: each filter is granted its QoS (at most 1),
// narrowed to the grants where it is wider (grants.go), or refused with a
// reason, in one SUBACK; a 5.0 one says in its reason string what was
// narrowed or refused, and why. The retained messages of a new
// subscription follow its SUBACK (retain.go).
func (s *session) subscribe(pk packets.Packet) {
	codes := make([]byte, len(pk.Filters))
	var retained [][]byte
	var notes []string
	done := make(map[string]byte, len(pk.Filters)) // a filter repeated in one packet costs once
	for i, f := range pk.Filters {
		if code, ok := done[f.Filter]; ok {
			codes[i] = code
			continue
		}
		code, fresh, patterns, note, cut := s.subscribeOne(f)
		if note != "" {
			notes = append(notes, note)
			s.h.Logger.Debug("mqtt filter narrowed or refused", "client_id", s.id, "filter", f.Filter, "reason_code", code, "reason", note)
		}
		if code < 0x80 && (f.RetainHandling == 0 || f.RetainHandling == 1 && fresh) && len(retained) < maxRetained {
			retained = append(retained, s.retained(f.Filter, patterns, cut)...)
		}
		if s.version == 4 && code >= 0x80 {
			code = 0x80 // 3.1.1 has one failure code
		}
		codes[i], done[f.Filter] = code, code
	}
	ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Suback}, ProtocolVersion: s.version,
		PacketID: pk.PacketID, ReasonCodes: codes}
	if s.version == 5 && len(notes) > 0 && !s.quiet {
		ack.Properties.ReasonString = reason(notes)
	}
	b := encode(ack)
	if s.maxPacket > 0 && len(b) > s.maxPacket && ack.Properties.ReasonString != "" {
		// The reason string is what 5.0 says to leave out first
		// (MQTT-3.9.2-1).
		ack.Properties.ReasonString = ""
		b = encode(ack)
	}
	s.client.Send(b)
	for _, r := range retained {
		s.client.Send(r)
	}
}

// subscribeOne returns the granted QoS or the reason code for refusing f,
// whether the session did not have f before, the hub patterns serving it,
// what a reason string says of it (why it was narrowed or refused by the
// grants, or nothing), and where its live events begin (add).
func (s *session) subscribeOne(f packets.Subscription) (code byte, fresh bool, patterns []string, note string, cut bus.Cursor) {
	// mochi's decoder leaves ShareName to its server: "$share/<group>/…"
	// arrives as the filter.
	if strings.HasPrefix(f.Filter, "$share/") {
		code, note := s.subscribeShared(f)
		return code, false, nil, note, nil
	}
	patterns, narrowed, err := s.cover(f.Filter)
	switch {
	case err != nil:
		return packets.ErrTopicFilterInvalid.Code, false, nil, "", nil
	case len(patterns) == 0:
		return packets.ErrNotAuthorized.Code, false, nil, s.refusal(f.Filter), nil
	case narrowed:
		note = narrowedTo(f.Filter, patterns)
	}
	qos := min(f.Qos, 2)
	s.mu.Lock()
	_, had := s.filters[f.Filter]
	full := !had && len(s.filters) >= s.h.Edge.MaxSubscriptions
	s.mu.Unlock()
	if full {
		return packets.ErrQuotaExceeded.Code, false, nil, "", nil
	}
	// The options are in place before the hub delivers to the filter.
	s.setOptions(f.Filter, filterOptions{NoLocal: f.NoLocal, RetainAsPublished: f.RetainAsPublished})
	code, cut = s.add(f.Filter, qos, patterns, nil)
	if code != 0 {
		return code, false, nil, "", nil
	}
	s.save(false)
	return qos, !had, patterns, note, cut
}

// setOptions gives filter its options.
func (s *session) setOptions(filter string, o filterOptions) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if o == (filterOptions{}) {
		delete(s.options, filter)
		return
	}
	if s.options == nil {
		s.options = make(map[string]filterOptions)
	}
	s.options[filter] = o
}

// add subscribes the hub to what filter needs of patterns, from since
// when the session resumes, and returns 0 or the reason it could not,
// with where the filter's live events begin: an event of a stream at or
// before cut is not delivered to the filter live (it was written before
// the filter was in place), and any other is. Retained messages are then
// those at or before cut, so none comes twice.
func (s *session) add(filter string, qos byte, patterns []string, since bus.Cursor) (code byte, cut bus.Cursor) {
	s.mu.Lock()
	// The filter is in place before the hub delivers: no event of the
	// subscription finds it missing.
	s.filters[filter] = qos
	s.dirty = true
	cut = maps.Clone(s.cursor)
	if cut == nil {
		cut = make(bus.Cursor)
	}
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
		err := s.edge.SubscribeCovered(s.ctx, p, since, func(r hub.Recovery) []byte {
			// Where the streams stood before the subscription began: a
			// stream new to the session begins there.
			s.mu.Lock()
			for st, pos := range r.Positions {
				if _, ok := cut[st]; !ok {
					cut[st] = pos
				}
			}
			s.mu.Unlock()
			return s.subscribed(p, r)
		})
		if err != nil {
			s.h.Logger.Debug("mqtt subscribe failed", "filter", filter, "pattern", p, "error", err)
			s.drop(filter)
			if err.Code == protocol.CodeTooManyPatterns {
				return packets.ErrQuotaExceeded.Code, nil
			}
			return packets.ErrUnspecifiedError.Code, nil
		}
	}
	return 0, cut
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
	s.save(false)
}

// drop removes filter, and from the hub the patterns no other filter
// needs. It reports whether the client had the filter.
func (s *session) drop(filter string) bool {
	if strings.HasPrefix(filter, "$share/") {
		return s.dropShared(filter)
	}
	s.mu.Lock()
	_, had := s.filters[filter]
	delete(s.filters, filter)
	delete(s.options, filter)
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

// unsubscribedFrom takes the filters a hub pattern the edge dropped served with
// it, as MQTT has no packet to tell the client.
func (s *session) unsubscribedFrom(pattern string) {
	s.mu.Lock()
	filters := slices.Clone(s.byPattern[pattern])
	s.mu.Unlock()
	for _, f := range filters {
		s.drop(f)
	}
	if len(filters) > 0 {
		s.save(false)
	}
}
