package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	pahopackets "github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	paho3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/golang-jwt/jwt/v5"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/eventbus-suite/eventbus/pkg/mqttwire"
	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/revocation"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
	"github.com/eventbus-suite/eventbus/pkg/token"
)

// mintMQTT is a token for sub allowed channels and to publish on publish.
func mintMQTT(t *testing.T, sub string, channels, publish []string) string {
	t.Helper()
	tok, err := token.IssueClaims([]byte(secret), token.Claims{Channels: channels, Publish: publish,
		RegisteredClaims: jwt.RegisteredClaims{Subject: sub}}, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// mqttConn is a bare MQTT client over WebSocket: packets in and out as
// mochi-mqtt's codec makes them, so a test controls every byte and sees
// every reason code.
type mqttConn struct {
	t       *testing.T
	nc      net.Conn
	br      *bufio.Reader
	version byte
}

// dialMQTT opens path ("/mqtt" or "/ws") offering the mqtt subprotocol.
func (e *edge) dialMQTT(t *testing.T, path string, version byte) *mqttConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, strings.Replace(e.base, "http", "ws", 1)+path, &websocket.DialOptions{Subprotocols: []string{"mqtt"}})
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	if conn.Subprotocol() != "mqtt" {
		t.Fatalf("the edge chose subprotocol %q, want mqtt", conn.Subprotocol())
	}
	nc := websocket.NetConn(context.Background(), conn, websocket.MessageBinary)
	t.Cleanup(func() { nc.Close() })
	return &mqttConn{t: t, nc: nc, br: bufio.NewReader(nc), version: version}
}

func (m *mqttConn) send(pk packets.Packet) {
	m.t.Helper()
	pk.ProtocolVersion = m.version
	var buf bytes.Buffer
	err := mqttwire.Append(&buf, &pk)
	if err == nil {
		_, err = m.nc.Write(buf.Bytes())
	}
	if err != nil {
		m.t.Fatalf("send %d: %v", pk.FixedHeader.Type, err)
	}
}

// flood sends n PINGREQs in one write, which the edge cannot close the
// connection in the middle of, as it may between writes.
func (m *mqttConn) flood(n int) {
	m.t.Helper()
	var buf bytes.Buffer
	for range n {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}, ProtocolVersion: m.version}
		if err := mqttwire.Append(&buf, &pk); err != nil {
			m.t.Fatal(err)
		}
	}
	if _, err := m.nc.Write(buf.Bytes()); err != nil {
		m.t.Fatalf("send %d PINGREQs: %v", n, err)
	}
}

// next reads the next packet, or fails the test after 10 s; io.EOF and
// the like when the edge closed the connection.
func (m *mqttConn) next() (packets.Packet, error) {
	m.t.Helper()
	_ = m.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	pk, err := mqttwire.Read(m.br, m.version, 1<<20)
	var malformed packets.Code
	switch {
	case errors.As(err, &malformed):
		m.t.Fatalf("the edge sent a malformed packet of type %d: %v", pk.FixedHeader.Type, err)
	case err != nil:
		return pk, err
	}
	switch pk.FixedHeader.Type {
	case packets.Connack, packets.Suback, packets.Unsuback, packets.Publish, packets.Puback, packets.Pubrec, packets.Pubrel, packets.Pubcomp,
		packets.Disconnect, packets.Pingresp:
	default:
		m.t.Fatalf("the edge sent a packet of type %d", pk.FixedHeader.Type)
	}
	return pk, nil
}

// expect reads the next packet and fails unless it is of type typ.
func (m *mqttConn) expect(typ byte) packets.Packet {
	m.t.Helper()
	pk, err := m.next()
	if err != nil || pk.FixedHeader.Type != typ {
		m.t.Fatalf("read %+v, %v; want a packet of type %d", pk.FixedHeader, err, typ)
	}
	return pk
}

// closed reads until the edge closes the connection, failing on any
// packet but a DISCONNECT, which it returns (zero without one), or one of
// the types tolerated (a PINGRESP to a ping sent before, say).
func (m *mqttConn) closed(tolerated ...byte) packets.Packet {
	m.t.Helper()
	var d packets.Packet
	for {
		pk, err := m.next()
		switch {
		case err != nil:
			return d
		case pk.FixedHeader.Type == packets.Disconnect:
			d = pk
		case !slices.Contains(tolerated, pk.FixedHeader.Type):
			m.t.Fatalf("read a packet of type %d, want the connection closed", pk.FixedHeader.Type)
		}
	}
}

// connectPacket is the CONNECT of client id as the user "device" with
// token tok (none: ""), in a clean session that ends with its connection.
func connectPacket(id, tok string, keepAlive uint16) packets.Packet {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, Connect: packets.ConnectParams{
		ProtocolName: []byte("MQTT"), ClientIdentifier: id, Clean: true, Keepalive: keepAlive,
		UsernameFlag: true, Username: []byte("device")}}
	if tok != "" {
		pk.Connect.PasswordFlag, pk.Connect.Password = true, []byte(tok)
	}
	return pk
}

