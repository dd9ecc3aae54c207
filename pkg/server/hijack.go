package server

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
)

// SmallBuffers is an http.ResponseWriter whose Hijack hands out buffers of
// ReadSize and WriteSize bytes instead of net/http's 4 KB pair, which a hijacked
// connection (a WebSocket) keeps for its life: most such connections are
// idle and read little, so the read buffer can be small.
type SmallBuffers struct {
	http.ResponseWriter
	ReadSize, WriteSize int
}

// Hijack takes the connection over from net/http. What the client sent
// right behind its request and net/http had buffered already moves to the
// new reader, where the new owner looks for it.
func (w SmallBuffers) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	early, _ := brw.Reader.Peek(brw.Reader.Buffered())
	br := bufio.NewReaderSize(io.MultiReader(bytes.NewReader(bytes.Clone(early)), conn), max(w.ReadSize, len(early)))
	if _, err := br.Peek(len(early)); err != nil {
		conn.Close()
		return nil, nil, err
	}
	return conn, bufio.NewReadWriter(br, bufio.NewWriterSize(conn, w.WriteSize)), nil
}
