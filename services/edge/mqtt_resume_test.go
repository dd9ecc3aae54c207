package main

import (
	"fmt"
	"slices"
	"testing"

	"github.com/eclipse/paho.golang/paho"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
)

// A kept session resumes its filters with their options: No Local still
// keeps the client's own messages from its filter, and Retain As
// Published still keeps a live message's RETAIN, though the client sends
// no SUBSCRIBE again.
func TestMQTTResumedSessionKeepsSubscriptionOptions(t *testing.T) {
	t.Parallel()
	e := interopEdge(t)
	cp := paho.Connect{ClientID: "opts", CleanStart: true, Properties: &paho.ConnectProperties{SessionExpiryInterval: ptr(uint32(3600))}}
	first := connect5(t, e, cp)
	first.subscribe(paho.SubscribeOptions{Topic: "TopicA/mine/+", QoS: 1, NoLocal: true},
		paho.SubscribeOptions{Topic: "TopicA/kept/+", QoS: 1, RetainAsPublished: true, RetainHandling: 2})
	if err := first.Disconnect(&paho.Disconnect{}); err != nil {
		t.Fatal(err)
	}
	<-first.Done()

	cp.CleanStart = false
	me := connect5(t, e, cp)
	if !me.ack.SessionPresent {
		t.Fatal("the session was not resumed")
	}
	other := connect5(t, e, paho.Connect{ClientID: "other", CleanStart: true})
	me.publish("TopicA/mine/a", 1, false, "from me", nil) // PUBACKed: published before the rest
	other.publish("TopicA/mine/b", 1, false, "from other", nil)
	other.publish("TopicA/kept/c", 1, true, "kept", nil)
	var got []string
	for _, m := range me.until(2) {
		got = append(got, fmt.Sprintf("%s %s retain=%v", m.Topic, m.Payload, m.Retain))
	}
	if want := []string{"TopicA/mine/b from other retain=false", "TopicA/kept/c kept retain=true"}; !slices.Equal(got, want) {
		t.Fatalf("the resumed session got %q, want %q", got, want)
	}
}

// A session that ended (a 5.0 DISCONNECT set its expiry to 0) leaves no
// QoS 2 state behind: the next session, not resumed, may use the same
// packet id for a new message, and it is published.
func TestMQTTQoS2StateEndsWithItsSession(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), nil)
	tok := mintMQTT(t, "q2", []string{"q2:*"}, []string{"q2:*"})
	watcher := e.dialMQTT(t, "/mqtt", 5)
	watcher.connect("watcher", tok, 30)
	if got := watcher.subscribe(1, map[string]byte{"q2/+": 0}, "q2/+"); !slices.Equal(got, []byte{0}) {
		t.Fatalf("SUBACK %v", got)
	}
	kept := func() *mqttConn {
		m := e.dialMQTT(t, "/mqtt", 5)
		if ack := m.connectKept("q2-device", tok, false); ack.ReasonCode != 0 {
			t.Fatalf("CONNACK %#x", ack.ReasonCode)
		}
		return m
	}
	first := kept()
	first.send(publishPacket("q2/a", 2, 7, "first"))
	first.expect(packets.Pubrec) // no PUBREL: 7 stays in the session's QoS 2 state
	first.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect},
		Properties: packets.Properties{SessionExpiryInterval: 0, SessionExpiryIntervalFlag: true}})
	first.closed()

	second := kept()
	second.send(publishPacket("q2/a", 2, 7, "second"))
	second.expect(packets.Pubrec)
	second.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1}, PacketID: 7})
	second.expect(packets.Pubcomp)
	var got []string
	for range 2 {
		got = append(got, string(watcher.expect(packets.Publish).Payload))
	}
	if !slices.Equal(got, []string{"first", "second"}) {
		t.Fatalf("the watcher got %q, want both messages: packet id 7 of an ended session is not the next one's", got)
	}
}