func (m *mqttConn) connect(id, tok string, keepAlive uint16) packets.Packet {
	m.t.Helper()
	m.send(connectPacket(id, tok, keepAlive))
	return m.expect(packets.Connack)
}

// connectKept connects client id with token tok to a session kept past
// its connection (5.0: Session Expiry an hour; 3.1.1: as long as
// EDGE_MQTT_SESSION_EXPIRY, with clean false), starting clean or
// resuming, and returns the CONNACK.
func (m *mqttConn) connectKept(id, tok string, clean bool) packets.Packet {
	m.t.Helper()
	pk := connectPacket(id, tok, 30)
	pk.Connect.Clean = clean
	if m.version == 5 {
		pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = 3600, true
	}
	m.send(pk)
	return m.expect(packets.Connack)
}

func (m *mqttConn) subscribe(id uint16, filters map[string]byte, order ...string) []byte {
	m.t.Helper()
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: id}
	for _, f := range order {
		pk.Filters = append(pk.Filters, packets.Subscription{Filter: f, Qos: filters[f]})
	}
	m.send(pk)
	return m.expect(packets.Suback).ReasonCodes
}

func publishPacket(topic string, qos byte, id uint16, payload string) packets.Packet {
	return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos}, TopicName: topic, PacketID: id, Payload: []byte(payload)}
}

// Filters keep MQTT's semantics although Redis is subscribed to globs:
// "user/+" takes user:42 and not user:42:deleted, "order/#" takes order
// and everything below it; QoS 1 where granted. Over /mqtt with 3.1.1 and
// over /ws with 5.0.
func TestMQTTDeliversWithMQTTSemantics(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		path    string
		version byte
	}{{"/mqtt", 4}, {"/ws", 5}} {
		t.Run(fmt.Sprintf("v%d%s", tt.version, tt.path), func(t *testing.T) {
			t.Parallel()
			e := startEdge(t, redistest.Shared(t), nil)
			m := e.dialMQTT(t, tt.path, tt.version)
			if ack := m.connect("sub-1", mint(t, "42", "order:*", "order", "user:*"), 30); ack.ReasonCode != 0 {
				t.Fatalf("CONNACK %#x, want success", ack.ReasonCode)
			}
			codes := m.subscribe(1, map[string]byte{"order/#": 1, "user/+": 0}, "order/#", "user/+")
			if !bytes.Equal(codes, []byte{1, 0}) {
				t.Fatalf("SUBACK %v, want QoS 1 and 0 granted", codes)
			}
			for _, ch := range []string{"order:placed", "user:42:deleted", "user:42", "order:placed:eu", "order", "user:x"} {
				e.publish(t, ch, ch, -1)
			}
			want := []struct {
				topic string
				qos   byte
			}{{"order/placed", 1}, {"user/42", 0}, {"order/placed/eu", 1}, {"order", 1}, {"user/x", 0}}
			for _, w := range want {
				pk := m.expect(packets.Publish)
				var ev struct{ Channel, Subject string }
				if err := json.Unmarshal(pk.Payload, &ev); err != nil {
					t.Fatalf("payload %q is not the event's JSON: %v", pk.Payload, err)
				}
				if pk.TopicName != w.topic || pk.FixedHeader.Qos != w.qos || ev.Channel != strings.ReplaceAll(w.topic, "/", ":") {
					t.Fatalf("got %s at QoS %d (%s), want %s at QoS %d", pk.TopicName, pk.FixedHeader.Qos, pk.Payload, w.topic, w.qos)
				}
				if w.qos == 1 {
					m.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID})
				}
			}
		})
	}
}

