package mqttapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/coder/websocket"
	"github.com/mochi-mqtt/server/v2/packets"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	eventbusv1 "github.com/eventbus-suite/eventbus/proto/gen/eventbus/v1"

	"github.com/eventbus-suite/eventbus/pkg/envelope"
	"github.com/eventbus-suite/eventbus/pkg/token"
	"github.com/eventbus-suite/eventbus/services/edge/internal/hub"
)

// eventOf makes the event a client publishes on ch: its type is the
// channel's ("sensor/temp" is sensor.temp), its source the client
// ("mqtt:<client id>"), its subject the token's user, its mqtt the message
// as sent (payload and MQTT 5 properties, which MQTT subscribers receive
// as they were), and its data the payload for everyone else: a JSON
// object as the API takes one (a known type strictly), another JSON value
// as a google.protobuf.Value, anything else as google.protobuf.BytesValue.
// It returns the envelope, filled and checked as the API's events are.
func eventOf(ch, clientID string, claims *token.Claims, m *eventbusv1.MqttMessage, now time.Time) (*envelope.Envelope, error) {
	typ := strings.ReplaceAll(ch, ":", ".")
	env := &envelope.Envelope{Type: typ, Channel: ch, Mqtt: m}
	if claims != nil {
		env.Subject = claims.Subject
	}
	payload := m.GetPayload()
	var err error
	switch trimmed := strings.TrimSpace(string(payload)); {
	case len(payload) == 0:
	case strings.HasPrefix(trimmed, "{"):
		env.Data, err = envelope.DecodeData(typ, payload)
	case json.Valid(payload):
		var v structpb.Value
		if err = v.UnmarshalJSON(payload); err == nil {
			env.Data, err = anypb.New(&v)
		}
	default:
		env.Data, err = anypb.New(wrapperspb.Bytes(payload))
	}
	if err != nil {
		return nil, fmt.Errorf("payload: %w", err)
	}
	if err := envelope.FillStrict(env, "mqtt:"+clientID, now); err != nil {
		return nil, fmt.Errorf("payload: %w", err)
	}
	return env, nil
}

