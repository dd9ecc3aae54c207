package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/eventbus-suite/eventbus/pkg/bus/redisbus"
	"github.com/eventbus-suite/eventbus/pkg/envelope"
	"github.com/eventbus-suite/eventbus/pkg/mqttwire"
	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
	"github.com/eventbus-suite/eventbus/pkg/token"
)

// QoS 2 from a client is exactly once across an edge killed with SIGKILL,
// its session resumed on another edge, in 3.1.1 and in 5.0. The client
// publishes eight messages on the first edge: 1-3 complete (PUBREC,
// PUBREL, PUBCOMP); 4-6 PUBRECed, their PUBREL not sent; 7 published by
// the edge, its PUBREC never read; 8 half written when the edge dies. The
// second edge's CONNACK says the session is present (else MQTT has the
// client forget 7 and 8), and the client resends, as MQTT says, the
// PUBRELs of 4-6 and the PUBLISHes of 7 and 8 with DUP and their packet
// ids, and gets PUBCOMP and PUBREC for each. The bus's record then holds
// each message once, under one event id: none lost, none twice.
func TestMQTTQoS2ExactlyOnceAcrossAKilledEdge(t *testing.T) {
	for _, version := range []byte{4, 5} {
		t.Run(fmt.Sprintf("v%d", version), func(t *testing.T) { qos2AcrossAKilledEdge(t, version) })
	}
}

func qos2AcrossAKilledEdge(t *testing.T, version byte) {
	srv := redistest.Shared(t)
	prefix := strings.TrimSuffix(redistest.Prefix(t), ":")
	env := map[string]string{"REDIS_URL": srv.URL, "REDIS_PREFIX": prefix, "EDGE_JWT_SECRET": mqttSecret}
	user, clientID := fmt.Sprintf("q2-%d", version), "meter-q2"
	tok, err := token.IssueClaims([]byte(mqttSecret), token.Claims{Publish: []string{"meter:*"},
		RegisteredClaims: jwt.RegisteredClaims{Subject: user}}, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	const completed, recorded, total = 3, 6, 8 // ids 1-3, 4-6, then 7 and 8
	reading := func(id uint16) packets.Packet {
		return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 2}, TopicName: "meter/reading",
			PacketID: id, Payload: fmt.Appendf(nil, `{"n":%d}`, id)}
	}

	addrs, edges := startEdges(t, 1, env)
	a := dialWire(t, addrs[0], version)
	if present := a.connect(clientID, tok); present {
		t.Fatal("CONNACK on the first edge says a session is present, want none")
	}
	for id := uint16(1); id <= recorded; id++ {
		a.write(reading(id))
	}
	for id := uint16(1); id <= recorded; id++ {
		a.expect(packets.Pubrec, id)
	}
	for id := uint16(1); id <= completed; id++ {
		a.write(pubrel(id))
		a.expect(packets.Pubcomp, id)
	}
	// 7: the edge publishes it and records so; its PUBREC goes unread.
	a.write(reading(recorded + 1))
	qos2 := srv.Client(t)
	key := prefix + ":mqtt:qos2:user:" + user + "/" + clientID
	servicetest.WaitFor(t, "the edge to record message 7 as published", func() bool {
		v, err := qos2.HGet(t.Context(), key, fmt.Sprint(recorded+1)).Result()
		return err == nil && strings.HasSuffix(v, " published")
	})
	// 8: half of it is on the wire as the edge dies.
	last := a.encode(reading(total))
	a.writeRaw(last[:len(last)/2])
	victim := edges[addrs[0]]
	if err := victim.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-victim.done

	addrs, _ = startEdges(t, 1, env)
	b := dialWire(t, addrs[0], version)
	if present := b.connect(clientID, tok); !present {
		t.Error("CONNACK on the second edge says no session is present, want the one the killed edge kept")
	}
	for id := uint16(completed + 1); id <= recorded; id++ {
		b.write(pubrel(id))
	}
	for id := uint16(recorded + 1); id <= total; id++ {
		pk := reading(id)
		pk.FixedHeader.Dup = true
		b.write(pk)
	}
	for id := uint16(completed + 1); id <= recorded; id++ {
		b.expect(packets.Pubcomp, id)
	}
	for id := uint16(recorded + 1); id <= total; id++ {
		b.expect(packets.Pubrec, id)
	}
	for id := uint16(recorded + 1); id <= total; id++ {
		b.write(pubrel(id))
		b.expect(packets.Pubcomp, id)
	}

	// A PUBREC goes out only once Redis has the event, and the other edge
	// is dead: the record is complete.
	rb, err := redisbus.New(srv.Client(t), redisbus.Options{Prefix: prefix + ":", HistoryMaxLen: 10_000})
	if err != nil {
		t.Fatal(err)
	}
	page, err := rb.History(t.Context(), "meter:*", nil, 100)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string][]string{} // payload → the event id of each entry
	for _, e := range page.Events {
		ev, err := envelope.Unmarshal(e.Payload)
		if err != nil {
			t.Fatalf("the record holds %q: %v", e.Payload, err)
		}
		if ev.GetSource() != "mqtt:"+clientID {
			t.Errorf("event %s from %s, want mqtt:%s", ev.GetId(), ev.GetSource(), clientID)
		}
		p := string(ev.GetMqtt().GetPayload())
		ids[p] = append(ids[p], ev.GetId())
	}
	for id := 1; id <= total; id++ {
		p := fmt.Sprintf(`{"n":%d}`, id)
		if got := ids[p]; len(got) != 1 {
			t.Errorf("the record holds message %d %d times (event ids %q), want once", id, len(got), got)
		}
		delete(ids, p)
	}
	for p, got := range ids {
		t.Errorf("the record holds %s (event ids %q), which the client never published", p, got)
	}
}

