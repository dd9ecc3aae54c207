package mqttapi

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/eventbus-suite/eventbus/services/edge/internal/hub"
)

// Serve accepts MQTT connections on l until ctx ends: MQTT over TCP, or
// over TLS when l is a tls.NewListener (the handshake then happens within
// ConnectTimeout, after the socket is admitted). Each connection is
// served as one over WebSocket is, under the same limits and counted
// against its TCP peer's address (no proxy names a client here); only the
// closing differs, a TCP socket having no close code.
//
// When ctx ends Serve closes l and returns nil once every connection it
// accepted has ended: the hub closes them as it shuts down, as it does
// the WebSocket ones. It returns an error only when l fails for good.
func (h *Handler) Serve(ctx context.Context, l net.Listener) error {
	var conns sync.WaitGroup
	defer conns.Wait()
	stop := context.AfterFunc(ctx, func() { _ = l.Close() })
	defer stop()
	var backoff time.Duration
	for {
		nc, err := l.Accept()
		switch {
		case ctx.Err() != nil:
			if nc != nil {
				_ = nc.Close()
			}
			return nil
		case errors.Is(err, net.ErrClosed):
			return fmt.Errorf("accept mqtt on %s: %w", l.Addr(), err)
		case err != nil:
			// Out of file descriptors, a connection reset before it was
			// taken: passing, as net/http treats them.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			h.Logger.Warn("mqtt accept failed; retrying", "addr", l.Addr().String(), "error", err, "retry_in", backoff)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
			}
			continue
		}
		backoff = 0
		conns.Go(func() { h.serve(nc, tcpCloser{nc}, peerAddr(nc), conns.Go) })
	}
}

// tcpCloser closes an MQTT connection over TCP or TLS.
type tcpCloser struct{ nc net.Conn }

// Close closes the socket: MQTT over TCP has no close code, and what the
// session had to say went out as packets before. A TLS connection sends
// its close_notify first, within the 5 s crypto/tls gives it.
func (c tcpCloser) Close(hub.Disconnect) { _ = c.nc.Close() }

// CloseNow closes the socket beneath TLS too, so nothing waits on a peer
// that reads nothing.
func (c tcpCloser) CloseNow() {
	if t, ok := c.nc.(*tls.Conn); ok {
		_ = t.NetConn().Close()
		return
	}
	_ = c.nc.Close()
}

// peerAddr is the address of nc's peer, IPv4 as such; zero if it has
// none.
func peerAddr(nc net.Conn) netip.Addr {
	ap, err := netip.ParseAddrPort(nc.RemoteAddr().String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}
