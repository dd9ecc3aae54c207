package mqttapi

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/eventbus-suite/eventbus/services/edge/internal/hub"
)

// readers lends read buffers to connections with bytes to read. A
// connection over plain TCP idle for IdleAfter holds none: it waits for
// its socket to become readable, then borrows one (session.read).
var readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, readBuffer) }}

// borrow lends a read buffer reading nc.
func borrow(nc net.Conn) *bufio.Reader {
	br := readers.Get().(*bufio.Reader)
	br.Reset(nc)
	return br
}

// giveBack returns a buffer borrow lent, which its borrower no longer uses.
func giveBack(br *bufio.Reader) {
	br.Reset(nil)
	readers.Put(br)
}

// wait is what a wait for the client's next byte saw.
type wait int

const (
	waitBytes  wait = iota // a byte to read, the peer's close, or an error to read
	waitIdle               // nothing for IdleAfter
	waitClosed             // the connection ended
)

// peek waits for the next byte in br, until IdleAfter has passed since the
// last packet was served. Its read deadline stays armed across packets
// and is moved only when it passes: a busy connection pays for it about
// once an IdleAfter, not once a packet.
func (s *session) peek(br *bufio.Reader) wait {
	for {
		if !s.armed {
			_ = s.nc.SetReadDeadline(time.Now().Add(s.h.IdleAfter - s.sinceServed()))
			s.armed = true
		}
		_, err := br.Peek(1)
		switch {
		case err == nil:
			return waitBytes
		case !errors.Is(err, os.ErrDeadlineExceeded):
			return waitClosed
		case s.sinceServed() < s.h.IdleAfter:
			s.armed = false // packets were served since it was armed
		default:
			_ = s.nc.SetReadDeadline(time.Time{})
			s.armed = false
			return waitIdle
		}
	}
}

// sinceServed is how long ago the reader last finished serving a packet.
func (s *session) sinceServed() time.Duration { return time.Duration(since() - s.served) }

// sincePacket is how long ago the last packet came.
func (s *session) sincePacket() time.Duration { return time.Duration(since() - s.lastPacket.Load()) }

// epoch is what since counts from: the monotonic clock, in a word.
var epoch = time.Now()

// since returns the time since epoch, on the monotonic clock.
func since() int64 { return int64(time.Since(epoch)) }

// checkKeepAlive closes the connection when no packet came within
// keepAliveAfter, 1.5 times the client's keep-alive; otherwise it looks
// again that long after the last packet.
func (s *session) checkKeepAlive() {
	if quiet := s.sincePacket(); quiet < s.keepAliveAfter {
		s.mu.Lock()
		if s.keepAlive != nil { // nil once the session finished
			s.keepAlive.Reset(s.keepAliveAfter - quiet)
		}
		s.mu.Unlock()
		return
	}
	s.disconnect(packets.ErrKeepAliveTimeout, hub.Disconnect{Code: hub.CloseHeartbeatTimeout,
		Reason: fmt.Sprintf("no packet within 1.5 × the keep-alive of %v", s.keepAliveAfter*2/3)})
}

// whole reports whether br holds a whole packet, whose reading then needs
// no read of the socket. It reads the remaining length as mqttwire.Read
// does (at most four bytes; FuzzWhole holds them to agreeing) but without
// mochi's io.ByteReader, which would cost an allocation per packet.
func whole(br *bufio.Reader) bool {
	b, _ := br.Peek(br.Buffered())
	n := 0
	for i := 1; i < len(b) && i <= 4; i++ {
		n |= int(b[i]&0x7f) << (7 * (i - 1))
		if b[i]&0x80 == 0 {
			return len(b) >= 1+i+n
		}
	}
	return false
}
