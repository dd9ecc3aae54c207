package mqttapi

import (
	"bufio"
	"errors"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// readers lends read buffers to connections with bytes to read. A
// connection over plain TCP idle for IdleAfter holds none: it waits for
// its socket to become readable, then borrows one (session.read).
var readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, readBuffer) }}

// rawConn returns nc's socket when nc is a plain TCP connection, whose
// readiness can be waited for without reading; nil otherwise (TLS,
// WebSocket and PROXY connections read through buffers of their own).
func rawConn(nc net.Conn) syscall.RawConn {
	tc, ok := nc.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// wait is what a wait for the client's next byte saw.
type wait int

const (
	waitBytes  wait = iota // a byte to read, the peer's close, or an error to read
	waitIdle               // nothing for IdleAfter
	waitClosed             // the connection ended
)

// peek waits for the next byte in br, for at most IdleAfter.
func (s *session) peek(br *bufio.Reader) wait {
	_ = s.nc.SetReadDeadline(time.Now().Add(s.h.IdleAfter))
	_, err := br.Peek(1)
	_ = s.nc.SetReadDeadline(time.Time{})
	switch {
	case err == nil:
		return waitBytes
	case errors.Is(err, os.ErrDeadlineExceeded):
		return waitIdle
	default:
		return waitClosed
	}
}

// awaitReadable waits, with no buffer, until rc has something to read:
// a byte, the peer's close or an error, which the read that follows
// sees. It is false when the connection was closed under the wait (a
// kick, the keep-alive's timer).
func awaitReadable(rc syscall.RawConn) bool {
	return rc.Read(readable) == nil
}

// readable looks at the socket's next byte without taking it: false while
// there is none yet, so that the runtime's poller parks the caller.
func readable(fd uintptr) bool {
	var b [1]byte
	_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	return err != syscall.EAGAIN && err != syscall.EINTR
}
