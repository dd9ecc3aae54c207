package mqttapi

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"

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

// IdleAfter counts from when the last packet was served, not from when it
// began to come: a packet that took longer than IdleAfter to arrive or to
// serve leaves a connection that is not idle, and a byte waiting then is
// read, not taken for idleness.
func TestPeekCountsFromTheLastPacketServed(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	client, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	s := &session{h: &Handler{Options: Options{IdleAfter: time.Minute}}, nc: server}
	s.lastPacket.Store(since() - int64(time.Hour)) // the last packet began to come an hour ago
	s.served = since()                             // and was served just now
	if _, err := client.Write([]byte{0xc0}); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(server)
	if w := s.peek(br); w != waitBytes {
		t.Fatalf("peek = %v with a byte waiting, a packet served just now; want waitBytes", w)
	}
	if !s.armed {
		t.Errorf("peek left no idle deadline armed")
	}
	s.served = since() - int64(time.Hour) // nothing served for an hour
	if _, err := br.ReadByte(); err != nil {
		t.Fatal(err)
	}
	s.armed = false
	if w := s.peek(br); w != waitIdle || s.armed {
		t.Errorf("peek = %v, armed %v, with nothing served for an hour; want waitIdle and the deadline cleared", w, s.armed)
	}
}