// Each refusal gets its documented code: a bad token at CONNECT, filters
// outside the token's grants or the grammar at SUBSCRIBE, a PUBLISH
// without a publish claim, an oversize packet, a flood of packets, and a
// client silent past 1.5 × its keep-alive.
func TestMQTTRefusals(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), map[string]string{"EDGE_MAX_MESSAGE_BYTES": "1024", "EDGE_RATE_LIMIT": "1", "EDGE_RATE_BURST": "5"})
	for _, v := range []byte{4, 5} {
		t.Run(fmt.Sprintf("v%d", v), func(t *testing.T) {
			t.Parallel()
			// Client ids of their own: the same user's ids of the other
			// version's subtest would take these over.
			id := func(name string) string { return fmt.Sprintf("%s-v%d", name, v) }
			// Not authorized: 3.1.1 return code 5, 5.0 reason 0x87.
			notAuthorized := map[byte]byte{4: 5, 5: 0x87}[v]
			for name, tok := range map[string]string{"bad token": "not-a-token", "no token": "", "expired": expired(t)} {
				m := e.dialMQTT(t, "/mqtt", v)
				if ack := m.connect("c", tok, 30); ack.ReasonCode != notAuthorized {
					t.Errorf("%s: CONNACK %#x, want %#x", name, ack.ReasonCode, notAuthorized)
				}
				m.closed()
			}

			m := e.dialMQTT(t, "/mqtt", v)
			m.connect(id("refusals"), mint(t, "7", "order:*"), 30)
			codes := m.subscribe(1, map[string]byte{"user/+": 0, "order/+": 1, "Order/x": 0, "order/#": 0, "a/#/b": 0},
				"user/+", "order/+", "Order/x", "order/#", "a/#/b")
			want := map[byte][]byte{4: {0x80, 1, 0x80, 0, 0x80}, 5: {0x87, 1, 0x87, 0, 0x8F}}[v]
			if !bytes.Equal(codes, want) {
				t.Errorf("SUBACK %#v, want %#v (order/# narrowed to order:*, user/+ and Order/x outside the grants)", codes, want)
			}
			// A PUBLISH without a publish claim: 5.0 answers a QoS 1 one
			// with PUBACK 0x87 and goes on; 3.1.1 can only close.
			m.send(publishPacket("sensor/temp", 1, 9, `{"c":21.5}`))
			if v == 4 {
				m.closed()
				return
			}
			if ack := m.expect(packets.Puback); ack.PacketID != 9 || ack.ReasonCode != 0x87 {
				t.Errorf("PUBACK %d %#x, want 9 not authorized", ack.PacketID, ack.ReasonCode)
			}
			m.send(publishPacket("sensor/temp", 0, 0, `{"c":21.5}`)) // QoS 0: DISCONNECT 0x87
			if d := m.closed(); d.ReasonCode != 0x87 {
				t.Errorf("after a QoS 0 PUBLISH refused: DISCONNECT %#x, want 0x87", d.ReasonCode)
			}

			big := e.dialMQTT(t, "/mqtt", v)
			big.connect(id("big"), mintMQTT(t, "7", nil, []string{"sensor:*"}), 30)
			big.send(publishPacket("sensor/temp", 0, 0, `"`+strings.Repeat("x", 2000)+`"`))
			if d := big.closed(); d.ReasonCode != 0x95 {
				t.Errorf("oversize PUBLISH: DISCONNECT %#x, want 0x95 packet too large", d.ReasonCode)
			}

			flood := e.dialMQTT(t, "/mqtt", v)
			flood.connect(id("flood"), mint(t, "7"), 30)
			flood.flood(10)
			if d := flood.closed(packets.Pingresp); d.ReasonCode != 0x96 {
				t.Errorf("10 packets at once past a burst of 5: DISCONNECT %#x, want 0x96 message rate too high", d.ReasonCode)
			}

			silent := e.dialMQTT(t, "/mqtt", v)
			silent.connect(id("silent"), mint(t, "7"), 1)
			if d := silent.closed(); d.ReasonCode != 0x8D {
				t.Errorf("silent past its keep-alive: DISCONNECT %#x, want 0x8D keep alive timeout", d.ReasonCode)
			}
		})
	}
}

func expired(t *testing.T) string {
	t.Helper()
	tok, err := token.Issue([]byte(secret), "7", nil, time.Minute, time.Now().Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// A QoS 1 message whose PUBACK never comes is sent again, with DUP and the
// same packet id, on the same connection: paho's 3.1.1 client with manual
// acknowledgement drops the first PUBACK and acknowledges the second.
func TestMQTTRedeliversAnUnacknowledgedMessageWithDUP(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), map[string]string{"EDGE_MQTT_RETRY_INTERVAL": "100ms"})
	type delivery struct {
		id      uint16
		dup     bool
		payload string
	}
	got := make(chan delivery, 10)
	opts := paho3.NewClientOptions().AddBroker(strings.Replace(e.base, "http", "ws", 1) + "/mqtt").
		SetClientID("dup").SetUsername("device").SetPassword(mint(t, "9", "order:*")).SetProtocolVersion(4).
		SetAutoAckDisabled(true).SetAutoReconnect(false).SetConnectRetry(false)
	c := paho3.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(0) })
	handler := func(_ paho3.Client, msg paho3.Message) {
		got <- delivery{msg.MessageID(), msg.Duplicate(), string(msg.Payload())}
		if msg.Duplicate() {
			msg.Ack()
		}
	}
	if tok := c.Subscribe("order/+", 1, handler); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	e.publish(t, "order:placed", "o1", 1)
	first, again := servicetest.Receive(t, got), servicetest.Receive(t, got)
	if first.dup || !again.dup || again.id != first.id || again.payload != first.payload {
		t.Fatalf("deliveries %+v then %+v, want the same message again with DUP", first, again)
	}
	servicetest.WaitFor(t, "the redelivery counted", func() bool { return e.metric(t, "eventbus_edge_mqtt_redelivered_total") >= 1 })
}

