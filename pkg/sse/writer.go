package sse

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
)

// ErrInvalidField is returned, wrapped, for an id or event type that no
// stream can carry: one holding a line break, or an id holding NUL.
var ErrInvalidField = errors.New("field cannot be written to an event stream")

// Writer writes events to a stream so that a Reader, or a browser's
// EventSource, reads back exactly the events written, whatever their fields
// hold: no field can end an event early or add a field of its own. It does
// not buffer: each call is one Write to the underlying writer, and flushing
// that writer is the caller's business. It is not safe for concurrent use.
type Writer struct {
	w   io.Writer
	buf []byte
}

// NewWriter writes to w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// ValidID reports whether id can be sent as an event id: it holds no CR,
// LF or NUL. EventSource ignores an id with NUL, and a line break would end
// the field.
func ValidID(id string) bool { return !strings.ContainsAny(id, "\r\n\x00") }

// validType reports whether typ can be sent as an event type.
func validType(typ string) bool { return !strings.ContainsAny(typ, "\r\n") }

// WriteEvent writes ev as one event.
//
// Data goes out as one data line per line of ev.Data, so a line break in it
// (LF, CRLF or a lone CR: the standard makes them equal) reaches the reader
// as LF and never ends the event. An empty ID writes no id line, so readers
// keep the id they had; an empty Type writes no event line, which readers
// take as "message". An ID or Type that ValidID or the same rule for types
// (no CR or LF) refuses makes WriteEvent write nothing and return an error
// wrapping ErrInvalidField.
func (w *Writer) WriteEvent(ev Event) error { return writeEvent(w, ev.ID, ev.Type, ev.Data) }

// WriteEventBytes is WriteEvent for data held in a byte slice: it spares
// copying the data into a string.
func (w *Writer) WriteEventBytes(id, typ string, data []byte) error {
	return writeEvent(w, id, typ, data)
}

func writeEvent[T string | []byte](w *Writer, id, typ string, data T) error {
	if !ValidID(id) {
		return fmt.Errorf("write event id %q: %w", id, ErrInvalidField)
	}
	if !validType(typ) {
		return fmt.Errorf("write event type %q: %w", typ, ErrInvalidField)
	}
	b := w.buf[:0]
	if id != "" {
		b = append(append(append(b, "id: "...), id...), '\n')
	}
	if typ != "" {
		b = append(append(append(b, "event: "...), typ...), '\n')
	}
	b = appendLines(b, "data: ", data)
	b = append(b, '\n')
	w.buf = b
	_, err := w.w.Write(b)
	return err
}

// WriteComment writes text as comment lines, which readers skip: a
// keep-alive that proxies see as traffic. Line breaks in text start new
// comment lines.
func (w *Writer) WriteComment(text string) error {
	b := appendLines(w.buf[:0], ": ", text)
	b = append(b, '\n')
	w.buf = b
	_, err := w.w.Write(b)
	return err
}

// appendLines appends one line, starting with prefix and ending in LF, for
// every line of s, splitting at LF, CRLF and lone CR.
func appendLines[T string | []byte](b []byte, prefix string, s T) []byte {
	for {
		i := lineBreak(s)
		if i < 0 {
			return append(append(append(b, prefix...), s...), '\n')
		}
		b = append(append(append(b, prefix...), s[:i]...), '\n')
		if s[i] == '\r' && i+1 < len(s) && s[i+1] == '\n' {
			i++
		}
		s = s[i+1:]
	}
}

// lineBreak returns the index of the first CR or LF in s, or -1.
func lineBreak[T string | []byte](s T) int {
	i := indexByte(s, '\n')
	if i < 0 {
		i = len(s)
	}
	if j := indexByte(s[:i], '\r'); j >= 0 {
		return j
	}
	if i == len(s) {
		return -1
	}
	return i
}

func indexByte[T string | []byte](s T, c byte) int {
	switch s := any(s).(type) {
	case string:
		return strings.IndexByte(s, c)
	case []byte:
		return bytes.IndexByte(s, c)
	}
	return -1
}
