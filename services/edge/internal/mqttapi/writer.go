package mqttapi

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/eventbus-suite/eventbus/pkg/mqttwire"
	"github.com/eventbus-suite/eventbus/services/edge/internal/hub"
	"github.com/eventbus-suite/eventbus/services/edge/internal/protocol"
	"github.com/eventbus-suite/eventbus/services/edge/internal/receipt"
)

// The session's writer runs only while there is work, so that an idle
// connection costs no goroutine but its reader: frames in the hub's
// queue, room opened in the window, messages due again, the connection's
// end. One runs at a time; session.writer says whether it does. Out of
// work, it rests for linger before it stops, so that a connection that
// gets messages more often than that keeps one writer, and its grown
// stack, instead of starting one for each message.
const (
	writerIdle    int32 = iota // none runs: Ready starts one
	writerRunning              // one runs
	writerAgain                // one runs, and looks again before it stops
	writerResting              // one waits for session.wake, for linger, before it stops
	writerClosed               // the connection is closed: none starts again
)

// linger is how long a writer out of work waits for more before it
// stops. Starting one per message, its stack growing each time, cost 13%
// of the edge's CPU at 20 QoS 1 messages a second a connection
// (docs/benchmarks.md); a connection idle for longer holds none.
const linger = 100 * time.Millisecond

// Ready runs the writer, or has the running one look again: frames wait
// in the hub's queue, the window opened, or the connection ends.
func (s *session) Ready() {
	for {
		switch s.writer.Load() {
		case writerIdle:
			if s.writer.CompareAndSwap(writerIdle, writerRunning) {
				go s.write()
				return
			}
		case writerRunning:
			if s.writer.CompareAndSwap(writerRunning, writerAgain) {
				return
			}
		case writerResting:
			if s.writer.CompareAndSwap(writerResting, writerRunning) {
				s.wake <- struct{}{} // one send a rest: wake has room
				return
			}
		default:
			return
		}
	}
}

// rest ends a pass of the writer, and reports whether it is to stop:
// false when Ready asked it to look again meanwhile, or does so within
// linger. The writer's timer is made by its first rest.
func (s *session) rest(timer **time.Timer) bool {
	if s.wake == nil {
		s.wake = make(chan struct{}, 1) // before Ready can see it resting
	}
	for !s.writer.CompareAndSwap(writerRunning, writerResting) {
		if s.writer.CompareAndSwap(writerAgain, writerRunning) {
			return false
		}
	}
	if *timer == nil {
		*timer = time.NewTimer(linger)
	} else {
		(*timer).Reset(linger)
	}
	select {
	case <-s.wake:
		return false // Ready made it running
	case <-(*timer).C:
		if s.writer.CompareAndSwap(writerResting, writerIdle) {
			return true
		}
		<-s.wake // Ready was first, and sends
		return false
	}
}

// publish is the MQTT encoding of events: the QoS 0 PUBLISH of an event
// on its channel's topic, with the envelope in JSON as its payload, made
// once for every connection of the MQTT version it goes to. A writer
// sends it as it is at QoS 0 and makes its own at QoS 1.
type publish struct{ version byte }

func (e publish) Encode(ev *hub.Event, _ []string) ([]byte, error) {
	pk, err := publishOf(ev, e.version, time.Now())
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if err := pk.PublishEncode(&buf); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// errExpired is publishOf's error for a message whose Message Expiry
// Interval has passed: it goes to no one.
var errExpired = fmt.Errorf("message expired: %w", hub.ErrSkip)

// publishOf is the QoS 0 PUBLISH of ev in MQTT version at now: what an
// MQTT client published goes out as it was sent (5.0: with its
// properties, its expiry counted down), any other event as its envelope
// in JSON.
func publishOf(ev *hub.Event, version byte, now time.Time) (packets.Packet, error) {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, ProtocolVersion: version, TopicName: ev.Topic()}
	m := ev.Envelope.GetMqtt()
	if m == nil {
		payload, err := ev.JSON()
		if err != nil {
			return packets.Packet{}, err
		}
		pk.Payload = payload
		if version == 5 {
			pk.Properties.PayloadFormat, pk.Properties.PayloadFormatFlag = 1, true // UTF-8
			pk.Properties.ContentType = "application/json"
		}
		return pk, nil
	}
	pk.Payload = m.GetPayload()
	var left uint32
	if m.GetMessageExpirySeconds() > 0 {
		end := ev.Envelope.GetTime().AsTime().Add(time.Duration(m.GetMessageExpirySeconds()) * time.Second)
		if !now.Before(end) {
			return packets.Packet{}, errExpired
		}
		left = uint32((end.Sub(now) + time.Second - 1) / time.Second) // what is left, rounded up
	}
	if version == 5 {
		p := &pk.Properties
		p.ContentType, p.ResponseTopic, p.CorrelationData, p.MessageExpiryInterval = m.GetContentType(), m.GetResponseTopic(), m.GetCorrelationData(), left
		pk.Mods.AllowResponseInfo = true // mochi's encoder writes response topic and correlation data only so: 5.0 says pass them on
		if m.GetPayloadUtf8() {
			p.PayloadFormat, p.PayloadFormatFlag = 1, true
		}
		for _, u := range m.GetUserProperties() {
			p.User = append(p.User, packets.UserProperty{Key: u.GetKey(), Val: u.GetValue()})
		}
	}
	return pk, nil
}

