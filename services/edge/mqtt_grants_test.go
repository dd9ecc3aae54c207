package main

import (
	"bytes"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/token"
)

// suback subscribes to filters, in order, at QoS 1 and returns the SUBACK.
func (m *mqttConn) suback(id uint16, filters ...string) packets.Packet {
	m.t.Helper()
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: id}
	for _, f := range filters {
		pk.Filters = append(pk.Filters, packets.Subscription{Filter: f, Qos: 1})
	}
	m.send(pk)
	return m.expect(packets.Suback)
}

// untilPong sends PINGREQ and returns what came before its PINGRESP: the
// edge answers in order, so those are every packet it queued until then
// (a SUBSCRIBE's retained messages, say).
func (m *mqttConn) untilPong() []packets.Packet {
	m.t.Helper()
	m.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
	var got []packets.Packet
	for {
		pk, err := m.next()
		if err != nil {
			m.t.Fatalf("read before PINGRESP: %v", err)
		}
		if pk.FixedHeader.Type == packets.Pingresp {
			return got
		}
		got = append(got, pk)
	}
}

// A filter wider than the token's grants is narrowed to them, as a
// Mosquitto ACL narrows it: with order:* (and its own notify:user:<sub>)
// order/# and # are granted, their retained and live messages are those of
// the grants alone, Redis is never subscribed to the rest (no receiver for
// order, user:1 or another user's notifications), and 5.0's SUBACK says
// what each filter was narrowed to. "+/placed", which order:* overlaps
// without covering, takes order/placed through it.
func TestMQTTNarrowsAFilterToTheGrants(t *testing.T) {
	t.Parallel()
	for _, v := range []byte{4, 5} {
		t.Run(fmt.Sprintf("v%d", v), func(t *testing.T) {
			t.Parallel()
			// Every channel's latest event is retained: the retained
			// messages show what the filters reach.
			e := startEdge(t, redistest.Shared(t), map[string]string{"EDGE_MQTT_RETAINED": "latest"})
			rec := e.recorder(t)
			publish := func(ch, subject string, receivers int64) {
				t.Helper()
				r, err := rec.Publish(t.Context(), ch, event(t, ch, subject))
				if err != nil || receivers >= 0 && r.Receivers != receivers {
					t.Fatalf("Publish(%s) = %d, %v; want %d receivers", ch, r.Receivers, err, receivers)
				}
			}
			for _, ch := range []string{"order", "user:1", "notify:user:7", "order:placed", "notify:user:42"} {
				publish(ch, "before", 0)
			}
			m := e.dialMQTT(t, "/mqtt", v)
			if ack := m.connect("narrowed", mint(t, "42", "order:*"), 30); ack.ReasonCode != 0 {
				t.Fatalf("CONNACK %#x, want success", ack.ReasonCode)
			}
			ack := m.suback(1, "order/#", "#", "+/placed")
			if !bytes.Equal(ack.ReasonCodes, []byte{1, 1, 1}) {
				t.Fatalf("SUBACK %#v, want QoS 1 granted to order/#, # and +/placed", ack.ReasonCodes)
			}
			want := map[byte]string{5: "order/# narrowed to order:*, what the grants allow of it; " +
				"# narrowed to notify:user:42, order:*, what the grants allow of it; " +
				"+/placed narrowed to order:*, what the grants allow of it"}[v]
			if got := ack.Properties.ReasonString; got != want {
				t.Errorf("SUBACK reason string %q, want %q", got, want)
			}
			var retained []string
			for _, pk := range m.untilPong() {
				if pk.FixedHeader.Type != packets.Publish || !pk.FixedHeader.Retain {
					t.Fatalf("after SUBACK: a packet of type %d (retain %v), want retained PUBLISHes", pk.FixedHeader.Type, pk.FixedHeader.Retain)
				}
				retained = append(retained, pk.TopicName)
			}
			slices.Sort(retained)
			// order/placed is retained for order/#, # and +/placed alike.
			if want := []string{"notify/user/42", "order/placed", "order/placed", "order/placed"}; !slices.Equal(retained, want) {
				t.Errorf("retained %q, want %q", retained, want)
			}

			publish("order", "live", 0)
			publish("user:1", "live", 0)
			publish("notify:user:7", "live", 0)
			publish("order:placed", "live", 1)
			publish("notify:user:42", "live", 1)
			var live []string
			for range 2 {
				pk := m.expect(packets.Publish)
				live = append(live, fmt.Sprintf("%s %d %s", pk.TopicName, pk.FixedHeader.Qos, subjectOf(t, pk.Payload)))
				if pk.FixedHeader.Qos == 1 {
					m.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID})
				}
			}
			slices.Sort(live)
			if want := []string{"notify/user/42 1 live", "order/placed 1 live"}; !slices.Equal(live, want) {
				t.Errorf("live %q, want %q", live, want)
			}
		})
	}
}

