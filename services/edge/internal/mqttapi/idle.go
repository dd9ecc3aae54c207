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

// readers lends read buffers to connections with bytes to read. An idle
// connection over plain TCP holds none: it waits for its socket to become
// readable, then borrows one until what came is read.
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

// wait is what awaitBytes saw.
type wait int

const (
	waitBytes  wait = iota // a byte to read, the peer's close, or an error to read
	waitIdle               // nothing for IdleAfter
	waitClosed             // the connection was closed under the wait
)

// awaitBytes waits until s's socket rc has something to read; for at most
// IdleAfter unless idle, when the connection is idle already.
func (s *session) awaitBytes(rc syscall.RawConn, idle bool) wait {
	if !idle {
		_ = s.nc.SetReadDeadline(time.Now().Add(s.h.IdleAfter))
		defer func() { _ = s.nc.SetReadDeadline(time.Time{}) }()
	}
	switch err := rc.Read(readable); {
	case err == nil:
		return waitBytes
	case errors.Is(err, os.ErrDeadlineExceeded):
		return waitIdle
	default:
		return waitClosed
	}
}

// readable looks at the socket's next byte without taking it: false while
// there is none yet, so that the runtime's poller parks the caller.
func readable(fd uintptr) bool {
	var b [1]byte
	_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	return err != syscall.EAGAIN && err != syscall.EINTR
}