// publishedQoS is the QoS ev was published at: an MQTT client's, or 1
// for any other event.
func publishedQoS(ev *hub.Event) byte {
	if m := ev.Envelope.GetMqtt(); m != nil {
		return byte(min(m.GetQos(), 2))
	}
	return 1
}

// writing is a writer's scratch space, pooled: an idle connection keeps
// none.
type writing struct {
	frames []hub.Frame
	buf    bytes.Buffer
}

var writings = sync.Pool{New: func() any { return new(writing) }}

// write sends what the hub queues, what the QoS 1 window holds back and
// what is due again, until nothing waits for linger; when the connection
// ends, it closes it. Its scratch space goes back to the pool as it
// rests.
func (s *session) write() {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		if s.ctx.Err() != nil {
			d := hub.DisconnectBroken // unless a kick says why
			if k := s.kickedWith.Load(); k != nil {
				d = *k
			}
			s.writer.Store(writerClosed)
			s.closeWith(d)
			s.stopTimers()
			close(s.closed)
			return
		}
		w := writings.Get().(*writing)
		if s.resendDue.Swap(false) {
			s.resend(&w.buf)
		}
		s.drain(w)
		w.buf.Reset()
		writings.Put(w)
		s.armRetry()
		if s.rest(&timer) {
			return
		}
	}
}

// drain writes what the hub queued and what fits the window, until none
// waits.
func (s *session) drain(w *writing) {
	buf := &w.buf
	s.h.Pacer.Start()
	defer s.h.Pacer.Stop()
	for {
		w.frames = s.client.Take(w.frames[:0])
		s.mu.Lock()
		for len(s.held) > 0 && len(s.inflight) < s.window {
			p := s.held[0]
			s.held = s.held[1:]
			s.heldBytes -= p.size
			now := time.Now()
			pk, err := publishOf(p.ev, s.version, now)
			if err != nil {
				continue // expired while it waited: it goes to no one
			}
			pk.FixedHeader.Qos, pk.FixedHeader.Retain = p.qos, p.retain
			s.send(buf, p, &pk, now)
		}
		s.mu.Unlock()
		if len(w.frames) == 0 && buf.Len() == 0 {
			return
		}
		for _, f := range w.frames {
			s.frame(buf, f)
			if buf.Len() >= maxPacked {
				s.flush(buf)
			}
		}
		clear(w.frames)
		s.flush(buf)
		s.h.Pacer.Pause(s.client)
	}
}

// armRetry has the writer resend, RetryInterval from now, what is still
// unacknowledged then; a session with nothing in flight keeps no timer
// running.
func (s *session) armRetry() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.inflight) == 0 || s.retrying {
		return
	}
	s.retrying = true
	if s.retry == nil {
		s.retry = time.AfterFunc(s.h.RetryInterval, s.retryDue)
		return
	}
	s.retry.Reset(s.h.RetryInterval)
}

func (s *session) retryDue() {
	s.mu.Lock()
	s.retrying = false
	s.mu.Unlock()
	s.resendDue.Store(true)
	s.Ready()
}

// saveEvery saves a kept session every saveInterval while its connection
// lasts, when it changed (and, now and then, when not: save).
func (s *session) saveEvery() {
	if s.ctx.Err() != nil {
		return
	}
	s.save(true)
	s.mu.Lock()
	if s.ctx.Err() == nil {
		s.saver.Reset(saveInterval)
	}
	s.mu.Unlock()
}

// stopTimers stops the session's timers as its connection ends.
func (s *session) stopTimers() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, t := range []*time.Timer{s.retry, s.saver} {
		if t != nil {
			t.Stop()
		}
	}
}