// A device publishes telemetry with paho's 5.0 client: the PUBACK comes once
// Redis has the event, and a JSON WebSocket client subscribed to sensor:*
// receives it as an event of type sensor.temp from mqtt:<client id>.
func TestMQTTPublishReachesJSONClients(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), nil)
	browser := e.dial(t, mint(t, "1", "sensor:*"))
	browser.subscribe("1", "sensor:*")

	c, _ := e.pahoV5(t, paho.ClientConfig{}, mintMQTT(t, "dev-7", nil, []string{"sensor:*"}), paho.Connect{ClientID: "thermo-1", KeepAlive: 30, CleanStart: true})
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	resp, err := c.Publish(ctx, &paho.Publish{Topic: "sensor/temp", QoS: 1, Payload: []byte(`{"celsius":21.5}`)})
	if err != nil || resp.ReasonCode != 0 {
		t.Fatalf("publish: %+v, %v", resp, err)
	}
	// PUBACK came: Redis has the event already.
	page, err := e.recorder(t).History(t.Context(), "sensor:*", nil, 10)
	if err != nil || len(page.Events) != 1 {
		t.Fatalf("history after the PUBACK: %+v, %v; want the event", page, err)
	}
	f := browser.next()
	var ev struct {
		Type, Source, Subject string
		Data                  map[string]float64
	}
	if err := json.Unmarshal(f.Event, &ev); err != nil {
		t.Fatalf("%s: %v", f.Event, err)
	}
	if f.Channel != "sensor:temp" || ev.Type != "sensor.temp" || ev.Source != "mqtt:thermo-1" || ev.Subject != "dev-7" || ev.Data["celsius"] != 21.5 {
		t.Fatalf("the JSON client got %s %+v, want the telemetry", f.Channel, ev)
	}
}

// paho's 5.0 client writes each packet whole, even as two of its
// goroutines write at once: here a PINGREQ is sent, every run, while a
// PUBLISH is half written (its fixed header out, the rest not), as
// paho's pinger did in about 1 run in 20 of
// TestMQTTPublishReachesJSONClients. Interleaved, the edge reads the
// PUBLISH as malformed and closes with 0x81; kept whole, the PUBLISH is
// acknowledged.
func TestMQTTPahoPacketsReachTheEdgeWhole(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), nil)
	split := &midPublish{Conn: e.mqttNetConn(t), pinged: make(chan error, 1)}
	conn := pahoConn(split)
	split.ping = func() {
		go func() {
			_, err := pahopackets.NewControlPacket(pahopackets.PINGREQ).WriteTo(conn)
			split.pinged <- err
		}()
		if _, serialised := conn.(sync.Locker); !serialised {
			// Nothing holds the PINGREQ back: let it go out now, inside
			// the PUBLISH. (Held back by the lock, it would wait for this
			// Write, which must not wait for it.)
			err := <-split.pinged
			split.pinged <- err
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	disconnected := make(chan byte, 1)
	cfg := paho.ClientConfig{OnServerDisconnect: func(d *paho.Disconnect) {
		disconnected <- d.ReasonCode
		cancel()
	}}
	// KeepAlive 0: paho's own pinger stays quiet, the PINGREQ is the test's.
	c, _ := e.pahoV5On(t, conn, cfg, mintMQTT(t, "dev-7", nil, []string{"sensor:*"}), paho.Connect{ClientID: "thermo-2", CleanStart: true})
	resp, err := c.Publish(ctx, &paho.Publish{Topic: "sensor/temp", QoS: 1, Payload: []byte(`{"celsius":21.5}`)})
	select {
	case code := <-disconnected:
		t.Fatalf("the edge disconnected with %#x: the PINGREQ was written inside the PUBLISH", code)
	default:
	}
	if err != nil || resp.ReasonCode != 0 {
		t.Fatalf("publish: %+v, %v", resp, err)
	}
	if err := <-split.pinged; err != nil {
		t.Fatalf("write PINGREQ: %v", err)
	}
}

// midPublish calls ping once, after the first Write of the first PUBLISH
// it carries (paho's fixed header), before that Write returns.
type midPublish struct {
	net.Conn
	ping   func()
	pinged chan error // the PINGREQ's write, once done
	once   sync.Once
}

func (m *midPublish) Write(p []byte) (int, error) {
	n, err := m.Conn.Write(p)
	if err == nil && len(p) > 0 && p[0]>>4 == packets.Publish {
		m.once.Do(m.ping)
	}
	return n, err
}

// A second connection with a client id already connected takes it over:
// the first is told (0x8E in 5.0) and closed, the second goes on.
func TestMQTTClientIDTakeover(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), nil)
	tok := mint(t, "5", "order:*")
	first := e.dialMQTT(t, "/mqtt", 5)
	first.connect("phone", tok, 30)
	second := e.dialMQTT(t, "/mqtt", 5)
	if ack := second.connect("phone", tok, 30); ack.ReasonCode != 0 {
		t.Fatalf("the second CONNACK %#x, want success", ack.ReasonCode)
	}
	if d := first.closed(); d.ReasonCode != 0x8E {
		t.Errorf("the first connection got DISCONNECT %#x, want 0x8E session taken over", d.ReasonCode)
	}
	second.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
	second.expect(packets.Pingresp)
}

