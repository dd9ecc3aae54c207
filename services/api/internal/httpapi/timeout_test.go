package httpapi

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/eventbus-suite/eventbus/pkg/apikey"
	"github.com/eventbus-suite/eventbus/pkg/server"
	"github.com/eventbus-suite/eventbus/services/api/internal/inflight"
)

// A body trickled a byte at a time to a publishing route is cut at the
// server's body deadline, answered 408 request_timeout, and its
// connection closed. Nothing reaches the bus: the routes fail before they
// would publish, so the handler has no Ingest.
func TestTrickledBodiesAreCut(t *testing.T) {
	t.Parallel()
	mux := http.NewServeMux()
	Register(mux, Options{
		Keys: apikey.New(nil), Logger: slog.New(slog.DiscardHandler),
		MaxBodyBytes: 1 << 20, MaxBatchBytes: 16 << 20, Budget: inflight.New(32<<20, prometheus.NewRegistry()),
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		errc <- server.ServeHTTP(ctx, server.NewHTTPServer(mux, server.HTTPOptions{BodyTimeout: 50 * time.Millisecond}), l)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("ServeHTTP = %v", err)
		}
	})

	for _, tc := range []struct{ name, path, header string }{
		{name: "event", path: "/v1/events", header: "Content-Length: 100000"},
		{name: "chunked event", path: "/v1/events", header: "Transfer-Encoding: chunked"},
		{name: "batch", path: "/v1/events:batch", header: "Content-Length: 10000000"},
		{name: "idempotent event", path: "/v1/events", header: "Content-Length: 100000\r\nIdempotency-Key: k1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, err := net.Dial("tcp", l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second)) // a bound on a hang
			if _, err := io.WriteString(c, "POST "+tc.path+" HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"+tc.header+"\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			stop := make(chan struct{})
			defer close(stop)
			go func() { // one byte every few milliseconds, until cut
				chunk := "["
				if tc.header == "Transfer-Encoding: chunked" {
					chunk = "1\r\n \r\n"
				}
				tick := time.NewTicker(5 * time.Millisecond)
				defer tick.Stop()
				for {
					if _, err := io.WriteString(c, chunk); err != nil {
						return
					}
					select {
					case <-stop:
						return
					case <-tick.C:
					}
				}
			}()

			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodPost})
			if err != nil {
				t.Fatalf("read reply: %v", err)
			}
			var body struct {
				Error struct{ Code, Message string }
			}
			if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != http.StatusRequestTimeout || body.Error.Code != "request_timeout" {
				t.Errorf("POST %s trickled = %d %+v, want 408 request_timeout", tc.path, resp.StatusCode, body)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			// EOF or a reset: either way the server closed the connection.
			b, err := br.ReadByte()
			var ne net.Error
			switch {
			case err == nil:
				t.Errorf("read %q after the reply, want the connection closed", b)
			case errors.As(err, &ne) && ne.Timeout():
				t.Error("the connection is still open after its body was cut")
			}
		})
	}
}