func pubrel(id uint16) packets.Packet {
	return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1}, PacketID: id}
}

// wireMQTT is a bare MQTT client over an edge's WebSocket (/mqtt): the
// test writes each packet and reads each answer itself, so that a kill
// lands exactly between two steps of the protocol.
type wireMQTT struct {
	t       *testing.T
	nc      net.Conn
	br      *bufio.Reader
	version byte
}

// dialWire opens ws://addr/mqtt for an MQTT client of version (4: 3.1.1,
// 5: 5.0), closed when the test ends.
func dialWire(t *testing.T, addr string, version byte) *wireMQTT {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, "ws://"+addr+"/mqtt", &websocket.DialOptions{Subprotocols: []string{"mqtt"}})
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	nc := websocket.NetConn(context.Background(), conn, websocket.MessageBinary)
	t.Cleanup(func() { nc.Close() })
	return &wireMQTT{t: t, nc: nc, br: bufio.NewReader(nc), version: version}
}

// connect sends a CONNECT that keeps the session (3.1.1: clean session 0;
// 5.0: clean start 0, Session Expiry Interval an hour) and reports whether
// the CONNACK says a session is present.
func (w *wireMQTT) connect(clientID, tok string) bool {
	w.t.Helper()
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, Connect: packets.ConnectParams{
		ProtocolName: []byte("MQTT"), ClientIdentifier: clientID, Keepalive: 60,
		UsernameFlag: true, Username: []byte("device"), PasswordFlag: true, Password: []byte(tok)}}
	if w.version == 5 {
		pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = 3600, true
	}
	w.write(pk)
	return w.expect(packets.Connack, 0).SessionPresent
}

// encode is pk as the wire carries it.
func (w *wireMQTT) encode(pk packets.Packet) []byte {
	w.t.Helper()
	pk.ProtocolVersion = w.version
	var buf bytes.Buffer
	if err := mqttwire.Append(&buf, &pk); err != nil {
		w.t.Fatalf("encode a packet of type %d: %v", pk.FixedHeader.Type, err)
	}
	return buf.Bytes()
}

func (w *wireMQTT) write(pk packets.Packet) { w.t.Helper(); w.writeRaw(w.encode(pk)) }

// writeRaw writes b as one WebSocket message: a packet, or part of one.
func (w *wireMQTT) writeRaw(b []byte) {
	w.t.Helper()
	if _, err := w.nc.Write(b); err != nil {
		w.t.Fatalf("write to the edge: %v", err)
	}
}

// expect reads the next packet and fails the test unless it is of type
// typ, for packet id (0 for a CONNACK), with reason code success; or
// when none comes within 10 s.
func (w *wireMQTT) expect(typ byte, id uint16) packets.Packet {
	w.t.Helper()
	_ = w.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	pk, err := mqttwire.Read(w.br, w.version, 1<<20)
	if err != nil {
		w.t.Fatalf("read a packet of type %d for id %d: %v", typ, id, err)
	}
	if pk.FixedHeader.Type != typ || pk.PacketID != id || pk.ReasonCode != 0 {
		w.t.Fatalf("read a packet of type %d for id %d, reason %#x (%s); want type %d for id %d, success",
			pk.FixedHeader.Type, pk.PacketID, pk.ReasonCode, pk.Properties.ReasonString, typ, id)
	}
	return pk
}
