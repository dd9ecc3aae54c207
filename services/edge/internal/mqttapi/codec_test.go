package mqttapi

import (
	"bufio"
	"bytes"
	"errors"
	"testing"
	"testing/iotest"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"google.golang.org/protobuf/types/known/timestamppb"

	eventbusv1 "github.com/eventbus-suite/eventbus/proto/gen/eventbus/v1"

	"github.com/eventbus-suite/eventbus/pkg/envelope"
	"github.com/eventbus-suite/eventbus/pkg/mqttwire"
	"github.com/eventbus-suite/eventbus/pkg/token"
	"github.com/eventbus-suite/eventbus/services/edge/internal/hub"
)

// Packets split across reads, or several in one, come out whole and in
// order.
func TestReadPacketFramesAStream(t *testing.T) {
	t.Parallel()
	var stream bytes.Buffer
	for _, pk := range []packets.Packet{
		{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}},
		{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, TopicName: "sensor/temp", PacketID: 7, Payload: []byte(`{"c":21.5}`)},
		{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}},
	} {
		pk.ProtocolVersion = 4
		var err error
		if pk.FixedHeader.Type == packets.Publish {
			err = pk.PublishEncode(&stream)
		} else {
			err = pk.PingreqEncode(&stream)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	r := bufio.NewReaderSize(iotest.OneByteReader(bytes.NewReader(stream.Bytes())), 16)
	var got []byte
	for range 3 {
		pk, err := readPacket(r, 4, 1024)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, pk.FixedHeader.Type)
		if pk.FixedHeader.Type == packets.Publish && (pk.TopicName != "sensor/temp" || pk.PacketID != 7 || string(pk.Payload) != `{"c":21.5}`) {
			t.Errorf("PUBLISH read as %+v", pk)
		}
	}
	if !bytes.Equal(got, []byte{packets.Pingreq, packets.Publish, packets.Pingreq}) {
		t.Errorf("read types %v", got)
	}
	big := append([]byte{0x30, 0xff, 0xff, 0x03}, make([]byte, 64)...) // PUBLISH of 65535 bytes
	if _, err := readPacket(bufio.NewReader(bytes.NewReader(big)), 4, 1024); !errors.Is(err, mqttwire.ErrTooLarge) {
		t.Errorf("oversize packet: %v, want ErrTooLarge before its body is read", err)
	}
}

// Whatever bytes a client sends, reading them neither panics nor takes a
// packet past the bound, and what decodes as a PUBLISH becomes an event
// every consumer can read, or a refusal.
func FuzzReadPacket(f *testing.F) {
	for _, s := range [][]byte{
		{0x10, 0x10, 0, 4, 'M', 'Q', 'T', 'T', 5, 2, 0, 30, 0, 0, 0, 1, 'c', 0, 0},
		{0x30, 0x0d, 0, 0x0b, 's', 'e', 'n', 's', 'o', 'r', '/', 't', 'e', 'm', 'p'},
		{0x82, 0x08, 0, 1, 0, 3, 'a', '/', '#', 1},
		{0xc0, 0},
		{0x30, 0xff, 0xff, 0xff, 0xff},
	} {
		f.Add(s, byte(4))
		f.Add(s, byte(5))
	}
	claims := &token.Claims{}
	claims.Subject = "7"
	f.Fuzz(func(t *testing.T, b []byte, version byte) {
		r := bufio.NewReader(bytes.NewReader(b))
		for {
			pk, err := readPacket(r, version%6, 256)
			if err != nil {
				return
			}
			if pk.FixedHeader.Remaining > 256 {
				t.Fatalf("read a packet of %d bytes past the bound", pk.FixedHeader.Remaining)
			}
			if pk.FixedHeader.Type != packets.Publish {
				continue
			}
			ch, err := channelOf(pk.TopicName)
			if err != nil {
				continue
			}
			ev, err := eventOf(ch, "fuzz", claims, messageOf(pk.Payload, pk.FixedHeader.Qos, pk.FixedHeader.Retain, pk.Properties), time.Unix(1, 0))
			if err != nil {
				continue
			}
			payload, err := envelope.Marshal(ev)
			if err != nil {
				t.Fatal(err)
			}
			env, err := envelope.Unmarshal(payload)
			if err != nil || envelope.ValidateStrict(env) != nil {
				t.Fatalf("PUBLISH %q on %s made an event consumers refuse: %v", pk.Payload, ch, err)
			}
			// MQTT subscribers get the message as it was sent.
			out, err := publishOf(&hub.Event{Channel: ch, Envelope: env}, 5, time.Unix(1, 0))
			if err != nil || !bytes.Equal(out.Payload, pk.Payload) || out.Properties.ContentType != pk.Properties.ContentType ||
				!bytes.Equal(out.Properties.CorrelationData, pk.Properties.CorrelationData) || len(out.Properties.User) != len(pk.Properties.User) {
				t.Fatalf("PUBLISH %q on %s goes out as %q (%v), properties %+v, want it as sent", pk.Payload, ch, out.Payload, err, out.Properties)
			}
		}
	})
}

// A message with a Message Expiry Interval goes out with what is left of
// it, rounded up, and to no one once it has passed: live, resumed from
// the record or retained alike, as they all go through publishOf.
func TestPublishOfCountsExpiryDown(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	env := &envelope.Envelope{Id: "1", Type: "dev.x", Channel: "dev:x", Time: timestamppb.New(at),
		Mqtt: &eventbusv1.MqttMessage{Payload: []byte("21.5"), Qos: 1, MessageExpirySeconds: 5}}
	ev := &hub.Event{Channel: "dev:x", Envelope: env}
	for _, tt := range []struct {
		after time.Duration
		left  uint32
	}{{0, 5}, {2500 * time.Millisecond, 3}, {4999 * time.Millisecond, 1}} {
		pk, err := publishOf(ev, 5, at.Add(tt.after))
		if err != nil || pk.Properties.MessageExpiryInterval != tt.left || string(pk.Payload) != "21.5" {
			t.Errorf("%v after: expiry %d (%v), want %d left", tt.after, pk.Properties.MessageExpiryInterval, err, tt.left)
		}
	}
	for _, after := range []time.Duration{5 * time.Second, time.Hour} {
		if _, err := publishOf(ev, 5, at.Add(after)); !errors.Is(err, hub.ErrSkip) {
			t.Errorf("%v after: %v, want expired, skipped", after, err)
		}
	}
	if pk, err := publishOf(ev, 4, at); err != nil || pk.Properties.MessageExpiryInterval != 0 || string(pk.Payload) != "21.5" {
		t.Errorf("3.1.1: %+v (%v), want the payload alone: 3.1.1 has no properties", pk.Properties, err)
	}
}
