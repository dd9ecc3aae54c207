// Package sse reads Server-Sent-Events streams, as the HTML standard
// defines them.
package sse

import (
	"bufio"
	"bytes"
	"io"
	"strings"
)

// Event is one dispatched event.
type Event struct {
	// ID is the last id seen on the stream, as EventSource keeps it.
	ID string
	// Type is the event field, "message" when absent.
	Type string
	// Data is the data lines joined by newlines.
	Data string
}

// Reader reads events from a stream. It is not safe for concurrent use.
type Reader struct {
	r      *bufio.Reader
	lastID string
}

// NewReader reads from r.
func NewReader(r io.Reader) *Reader {
	return &Reader{r: bufio.NewReaderSize(r, 64<<10)}
}

// Next returns the next event. Comments and events without data are
// skipped, as a browser skips them. At the end of the stream it returns
// io.EOF, or io.ErrUnexpectedEOF when the stream ended inside an event.
func (rd *Reader) Next() (Event, error) {
	var (
		data    strings.Builder
		hasData bool
		typ     string
		pending bool // a field was seen since the last dispatch
	)
	for {
		line, err := rd.r.ReadBytes('\n')
		if err != nil {
			if err == io.EOF && (pending || len(line) > 0) {
				return Event{}, io.ErrUnexpectedEOF
			}
			return Event{}, err
		}
		line = bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r"))
		if len(line) == 0 {
			if hasData {
				if typ == "" {
					typ = "message"
				}
				return Event{ID: rd.lastID, Type: typ, Data: data.String()}, nil
			}
			data.Reset()
			typ, pending = "", false
			continue
		}
		if line[0] == ':' {
			continue
		}
		pending = true
		field, value, _ := bytes.Cut(line, []byte(":"))
		value = bytes.TrimPrefix(value, []byte(" "))
		switch string(field) {
		case "data":
			if hasData {
				data.WriteByte('\n')
			}
			data.Write(value)
			hasData = true
		case "event":
			typ = string(value)
		case "id":
			if !bytes.ContainsRune(value, 0) {
				rd.lastID = string(value)
			}
		}
	}
}
