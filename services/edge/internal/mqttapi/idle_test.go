package mqttapi

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/eventbus-suite/eventbus/pkg/mqttwire"
)

// FuzzWhole: whatever bytes a client sent, whole says a packet is whole
// only when reading it takes no more bytes, and says so of every packet
// that reads.
func FuzzWhole(f *testing.F) {
	for _, b := range [][]byte{
		{0xc0, 0}, {0xc0}, {0x40, 2, 0, 1}, {0x40, 2, 0}, {0x30, 0x80, 0x01}, {0x30, 0xff, 0xff, 0xff, 0xff, 0x7f},
		{0x30, 0x80}, {}, {0xe0, 0}, append([]byte{0x30, 0x81, 0x01}, make([]byte, 129)...),
	} {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		br := bufio.NewReaderSize(bytes.NewReader(b), max(16, len(b)))
		_, _ = br.Peek(len(b))
		got := whole(br)
		_, err := mqttwire.Read(bufio.NewReader(bytes.NewReader(b)), 5, 1<<28)
		more := errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF)
		switch {
		case got && more:
			t.Fatalf("whole(%x) = true, but reading it wants more bytes: %v", b, err)
		case !got && err == nil:
			t.Fatalf("whole(%x) = false, but a packet reads from it", b)
		}
	})
}