// The takeover crosses edges through the control channel: paho's 5.0
// client on one edge is disconnected with 0x8E when the same user's client
// id connects to another edge of the deployment.
func TestMQTTClientIDTakeoverAcrossEdges(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	prefix := strings.TrimSuffix(redistest.Prefix(t), ":")
	first, second := startEdgeWithPrefix(t, srv, prefix, nil), startEdgeWithPrefix(t, srv, prefix, nil)
	tok := mint(t, "5", "order:*")
	disconnected := make(chan byte, 1)
	connect := func(e *edge, onDisconnect func(*paho.Disconnect)) {
		t.Helper()
		e.pahoV5(t, paho.ClientConfig{OnServerDisconnect: onDisconnect}, tok, paho.Connect{ClientID: "phone", KeepAlive: 30, CleanStart: true})
	}
	connect(first, func(d *paho.Disconnect) { disconnected <- d.ReasonCode })
	connect(second, func(*paho.Disconnect) { t.Error("the newer connection was disconnected") })
	select {
	case code := <-disconnected:
		if code != 0x8E {
			t.Errorf("the older connection got DISCONNECT %#x, want 0x8E session taken over", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the connection on the other edge was not taken over")
	}
}

// A persistent session outlives its connection and its edge: paho's 3.1.1
// client with clean session 0 receives, after reconnecting to another
// edge, the QoS 1 messages published while it was away and while no edge
// ran, once each and in order, and not the one it had acknowledged.
func TestMQTTPersistentSessionGetsWhatItMissed(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	prefix := strings.TrimSuffix(redistest.Prefix(t), ":")
	first := startEdgeWithPrefix(t, srv, prefix, nil)
	got := make(chan string, 100)
	next := func() string { return servicetest.Receive(t, got) }
	connect := func(e *edge) paho3.Client {
		t.Helper()
		opts := paho3.NewClientOptions().AddBroker(strings.Replace(e.base, "http", "ws", 1) + "/mqtt").
			SetClientID("meter-1").SetUsername("device").SetPassword(mint(t, "11", "meter:*")).SetProtocolVersion(4).
			SetCleanSession(false).SetAutoReconnect(false).SetConnectRetry(false).
			SetDefaultPublishHandler(func(_ paho3.Client, m paho3.Message) { got <- m.Topic() + " " + subjectOf(t, m.Payload()) })
		c := paho3.NewClient(opts)
		if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("connect: %v", tok.Error())
		}
		return c
	}
	c := connect(first)
	if tok := c.Subscribe("meter/+", 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	rec := first.recorder(t)
	publish := func(subjects ...string) {
		t.Helper()
		for _, s := range subjects {
			if _, err := rec.Publish(t.Context(), "meter:reading", event(t, "meter:reading", s)); err != nil {
				t.Fatal(err)
			}
		}
	}
	publish("1")
	if m := next(); m != "meter/reading 1" {
		t.Fatalf("live: %q", m)
	}
	c.Disconnect(250)
	publish("2", "3") // while the client is away
	if err := first.svc.Stop(); err != nil {
		t.Fatal(err)
	}
	publish("4") // while no edge runs
	second := startEdgeWithPrefix(t, srv, prefix, nil)
	c = connect(second)
	t.Cleanup(func() { c.Disconnect(0) })
	// At least once: paho sends the PUBACK of 1 after its handler returns,
	// which may be after the DISCONNECT, and then 1 comes again. Never a
	// gap.
	var resumed []string
	for len(resumed) < 3 {
		if m := next(); len(resumed) > 0 || m != "meter/reading 1" {
			resumed = append(resumed, m)
		}
	}
	if want := []string{"meter/reading 2", "meter/reading 3", "meter/reading 4"}; !slices.Equal(resumed, want) {
		t.Fatalf("after reconnecting: %q, want %q", resumed, want)
	}
	publish("5") // and the live ones after them
	if m := next(); m != "meter/reading 5" {
		t.Fatalf("live after resuming: %q", m)
	}
}

// 5.0 keeps a session only for its Session Expiry Interval, and a clean
// start ends it: paho's 5.0 client sees session present as it should.
func TestMQTTSessionExpiryAndCleanStart(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), nil)
	tok := mint(t, "12", "meter:*", "meter")
	connect := func(clean bool, expiry uint32) (*paho.Client, *paho.Connack) {
		t.Helper()
		return e.pahoV5(t, paho.ClientConfig{}, tok, paho.Connect{ClientID: "meter-2", KeepAlive: 30, CleanStart: clean,
			Properties: &paho.ConnectProperties{SessionExpiryInterval: &expiry}})
	}
	c, ack := connect(true, 3600)
	if ack.SessionPresent {
		t.Error("a clean start found a session")
	}
	if _, err := c.Subscribe(t.Context(), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "meter/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	_ = c.Disconnect(&paho.Disconnect{})
	servicetest.WaitFor(t, "the session kept", func() bool {
		n, err := e.redis.Client(t).Exists(t.Context(), e.prefix+"mqtt:session:user:12/meter-2").Result()
		return err == nil && n == 1
	})
	c, ack = connect(false, 0)
	if !ack.SessionPresent {
		t.Error("clean start 0 did not find the session kept for an hour")
	}
	_ = c.Disconnect(&paho.Disconnect{})
	servicetest.WaitFor(t, "the session ended with its expiry of 0", func() bool {
		v, err := e.redis.Client(t).Get(t.Context(), e.prefix+"mqtt:session:user:12/meter-2").Result()
		return err == nil && strings.Contains(v, `"ended":true`)
	})
	c, ack = connect(false, 3600)
	if ack.SessionPresent {
		t.Error("a session with an expiry of 0 outlived its connection")
	}
	_ = c.Disconnect(&paho.Disconnect{})
}

// subjectOf is the subject of the event an MQTT payload carries.
func subjectOf(t *testing.T, payload []byte) string {
	var ev struct{ Subject string }
	if err := json.Unmarshal(payload, &ev); err != nil {
		t.Errorf("payload %q: %v", payload, err)
	}
	return ev.Subject
}

// With EDGE_MQTT_RETAINED=latest, a new subscription is sent each
// matching channel's latest event, with RETAIN set: the record is the
// retained store. 5.0's Retain Handling 2 asks for none.
func TestMQTTRetainedIsTheLatestEvent(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), map[string]string{"EDGE_MQTT_RETAINED": "latest"})
	rec := e.recorder(t)
	for _, m := range [][2]string{{"shop:open", "old"}, {"shop:open", "new"}, {"shop:closed", "c"}, {"shop:open:eu", "deeper"}} {
		if _, err := rec.Publish(t.Context(), m[0], event(t, m[0], m[1])); err != nil {
			t.Fatal(err)
		}
	}
	m := e.dialMQTT(t, "/mqtt", 5)
	m.connect("shop-1", mint(t, "8", "shop:*"), 30)
	if codes := m.subscribe(1, map[string]byte{"shop/+": 1}, "shop/+"); !bytes.Equal(codes, []byte{1}) {
		t.Fatalf("SUBACK %v", codes)
	}
	var got []string
	for range 2 {
		pk := m.expect(packets.Publish)
		if !pk.FixedHeader.Retain {
			t.Errorf("%s came without RETAIN", pk.TopicName)
		}
		got = append(got, pk.TopicName+"="+subjectOf(t, pk.Payload))
	}
	if want := []string{"shop/open=new", "shop/closed=c"}; !slices.Equal(got, want) {
		t.Errorf("retained %q, want %q", got, want)
	}

	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 2,
		Filters: packets.Subscriptions{{Filter: "shop/#", Qos: 0, RetainHandling: 2}}}
	m.send(pk)
	m.expect(packets.Suback)
	e.publish(t, "shop:live", "live", -1)
	if pk := m.expect(packets.Publish); pk.TopicName != "shop/live" || pk.FixedHeader.Retain {
		t.Errorf("after Retain Handling 2 got %s (retain %v), want the live event alone", pk.TopicName, pk.FixedHeader.Retain)
	}
}