// A filter the grants leave nothing of is refused: 5.0's SUBACK 0x87 with a
// reason string naming the grants (or the bus's own namespace), 3.1.1's
// 0x80; a filter the grants cover whole is granted beside them.
func TestMQTTRefusesAFilterOutsideTheGrants(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), nil)
	demo, err := token.IssueClaims([]byte(secret), token.Claims{Channels: []string{"*"}, Except: []string{"notify:*"},
		RegisteredClaims: jwt.RegisteredClaims{Subject: "9"}}, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []byte{4, 5} {
		t.Run(fmt.Sprintf("v%d", v), func(t *testing.T) {
			t.Parallel()
			refused := map[byte]byte{4: 0x80, 5: 0x87}[v]
			for _, tt := range []struct {
				name, tok string
				filters   []string
				codes     []byte
				reason    string
			}{
				{"outside the grants", mint(t, "7", "order:*"), []string{"user/+", "order/+"}, []byte{refused, 1},
					"user/+: not authorized, outside the grants notify:user:7, order:*"},
				{"the bus's own namespace", mint(t, "7", "*"), []string{"eventbus/#"}, []byte{refused},
					"eventbus/#: not authorized, eventbus is the bus's own namespace"},
				{"excepted", demo, []string{"notify/user/8", "notify/user/9"}, []byte{refused, 1},
					"notify/user/8: not authorized, outside the grants notify:user:9, * except notify:*"},
			} {
				m := e.dialMQTT(t, "/mqtt", v)
				m.connect(fmt.Sprintf("refused-%d-%s", v, tt.name), tt.tok, 30)
				ack := m.suback(1, tt.filters...)
				if !bytes.Equal(ack.ReasonCodes, tt.codes) {
					t.Errorf("%s: SUBACK %#v, want %#v", tt.name, ack.ReasonCodes, tt.codes)
				}
				if want := map[byte]string{5: tt.reason}[v]; ack.Properties.ReasonString != want {
					t.Errorf("%s: SUBACK reason string %q, want %q", tt.name, ack.Properties.ReasonString, want)
				}
			}
		})
	}

	// A 5.0 client that asks for no problem information gets none.
	m := e.dialMQTT(t, "/mqtt", 5)
	m.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, Connect: packets.ConnectParams{
		ProtocolName: []byte("MQTT"), ClientIdentifier: "quiet", Clean: true, Keepalive: 30,
		UsernameFlag: true, Username: []byte("device"), PasswordFlag: true, Password: []byte(mint(t, "7", "order:*"))},
		Properties: packets.Properties{RequestProblemInfo: 0, RequestProblemInfoFlag: true}})
	if ack := m.expect(packets.Connack); ack.ReasonCode != 0 {
		t.Fatalf("CONNACK %#x, want success", ack.ReasonCode)
	}
	if ack := m.suback(1, "user/+", "#"); !bytes.Equal(ack.ReasonCodes, []byte{0x87, 1}) || ack.Properties.ReasonString != "" {
		t.Errorf("SUBACK %#v %q, want 0x87 and QoS 1 without a reason string", ack.ReasonCodes, ack.Properties.ReasonString)
	}
}

// EDGE_MAX_SUBSCRIPTIONS counts a connection's filters, however many
// patterns each takes in the hub ("a/#" takes a:* and a): three "#"
// filters fit a bound of three, the fourth is refused with 0x97.
func TestMQTTSubscriptionsBoundCountsFilters(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), map[string]string{"EDGE_MAX_SUBSCRIPTIONS": "3"})
	m := e.dialMQTT(t, "/mqtt", 5)
	m.connect("many", mintMQTT(t, "7", []string{"a:*", "b:*", "c:*", "d:*", "a", "b", "c", "d"}, nil), 30)
	if ack := m.suback(1, "a/#", "b/#", "c/#"); !slices.Equal(ack.ReasonCodes, []byte{1, 1, 1}) {
		t.Fatalf("three filters within a bound of three: SUBACK %v, want each granted QoS 1", ack.ReasonCodes)
	}
	if ack := m.suback(2, "d/#"); !slices.Equal(ack.ReasonCodes, []byte{0x97}) {
		t.Fatalf("a fourth filter: SUBACK %v, want 0x97 quota exceeded", ack.ReasonCodes)
	}
}
