package main

import (
	"strings"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
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
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, Connect: packets.ConnectParams{
			ProtocolName: []byte("MQTT"), ClientIdentifier: "meter-9", Clean: clean, Keepalive: 30,
			UsernameFlag: true, Username: []byte("device"), PasswordFlag: true, Password: []byte(tok)},
			Properties: packets.Properties{SessionExpiryInterval: 3600, SessionExpiryIntervalFlag: true}}
		m.send(pk)
		if ack := m.expect(packets.Connack); ack.ReasonCode != 0 || ack.SessionPresent == clean {
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
