package server

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
)

// What a client sends right behind its request reaches the hijacker, in
// the small buffers of its own sizes.
func TestSmallBuffersKeepWhatCameBehindTheRequest(t *testing.T) {
	got := make(chan string, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := SmallBuffers{ResponseWriter: w, ReadSize: 16, WriteSize: 64}.Hijack()
		if err != nil {
			got <- "hijack: " + err.Error()
			return
		}
		defer conn.Close()
		if n := brw.Reader.Size(); n < 16 || brw.Writer.Size() != 64 {
			got <- "buffer sizes wrong"
			return
		}
		b, err := io.ReadAll(io.LimitReader(brw, 40))
		if err != nil {
			got <- "read: " + err.Error()
			return
		}
		got <- string(b)
	}))
	defer srv.Close()
	c, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const behind = "0123456789abcdefghijklmnopqrstuvwxyz!@#$"
	req := "GET / HTTP/1.1\r\nHost: x\r\n\r\n" + behind[:30]
	if _, err := c.Write([]byte(req)); err != nil { // the request and 30 bytes behind it, at once
		t.Fatal(err)
	}
	if _, err := c.Write([]byte(behind[30:])); err != nil {
		t.Fatal(err)
	}
	if g := <-got; g != behind {
		t.Fatalf("the hijacker read %q, want %q", g, behind)
	}
}
