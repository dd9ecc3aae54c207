package main

import (
	"fmt"
	"net"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	paho3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
)

// The cases of Eclipse's MQTT 3.1.1 interoperability suite
// (paho.mqtt.testing, interoperability/client_test.py), each as a test of
// ours named after it, written anew: paho's Go 3.1.1 client over the TCP
// listener, the suite's own topics and QoS. The suite's clients connect
// without a token; ours carry one granting "~*", every topic of the suite
// (each begins with an escaped byte: TopicA is ~54opic~41), and nothing
// called "nosubscribe". docs/protocol.md says which cases differ from the
// suite's expectations, and why.

var (
	interopTopics   = []string{"TopicA", "TopicA/B", "Topic/C", "TopicA/C", "/TopicA"}
	interopWildcard = []string{"TopicA/+", "+/C", "#", "/#", "/+", "+/+", "TopicA/#"}
)

// interopMessage is a message as the suite's callbacks record it.
type interopMessage struct {
	topic    string
	payload  string
	qos      byte
	retained bool
}

type interopClient struct {
	paho3.Client
	mu   sync.Mutex
	msgs []interopMessage
}

func (c *interopClient) messages() []interopMessage {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.msgs)
}

func (c *interopClient) clear() {
	c.mu.Lock()
	c.msgs = nil
	c.mu.Unlock()
}

// interopConnect connects id to e over TCP with a token for the suite's
// topics, clean session or not, and the options edit asks for.
func interopConnect(t *testing.T, e *edge, id string, clean bool, edit ...func(*paho3.ClientOptions)) *interopClient {
	t.Helper()
	c := &interopClient{}
	opts := paho3.NewClientOptions().AddBroker("tcp://" + e.mqtt).SetClientID(id).SetCleanSession(clean).
		SetUsername("device").SetPassword(mintMQTT(t, "interop", []string{"~*"}, []string{"~*"})).
		SetAutoReconnect(false).SetProtocolVersion(4).SetOrderMatters(true).
		SetDefaultPublishHandler(func(_ paho3.Client, m paho3.Message) {
			c.mu.Lock()
			c.msgs = append(c.msgs, interopMessage{m.Topic(), string(m.Payload()), m.Qos(), m.Retained()})
			c.mu.Unlock()
		})
	for _, f := range edit {
		f(opts)
	}
	c.Client = paho3.NewClient(opts)
	if tk := c.Connect(); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
		t.Fatalf("%s: connect: %v", id, tk.Error())
	}
	t.Cleanup(func() {
		if c.IsConnected() {
			c.Disconnect(0)
		}
	})
	return c
}

func done(t *testing.T, tk paho3.Token) {
	t.Helper()
	if !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
		t.Fatalf("%v", tk.Error())
	}
}

// until waits for c to hold n messages.
func (c *interopClient) until(t *testing.T, n int) []interopMessage {
	t.Helper()
	servicetest.WaitFor(t, fmt.Sprintf("%d messages", n), func() bool { return len(c.messages()) >= n })
	return c.messages()
}

func interopEdge(t *testing.T) *edge {
	return startEdge(t, redistest.Shared(t), map[string]string{"EDGE_RATE_LIMIT": "1000", "EDGE_RATE_BURST": "1000"})
}

