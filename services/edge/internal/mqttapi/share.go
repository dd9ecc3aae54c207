package mqttapi

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/retry"
	"github.com/eventbus-suite/eventbus/services/edge/internal/hub"
)

// Shared subscriptions ("$share/<group>/<filter>") are the bus's durable
// consumer groups: every session subscribed to the same group and filter,
// on any edge, is a member of one group, and each event the filter takes
// goes to one member, at least once. A QoS 1 member's PUBACK is the
// event's acknowledgement; one it does not acknowledge within the
// visibility timeout (its connection lost, say) goes to another member.
// At QoS 0 an event is acknowledged as it is written. The filter must lie
// within the connection's grants whole: members share one reading of the
// record, so none can be narrowed. Shared subscriptions need the record
// (they are refused without history), are not kept in a session, and get
// no retained messages, as MQTT says.

// shared is one shared subscription of a session.
type shared struct {
	filter   string // within $share/<group>/
	qos      byte   // guarded by the session's mu
	consumer bus.Consumer
	cancel   context.CancelFunc
	done     chan struct{} // closed once it left the group
	room     chan struct{} // the window may have room again
}

// parseShare splits "$share/<group>/<filter>".
func parseShare(f string) (group, filter string, ok bool) {
	rest, ok := strings.CutPrefix(f, "$share/")
	if !ok {
		return "", "", false
	}
	group, filter, ok = strings.Cut(rest, "/")
	if !ok || group == "" || filter == "" || strings.ContainsAny(group, "+#") {
		return "", "", false
	}
	return group, filter, true
}

// busToken names a group or member as the bus takes it: one channel token.
func busToken(kind, s string) string {
	h := sha256.Sum256([]byte(s))
	return kind + "-" + hex.EncodeToString(h[:12])
}

// subscribeShared serves a "$share/…" filter of a SUBSCRIBE: it returns
// the granted QoS or the reason for refusing it, and what a reason string
// says of it.
func (s *session) subscribeShared(f packets.Subscription) (byte, string) {
	group, filter, ok := parseShare(f.Filter)
	if !ok {
		return packets.ErrTopicFilterInvalid.Code, "want $share/<group>/<filter>, the group without '+' or '#'"
	}
	if s.h.Consumers == nil {
		return packets.ErrSharedSubscriptionsNotSupported.Code, "shared subscriptions need the record (BUS_HISTORY)"
	}
	patterns, narrowed, err := s.cover(filter)
	switch {
	case err != nil:
		return packets.ErrTopicFilterInvalid.Code, ""
	case len(patterns) == 0 || narrowed:
		return packets.ErrNotAuthorized.Code, f.Filter + ": a shared subscription must lie within the grants whole"
	}
	qos := min(f.Qos, 1)
	s.mu.Lock()
	if sh := s.shares[f.Filter]; sh != nil {
		sh.qos = qos // subscribed again: the QoS it asks for now
		s.mu.Unlock()
		return qos, ""
	}
	full := len(s.filters)+len(s.shares) >= s.h.Edge.MaxSubscriptions
	s.mu.Unlock()
	if full {
		return packets.ErrQuotaExceeded.Code, ""
	}
	ctx, cancel := context.WithCancel(s.ctx)
	c, err := s.h.Consumers.Consume(ctx, busToken("mqtt-share", group+"\x00"+filter), busToken("m", s.key), patterns,
		bus.ConsumerOptions{Visibility: s.h.ShareVisibility})
	if err != nil {
		cancel()
		s.h.Logger.Warn("mqtt shared subscription not joined", "filter", f.Filter, "error", err)
		return packets.ErrUnspecifiedError.Code, ""
	}
	sh := &shared{filter: filter, qos: qos, consumer: c, cancel: cancel, done: make(chan struct{}), room: make(chan struct{}, 1)}
	s.mu.Lock()
	if s.shares == nil {
		s.shares = make(map[string]*shared)
	}
	s.shares[f.Filter] = sh
	s.mu.Unlock()
	go s.runShared(ctx, sh)
	return qos, ""
}

// dropShared ends shared subscription f, reporting whether there was one:
// what its member took and did not acknowledge goes to another member.
func (s *session) dropShared(f string) bool {
	s.mu.Lock()
	sh := s.shares[f]
	delete(s.shares, f)
	s.mu.Unlock()
	if sh == nil {
		return false
	}
	sh.cancel()
	<-sh.done
	return true
}

// endShared ends every shared subscription, as the connection ends.
func (s *session) endShared() {
	s.mu.Lock()
	fs := make([]string, 0, len(s.shares))
	for f := range s.shares {
		fs = append(fs, f)
	}
	s.mu.Unlock()
	for _, f := range fs {
		s.dropShared(f)
	}
}

