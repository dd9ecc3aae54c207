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