// basic_test: a subscriber at QoS 2 gets its own publications at QoS 0,
// 1 and 2; a second CONNECT on one connection, and a CONNECT with another
// protocol name, are refused.
func TestPahoBasic(t *testing.T) {
	t.Parallel()
	e := interopEdge(t)
	a := interopConnect(t, e, "myclientid", true)
	done(t, a.Subscribe(interopTopics[0], 2, nil))
	for qos := range byte(3) {
		done(t, a.Publish(interopTopics[0], qos, false, fmt.Sprint("qos ", qos)))
	}
	if got := a.until(t, 3); len(got) != 3 {
		t.Fatalf("got %v, want the 3 publications", got)
	}

	m := e.dialMQTT(t, "/mqtt", 4)
	m.connect("second", mintMQTT(t, "interop", []string{"~*"}, nil), 30)
	m.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, Connect: packets.ConnectParams{
		ProtocolName: []byte("MQTT"), ClientIdentifier: "second", Clean: true, Keepalive: 30}})
	m.closed()

	m = e.dialMQTT(t, "/mqtt", 4)
	m.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, Connect: packets.ConnectParams{
		ProtocolName: []byte("hj"), ClientIdentifier: "wrong", Clean: true, Keepalive: 30}})
	if pk := m.closed(packets.Connack); pk.FixedHeader.Type != 0 {
		t.Fatalf("a CONNECT of protocol hj was answered %d", pk.FixedHeader.Type)
	}
}

// retained_message_test: retained publications at QoS 0, 1 and 2 come to
// a "+/+" subscription, and empty retained publications clear them.
func TestPahoRetainedMessage(t *testing.T) {
	t.Parallel()
	e := interopEdge(t)
	a := interopConnect(t, e, "myclientid", true)
	for i, topic := range interopTopics[1:4] {
		done(t, a.Publish(topic, byte(i), true, fmt.Sprint("qos ", i)))
	}
	b := interopConnect(t, e, "reader", true)
	done(t, b.Subscribe(interopWildcard[5], 2, nil))
	got := b.until(t, 3)
	for _, m := range got {
		if !m.retained {
			t.Errorf("%s came without RETAIN", m.topic)
		}
	}
	for i, topic := range interopTopics[1:4] {
		done(t, a.Publish(topic, byte(i), true, ""))
	}
	c := interopConnect(t, e, "reader2", true)
	done(t, c.Subscribe(interopWildcard[5], 2, nil))
	done(t, a.Publish(interopTopics[1], 1, false, "marker")) // live: the last thing c gets
	if got := c.until(t, 1); len(got) != 1 || got[0].payload != "marker" {
		t.Fatalf("after clearing, a new subscription got %v, want no retained message", got)
	}
}

// offline_message_queueing_test: a kept session gets, on reconnecting,
// what was published to its subscription while it was away (2 or 3 of
// QoS 0, 1, 2; the edge queues all 3).
func TestPahoOfflineMessageQueueing(t *testing.T) {
	t.Parallel()
	e := interopEdge(t)
	a := interopConnect(t, e, "myclientid", false)
	done(t, a.Subscribe(interopWildcard[5], 2, nil))
	a.Disconnect(100)
	b := interopConnect(t, e, "myclientid2", true)
	for i, topic := range interopTopics[1:4] {
		done(t, b.Publish(topic, byte(i), false, fmt.Sprint("qos ", i)))
	}
	a = interopConnect(t, e, "myclientid", false)
	if got := a.until(t, 3); len(got) != 3 {
		t.Fatalf("the kept session got %v, want the 3 publications", got)
	}
}

// will_message_test: a client that goes without DISCONNECT has its will
// published.
func TestPahoWillMessage(t *testing.T) {
	t.Parallel()
	e := interopEdge(t)
	b := interopConnect(t, e, "myclientid2", false)
	done(t, b.Subscribe(interopTopics[2], 2, nil))
	var conn interface{ Close() error }
	interopConnect(t, e, "myclientid", true, func(o *paho3.ClientOptions) {
		o.SetWill(interopTopics[2], "client not disconnected", 0, false).SetKeepAlive(2 * time.Second).
			SetCustomOpenConnectionFn(tcpConnRecorder(&conn))
	})
	_ = conn.Close() // terminated, as the suite's terminate() does
	if got := b.until(t, 1); got[0].payload != "client not disconnected" {
		t.Fatalf("got %v, want the will", got)
	}
}

