package server_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/eventbus-suite/eventbus/pkg/server"
)

// bound is how long a test waits for something that should happen at once
// (or after a timeout of a few milliseconds) before it fails: a bound on a
// hang, never a measure.
const bound = 10 * time.Second

// serve serves h with a server from NewHTTPServer(h, o) on a free port
// until the test ends, and returns its address. quit is closed as the test
// ends, before the server shuts down, for streaming handlers to return.
func serve(t *testing.T, o server.HTTPOptions, h func(quit <-chan struct{}) http.Handler) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	quit := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- server.ServeHTTP(ctx, server.NewHTTPServer(h(quit), o), l) }()
	t.Cleanup(func() {
		close(quit)
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("ServeHTTP = %v, want nil after its context ended", err)
		}
	})
	return l.Addr().String()
}

// dial connects to addr; every read or write on the connection fails after
// bound, so that a test waiting for the server fails rather than hangs.
func dial(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.SetDeadline(time.Now().Add(bound)); err != nil {
		t.Fatal(err)
	}
	return c, bufio.NewReader(c)
}

// readResponse reads a reply to a request with method and its body whole.
func readResponse(t *testing.T, br *bufio.Reader, method string) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("read reply: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read reply body: %v", err)
	}
	return resp, string(b)
}

// waitClosed fails the test unless the server closes c (a read gives EOF
// or a reset) before bound.
func waitClosed(t *testing.T, br *bufio.Reader, why string) {
	t.Helper()
	b, err := br.ReadByte()
	var ne net.Error
	switch {
	case err == nil:
		t.Fatalf("%s: read %q, want the connection closed", why, b)
	case errors.As(err, &ne) && ne.Timeout():
		t.Fatalf("%s: the connection is still open after %s", why, bound)
	case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed), strings.Contains(err.Error(), "connection reset"):
	default:
		t.Fatalf("%s: read = %v, want EOF", why, err)
	}
}

func ok(quit <-chan struct{}) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") })
}

// A keep-alive connection with no request for IdleTimeout is closed.
func TestIdleKeepAliveConnectionIsClosed(t *testing.T) {
	t.Parallel()
	addr := serve(t, server.HTTPOptions{IdleTimeout: 20 * time.Millisecond}, ok)
	c, br := dial(t, addr)
	for i := range 2 { // the connection is kept alive between requests
		if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if resp, body := readResponse(t, br, http.MethodGet); resp.StatusCode != http.StatusOK || body != "ok" || resp.Close {
			t.Fatalf("GET / = %d %q close=%v, want 200 ok, kept alive", resp.StatusCode, body, resp.Close)
		}
	}
	waitClosed(t, br, "idle keep-alive connection")
}

// trickle writes one byte of a body to c every few milliseconds, as an
// attacker holding a connection would, until a write fails or stop closes.
func trickle(c net.Conn, chunked bool, stop <-chan struct{}) {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		b := "x"
		if chunked {
			b = "1\r\nx\r\n"
		}
		if _, err := io.WriteString(c, b); err != nil {
			return
		}
		select {
		case <-stop:
			return
		case <-tick.C:
		}
	}
}

// bodyReader answers 408 to a body cut by its deadline, and sends what
// reading the body returned to errs.
func bodyReader(errs chan<- error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, err := io.ReadAll(r.Body)
		errs <- err
		if errors.Is(err, server.ErrBodyTimeout) {
			server.WriteError(w, http.StatusRequestTimeout, "request_timeout", err.Error())
		}
	})
}

func receiveErr(t *testing.T, errs <-chan error) error {
	t.Helper()
	select {
	case err := <-errs:
		return err
	case <-time.After(bound):
		t.Fatalf("the handler did not end reading the body within %s", bound)
		return nil
	}
}

// A body that keeps arriving, a byte at a time, is cut at BodyTimeout, and
// its connection closed after the reply.
func TestTrickledBodyIsCut(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		header  string
		chunked bool
	}{
		{name: "content-length", header: "Content-Length: 1000000"},
		{name: "chunked", header: "Transfer-Encoding: chunked", chunked: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			errs := make(chan error, 1)
			addr := serve(t, server.HTTPOptions{BodyTimeout: 50 * time.Millisecond},
				func(<-chan struct{}) http.Handler { return bodyReader(errs) })
			c, br := dial(t, addr)
			if _, err := io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\n"+tc.header+"\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			stop := make(chan struct{})
			defer close(stop)
			go trickle(c, tc.chunked, stop)

			if err := receiveErr(t, errs); !errors.Is(err, server.ErrBodyTimeout) {
				t.Fatalf("reading a trickled body = %v, want ErrBodyTimeout", err)
			}
			if resp, body := readResponse(t, br, http.MethodPost); resp.StatusCode != http.StatusRequestTimeout {
				t.Errorf("POST with a trickled body = %d %s, want 408", resp.StatusCode, body)
			}
			waitClosed(t, br, "connection of a body cut by its deadline")
		})
	}
}

