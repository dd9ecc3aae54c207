package mqttwire_test

import (
	"bufio"
	"bytes"
	"errors"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/eventbus-suite/eventbus/pkg/mqttwire"
)

// A remaining length takes at most four bytes (MQTT 1.5.5): a fifth is a
// malformed packet, even when the value it spells is small.
func TestReadRefusesAFiveByteLength(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		in   []byte
		want error
	}{
		{"PINGREQ, length in five bytes", []byte{0xc0, 0x80, 0x80, 0x80, 0x80, 0x00}, packets.ErrMalformedVariableByteInteger},
		{"the largest four-byte length", []byte{0x30, 0xff, 0xff, 0xff, 0x7f}, mqttwire.ErrTooLarge},
		{"PINGREQ, length in one byte", []byte{0xc0, 0x00}, nil},
	} {
		_, err := mqttwire.Read(bufio.NewReader(bytes.NewReader(tt.in)), 4, 1<<20)
		if !errors.Is(err, tt.want) {
			t.Errorf("%s: Read(%x) = %v, want %v", tt.name, tt.in, err, tt.want)
		}
	}
}

// SetDup on a PUBLISH as sent gives what mochi encodes with DUP set, and
// leaves any other packet as it is.
func TestSetDupAgreesWithTheCodec(t *testing.T) {
	t.Parallel()
	for _, version := range []byte{4, 5} {
		for _, qos := range []byte{1, 2} {
			for _, retain := range []bool{false, true} {
				pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos, Retain: retain},
					ProtocolVersion: version, TopicName: "a/b", PacketID: 7, Payload: []byte{0, 1, 2}}
				if version == 5 {
					pk.Properties.ContentType = "application/cbor"
				}
				var sent, dup bytes.Buffer
				if err := mqttwire.Append(&sent, &pk); err != nil {
					t.Fatal(err)
				}
				pk.FixedHeader.Dup = true
				if err := mqttwire.Append(&dup, &pk); err != nil {
					t.Fatal(err)
				}
				got := bytes.Clone(sent.Bytes())
				mqttwire.SetDup(got)
				if !bytes.Equal(got, dup.Bytes()) {
					t.Errorf("v%d QoS %d retain %v: SetDup(%x) = %x, want %x", version, qos, retain, sent.Bytes(), got, dup.Bytes())
				}
			}
		}
	}
	var rel bytes.Buffer
	if err := mqttwire.Append(&rel, &packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1}, ProtocolVersion: 4, PacketID: 7}); err != nil {
		t.Fatal(err)
	}
	got := bytes.Clone(rel.Bytes())
	mqttwire.SetDup(got)
	if !bytes.Equal(got, rel.Bytes()) {
		t.Errorf("SetDup(PUBREL %x) = %x, want it unchanged", rel.Bytes(), got)
	}
}