// pahoV5 connects paho's MQTT 5.0 client to e's /mqtt with cp (username
// "device", tok as the password), configured by cfg but for its Conn,
// and disconnects it when the test ends.
func (e *edge) pahoV5(t *testing.T, cfg paho.ClientConfig, tok string, cp paho.Connect) (*paho.Client, *paho.Connack) {
	t.Helper()
	return e.pahoV5On(t, pahoConn(e.mqttNetConn(t)), cfg, tok, cp)
}

// mqttNetConn opens /mqtt offering the mqtt subprotocol, as a net.Conn of
// binary messages: each Write is one WebSocket message.
func (e *edge) mqttNetConn(t *testing.T) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, strings.Replace(e.base, "http", "ws", 1)+"/mqtt", &websocket.DialOptions{Subprotocols: []string{"mqtt"}})
	if err != nil {
		t.Fatal(err)
	}
	return websocket.NetConn(context.Background(), conn, websocket.MessageBinary)
}

// pahoConn is nc as paho's 5.0 client is to be given it. paho writes a
// packet in several Writes (net.Buffers.WriteTo on anything but a socket:
// fixed header, variable header, properties and payload apart) and from
// several goroutines (its pinger sends a PINGREQ as soon as CONNACK
// comes, while the caller may be publishing). Over WebSocket each Write is
// a message, so a PINGREQ could land inside a PUBLISH, which the edge
// then reads as malformed. paho holds a conn's lock around each packet
// when the conn is a sync.Locker (ClientConfig.Conn's doc): this one is.
func pahoConn(nc net.Conn) net.Conn { return pahopackets.NewThreadSafeConn(nc) }

