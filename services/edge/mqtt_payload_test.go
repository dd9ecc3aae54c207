package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/eventbus-suite/eventbus/pkg/mqttwire"
	"github.com/eventbus-suite/eventbus/pkg/redistest"
)

// A device publishes a binary payload with MQTT 5 properties over TCP; a
// subscriber over /mqtt gets the same bytes and properties, at the lesser
// of the published and the subscribed QoS, and a JSON client sees the
// payload as bytes with the message beside it.
func TestMQTTPayloadAndPropertiesPassThrough(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), nil)
	got := make(chan *paho.Publish, 4)
	sub, _ := e.pahoV5(t, paho.ClientConfig{OnPublishReceived: []func(paho.PublishReceived) (bool, error){
		func(r paho.PublishReceived) (bool, error) { got <- r.Packet; return true, nil },
	}}, mint(t, "1", "dev:*"), paho.Connect{ClientID: "browser", KeepAlive: 30, CleanStart: true})
	if _, err := sub.Subscribe(t.Context(), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "dev/+", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	listener := e.dial(t, mint(t, "2", "dev:*"))
	listener.subscribe("l", "dev:*")

	nc, err := net.DialTimeout("tcp", e.mqtt, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	device, _ := e.pahoV5On(t, nc, paho.ClientConfig{}, mintMQTT(t, "dev-9", nil, []string{"dev:*"}),
		paho.Connect{ClientID: "device-9", KeepAlive: 30, CleanStart: true})
	payload := []byte{0x00, 0xff, 0x10, 'C', 0xbe, 0xef} // CBOR-ish: no JSON, no UTF-8
	expiry := uint32(3600)
	sent := &paho.Publish{Topic: "dev/reading", QoS: 1, Payload: payload, Properties: &paho.PublishProperties{
		ContentType: "application/cbor", ResponseTopic: "dev/replies", CorrelationData: []byte("req-1"),
		MessageExpiry: &expiry, User: paho.UserProperties{{Key: "unit", Value: "celsius"}, {Key: "unit", Value: "kelvin"}},
	}}
	if _, err := device.Publish(t.Context(), sent); err != nil {
		t.Fatal(err)
	}
	qos0 := &paho.Publish{Topic: "dev/heartbeat", QoS: 0, Payload: []byte("1")}
	if _, err := device.Publish(t.Context(), qos0); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		var p *paho.Publish
		select {
		case p = <-got:
		case <-time.After(10 * time.Second):
			t.Fatal("the subscriber got nothing in 10 s")
		}
		switch p.Topic {
		case "dev/reading":
			pr := p.Properties
			if !bytes.Equal(p.Payload, payload) || p.QoS != 1 || pr.ContentType != "application/cbor" || pr.ResponseTopic != "dev/replies" ||
				string(pr.CorrelationData) != "req-1" || pr.MessageExpiry == nil || *pr.MessageExpiry == 0 || *pr.MessageExpiry > expiry ||
				!slices.Equal(pr.User.GetAll("unit"), []string{"celsius", "kelvin"}) {
				t.Errorf("the subscriber got % x at QoS %d with %+v, want the device's bytes and properties at QoS 1", p.Payload, p.QoS, pr)
			}
		case "dev/heartbeat":
			if string(p.Payload) != "1" || p.QoS != 0 {
				t.Errorf("the heartbeat came as %q at QoS %d, want 1 at QoS 0: published at 0", p.Payload, p.QoS)
			}
		default:
			t.Errorf("unexpected topic %s", p.Topic)
		}
	}

	f := listener.next()
	var ev struct {
		Type string
		Data struct {
			Type  string `json:"@type"`
			Value []byte
		}
		Mqtt struct {
			Payload         []byte
			Qos             int
			ContentType     string                        `json:"content_type"`
			UserProperties  []struct{ Key, Value string } `json:"user_properties"`
			CorrelationData []byte                        `json:"correlation_data"`
		}
	}
	if err := json.Unmarshal(f.Event, &ev); err != nil {
		t.Fatal(err)
	}
	if f.Channel != "dev:reading" || ev.Data.Type != "type.googleapis.com/google.protobuf.BytesValue" || !bytes.Equal(ev.Data.Value, payload) ||
		!bytes.Equal(ev.Mqtt.Payload, payload) || ev.Mqtt.Qos != 1 || ev.Mqtt.ContentType != "application/cbor" || len(ev.Mqtt.UserProperties) != 2 {
		t.Errorf("the JSON client got %s, want the payload as bytes and the MQTT message beside it", f.Event)
	}
}

