package mqttapi

import (
	"bytes"
	"context"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/channel"
	"github.com/eventbus-suite/eventbus/services/edge/internal/hub"
)

// A new subscription is sent, after its SUBACK, the retained message of
// each channel it matches, with RETAIN set, at the lesser of the QoS it
// was published at and the filter's (5.0's Retain Handling 1:
// only for a filter the session did not have; 2: none): the topic's last
// PUBLISH with RETAIN (retained.go), or, with RetainLatest, the channel's
// latest event within the newest retainScan entries of its namespace's
// record. Either way a message that also comes live, published as the
// subscription began, is not sent twice.

// retainScan bounds the entries of a namespace read back for retained
// messages; maxRetained, the retained messages one SUBSCRIBE reads.
const (
	retainScan  = 1000
	maxRetained = 1000
)

// Record is where retained messages come from.
type Record interface {
	// Last returns, for each channel matching pattern, its latest event
	// among the newest scan entries of its namespace, oldest first.
	Last(ctx context.Context, pattern string, scan int) ([]bus.Event, error)
	// StreamOf names the stream channel ch's events are recorded in.
	StreamOf(ch string) string
}

// retained returns the PUBLISH packets of filter's retained messages,
// read through patterns, the hub patterns that serve it within the grants:
// the latest event of each channel at or before cut, where the filter's
// live events begin. A later one comes live, so never twice.
func (s *session) retained(filter string, patterns []string, cut bus.Cursor) [][]byte {
	if s.h.Record == nil && s.h.Retained == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(s.ctx, storeTimeout)
	defer cancel()
	var out [][]byte
	seen := make(map[string]bool)
	wanted := func(ch string) bool {
		return match(filter, topicOf(ch)) && !channel.Reserved(ch) && !s.edge.Withholds(ch)
	}
	for _, p := range patterns {
		var events []bus.Event
		var err error
		if s.h.RetainLatest {
			events, err = s.h.Record.Last(ctx, p, retainScan)
		} else if s.h.Retained != nil {
			events, err = s.h.Retained.Matching(ctx, p, wanted, maxRetained)
		}
		if err != nil {
			s.h.Logger.Warn("mqtt retained messages not read", "filter", filter, "error", err)
			return out
		}
		for _, e := range events {
			if seen[e.Channel] || !wanted(e.Channel) {
				continue
			}
			if !e.Position.IsZero() && s.h.Record != nil && !before(cut, s.h.Record.StreamOf(e.Channel), e.Position) {
				// Published as the subscription began: it comes live.
				// Its channel's latest before it is not looked for, so
				// the channel has no retained message this time.
				seen[e.Channel] = true
				continue
			}
			seen[e.Channel] = true
			ev, err := hub.NewEvent(e.Channel, "", e.Position, e.Payload) // sent as it is, not resumed from
			if err != nil {
				continue // not an envelope: nothing a client could read
			}
			now := time.Now()
			pk, err := publishOf(ev, s.version, now)
			if err != nil {
				continue // expired, or no JSON
			}
			pk.FixedHeader.Retain = true
			s.mu.Lock()
			pk.FixedHeader.Qos = min(s.filters[filter], publishedQoS(ev))
			s.mu.Unlock()
			if pk.FixedHeader.Qos == 0 {
				out = append(out, encode(pk))
				continue
			}
			b, ok := s.retainedInWindow(pk, ev, now)
			if !ok {
				s.h.Logger.Warn("mqtt retained messages past the send queue not sent", "client_id", s.id, "filter", filter)
				return out
			}
			if b != nil {
				out = append(out, b)
			}
		}
	}
	return out
}

// retainedInWindow takes pk, a retained message at QoS 1 or 2 (the lesser
// of the published and the granted, as MQTT-3.8.4-8 says) made from ev at
// at: it returns
// the packet to send, numbered, while the client's window has room, or
// holds it back for the writer (nil); false when holding it would pass
// the send queue. It is not resumed from: the session's positions do not
// wait for its acknowledgement.
func (s *session) retainedInWindow(pk packets.Packet, ev *hub.Event, at time.Time) ([]byte, bool) {
	p := &pending{qos: pk.FixedHeader.Qos, retain: pk.FixedHeader.Retain, size: len(pk.Payload), ev: ev}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.inflight) < s.window {
		var buf bytes.Buffer
		s.send(&buf, p, &pk, at)
		return buf.Bytes(), true
	}
	if s.heldBytes+p.size > s.h.QueueBytes && len(s.held) > 0 {
		return nil, false
	}
	s.held = append(s.held, p)
	s.heldBytes += p.size
	return nil, true
}

// before reports whether pos, in stream st, is at or before where cut
// says st stood: a stream cut does not know had no event then.
func before(cut bus.Cursor, st string, pos bus.Position) bool {
	c, ok := cut[st]
	return ok && c.Epoch == pos.Epoch && bus.CompareOffsets(pos.Offset, c.Offset) <= 0
}