// overlapping_subscriptions_test: "TopicA/#" at QoS 2 and "TopicA/+" at
// QoS 1 both match TopicA/C; the edge sends one message, at the highest
// QoS of the two.
func TestPahoOverlappingSubscriptions(t *testing.T) {
	t.Parallel()
	e := interopEdge(t)
	a := interopConnect(t, e, "myclientid", true)
	done(t, a.SubscribeMultiple(map[string]byte{interopWildcard[6]: 2, interopWildcard[0]: 1}, nil))
	done(t, a.Publish(interopTopics[3], 2, false, "overlapping topic filters"))
	done(t, a.Publish(interopTopics[0], 1, false, "marker")) // TopicA/# takes it: the last thing a gets
	got := a.until(t, 2)
	if len(got) != 2 || got[0].topic != interopTopics[3] || got[0].qos != 2 || got[1].payload != "marker" {
		t.Fatalf("got %v, want TopicA/C once, at QoS 2, then the marker", got)
	}
}

// keepalive_test: a client silent past 1.5 times its keep-alive is closed,
// and its will published.
func TestPahoKeepalive(t *testing.T) {
	t.Parallel()
	e := interopEdge(t)
	b := interopConnect(t, e, "myclientid2", true)
	done(t, b.Subscribe(interopTopics[4], 2, nil))
	var conn interface{ Close() error }
	interopConnect(t, e, "myclientid", true, func(o *paho3.ClientOptions) {
		o.SetWill(interopTopics[4], "keepalive expiry", 0, false).SetKeepAlive(2 * time.Second).
			SetPingTimeout(time.Hour).SetCustomOpenConnectionFn(silentConn(&conn))
	})
	if got := b.until(t, 1); got[0].payload != "keepalive expiry" {
		t.Fatalf("got %v, want the will of the silent client", got)
	}
}

// redelivery_on_reconnect_test: QoS 1 and 2 messages a kept session got
// and did not acknowledge come again when it reconnects.
func TestPahoRedeliveryOnReconnect(t *testing.T) {
	t.Parallel()
	e := interopEdge(t)
	var conn interface{ Close() error }
	b := interopConnect(t, e, "myclientid2", false, func(o *paho3.ClientOptions) {
		o.SetAutoAckDisabled(true).SetCustomOpenConnectionFn(tcpConnRecorder(&conn)) // paused: it acknowledges nothing
	})
	done(t, b.Subscribe(interopWildcard[6], 2, nil))
	pub := interopConnect(t, e, "publisher", true)
	done(t, pub.Publish(interopTopics[1], 1, false, "1"))
	done(t, pub.Publish(interopTopics[3], 2, false, "2"))
	b.until(t, 2)
	_ = conn.Close()
	b = interopConnect(t, e, "myclientid2", false)
	got := b.until(t, 2)
	var topics []string
	for _, m := range got {
		topics = append(topics, m.topic)
	}
	if !slices.Equal(topics, []string{interopTopics[1], interopTopics[3]}) {
		t.Fatalf("the kept session got %v, want both messages again", got)
	}
}

// zero_length_clientid_test: an empty client id is refused with a kept
// session, and given one with a clean session.
func TestPahoZeroLengthClientID(t *testing.T) {
	t.Parallel()
	e := interopEdge(t)
	c := paho3.NewClient(paho3.NewClientOptions().AddBroker("tcp://" + e.mqtt).SetClientID("").SetCleanSession(false).
		SetUsername("device").SetPassword(mintMQTT(t, "interop", []string{"~*"}, nil)).SetAutoReconnect(false).SetProtocolVersion(4))
	if tk := c.Connect(); tk.WaitTimeout(10*time.Second) && tk.Error() == nil {
		c.Disconnect(0)
		t.Fatal("an empty client id with a kept session was accepted")
	}
	interopConnect(t, e, "", true)
}