// pahoV5On connects paho's 5.0 client over conn (see pahoConn).
func (e *edge) pahoV5On(t *testing.T, conn net.Conn, cfg paho.ClientConfig, tok string, cp paho.Connect) (*paho.Client, *paho.Connack) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	cfg.Conn = conn
	c := paho.NewClient(cfg)
	cp.Username, cp.UsernameFlag, cp.Password, cp.PasswordFlag = "device", true, []byte(tok), true
	ack, err := c.Connect(ctx, &cp)
	if err != nil || ack.ReasonCode != 0 {
		t.Fatalf("connect: %+v, %v", ack, err)
	}
	t.Cleanup(func() { _ = c.Disconnect(&paho.Disconnect{}) })
	return c, ack
}

// A client's will is published when its connection ends without a
// DISCONNECT, and only where its token may publish.
func TestMQTTWill(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), nil)
	listener := e.dial(t, mint(t, "1", "sensor:*"))
	listener.subscribe("1", "sensor:*")
	connect := func(topic string) (*mqttConn, packets.Packet) {
		m := e.dialMQTT(t, "/mqtt", 5)
		m.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, Connect: packets.ConnectParams{
			ProtocolName: []byte("MQTT"), ClientIdentifier: "willing", Clean: true, Keepalive: 30,
			PasswordFlag: true, Password: []byte(mintMQTT(t, "14", nil, []string{"sensor:*"})),
			WillFlag: true, WillTopic: topic, WillPayload: []byte(`{"online":false}`)}})
		return m, m.expect(packets.Connack)
	}
	if _, ack := connect("alarm/status"); ack.ReasonCode != 0x87 {
		t.Errorf("a will outside the publish claim: CONNACK %#x, want 0x87", ack.ReasonCode)
	}
	m, ack := connect("sensor/status")
	if ack.ReasonCode != 0 {
		t.Fatalf("CONNACK %#x", ack.ReasonCode)
	}
	m.nc.Close() // gone without a DISCONNECT
	f := listener.next()
	var ev struct {
		Type, Source string
		Data         struct{ Online *bool }
	}
	if err := json.Unmarshal(f.Event, &ev); err != nil {
		t.Fatal(err)
	}
	if f.Channel != "sensor:status" || ev.Type != "sensor.status" || ev.Source != "mqtt:willing" || ev.Data.Online == nil || *ev.Data.Online {
		t.Errorf("the will came as %s %+v, want sensor.status {online:false}", f.Channel, ev)
	}

	// A DISCONNECT says goodbye: no will, and the next event is a marker.
	m, _ = connect("sensor/status")
	m.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
	m.closed()
	e.publish(t, "sensor:marker", "after", -1)
	if f := listener.next(); f.Channel != "sensor:marker" {
		t.Errorf("after a DISCONNECT the listener got %s, want the marker and no will", f.Channel)
	}
}

// The bus's own namespace is closed to MQTT clients whatever their publish
// claim: a PUBLISH on eventbus/control could forge the edges' commands.
// So are the edge's own event types, presence news and receipts.
func TestMQTTCannotPublishOnTheControlChannel(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), nil)
	m := e.dialMQTT(t, "/mqtt", 5)
	m.connect("forger", mintMQTT(t, "16", nil, []string{"*"}), 30)
	m.send(publishPacket("eventbus/control", 1, 3, `{"action":"disconnect","sub":"42"}`))
	if ack := m.expect(packets.Puback); ack.ReasonCode != 0x87 {
		t.Errorf("PUBLISH on eventbus/control: PUBACK %#x, want 0x87 not authorized", ack.ReasonCode)
	}
	// Nor the edge's own news: a receipt, a presence join.
	for i, topic := range []string{"notification/delivered", "presence/join"} {
		m.send(publishPacket(topic, 1, uint16(10+i), `{"notification_id":"n-1","user_id":"42","transport":"ws"}`))
		if ack := m.expect(packets.Puback); ack.ReasonCode != 0x87 {
			t.Errorf("PUBLISH on %s: PUBACK %#x, want 0x87 not authorized", topic, ack.ReasonCode)
		}
	}
	m.send(publishPacket("sensor/ok", 1, 4, `{}`)) // and the claim works elsewhere
	if ack := m.expect(packets.Puback); ack.ReasonCode != 0 {
		t.Errorf("PUBLISH on sensor/ok: PUBACK %#x, want success", ack.ReasonCode)
	}
}

