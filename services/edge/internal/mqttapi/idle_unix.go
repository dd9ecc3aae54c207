//go:build unix

package mqttapi

import (
	"net"
	"syscall"
)

// rawConn returns nc's socket when nc is a plain TCP connection, whose
// readiness can be waited for without reading; nil otherwise (TLS,
// WebSocket, and connections a trusted proxy passes with a PROXY header,
// read through buffers of their own).
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
	for {
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		if err != syscall.EINTR {
			return err != syscall.EAGAIN
		}
	}
}