// subscribe_failure_test: a filter the connection may not subscribe to
// gets SUBACK 0x80.
func TestPahoSubscribeFailure(t *testing.T) {
	t.Parallel()
	e := interopEdge(t)
	a := interopConnect(t, e, "myclientid", true)
	tk := a.Subscribe("nosubscribe", 2, nil)
	done(t, tk)
	if code := tk.(*paho3.SubscribeToken).Result()["nosubscribe"]; code != 0x80 {
		t.Fatalf("SUBACK %#x, want 0x80", code)
	}
}

// dollar_topics_test: "+/+" takes nothing published on a $-topic.
func TestPahoDollarTopics(t *testing.T) {
	t.Parallel()
	e := interopEdge(t)
	b := interopConnect(t, e, "myclientid2", true)
	done(t, b.Subscribe(interopWildcard[5], 2, nil))
	done(t, b.Publish("$"+interopTopics[1], 1, false, ""))
	done(t, b.Publish(interopTopics[1], 1, false, "marker"))
	if got := b.until(t, 1); got[0].payload != "marker" {
		t.Fatalf("got %v first, want the marker: +/+ takes no $-topic", got)
	}
}

// tcpConnRecorder dials as paho does and keeps the connection in *conn,
// for a test to cut it.
func tcpConnRecorder(conn *interface{ Close() error }) paho3.OpenConnectionFunc {
	return func(u *url.URL, _ paho3.ClientOptions) (net.Conn, error) {
		c, err := net.DialTimeout("tcp", u.Host, 10*time.Second)
		if err == nil {
			*conn = c
		}
		return c, err
	}
}

// silentConn is tcpConnRecorder for a client that falls silent after its
// CONNECT: whatever it writes later (its pings) never leaves.
func silentConn(conn *interface{ Close() error }) paho3.OpenConnectionFunc {
	dial := tcpConnRecorder(conn)
	return func(u *url.URL, o paho3.ClientOptions) (net.Conn, error) {
		c, err := dial(u, o)
		if err != nil {
			return nil, err
		}
		return &muted{Conn: c}, nil
	}
}

type muted struct {
	net.Conn
	mu     sync.Mutex
	writes int
}

func (m *muted) Write(p []byte) (int, error) {
	m.mu.Lock()
	m.writes++
	first := m.writes == 1
	m.mu.Unlock()
	if first {
		return m.Conn.Write(p) // the CONNECT
	}
	return len(p), nil
}

// With EDGE_ALLOW_ANONYMOUS, EDGE_PUBLIC_CHANNELS and EDGE_PUBLIC_PUBLISH
// set to "~*", clients without a token, as the suite's are, subscribe and
// publish on the suite's topics, and on nothing else: the edge can be
// run against the real suite from outside.
func TestPahoTokenlessClients(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), map[string]string{"EDGE_ALLOW_ANONYMOUS": "true",
		"EDGE_PUBLIC_CHANNELS": "~*", "EDGE_PUBLIC_PUBLISH": "~*"})
	c := interopConnect(t, e, "myclientid", true, func(o *paho3.ClientOptions) { o.SetUsername("").SetPassword("") })
	tk := c.SubscribeMultiple(map[string]byte{interopWildcard[6]: 2, "order/#": 1}, nil)
	done(t, tk)
	if codes := tk.(*paho3.SubscribeToken).Result(); codes[interopWildcard[6]] != 2 || codes["order/#"] != 0x80 {
		t.Fatalf("SUBACK %v, want TopicA/# granted at 2 and order/# refused", codes)
	}
	done(t, c.Publish(interopTopics[1], 2, false, "anonymous"))
	if got := c.until(t, 1); got[0].payload != "anonymous" {
		t.Fatalf("got %v", got)
	}
	if tk := c.Publish("order/placed", 1, false, "{}"); tk.WaitTimeout(10*time.Second) && tk.Error() == nil && c.IsConnectionOpen() {
		t.Fatal("a tokenless client published outside EDGE_PUBLIC_PUBLISH and stayed connected")
	}
}