// runShared hands sh's events to the writer as room opens in the QoS 1
// window, and keeps what it took from going to another member while it
// waits for its PUBACK, until ctx ends; then it leaves the group.
func (s *session) runShared(ctx context.Context, sh *shared) {
	defer close(sh.done)
	fetched := make(chan []bus.Delivery)
	fetchErr := make(chan error)
	want := make(chan int)
	fetcher := make(chan struct{})
	go func() { // Fetch blocks until an event comes: in a goroutine of its own
		defer close(fetcher)
		for n := range want {
			ds, err := sh.consumer.Fetch(ctx, n)
			if err != nil {
				select {
				case fetchErr <- err:
				case <-ctx.Done():
					return
				}
				continue
			}
			select {
			case fetched <- ds:
			case <-ctx.Done():
				return
			}
		}
	}()
	defer func() {
		close(want)
		<-fetcher // no Fetch runs as the member leaves
		_ = sh.consumer.Close()
	}()
	beat := time.NewTicker(max(s.h.ShareVisibility/3, time.Millisecond))
	defer beat.Stop()
	var backoff retry.Backoff // quiet: the hub's subscription speaks for an outage of Redis
	fetching := false
	for {
		if !fetching {
			if room := s.room(); room > 0 {
				select {
				case want <- room:
					fetching = true
				case <-ctx.Done():
					return
				}
			}
		}
		select {
		case ds := <-fetched:
			fetching = false
			backoff.Reset()
			s.hand(ctx, sh, ds)
		case err := <-fetchErr:
			fetching = false
			if ctx.Err() != nil {
				return
			}
			s.h.Logger.Debug("mqtt shared subscription fetch", "filter", sh.filter, "error", err)
			if backoff.Wait(ctx) != nil {
				return
			}
		case <-sh.room:
		case <-beat.C:
			if ds := s.heldFor(sh); len(ds) > 0 {
				if err := sh.consumer.Extend(ctx, ds...); err != nil {
					s.h.Logger.Debug("mqtt shared subscription extend", "filter", sh.filter, "error", err)
				}
			}
		case <-ctx.Done():
			return
		}
	}
}

// room is how many more messages the QoS 1 window takes now.
func (s *session) room() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.window - len(s.inflight) - len(s.held)
}

// hand queues ds for the writer: at QoS 1 behind what the window holds,
// acknowledged by the PUBACK; at QoS 0 written and acknowledged at once.
// An event the filter does not take (a pattern matches more than MQTT's
// filter), or whose expiry has passed, is acknowledged without a word.
func (s *session) hand(ctx context.Context, sh *shared, ds []bus.Delivery) {
	var done []bus.Delivery
	now := time.Now()
	s.mu.Lock()
	for _, d := range ds {
		ev, err := hub.NewEvent(d.Channel, "", bus.Position{}, d.Payload) // no session position: the group keeps it
		if err != nil || !match(sh.filter, topicOf(d.Channel)) || s.edge.Withholds(d.Channel) {
			done = append(done, d)
			continue
		}
		pk, err := publishOf(ev, s.version, now)
		if err != nil {
			done = append(done, d)
			continue
		}
		if qos := min(sh.qos, publishedQoS(ev), 1); qos == 0 { // a group's member takes QoS 1 at most
			s.client.Send(encode(pk))
			done = append(done, d)
			continue
		}
		s.held = append(s.held, &pending{qos: 1, size: len(pk.Payload), ev: ev, share: sh, delivery: d})
		s.heldBytes += len(pk.Payload)
	}
	s.mu.Unlock()
	s.Ready()
	if len(done) > 0 {
		if err := sh.consumer.Ack(ctx, done...); err != nil && !errors.Is(err, context.Canceled) {
			s.h.Logger.Debug("mqtt shared subscription ack", "filter", sh.filter, "error", err)
		}
	}
}

// heldFor returns the deliveries of sh that wait for the window or a
// PUBACK.
func (s *session) heldFor(sh *shared) []bus.Delivery {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ds []bus.Delivery
	for _, p := range s.held {
		if p.share == sh {
			ds = append(ds, p.delivery)
		}
	}
	for _, p := range s.inflight {
		if p.share == sh {
			ds = append(ds, p.delivery)
		}
	}
	return ds
}

// ackShared acknowledges the delivery of a PUBACKed message of a shared
// subscription.
func (s *session) ackShared(p *pending) {
	if err := p.share.consumer.Ack(context.WithoutCancel(s.ctx), p.delivery); err != nil {
		// Unacknowledged, it goes to a member again: at least once.
		s.h.Logger.Debug("mqtt shared subscription ack", "filter", p.share.filter, "error", err)
	}
}

// roomFreed tells every shared subscription that the window may have
// room again.
func (s *session) roomFreed() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sh := range s.shares {
		select {
		case sh.room <- struct{}{}:
		default:
		}
	}
}
