package main

import (
	"fmt"
	"strings"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
)

// QoS 2 from a client is exactly once: a PUBLISH sent again before its
// PUBREL, on another edge after the first connection was lost, is
// answered PUBREC and published no second time; PUBREL is answered
// PUBCOMP, and one of an unknown id PUBCOMP 0x92.
func TestMQTTQoS2ExactlyOnceAcrossEdges(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	prefix := strings.TrimSuffix(redistest.Prefix(t), ":")
	e1 := startEdgeWithPrefix(t, srv, prefix, nil)
	e2 := startEdgeWithPrefix(t, srv, prefix, nil)
	listener := e1.dial(t, mint(t, "1", "meter:*"))
	listener.subscribe("l", "meter:*")
	tok := mintMQTT(t, "m-9", []string{"meter:*"}, []string{"meter:*"})
	connect := func(e *edge, clean bool) *mqttConn {
		t.Helper()
		m := e.dialMQTT(t, "/mqtt", 5)
		if ack := m.connectKept("meter-9", tok, clean); ack.ReasonCode != 0 || ack.SessionPresent == clean {
			t.Fatalf("CONNACK %#x, session present %v; want success, present unless clean", ack.ReasonCode, ack.SessionPresent)
		}
		return m
	}
	reading := publishPacket("meter/reading", 2, 7, `{"kwh":1.5}`)

	a := connect(e1, true)
	a.send(reading)
	if rec := a.expect(packets.Pubrec); rec.PacketID != 7 || rec.ReasonCode != 0 {
		t.Fatalf("PUBREC %d %#x, want 7 success", rec.PacketID, rec.ReasonCode)
	}
	a.nc.Close() // lost before its PUBREL: the client sends the PUBLISH again, elsewhere

	b := connect(e2, false)
	reading.FixedHeader.Dup = true
	b.send(reading)
	if rec := b.expect(packets.Pubrec); rec.PacketID != 7 || rec.ReasonCode != 0 {
		t.Fatalf("PUBREC of the resend %d %#x, want 7 success", rec.PacketID, rec.ReasonCode)
	}
	b.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1}, PacketID: 7})
	if comp := b.expect(packets.Pubcomp); comp.PacketID != 7 || comp.ReasonCode != 0 {
		t.Fatalf("PUBCOMP %d %#x, want 7 success", comp.PacketID, comp.ReasonCode)
	}
	b.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1}, PacketID: 8})
	if comp := b.expect(packets.Pubcomp); comp.PacketID != 8 || comp.ReasonCode != packets.ErrPacketIdentifierNotFound.Code {
		t.Fatalf("PUBCOMP of an unknown id %d %#x, want 8 0x92", comp.PacketID, comp.ReasonCode)
	}
	// After the PUBREL the id is free: the same id is a new message.
	again := publishPacket("meter/reading", 2, 7, `{"kwh":2}`)
	b.send(again)
	b.expect(packets.Pubrec)

	var got []string
	for range 2 {
		f := listener.next()
		got = append(got, string(f.Event))
	}
	if !strings.Contains(got[0], `"kwh":1.5`) || !strings.Contains(got[1], `"kwh":2`) {
		t.Fatalf("the listener got %q, want the first reading once, then the second", got)
	}
}

// QoS 2 to clients: a message published at QoS 2 reaches a QoS 2
// subscription at QoS 2; its PUBREC is answered PUBREL, resent until
// PUBCOMP, and a kept session resumed on another edge is sent that
// PUBREL again, not the message.
func TestMQTTQoS2ToClients(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	prefix := strings.TrimSuffix(redistest.Prefix(t), ":")
	e1 := startEdgeWithPrefix(t, srv, prefix, nil)
	e2 := startEdgeWithPrefix(t, srv, prefix, nil)
	tok := mintMQTT(t, "m-10", []string{"meter:*"}, []string{"meter:*"})
	connect := func(e *edge, id string, clean bool) *mqttConn {
		t.Helper()
		m := e.dialMQTT(t, "/mqtt", 5)
		if ack := m.connectKept(id, tok, clean); ack.ReasonCode != 0 {
			t.Fatalf("CONNACK %#x", ack.ReasonCode)
		}
		return m
	}
	sub := connect(e1, "display", true)
	if codes := sub.subscribe(1, map[string]byte{"meter/+": 2}, "meter/+"); codes[0] != 2 {
		t.Fatalf("SUBACK %v, want QoS 2 granted", codes)
	}
	pub := connect(e1, "meter", true)
	pub.send(publishPacket("meter/reading", 2, 1, `{"kwh":3}`))
	pub.expect(packets.Pubrec)
	got := sub.expect(packets.Publish)
	if got.FixedHeader.Qos != 2 || string(got.Payload) != `{"kwh":3}` {
		t.Fatalf("got %s at QoS %d, want the reading at QoS 2", got.Payload, got.FixedHeader.Qos)
	}
	sub.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrec}, PacketID: got.PacketID})
	if rel := sub.expect(packets.Pubrel); rel.PacketID != got.PacketID {
		t.Fatalf("PUBREL %d, want %d", rel.PacketID, got.PacketID)
	}
	servicetest.WaitFor(t, "the session saved with its PUBREL owed", func() bool {
		v, err := srv.Client(t).Get(t.Context(), prefix+":mqtt:session:user:m-10/display").Result()
		return err == nil && strings.Contains(v, fmt.Sprintf(`"pubrel":[%d]`, got.PacketID))
	})
	sub.nc.Close() // lost before its PUBCOMP

	again := connect(e2, "display", false)
	if rel := again.expect(packets.Pubrel); rel.PacketID != got.PacketID {
		t.Fatalf("the resumed session got PUBREL %d, want %d", rel.PacketID, got.PacketID)
	}
	again.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubcomp}, PacketID: got.PacketID})
	// Nothing of the reading comes again: the next packet is this one.
	pub.send(publishPacket("meter/reading", 0, 0, `{"kwh":4}`))
	if next := again.expect(packets.Publish); string(next.Payload) != `{"kwh":4}` {
		t.Fatalf("the resumed session got %s, want the next reading only", next.Payload)
	}
}