// Retained messages as MQTT says: a topic's retained message is its last
// PUBLISH with RETAIN, whatever came after without it; an empty one
// clears it; a new subscription gets it with RETAIN set, over any
// transport, from any edge; events that were never retained are none.
func TestMQTTRetainedPerTopic(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	prefix := strings.TrimSuffix(redistest.Prefix(t), ":")
	e1 := startEdgeWithPrefix(t, srv, prefix, nil)
	e2 := startEdgeWithPrefix(t, srv, prefix, nil)
	nc, err := net.DialTimeout("tcp", e1.mqtt, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	device, _ := e1.pahoV5On(t, nc, paho.ClientConfig{}, mintMQTT(t, "ha", nil, []string{"homeassistant:*"}),
		paho.Connect{ClientID: "ha-bridge", KeepAlive: 30, CleanStart: true})
	publish := func(topic, payload string, retain bool) {
		t.Helper()
		if _, err := device.Publish(t.Context(), &paho.Publish{Topic: topic, QoS: 1, Retain: retain, Payload: []byte(payload)}); err != nil {
			t.Fatal(err)
		}
	}
	publish("homeassistant/sensor/a/config", `{"name":"a"}`, true)
	publish("homeassistant/sensor/a/config", `{"name":"a, not retained"}`, false) // no RETAIN: the retained stays
	publish("homeassistant/sensor/b/config", `{"name":"b"}`, true)
	publish("homeassistant/sensor/c/config", `{"name":"c"}`, true)
	publish("homeassistant/sensor/c/config", ``, true)        // cleared
	e1.publish(t, "homeassistant:status", "from the api", -1) // an event never retained

	m := e2.dialMQTT(t, "/mqtt", 5)
	m.connect("dashboard", mint(t, "1", "homeassistant:*"), 30)
	if codes := m.subscribe(1, map[string]byte{"homeassistant/#": 1}, "homeassistant/#"); codes[0] != 1 {
		t.Fatalf("SUBACK %v", codes)
	}
	var got []string
	for _, pk := range m.untilPong() {
		if pk.FixedHeader.Type != packets.Publish || !pk.FixedHeader.Retain {
			t.Fatalf("after SUBACK: a packet of type %d (retain %v), want retained PUBLISHes", pk.FixedHeader.Type, pk.FixedHeader.Retain)
		}
		got = append(got, pk.TopicName+" "+string(pk.Payload))
	}
	if want := []string{`homeassistant/sensor/a/config {"name":"a"}`, `homeassistant/sensor/b/config {"name":"b"}`}; !slices.Equal(got, want) {
		t.Errorf("retained %q, want %q", got, want)
	}
}

// No Local keeps a client's own messages from its filter, and Retain As
// Published keeps the RETAIN a live message was published with (without
// it a live message has none), as MQTT 5 says.
func TestMQTTNoLocalAndRetainAsPublished(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), nil)
	tok := mintMQTT(t, "loop", []string{"loop:*"}, []string{"loop:*"})
	me := e.dialMQTT(t, "/mqtt", 5)
	me.connect("me", tok, 30)
	me.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1, Filters: packets.Subscriptions{
		{Filter: "loop/mine/+", NoLocal: true},
		{Filter: "loop/kept/+", RetainAsPublished: true, RetainHandling: 2},
		{Filter: "loop/plain/+", RetainHandling: 2},
	}})
	if ack := me.expect(packets.Suback); !slices.Equal(ack.ReasonCodes, []byte{0, 0, 0}) {
		t.Fatalf("SUBACK %v", ack.ReasonCodes)
	}
	other := e.dialMQTT(t, "/mqtt", 5)
	other.connect("other", tok, 30)
	me.send(publishPacket("loop/mine/a", 1, 5, "from me")) // published before the rest: its PUBACK says so
	if ack := me.expect(packets.Puback); ack.ReasonCode != 0 {
		t.Fatalf("PUBACK %#x", ack.ReasonCode)
	}
	other.send(publishPacket("loop/mine/b", 0, 0, "from other"))
	kept := publishPacket("loop/kept/c", 0, 0, "kept")
	kept.FixedHeader.Retain = true
	other.send(kept)
	plain := publishPacket("loop/plain/d", 0, 0, "plain")
	plain.FixedHeader.Retain = true
	other.send(plain)
	var got []string
	for range 3 {
		pk := me.expect(packets.Publish)
		got = append(got, fmt.Sprintf("%s %s retain=%v", pk.TopicName, pk.Payload, pk.FixedHeader.Retain))
	}
	want := []string{"loop/mine/b from other retain=false", "loop/kept/c kept retain=true", "loop/plain/d plain retain=false"}
	if !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