// frame appends a queued frame: a packet of the session's own, or an
// event as a PUBLISH when one of the client's filters takes it.
func (s *session) frame(buf *bytes.Buffer, f hub.Frame) {
	switch {
	case f.Kind == hub.FrameDropped:
		// A subscription the edge dropped (a control command, a token
		// that no longer grants it): its notice is the JSON protocol's,
		// which MQTT has no packet for.
		s.unsubscribedFrom(f.Channel)
		return
	case f.Event == nil:
		if len(f.Data) > 0 && f.Data[0]>>4 == packets.Disconnect {
			s.saidBye = true // closeWith sends no second one
		}
		buf.Write(f.Data)
		return
	}
	topic := f.Event.Topic()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ctx.Err() != nil {
		return // kicked: what is left of the batch was never sent
	}
	qos, ok, rap := s.grant(f.Subs, topic, s.own(f.Event))
	qos = min(qos, publishedQoS(f.Event)) // the lesser of the published and the subscribed
	retain := rap && f.Event.Envelope.GetMqtt().GetRetain()
	switch {
	case !ok, s.maxPacket > 0 && len(f.Data)+2 > s.maxPacket:
		// Not for this client's filters, or larger than it takes (5.0
		// says to drop it): either way done with.
		s.advance(f.Event.Stream, f.Event.Position)
		return
	case qos == 0 && !retain:
		s.advance(f.Event.Stream, f.Event.Position)
		buf.Write(f.Data) // the shared QoS 0 PUBLISH
		return
	}
	now := time.Now()
	pk, err := publishOf(f.Event, s.version, now)
	if err != nil {
		s.advance(f.Event.Stream, f.Event.Position) // expired: done with
		return
	}
	pk.FixedHeader.Qos, pk.FixedHeader.Retain = qos, retain
	if qos == 0 {
		s.advance(f.Event.Stream, f.Event.Position)
		_ = mqttwire.Append(buf, &pk)
		return
	}
	p := &pending{qos: qos, retain: retain, size: len(pk.Payload), ev: f.Event, ns: f.Event.Stream, pos: f.Event.Position, prev: s.cursor[f.Event.Stream]}
	if n, ok := receipt.Of(f.Event); ok {
		p.note = n.ID
		s.edge.Note(n)
	}
	if s.heldBytes+p.size > s.h.QueueBytes && len(s.held) > 0 {
		// Too slow: closed, and a kept session resumes from before this
		// message.
		s.dropped = p
		s.client.Kick(hub.DisconnectSlow)
		return
	}
	s.advance(p.ns, p.pos)
	if len(s.inflight) < s.window {
		s.send(buf, p, &pk, now)
		return
	}
	s.held = append(s.held, p)
	s.heldBytes += p.size
}

// grant returns the QoS an event on topic goes out with: the highest of
// the client's filters that match it with MQTT's semantics, among those
// served by the hub patterns it came through, but for a filter with No
// Local when the event is the client's own; and whether one of them asks
// for Retain As Published. Call with mu held.
func (s *session) grant(patterns []string, topic string, own bool) (qos byte, ok, rap bool) {
	for _, p := range patterns {
		for _, f := range s.byPattern[p] {
			o := s.options[f]
			if !match(f, topic) || own && o.NoLocal {
				continue
			}
			qos, ok, rap = max(qos, s.filters[f]), true, rap || o.RetainAsPublished
		}
	}
	return qos, ok, rap
}

// own reports whether ev is one this client published: from its client
// id, under its token's user.
func (s *session) own(ev *hub.Event) bool {
	env := ev.Envelope
	c := s.edge.Claims()
	id, ok := strings.CutPrefix(env.GetSource(), "mqtt:")
	return ok && id == s.id && env.GetMqtt() != nil && (c == nil || env.GetSubject() == c.Subject)
}

// send appends pk, the PUBLISH of p at QoS 1 or 2 made at now, numbering
// it and keeping p for the acknowledgement. Call with mu held.
func (s *session) send(buf *bytes.Buffer, p *pending, pk *packets.Packet, now time.Time) {
	for {
		s.nextID++
		if _, used := s.inflight[s.nextID]; s.nextID != 0 && !used {
			break
		}
	}
	pk.PacketID = s.nextID
	p.first, p.sent = now, now
	s.inflight[pk.PacketID] = p
	_ = mqttwire.Append(buf, pk)
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
		p.sent = now
		if p.rec {
			rel := pubrel(id, s.version)
			_ = mqttwire.Append(buf, &rel)
			continue
		}
		pk, err := publishOf(p.ev, s.version, p.first) // as it was sent: its delivery began then
		if err != nil {
			continue // not again: it was made once from the same event
		}
		pk.FixedHeader.Qos, pk.FixedHeader.Retain, pk.FixedHeader.Dup = p.qos, p.retain, true
		pk.PacketID = id
		_ = mqttwire.Append(buf, &pk)
		s.h.redelivered.Inc()
	}
	s.mu.Unlock()
	s.flush(buf)
}

