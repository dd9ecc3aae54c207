package server

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

// The bounds NewHTTPServer puts on every connection unless HTTPOptions says
// otherwise.
const (
	// DefaultReadHeaderTimeout bounds reading a request's headers.
	DefaultReadHeaderTimeout = 10 * time.Second
	// DefaultIdleTimeout closes a keep-alive connection that has had no
	// request for this long. It is longer than the 60 s nginx (and most
	// load balancers) keep an idle upstream connection, so that the proxy,
	// not the service, closes a connection both sides may be about to use.
	DefaultIdleTimeout = 90 * time.Second
	// DefaultBodyTimeout bounds reading a whole request body, counted from
	// the end of its headers: 16 MiB, the largest body the api takes, needs
	// about 4.5 Mbit/s.
	DefaultBodyTimeout = 30 * time.Second
)

// ErrBodyTimeout is what reading a request body returns, wrapped with the
// network error, once the body has taken longer than its deadline to
// arrive. The connection is closed after the reply.
var ErrBodyTimeout = errors.New("the request body did not arrive in time")

// HTTPOptions bound the connections of an HTTP server. A zero field takes
// its default.
type HTTPOptions struct {
	ReadHeaderTimeout time.Duration // DefaultReadHeaderTimeout
	IdleTimeout       time.Duration // DefaultIdleTimeout
	BodyTimeout       time.Duration // DefaultBodyTimeout
}

// NewHTTPServer returns the server every eventbus service serves h with:
// headers must arrive within ReadHeaderTimeout, a keep-alive connection
// idle for IdleTimeout is closed, and a request's body must arrive within
// BodyTimeout of its headers.
//
// Unlike http.Server.ReadTimeout, the body's deadline is set only on a
// request that has a body and is lifted once the body has been read, so it
// never ends a long response: an SSE stream, a WebSocket (its upgrade has
// no body) or a POST whose reply streams. Nor is there a WriteTimeout:
// streaming handlers bound their own writes.
func NewHTTPServer(h http.Handler, o HTTPOptions) *http.Server {
	if o.ReadHeaderTimeout <= 0 {
		o.ReadHeaderTimeout = DefaultReadHeaderTimeout
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = DefaultIdleTimeout
	}
	if o.BodyTimeout <= 0 {
		o.BodyTimeout = DefaultBodyTimeout
	}
	return &http.Server{
		Handler:           bodyDeadline(h, o.BodyTimeout),
		ReadHeaderTimeout: o.ReadHeaderTimeout,
		IdleTimeout:       o.IdleTimeout,
	}
}

// bodyDeadline sets a read deadline of d on the connection of every request
// with a body, and lifts it when the body has been read to its end.
func bodyDeadline(h http.Handler, d time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body == nil || r.Body == http.NoBody {
			h.ServeHTTP(w, r)
			return
		}
		rc := http.NewResponseController(w)
		// A writer that cannot take deadlines (HTTP/2 through a test
		// recorder, say) leaves the body unbounded, as before.
		if err := rc.SetReadDeadline(time.Now().Add(d)); err == nil {
			r.Body = &deadlineBody{ReadCloser: r.Body, rc: rc, timeout: d}
		}
		h.ServeHTTP(w, r)
	})
}

// deadlineBody is a request body read under a connection read deadline.
type deadlineBody struct {
	io.ReadCloser
	rc      *http.ResponseController
	timeout time.Duration
	lifted  bool
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	switch {
	case err == io.EOF && !b.lifted:
		// Whatever the handler does next (stream a reply, wait) is no
		// longer reading the body. net/http (1.26) clears the deadline
		// too when it starts watching for the client to hang up, but
		// does not promise to; the read of the next request sets its own.
		b.lifted = true
		_ = b.rc.SetReadDeadline(time.Time{})
	case errors.Is(err, os.ErrDeadlineExceeded):
		err = fmt.Errorf("%w (%s): %w", ErrBodyTimeout, b.timeout, err)
	}
	return n, err
}