// PUBACKs answer the edge's own messages and do not count against the
// client's rate limit: a QoS 1 subscriber takes more events than its
// limit of requests and stays connected.
func TestMQTTAcksAreNotRateLimited(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), map[string]string{"EDGE_RATE_LIMIT": "1", "EDGE_RATE_BURST": "5"})
	m := e.dialMQTT(t, "/mqtt", 4)
	m.connect("acker", mint(t, "17", "ack:*"), 30)
	m.subscribe(1, map[string]byte{"ack/+": 1}, "ack/+")
	for i := range 30 {
		e.publish(t, "ack:x", fmt.Sprint(i), 1)
	}
	for range 30 {
		pk := m.expect(packets.Publish)
		m.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID})
	}
	m.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
	m.expect(packets.Pingresp)
}

// POST /v1/users/{id}/unsubscribe reaches MQTT connections too: the
// filters the removed pattern served are gone, and subscribing again
// works.
func TestMQTTForcedUnsubscribe(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), nil)
	m := e.dialMQTT(t, "/mqtt", 4)
	m.connect("forced", mint(t, "18", "fo:*", "fx:*"), 30)
	m.subscribe(1, map[string]byte{"fo/+": 0, "fx/+": 0}, "fo/+", "fx/+")
	cmd := revocation.Command{Action: revocation.ActionUnsubscribe, Sub: "18", Pattern: "fo:*"}
	payload, err := cmd.Payload("test", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.bus.Publish(t.Context(), revocation.ControlChannel, payload); err != nil {
		t.Fatal(err)
	}
	servicetest.WaitFor(t, "the edge to drop fo:*", func() bool {
		return e.metric(t, "eventbus_edge_subscriptions") == 1
	})
	e.publish(t, "fo:x", "dropped", -1)
	e.publish(t, "fx:x", "marker", -1)
	if pk := m.expect(packets.Publish); pk.TopicName != "fx/x" {
		t.Fatalf("after the forced unsubscribe got %s, want the marker on fx/x", pk.TopicName)
	}
	if codes := m.subscribe(2, map[string]byte{"fo/+": 0}, "fo/+"); !bytes.Equal(codes, []byte{0}) {
		t.Fatalf("subscribing again: SUBACK %v", codes)
	}
	e.publish(t, "fo:x", "again", -1)
	if pk := m.expect(packets.Publish); pk.TopicName != "fo/x" || subjectOf(t, pk.Payload) != "again" {
		t.Fatalf("after subscribing again got %s, want fo/x again", pk.TopicName)
	}
}

// A QoS 1 message the client never acknowledged comes again when its
// persistent session resumes, then what it missed: at least once.
func TestMQTTUnacknowledgedComesAgainOnResume(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), nil)
	tok := mint(t, "19", "un:*")
	connect := func() *mqttConn {
		m := e.dialMQTT(t, "/mqtt", 4)
		m.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, Connect: packets.ConnectParams{
			ProtocolName: []byte("MQTT"), ClientIdentifier: "unacked", Clean: false, Keepalive: 30,
			PasswordFlag: true, Password: []byte(tok)}})
		m.expect(packets.Connack)
		return m
	}
	m := connect()
	m.subscribe(1, map[string]byte{"un/+": 1}, "un/+")
	rec := e.recorder(t) // events in the record, where a resume reads them
	if _, err := rec.Publish(t.Context(), "un:x", event(t, "un:x", "1")); err != nil {
		t.Fatal(err)
	}
	if pk := m.expect(packets.Publish); subjectOf(t, pk.Payload) != "1" {
		t.Fatalf("live: %s", pk.Payload)
	}
	m.nc.Close() // gone without a PUBACK
	servicetest.WaitFor(t, "the connection to end", func() bool { return e.metric(t, "eventbus_edge_connections") == 0 })
	if _, err := rec.Publish(t.Context(), "un:x", event(t, "un:x", "2")); err != nil {
		t.Fatal(err)
	}
	m = connect()
	for _, want := range []string{"1", "2"} {
		pk := m.expect(packets.Publish)
		if got := subjectOf(t, pk.Payload); got != want {
			t.Fatalf("after resuming got %s, want %s", got, want)
		}
		m.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID})
	}
}