// A body that arrives in time is read whole, and the connection serves the
// next request.
func TestBodyInTimeIsRead(t *testing.T) {
	t.Parallel()
	errs := make(chan error, 2)
	addr := serve(t, server.HTTPOptions{BodyTimeout: bound}, func(<-chan struct{}) http.Handler { return bodyReader(errs) })
	c, br := dial(t, addr)
	for i := range 2 {
		if _, err := io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"); err != nil {
			t.Fatal(err)
		}
		if err := receiveErr(t, errs); err != nil {
			t.Fatalf("request %d: reading the body = %v, want nil", i, err)
		}
		if resp, _ := readResponse(t, br, http.MethodPost); resp.StatusCode != http.StatusOK || resp.Close {
			t.Fatalf("request %d = %d close=%v, want 200 kept alive", i, resp.StatusCode, resp.Close)
		}
	}
}

// streamer answers with an SSE stream, one event for each value of events,
// until the request or the server ends; a POST reads its body first.
func streamer(events <-chan string, quit <-chan struct{}) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.ReadAll(r.Body); err != nil {
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		rc := http.NewResponseController(w)
		_, _ = io.WriteString(w, ": open\n\n")
		_ = rc.Flush()
		for {
			select {
			case <-r.Context().Done():
				return
			case <-quit:
				return
			case e := <-events:
				_, _ = fmt.Fprintf(w, "data: %s\n\n", e)
				_ = rc.Flush()
			}
		}
	})
}

// echo upgrades the connection as a WebSocket handshake does (hijacking
// it) and echoes it line by line.
func echo(quit <-chan struct{}) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		go func() { <-quit; c.Close() }()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
		for {
			if err := brw.Flush(); err != nil {
				return
			}
			line, err := brw.ReadString('\n')
			if err != nil {
				return
			}
			_, _ = brw.WriteString(line)
		}
	})
}

// stream is a client of a streaming response.
type stream struct {
	name   string
	events chan string // to the handler
	body   *bufio.Reader
}

// next has the handler send e and reads it from the stream.
func (s *stream) next(t *testing.T, e string) {
	t.Helper()
	select {
	case s.events <- e:
	case <-time.After(bound):
		t.Fatalf("%s: its handler has ended", s.name)
	}
	for {
		line, err := s.body.ReadString('\n')
		if err != nil {
			t.Fatalf("%s: read event %q: %v", s.name, e, err)
		}
		if line == "data: "+e+"\n" {
			return
		}
	}
}

func openStream(t *testing.T, addr, name, request string, events chan string) *stream {
	t.Helper()
	c, br := dial(t, addr)
	if _, err := io.WriteString(c, request); err != nil {
		t.Fatal(err)
	}
	method, _, _ := strings.Cut(request, " ")
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("%s: reply %v, %v; want 200", name, resp, err)
	}
	s := &stream{name: name, events: events, body: bufio.NewReader(resp.Body)}
	s.next(t, "first")
	return s
}

// An SSE stream, a POST whose reply streams, and a hijacked (WebSocket)
// connection all outlive the body deadline and the idle timeout: each is
// still served after a body sent later than they opened has been cut by
// its deadline.
func TestLongResponsesOutliveTheBodyDeadline(t *testing.T) {
	t.Parallel()
	sse, post, errs := make(chan string), make(chan string), make(chan error, 1)
	addr := serve(t, server.HTTPOptions{BodyTimeout: 50 * time.Millisecond, IdleTimeout: 50 * time.Millisecond},
		func(quit <-chan struct{}) http.Handler {
			mux := http.NewServeMux()
			mux.Handle("GET /sse", streamer(sse, quit))
			mux.Handle("POST /stream", streamer(post, quit))
			mux.Handle("GET /ws", echo(quit))
			mux.Handle("POST /trickle", bodyReader(errs))
			return mux
		})

	streams := []*stream{
		openStream(t, addr, "GET /sse", "GET /sse HTTP/1.1\r\nHost: x\r\n\r\n", sse),
		openStream(t, addr, "POST /stream", "POST /stream HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", post),
	}
	ws, wsr := dial(t, addr)
	if _, err := io.WriteString(ws, "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if resp, err := http.ReadResponse(wsr, &http.Request{Method: http.MethodGet}); err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("GET /ws: reply %v, %v; want 101", resp, err)
	}
	echoes := func(line string) {
		t.Helper()
		if _, err := io.WriteString(ws, line+"\n"); err != nil {
			t.Fatalf("hijacked connection: write: %v", err)
		}
		if got, err := wsr.ReadString('\n'); err != nil || got != line+"\n" {
			t.Fatalf("hijacked connection: echo of %q = %q, %v", line, got, err)
		}
	}
	echoes("first")

	// A body that starts after the streams opened is cut: their own
	// deadline, had they one, has passed too.
	c, _ := dial(t, addr)
	if _, err := io.WriteString(c, "POST /trickle HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nx"); err != nil {
		t.Fatal(err)
	}
	if err := receiveErr(t, errs); !errors.Is(err, server.ErrBodyTimeout) {
		t.Fatalf("reading a stalled body = %v, want ErrBodyTimeout", err)
	}

	for _, s := range streams {
		s.next(t, "after the deadline")
	}
	echoes("after the deadline")
}