// pubrel is the PUBREL of QoS 2 message id.
func pubrel(id uint16, version byte) packets.Packet {
	return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1}, ProtocolVersion: version, PacketID: id}
}

// recorded takes the PUBREC of a QoS 2 message: the client has it, and
// gets its PUBREL (again, when the PUBREC is a resend); 5.0's PUBREL of an
// id the session does not know says 0x92.
func (s *session) recorded(id uint16) {
	s.mu.Lock()
	p, ok := s.inflight[id]
	if ok && p.qos == 2 {
		p.rec, p.sent = true, time.Now()
		s.dirty = true // its position is the client's now
	}
	s.mu.Unlock()
	rel := pubrel(id, s.version)
	if !ok {
		rel.ReasonCode = packets.ErrPacketIdentifierNotFound.Code
	}
	s.client.Send(encode(rel))
}

// acked frees the window's place of a PUBACKed message (or a PUBCOMPed
// one, at QoS 2); the acknowledgement of a notification is its receipt.
func (s *session) acked(id uint16) {
	s.mu.Lock()
	p, ok := s.inflight[id]
	delete(s.inflight, id)
	if ok && p.rec {
		s.dirty = true // its PUBREL is owed no more
	}
	waiting := len(s.held) > 0
	s.mu.Unlock()
	if !ok {
		return
	}
	if waiting {
		s.Ready() // room in the window for what waits
	}
	if p.share != nil {
		s.ackShared(p)
	}
	s.roomFreed()
	if p.note != "" {
		// In the background, and again while Redis does not take it: the
		// client never sends this PUBACK again, and the reader goes on.
		go s.receipt(p.note, time.Now())
	}
}

// receipt publishes the receipt of notification id, acknowledged at at,
// trying receiptTries times a second apart.
func (s *session) receipt(id string, at time.Time) {
	for try := 1; ; try++ {
		err := s.edge.Ack(context.WithoutCancel(s.ctx), id, at)
		if err == nil || err.Code == protocol.CodeUnknownNotification || try == receiptTries {
			if err != nil {
				s.h.Logger.Warn("receipt of a notification not published; it falls back to push or email", "notification_id", id, "error", err)
			}
			return
		}
		time.Sleep(time.Second) // a retry's backoff, in its own goroutine
	}
}

// receiptTries bounds the attempts at one receipt.
const receiptTries = 3

// flush writes buf: one WebSocket message, or to the TCP stream.
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

// closeWith closes the connection with d; a 5.0 client whose connection
// the hub or a control command ends is told why with a DISCONNECT first.
func (s *session) closeWith(d hub.Disconnect) {
	if d == hub.DisconnectBroken {
		s.closer.CloseNow()
		return
	}
	if code, ok := reasonOf(d); ok && s.version == 5 && !s.saidBye {
		var buf bytes.Buffer
		_ = mqttwire.Append(&buf, &packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}, ProtocolVersion: 5,
			ReasonCode: code.Code, Properties: packets.Properties{ReasonString: d.Reason}})
		// The writer is the socket's only writer now; a client that
		// stopped reading gets a second.
		_ = s.nc.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = s.nc.Write(buf.Bytes())
	}
	s.closer.Close(d)
}

// reasonOf is the DISCONNECT reason code of a disconnect the hub or a
// control command decided on; the session's own decisions sent theirs.
func reasonOf(d hub.Disconnect) (packets.Code, bool) {
	switch d.Code {
	case hub.CloseGoingAway:
		return packets.ErrServerShuttingDown, true
	case hub.CloseSlow, hub.CloseTooManyConns:
		return packets.ErrQuotaExceeded, true
	case hub.CloseUnauthorized, hub.CloseRevoked: // token expired, revoked
		return packets.ErrNotAuthorized, true
	case hub.CloseDisconnected: // by the API
		return packets.ErrAdministrativeAction, true
	case hub.CloseTakenOver:
		return packets.ErrSessionTakenOver, true
	}
	return packets.Code{}, false
}