// messageOf is what a client published: payload, QoS, RETAIN and, from
// 5.0, properties (props: the PUBLISH's, or a will's).
func messageOf(payload []byte, qos byte, retain bool, props packets.Properties) *eventbusv1.MqttMessage {
	m := &eventbusv1.MqttMessage{
		Payload: payload, Qos: uint32(qos), Retain: retain, ContentType: props.ContentType,
		PayloadUtf8: props.PayloadFormatFlag && props.PayloadFormat == 1, ResponseTopic: props.ResponseTopic,
		CorrelationData: props.CorrelationData, MessageExpirySeconds: props.MessageExpiryInterval,
	}
	for _, u := range props.User {
		m.UserProperties = append(m.UserProperties, &eventbusv1.MqttUserProperty{Key: u.Key, Value: u.Val})
	}
	return m
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
		case s.version == 5 && pk.FixedHeader.Qos == 2:
			s.client.Send(s.ack(packets.Pubrec, pk.PacketID, code, why))
			return true
		case s.version == 5:
			s.disconnect(code, hub.Disconnect{Code: int(websocket.StatusPolicyViolation), Reason: why})
		default: // 3.1.1 has no refusal but to close
			s.client.CloseAfter(hub.Disconnect{Code: int(websocket.StatusPolicyViolation), Reason: why})
		}
		return false
	}
	// The edge offers no topic aliases (Topic Alias Maximum 0): any alias,
	// 0 above all, is a protocol error, as are a missing packet id and
	// a wildcard in the topic.
	if code := pk.PublishValidate(0); code != packets.CodeSuccess {
		s.disconnect(code, hub.Disconnect{Code: int(websocket.StatusProtocolError), Reason: code.Reason})
		return false
	}
	ch, err := channelOf(pk.TopicName)
	if err != nil {
		return refuse(packets.ErrTopicNameInvalid, fmt.Sprintf("topic %q: %v", pk.TopicName, err))
	}
	if !s.mayPublish(ch) {
		return refuse(packets.ErrNotAuthorized, fmt.Sprintf("topic %s is not among the token's publish patterns", pk.TopicName))
	}
	m := messageOf(pk.Payload, pk.FixedHeader.Qos, pk.FixedHeader.Retain, pk.Properties)
	ev, err := eventOf(ch, s.id, s.edge.Claims(), m, time.Now())
	if err != nil {
		return refuse(packets.ErrPayloadFormatInvalid, err.Error())
	}
	ctx, cancel := context.WithTimeout(s.ctx, publishTimeout)
	defer cancel()
	// send publishes the event, with the id QoS 2 keeps for it (id is
	// never empty there) or the one it was made with. One published but
	// not retained for the namespace's bound is published: sending it
	// again would not keep it either.
	var full error
	send := func(id string) error {
		if id != "" {
			ev.Id = id
		}
		err := s.h.publishMessage(ctx, ev)
		if errors.Is(err, ErrRetainedFull) {
			full, err = err, nil
		}
		return err
	}
	if pk.FixedHeader.Qos == 2 {
		limit := 0 // 3.1.1 has no Receive Maximum
		if s.version == 5 {
			limit = maxInflight // what CONNACK said
		}
		err = s.publishOnce(ctx, pk.PacketID, limit, send)
	} else {
		err = send("")
	}
	if errors.Is(err, errReceiveMaximum) {
		s.h.publishes.WithLabelValues("receive_maximum_exceeded").Inc()
		s.disconnect(packets.ErrReceiveMaximum, hub.Disconnect{Code: int(websocket.StatusPolicyViolation), Reason: err.Error()})
		return false
	}
	if err != nil {
		s.h.Logger.Warn("mqtt publish failed", "channel", ch, "error", err)
		if s.version == 4 {
			// No PUBACK: the client sends it again when it reconnects.
			s.h.publishes.WithLabelValues("unavailable").Inc()
			s.client.CloseAfter(hub.Disconnect{Code: int(websocket.StatusTryAgainLater), Reason: "the event bus is unavailable"})
			return false
		}
		return refuse(packets.ErrImplementationSpecificError, "the event bus (Redis) is unavailable: "+ctxErr(err))
	}
	why := ""
	if full != nil {
		// Delivered, so a success; 5.0 says what was not done.
		s.h.publishes.WithLabelValues("not_retained_full").Inc()
		s.h.Logger.Warn("mqtt retained message not kept", "client_id", s.id, "channel", ch, "error", full)
		why = "published, but not retained: the namespace holds its most retained messages (EDGE_MQTT_RETAINED_MAX)"
	} else {
		s.h.publishes.WithLabelValues("ok").Inc()
	}
	switch pk.FixedHeader.Qos {
	case 1:
		s.client.Send(s.puback(pk.PacketID, packets.CodeSuccess, why))
	case 2:
		s.client.Send(s.ack(packets.Pubrec, pk.PacketID, packets.CodeSuccess, why))
	}
	return true
}

// publishMessage publishes ev, an MQTT client's message (a PUBLISH or a
// will), on its channel, and, when it was published with RETAIN, makes
// it the channel's retained message, or clears that when its payload is
// empty: unless the edge keeps the latest event as retained instead
// (Options.RetainLatest), or keeps none.
func (h *Handler) publishMessage(ctx context.Context, ev *envelope.Envelope) error {
	env, err := envelope.Marshal(ev)
	if err != nil {
		return err
	}
	ch := ev.GetChannel()
	r, err := h.Bus.Publish(ctx, ch, env)
	m := ev.GetMqtt()
	if err != nil || !m.GetRetain() || h.Retained == nil || h.RetainLatest {
		return err
	}
	if len(m.GetPayload()) == 0 {
		err = h.Retained.Clear(ctx, ch, r.Position)
	} else {
		err = h.Retained.Set(ctx, ch, r.Position, env)
	}
	if err != nil {
		return fmt.Errorf("%w: %w", errNotRetained, err)
	}
	return nil
}

// errNotRetained is publishMessage's error for a message published whose
// retained message was not kept (or cleared).
var errNotRetained = errors.New("published, but its retained message not kept")

func ctxErr(err error) string {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, io.EOF) {
		return "no answer in time"
	}
	return err.Error()
}

func (s *session) puback(id uint16, code packets.Code, why string) []byte {
	return s.ack(packets.Puback, id, code, why)
}

// ack is an acknowledgement of type typ (PUBACK, PUBREC, PUBCOMP) of
// packet id, with code and, in 5.0, why.
func (s *session) ack(typ byte, id uint16, code packets.Code, why string) []byte {
	if s.quiet {
		why = "" // MQTT-3.1.2-29
	}
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: typ}, ProtocolVersion: s.version,
		PacketID: id, ReasonCode: code.Code, Properties: packets.Properties{ReasonString: why}}
	b := encode(pk)
	if s.maxPacket > 0 && len(b) > s.maxPacket && why != "" {
		// The reason string is left out before the client's Maximum
		// Packet Size is passed (MQTT-3.4.2-2).
		pk.Properties.ReasonString = ""
		b = encode(pk)
	}
	return b
}

