package main

import (
	"net/http"
	"net/url"
	"testing"

	"github.com/coder/websocket"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
)

// A CONNECT while Redis is away (its token's revocations, its kept
// session cannot be read) is no fresh start, which would lose what was
// published meanwhile, nor a refused token, which clients do not retry:
// it is refused as server unavailable (5.0: 0x88; 3.1.1: 3, which clients
// retry), as a WebSocket or SSE connection is (503), and once Redis is
// back the session resumes.
func TestMQTTSessionUnreadableIsRefusedNotLost(t *testing.T) {
	t.Parallel()
	srv := redistest.StartPersistent(t)
	e := startEdge(t, srv, nil)
	tok := mintMQTT(t, "m-11", []string{"meter:*"}, nil)
	connect := func(v byte) packets.Packet {
		t.Helper()
		m := e.dialMQTT(t, "/mqtt", v)
		ack := m.connectKept("meter-11", tok, false)
		if ack.ReasonCode == 0 {
			if codes := m.subscribe(1, map[string]byte{"meter/+": 1}, "meter/+"); codes[0] != 1 {
				t.Fatalf("SUBACK %v", codes)
			}
		}
		m.nc.Close()
		return ack
	}
	if ack := connect(5); ack.ReasonCode != 0 {
		t.Fatalf("CONNACK %#x", ack.ReasonCode)
	}
	servicetest.WaitFor(t, "the session kept", func() bool {
		n, err := srv.Client(t).Exists(t.Context(), e.prefix+"mqtt:session:user:m-11/meter-11").Result()
		return err == nil && n == 1
	})
	srv.Stop(t)
	for v, want := range map[byte]byte{5: packets.ErrServerUnavailable.Code, 4: packets.Err3ServerUnavailable.Code} {
		if ack := connect(v); ack.ReasonCode != want {
			t.Errorf("MQTT %d with Redis away: CONNACK %#x, want %#x", v, ack.ReasonCode, want)
		}
	}
	tok2 := mint(t, "m-11", "meter:*")
	if _, resp, err := websocket.Dial(t.Context(), e.ws+"?token="+tok2, nil); err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("a WebSocket with Redis away: %v, %v; want 503", resp, err)
	}
	if resp := e.getSSE(t, url.Values{"channel": {"meter:x"}, "token": {tok2}}, nil); resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("an SSE stream with Redis away: %s, want 503", resp.Status)
	}
	srv.Restart(t)
	servicetest.WaitFor(t, "the session resumed once Redis is back", func() bool {
		m := e.dialMQTT(t, "/mqtt", 5)
		defer m.nc.Close()
		ack := m.connectKept("meter-11", tok, false)
		return ack.ReasonCode == 0 && ack.SessionPresent
	})
}
