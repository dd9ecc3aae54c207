package main

import (
	"fmt"
	"slices"
	"testing"
	"time"

	paho3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
)

// The topics of Eclipse's interoperability suite (TopicA, TopicA/B,
// Topic/C, TopicA/C, /TopicA) and its wildcard filters, over TCP with
// paho's 3.1.1 client publishing at QoS 2: each filter gets exactly the
// topics MQTT says it matches, named as they were published. A filter beginning with a
// wildcard takes no $-topic; "$SYS/#" does.
func TestMQTTInteropTopicsAndWildcards(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), map[string]string{"EDGE_RATE_LIMIT": "1000", "EDGE_RATE_BURST": "1000"})
	connect := func(id, tok string) paho3.Client {
		t.Helper()
		c := paho3.NewClient(paho3.NewClientOptions().AddBroker("tcp://" + e.mqtt).SetClientID(id).
			SetUsername("device").SetPassword(tok).SetAutoReconnect(false))
		if tk := c.Connect(); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
			t.Fatalf("%s: connect: %v", id, tk.Error())
		}
		t.Cleanup(func() { c.Disconnect(0) })
		return c
	}
	pub := connect("interop-pub", mintMQTT(t, "pub", nil, []string{"*"}))
	topics := []string{"TopicA", "TopicA/B", "Topic/C", "TopicA/C", "/TopicA", "$SYS/uptime"}
	for i, tt := range []struct {
		filter string
		want   []string
	}{
		{"TopicA/+", []string{"TopicA/B", "TopicA/C"}},
		{"+/C", []string{"Topic/C", "TopicA/C"}},
		{"#", []string{"TopicA", "TopicA/B", "Topic/C", "TopicA/C", "/TopicA"}},
		{"/#", []string{"/TopicA"}},
		{"/+", []string{"/TopicA"}},
		{"+/+", []string{"TopicA/B", "Topic/C", "TopicA/C", "/TopicA"}},
		{"TopicA/#", []string{"TopicA", "TopicA/B", "TopicA/C"}},
		{"$SYS/#", []string{"$SYS/uptime"}},
	} {
		t.Run(tt.filter, func(t *testing.T) {
			got := make(chan string, 16)
			sub := connect(fmt.Sprint("interop-sub-", i), mint(t, "sub", "*"))
			if tk := sub.Subscribe(tt.filter, 2, func(_ paho3.Client, m paho3.Message) { got <- m.Topic() }); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
				t.Fatalf("subscribe %s: %v", tt.filter, tk.Error())
			}
			for _, topic := range topics {
				if tk := pub.Publish(topic, 2, false, "m"); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil { // QoS 2's four packets
					t.Fatalf("publish %s: %v", topic, tk.Error())
				}
			}
			// The filter's last topic once more closes the run: what came
			// before it is all that comes.
			last := tt.want[len(tt.want)-1]
			if tk := pub.Publish(last, 1, false, "end"); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
				t.Fatal(tk.Error())
			}
			var received []string
			for seen := 0; seen < 2; {
				select {
				case topic := <-got:
					received = append(received, topic)
					if topic == last {
						seen++
					}
				case <-time.After(10 * time.Second):
					t.Fatalf("%s got %q, want %q", tt.filter, received, tt.want)
				}
			}
			received = received[:len(received)-1]
			if !slices.Equal(received, tt.want) {
				t.Errorf("%s got %q, want %q", tt.filter, received, tt.want)
			}
		})
	}
}

// Grants are channel patterns, so they reach any topic through its
// channel: a token granted "~54opic~41:*" (TopicA/…) subscribes to
// TopicA/+ and to nothing of Topic/…, whose channel it does not cover.
func TestMQTTGrantsOverEscapedTopics(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), nil)
	m := e.dialMQTT(t, "/mqtt", 5)
	if ack := m.connect("escaped", mint(t, "7", "~54opic~41:*"), 30); ack.ReasonCode != 0 {
		t.Fatalf("CONNACK %#x", ack.ReasonCode)
	}
	codes := m.subscribe(1, map[string]byte{"TopicA/+": 1, "Topic/C": 1, "topica/b": 1}, "TopicA/+", "Topic/C", "topica/b")
	if want := []byte{1, 0x87, 0x87}; !slices.Equal(codes, want) {
		t.Errorf("SUBACK %#v, want %#v: TopicA/+ granted, the others not", codes, want)
	}
}
