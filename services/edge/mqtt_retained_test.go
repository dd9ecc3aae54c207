package main

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
)

// Past EDGE_MQTT_RETAINED_MAX, a retained PUBLISH on a topic that has no
// retained message is still delivered and acknowledged, but not kept:
// 5.0's PUBACK says so in its reason string; a 3.1.1 client, which MQTT
// gives no way to be told, is not disconnected (it would publish the same
// on reconnecting, forever). A new subscriber gets exactly the messages
// that were kept.
func TestMQTTRetainedBeyondTheBound(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), map[string]string{"EDGE_MQTT_RETAINED_MAX": "1"})
	tok := mintMQTT(t, "dev-1", []string{"bound:*"}, []string{"bound:*"})
	live := dialTCP(t, e.mqtt, nil, 5)
	live.connect("live", tok, 30)
	if codes := live.subscribe(1, map[string]byte{"bound/#": 0}, "bound/#"); !slices.Equal(codes, []byte{0}) {
		t.Fatalf("SUBACK %v", codes)
	}
	device := dialTCP(t, e.mqtt, nil, 5)
	device.connect("device", tok, 30)
	var kept, refused []string
	const topics = 20 // more than the partitions of a namespace: a bound of 1 refuses some
	for i := range topics {
		topic := fmt.Sprintf("bound/t%02d", i)
		pk := publishPacket(topic, 1, uint16(i+1), "on")
		pk.FixedHeader.Retain = true
		device.send(pk)
		ack := device.expect(packets.Puback)
		switch {
		case ack.ReasonCode != 0:
			t.Fatalf("%s: PUBACK %#x, want success: it was delivered", topic, ack.ReasonCode)
		case ack.Properties.ReasonString == "":
			kept = append(kept, topic)
		case strings.Contains(ack.Properties.ReasonString, "not retained"):
			refused = append(refused, topic)
		default:
			t.Fatalf("%s: PUBACK says %q", topic, ack.Properties.ReasonString)
		}
		if got := live.expect(packets.Publish); got.TopicName != topic || string(got.Payload) != "on" {
			t.Fatalf("live subscriber got %s %q, want %s", got.TopicName, got.Payload, topic)
		}
	}
	if len(kept) == 0 || len(refused) == 0 {
		t.Fatalf("kept %q, refused %q: want both, with a bound of 1 over %d topics", kept, refused, topics)
	}

	// A 5.0 client whose Maximum Packet Size the reason string would pass
	// gets the PUBACK without it.
	small := dialTCP(t, e.mqtt, nil, 5)
	cp := connectPacket("device-small", tok, 30)
	cp.Properties.MaximumPacketSize = 16
	small.send(cp)
	small.expect(packets.Connack)
	pk := publishPacket(refused[0], 1, 1, "small")
	pk.FixedHeader.Retain = true
	small.send(pk)
	if ack := small.expect(packets.Puback); ack.ReasonCode != 0 || ack.Properties.ReasonString != "" {
		t.Fatalf("PUBACK to a client taking 16 bytes: %#x %q, want plain success", ack.ReasonCode, ack.Properties.ReasonString)
	}
	live.expect(packets.Publish)

	// 3.1.1: acknowledged and delivered, and the connection stays.
	old := dialTCP(t, e.mqtt, nil, 4)
	old.connect("device-311", tok, 30)
	pk = publishPacket(refused[0], 1, 1, "again")
	pk.FixedHeader.Retain = true
	old.send(pk)
	old.expect(packets.Puback)
	if got := live.expect(packets.Publish); got.TopicName != refused[0] || string(got.Payload) != "again" {
		t.Fatalf("live subscriber got %s %q, want %s again", got.TopicName, got.Payload, refused[0])
	}
	old.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
	old.expect(packets.Pingresp)

	// Replacing a kept one needs no room.
	pk = publishPacket(kept[0], 1, 99, "off")
	pk.FixedHeader.Retain = true
	device.send(pk)
	if ack := device.expect(packets.Puback); ack.ReasonCode != 0 || ack.Properties.ReasonString != "" {
		t.Fatalf("replacing %s: PUBACK %#x %q, want plain success", kept[0], ack.ReasonCode, ack.Properties.ReasonString)
	}

	late := dialTCP(t, e.mqtt, nil, 5)
	late.connect("late", tok, 30)
	late.subscribe(1, map[string]byte{"bound/#": 0}, "bound/#")
	var got []string
	for range kept {
		pk := late.expect(packets.Publish)
		if !pk.FixedHeader.Retain {
			t.Fatalf("late subscriber got %s without RETAIN", pk.TopicName)
		}
		got = append(got, pk.TopicName+" "+string(pk.Payload))
	}
	want := []string{kept[0] + " off"}
	for _, topic := range kept[1:] {
		want = append(want, topic+" on")
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("late subscriber's retained messages %q, want %q", got, want)
	}
	// Nothing more retained: a PING's answer comes next.
	late.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
	late.expect(packets.Pingresp)
}
