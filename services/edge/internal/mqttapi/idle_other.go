//go:build !unix

package mqttapi

import (
	"net"
	"syscall"
)

// rawConn returns nil: only Unix sockets wait for readiness without a
// read here, so elsewhere every connection reads through its buffer.
func rawConn(net.Conn) syscall.RawConn { return nil }

// awaitReadable is never called without a rawConn.
func awaitReadable(syscall.RawConn) bool { return false }
