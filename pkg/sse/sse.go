// Package sse reads and writes Server-Sent-Events streams, as the HTML
// standard defines them.
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

// Reader reads events from a stream. Lines may end in LF, CRLF or a lone
// CR, as the standard allows and browsers accept. It is not safe for
// concurrent use.
type Reader struct {
	r      *bufio.Reader
	lastID string
	line   []byte
	skipLF bool // the last line ended in CR: an LF right after belongs to it
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
		line, err := rd.readLine()
		if err != nil {
			if err == io.EOF && (pending || len(line) > 0) {
				return Event{}, io.ErrUnexpectedEOF
			}
			return Event{}, err
		}
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

// readLine returns the next line without its end. The slice is valid until
// the next call. It does not wait for the byte after a CR, so an event that
// ends in CR is dispatched at once.
func (rd *Reader) readLine() ([]byte, error) {
	rd.line = rd.line[:0]
	for {
		c, err := rd.r.ReadByte()
		if err != nil {
			return rd.line, err
		}
		if rd.skipLF {
			rd.skipLF = false
			if c == '\n' {
				continue
			}
		}
		switch c {
		case '\n':
			return rd.line, nil
		case '\r':
			rd.skipLF = true
			return rd.line, nil
		}
		rd.line = append(rd.line, c)
	}
}