// A QoS 1 message not acknowledged is sent again as it was sent the first
// time, but for DUP: the same packet id, topic, payload and 5.0
// properties, the Message Expiry Interval as it stood then. A message in
// flight keeps no bytes, so the edge makes the resend again from the
// event; this is what holds it to the first.
func TestMQTTResendIsTheFirstSendWithDUP(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), map[string]string{"EDGE_MQTT_RETRY_INTERVAL": "100ms"})
	sub := dialTCP(t, e.mqtt, nil, 5)
	if ack := sub.connect("watcher", mint(t, "1", "dev:*"), 30); ack.ReasonCode != 0 {
		t.Fatalf("CONNACK %#x", ack.ReasonCode)
	}
	if codes := sub.subscribe(1, map[string]byte{"dev/#": 1}, "dev/#"); !bytes.Equal(codes, []byte{1}) {
		t.Fatalf("SUBACK %v, want QoS 1 granted", codes)
	}
	device := dialTCP(t, e.mqtt, nil, 5)
	if ack := device.connect("device-9", mintMQTT(t, "dev-9", nil, []string{"dev:*"}), 30); ack.ReasonCode != 0 {
		t.Fatalf("device CONNACK %#x", ack.ReasonCode)
	}
	pk := publishPacket("dev/reading", 1, 7, "\x00\xff\x10C")
	pk.Properties = packets.Properties{ContentType: "application/cbor", ResponseTopic: "dev/replies", CorrelationData: []byte("req-1"),
		MessageExpiryInterval: 3600, User: []packets.UserProperty{{Key: "unit", Val: "celsius"}}}
	device.send(pk)
	device.expect(packets.Puback)

	first := sub.expect(packets.Publish) // and no PUBACK: it comes again
	again := sub.expect(packets.Publish)
	if first.FixedHeader.Dup || !again.FixedHeader.Dup {
		t.Fatalf("DUP %v then %v, want false then true", first.FixedHeader.Dup, again.FixedHeader.Dup)
	}
	encode := func(p packets.Packet) []byte {
		p.FixedHeader.Dup = false
		var buf bytes.Buffer
		if err := mqttwire.Append(&buf, &p); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	if a, b := encode(first), encode(again); !bytes.Equal(a, b) {
		t.Fatalf("the resend, DUP aside, is\n% x\nwhere the first send was\n% x", b, a)
	}
	if p := first.Properties; first.TopicName != "dev/reading" || string(first.Payload) != "\x00\xff\x10C" || p.ContentType != "application/cbor" ||
		p.MessageExpiryInterval == 0 || p.MessageExpiryInterval > 3600 || len(p.User) != 1 {
		t.Fatalf("the first send was %s % x with %+v, want the device's message", first.TopicName, first.Payload, p)
	}
	sub.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: again.PacketID})
}
