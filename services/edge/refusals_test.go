package main

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/coder/websocket"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
	"github.com/eventbus-suite/eventbus/pkg/token"
)

// A will the edge cannot take is refused with a code that tells the
// client not to retry: 5.0's own (0x90 topic name invalid, 0x87 not
// authorized), 3.1.1's not authorized (5), never 3 (server
// unavailable), which clients retry for ever.
func TestMQTTWillRefusalsAreNotRetried(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), nil)
	tok := mintMQTT(t, "7", nil, []string{"sensor:*"})
	for _, tt := range []struct {
		name  string
		topic string
		qos   byte
		want  map[byte]byte
	}{
		{"will topic with a wildcard", "sensor/+", 1, map[byte]byte{4: 0x05, 5: 0x90}},
		{"will topic outside the publish grants", "Sensor/Gone", 1, map[byte]byte{4: 0x05, 5: 0x87}},
	} {
		for _, v := range []byte{4, 5} {
			m := e.dialMQTT(t, "/mqtt", v)
			m.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, Connect: packets.ConnectParams{
				ProtocolName: []byte("MQTT"), ClientIdentifier: fmt.Sprintf("will-%d", v), Clean: true, Keepalive: 30,
				PasswordFlag: true, Password: []byte(tok), UsernameFlag: true, Username: []byte("device"),
				WillFlag: true, WillTopic: tt.topic, WillQos: tt.qos, WillPayload: []byte(`{"gone":true}`)}})
			if ack := m.expect(packets.Connack); ack.ReasonCode != tt.want[v] {
				t.Errorf("%s, MQTT %d: CONNACK %#x, want %#x", tt.name, v, ack.ReasonCode, tt.want[v])
			}
			m.closed()
		}
	}
}

// "$share/<group>/<filter>" is refused with the reason MQTT names: 0x9E
// where shared subscriptions are not supported (no record: CONNACK says
// so), 0x87 for a filter the grants would narrow (members share one
// reading), 0x8F for one that is no shared subscription.
func TestMQTTSharedSubscriptionRefusals(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name   string
		env    map[string]string
		filter string
		want   byte
	}{
		{"without a record", map[string]string{"BUS_HISTORY": "off"}, "$share/g/order/+", 0x9E},
		{"narrowed by the grants", nil, "$share/g/order/#", 0x87},
		{"no filter", nil, "$share/g", 0x8F},
		{"a wildcard group", nil, "$share/+/order/+", 0x8F},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := startEdge(t, redistest.Shared(t), tt.env)
			m := e.dialMQTT(t, "/mqtt", 5)
			ack := m.connect("shared", mint(t, "7", "order:*"), 30)
			if want := byte(map[bool]byte{true: 0, false: 1}[tt.want == 0x9E]); ack.Properties.SharedSubAvailable != want {
				t.Errorf("CONNACK Shared Subscription Available %d, want %d", ack.Properties.SharedSubAvailable, want)
			}
			if codes := m.subscribe(1, map[string]byte{tt.filter: 0}, tt.filter); codes[0] != tt.want {
				t.Errorf("SUBACK %#x, want %#x", codes, tt.want)
			}
		})
	}
}

// A 5.0 connection taken over is told so with one DISCONNECT 0x8E.
func TestMQTTTakenOverGetsOneDisconnect(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), nil)
	tok := mint(t, "5", "order:*")
	first := e.dialMQTT(t, "/mqtt", 5)
	first.connect("phone", tok, 30)
	e.dialMQTT(t, "/mqtt", 5).connect("phone", tok, 30)
	var got []byte
	for {
		pk, err := first.next()
		if err != nil {
			break
		}
		if pk.FixedHeader.Type != packets.Disconnect {
			t.Fatalf("the connection taken over got a packet of type %d", pk.FixedHeader.Type)
		}
		got = append(got, pk.ReasonCode)
	}
	if len(got) != 1 || got[0] != 0x8E {
		t.Errorf("the connection taken over got DISCONNECTs %#x, want one 0x8E", got)
	}
}

// The Authorization scheme is case-insensitive (RFC 9110 §11.1):
// "bearer" works as "Bearer" does.
func TestSSEBearerInAnyCase(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), nil)
	tok := mint(t, "u1", "ok:*")
	for _, scheme := range []string{"bearer", "BEARER", "Bearer"} {
		s := e.openSSE(t, url.Values{"channel": {"ok:a"}}, http.Header{"Authorization": {scheme + " " + tok}})
		if ev := s.next(); ev.Type != "subscribed" {
			t.Errorf("Authorization: %s …: %+v, want subscribed", scheme, ev)
		}
	}
}

// A token longer than token.MaxBytes is refused before it is parsed, with
// an error that says why: 401 in JSON for the WebSocket's ?token= and
// SSE's header, CONNACK bad user name or password for MQTT (5.0 0x86,
// 3.1.1 4).
func TestOversizeTokenRefused(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), nil)
	long := strings.Repeat("a", token.MaxBytes+1)

	_, resp, err := websocket.Dial(t.Context(), e.ws+"?token="+long, nil)
	if err == nil || resp == nil {
		t.Fatalf("dial with a %d-byte token: %v, want 401", len(long), err)
	}
	code, message, err := servicetest.ErrorReply(resp)
	if resp.StatusCode != http.StatusUnauthorized || err != nil || code != "unauthorized" || !strings.Contains(message, "longer than 8 KiB") {
		t.Errorf("WebSocket ?token=: %s %s %q (%v), want 401 unauthorized, longer than 8 KiB", resp.Status, code, message, err)
	}
	resp = e.getSSE(t, url.Values{"channel": {"ok:a"}}, http.Header{"Authorization": {"Bearer " + long}})
	code, message, err = servicetest.ErrorReply(resp)
	if resp.StatusCode != http.StatusUnauthorized || err != nil || code != "unauthorized" || !strings.Contains(message, "longer than 8 KiB") {
		t.Errorf("SSE header: %s %s %q (%v), want 401 unauthorized, longer than 8 KiB", resp.Status, code, message, err)
	}
	for v, want := range map[byte]byte{4: 0x04, 5: 0x86} {
		m := e.dialMQTT(t, "/mqtt", v)
		if ack := m.connect(fmt.Sprintf("long-%d", v), long, 30); ack.ReasonCode != want {
			t.Errorf("MQTT %d with a %d-byte password: CONNACK %#x, want %#x bad user name or password", v, len(long), ack.ReasonCode, want)
		}
		m.closed()
	}
}