// released serves a PUBREL: the QoS 2 message is done with, and PUBCOMP
// says so (5.0: 0x92 for a packet id the session does not know).
func (s *session) released(id uint16) {
	ctx, cancel := context.WithTimeout(s.ctx, storeTimeout)
	defer cancel()
	code := packets.CodeSuccess
	switch had, err := s.awaiting.release(ctx, id); {
	case err != nil:
		// Kept: a PUBLISH of that id again is recognised until the
		// session expires.
		s.h.Logger.Warn("mqtt QoS 2 state not released", "client_id", s.id, "error", err)
	case !had:
		code = packets.ErrPacketIdentifierNotFound
	}
	s.client.Send(s.ack(packets.Pubcomp, id, code, ""))
}

// mayPublish reports whether the token's publish claim covers ch, which
// is never in the bus's own namespace (the control channel the edges obey)
// nor of an event type only the edge publishes.
func (s *session) mayPublish(ch string) bool {
	if envelope.EdgeOnly(strings.ReplaceAll(ch, ":", ".")) {
		return false // the edge's: presence news, receipts
	}
	return s.edge.MayPublish(ch)
}

// will is a client's last will: published as its event when the
// connection ends but by a DISCONNECT (5.0: one without reason 0x04) or
// by a newer connection of the client taking over; with a delay (5.0),
// that long after, or as the session ends if that comes first (wills.go).
type will struct {
	channel string
	message *eventbusv1.MqttMessage
	delay   time.Duration
}

// willOf checks the will of CONNECT as a PUBLISH is checked, returning it,
// or the CONNACK code and reason to refuse the connection with.
func (s *session) willOf(pk packets.Packet) (*will, packets.Code, string) {
	ch, err := channelOf(pk.Connect.WillTopic)
	if err != nil {
		return nil, packets.ErrTopicNameInvalid, fmt.Sprintf("will topic %q: %v", pk.Connect.WillTopic, err)
	}
	if !s.mayPublish(ch) {
		return nil, packets.ErrNotAuthorized, fmt.Sprintf("will topic %s is not among the token's publish patterns", pk.Connect.WillTopic)
	}
	m := messageOf(pk.Connect.WillPayload, pk.Connect.WillQos, pk.Connect.WillRetain, pk.Connect.WillProperties)
	if _, err := eventOf(ch, "will", s.edge.Claims(), m, time.Now()); err != nil {
		return nil, packets.ErrPayloadFormatInvalid, "will: " + err.Error()
	}
	delay := time.Duration(pk.Connect.WillProperties.WillDelayInterval) * time.Second
	return &will{channel: ch, message: m, delay: delay}, packets.CodeSuccess, ""
}

// publishWill publishes the client's will, if it left one and is gone:
// not when its token was revoked, expired or its user disconnected by the
// API, whose claims no longer speak for it.
func (s *session) publishWill() {
	s.mu.Lock()
	takenOver := s.gone
	s.mu.Unlock()
	if s.will == nil || s.bye || takenOver {
		return
	}
	if d := s.kickedWith.Load(); d != nil && (d.Code == hub.CloseUnauthorized || d.Code == hub.CloseRevoked || d.Code == hub.CloseDisconnected) {
		return
	}
	ev, err := eventOf(s.will.channel, s.id, s.edge.Claims(), s.will.message, time.Now())
	if err != nil {
		s.h.Logger.Warn("mqtt will not published", "client_id", s.id, "channel", s.will.channel, "error", err)
		return
	}
	if delay := min(s.will.delay, s.expiryAtEnd()); delay > 0 && s.h.Sessions != nil {
		ctx, cancel := context.WithTimeout(context.Background(), publishTimeout)
		defer cancel()
		b, err := envelope.Marshal(ev)
		kept := false
		if err == nil {
			kept, err = s.h.Sessions.DelayWill(ctx, s.key, s.since.UnixNano(), b, delay)
		}
		switch {
		case err != nil:
			s.h.Logger.Warn("mqtt will not kept for its delay", "client_id", s.id, "channel", s.will.channel, "error", err)
		case !kept:
			s.h.Logger.Debug("mqtt will dropped: a newer connection has the session", "client_id", s.id)
		}
		return
	}
	if err := s.h.publishWillEvent(context.Background(), ev); err != nil {
		s.h.Logger.Warn("mqtt will not published", "client_id", s.id, "channel", s.will.channel, "error", err)
	}
}
