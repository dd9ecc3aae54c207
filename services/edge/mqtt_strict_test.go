package main

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/eclipse/paho.golang/paho"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/eventbus-suite/eventbus/pkg/mqttwire"
	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
)

// Protocol errors MQTT 5.0 says end the connection do, with the reason
// MQTT names: a topic alias (the edge offers none, 0 least of all), a
// subscription identifier (its CONNACK says they are not available), and
// a session expiry at DISCONNECT for a session CONNECT said ends with
// its connection.
func TestMQTTProtocolErrorsDisconnect(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), nil)
	tok := mintMQTT(t, "dev-1", []string{"strict:*"}, []string{"strict:*"})
	for _, tt := range []struct {
		name string
		pk   packets.Packet
		want packets.Code
	}{
		{"a topic alias not offered", func() packets.Packet {
			pk := publishPacket("strict/a", 1, 7, `{}`)
			pk.Properties.TopicAlias, pk.Properties.TopicAliasFlag = 3, true
			return pk
		}(), packets.ErrTopicAliasInvalid},
		{"a wildcard in a topic name", publishPacket("strict/+", 0, 0, `{}`), packets.ErrProtocolViolationSurplusWildcard},
		{"a subscription identifier", packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
			Properties: packets.Properties{SubscriptionIdentifier: []int{5}},
			Filters:    packets.Subscriptions{{Filter: "strict/#", Qos: 1, Identifier: 5}}}, packets.ErrSubscriptionIdentifiersNotSupported},
		{"a session expiry at DISCONNECT after none at CONNECT", packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect},
			Properties: packets.Properties{SessionExpiryInterval: 60, SessionExpiryIntervalFlag: true}}, packets.ErrProtocolViolation},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m := e.dialMQTT(t, "/mqtt", 5)
			if ack := m.connect(strings.ReplaceAll(tt.name, " ", "-"), tok, 30); ack.ReasonCode != 0 {
				t.Fatalf("CONNACK %#x", ack.ReasonCode)
			}
			m.send(tt.pk)
			if d := m.closed(); d.FixedHeader.Type != packets.Disconnect || d.ReasonCode != tt.want.Code {
				t.Fatalf("the edge ended with %+v (reason %#x), want DISCONNECT %#x %s", d.FixedHeader, d.ReasonCode, tt.want.Code, tt.want.Reason)
			}
		})
	}
}

// A session expiry set in DISCONNECT is the session's from then on: 0
// ends a session CONNECT asked to keep, and a longer one keeps it.
func TestMQTTSessionExpiryAtDisconnect(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), nil)
	tok := mint(t, "13", "meter:*", "meter")
	key := e.prefix + "mqtt:session:user:13/meter-3"
	connect := func(clean bool, expiry uint32) (*paho.Client, *paho.Connack) {
		t.Helper()
		return e.pahoV5(t, paho.ClientConfig{}, tok, paho.Connect{ClientID: "meter-3", KeepAlive: 30, CleanStart: clean,
			Properties: &paho.ConnectProperties{SessionExpiryInterval: &expiry}})
	}
	c, _ := connect(true, 3600)
	if _, err := c.Subscribe(t.Context(), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "meter/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	zero := uint32(0)
	_ = c.Disconnect(&paho.Disconnect{Properties: &paho.DisconnectProperties{SessionExpiryInterval: &zero}})
	servicetest.WaitFor(t, "the session ended by DISCONNECT's expiry of 0", func() bool {
		v, err := e.redis.Client(t).Get(t.Context(), key).Result()
		return err == nil && strings.Contains(v, `"ended":true`)
	})
	if c, ack := connect(false, 3600); ack.SessionPresent {
		t.Error("a session DISCONNECT gave an expiry of 0 outlived its connection")
	} else {
		long := uint32(7200)
		_ = c.Disconnect(&paho.Disconnect{Properties: &paho.DisconnectProperties{SessionExpiryInterval: &long}})
	}
	servicetest.WaitFor(t, "the session kept for DISCONNECT's expiry", func() bool {
		ttl, err := e.redis.Client(t).TTL(t.Context(), key).Result()
		return err == nil && ttl > 3600e9
	})
	if c, ack := connect(false, 0); !ack.SessionPresent {
		t.Error("a session DISCONNECT kept for longer was not found")
	} else {
		_ = c.Disconnect(&paho.Disconnect{})
	}
}

// A Topic Alias of 0 is a protocol error (MQTT-3.3.2-8). mochi's encoder
// will not write one, so the test writes alias 1 and turns its two bytes
// to 0.
func TestMQTTTopicAliasZeroDisconnects(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), nil)
	m := e.dialMQTT(t, "/mqtt", 5)
	if ack := m.connect("alias-0", mintMQTT(t, "dev-2", nil, []string{"strict:*"}), 30); ack.ReasonCode != 0 {
		t.Fatalf("CONNACK %#x", ack.ReasonCode)
	}
	pk := publishPacket("strict/a", 0, 0, `{}`)
	pk.ProtocolVersion = 5
	pk.Properties.TopicAlias, pk.Properties.TopicAliasFlag = 1, true
	var buf bytes.Buffer
	if err := mqttwire.Append(&buf, &pk); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	i := bytes.Index(b, []byte{packets.PropTopicAlias, 0, 1})
	if i < 0 {
		t.Fatalf("no topic alias property in % x", b)
	}
	b[i+2] = 0
	if _, err := m.nc.Write(b); err != nil {
		t.Fatal(err)
	}
	if d := m.closed(); d.FixedHeader.Type != packets.Disconnect || d.ReasonCode != packets.ErrTopicAliasInvalid.Code {
		t.Fatalf("the edge ended with %+v (reason %#x), want DISCONNECT 0x94 topic alias invalid", d.FixedHeader, d.ReasonCode)
	}
}

// A new subscriber never gets one event twice, live and again as the
// retained message, however events stream while it subscribes: 100
// subscriptions with events published all the while, each reading its
// first packets.
func TestMQTTRetainedNeverDuplicatesALiveEvent(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), map[string]string{"EDGE_MQTT_RETAINED": "latest"})
	rec := e.recorder(t)
	stop := make(chan struct{})
	published := make(chan struct{})
	go func() {
		defer close(published)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := rec.Publish(context.Background(), "dup:x", event(t, "dup:x", fmt.Sprint(i))); err != nil {
				return
			}
		}
	}()
	defer func() { close(stop); <-published }()
	tok := mint(t, "9", "dup:*")
	for i := range 100 {
		m := e.dialMQTT(t, "/mqtt", 4)
		m.connect(fmt.Sprint("dup-", i), tok, 30)
		m.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
			Filters: packets.Subscriptions{{Filter: "dup/x"}}})
		// MQTT lets a server send the subscription's messages before its
		// SUBACK.
		seen := map[string]bool{}
		for acked := false; !acked || len(seen) < 4; {
			pk, err := m.next()
			if err != nil {
				t.Fatal(err)
			}
			if pk.FixedHeader.Type == packets.Suback {
				acked = true
				continue
			}
			subject := subjectOf(t, pk.Payload)
			if seen[subject] {
				t.Fatalf("subscription %d got event %s twice", i, subject)
			}
			seen[subject] = true
		}
		m.nc.Close()
	}
}
