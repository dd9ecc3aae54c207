// Package logging builds the slog.Logger of a service: JSON records for
// machines (every deployment, every test), or short text lines for a person
// at a terminal.
package logging

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
)

// Format is how a logger writes its records.
type Format string

// The formats LOG_FORMAT names.
const (
	// JSON writes one JSON object a record, each carrying "service".
	JSON Format = "json"
	// Text writes one line a record for a person to read:
	//	15:04:05.000 INFO  listening http_addr=[::]:8080
	// without "service", which the terminal (or scripts/run.sh's prefix)
	// already says.
	Text Format = "text"
	// Auto is Text when the log goes to a terminal, JSON otherwise.
	Auto Format = "auto"
)

// ParseFormat returns the Format s names: json, text or auto.
func ParseFormat(s string) (Format, error) {
	switch f := Format(s); f {
	case JSON, Text, Auto:
		return f, nil
	}
	return "", fmt.Errorf("unknown log format %q: want json, text or auto", s)
}

// For returns the format a logger writing to w uses: f itself, or for Auto,
// Text when w is a terminal and JSON otherwise.
func (f Format) For(w io.Writer) Format {
	if f != Auto {
		return f
	}
	if IsTerminal(w) {
		return Text
	}
	return JSON
}

// IsTerminal reports whether w is an *os.File open on a terminal.
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && isTerminal(f.Fd())
}

// New returns the logger of service, writing records of level and above to
// w in format (see Format.For). JSON records carry "service".
func New(w io.Writer, format Format, level slog.Leveler, service string) *slog.Logger {
	if format.For(w) == Text {
		return slog.New(NewTextHandler(w, level))
	}
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level})).With("service", service)
}

// NewTextHandler returns a handler writing each record to w as one line:
// the time of day, the level, the message, then the attributes as
// slog.TextHandler writes them. It is safe for concurrent use; each line
// is one Write.
func NewTextHandler(w io.Writer, level slog.Leveler) slog.Handler {
	s := &textShared{w: w}
	// The attributes are slog.TextHandler's, written into s.attrs; time,
	// level and message are left out of them, to lead the line instead.
	attrs := slog.NewTextHandler(&s.attrs, &slog.HandlerOptions{
		Level: level,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && (a.Key == slog.TimeKey || a.Key == slog.LevelKey || a.Key == slog.MessageKey) {
				return slog.Attr{}
			}
			return a
		},
	})
	return &textHandler{shared: s, attrs: attrs}
}

type textShared struct {
	mu    sync.Mutex // held across one record's formatting and write
	w     io.Writer
	attrs buffer // the attributes of the record being written
	line  []byte
}

type buffer struct{ b []byte }

func (b *buffer) Write(p []byte) (int, error) {
	b.b = append(b.b, p...)
	return len(p), nil
}

type textHandler struct {
	shared *textShared
	attrs  slog.Handler // writes into shared.attrs
}

func (h *textHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.attrs.Enabled(ctx, l)
}

func (h *textHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &textHandler{shared: h.shared, attrs: h.attrs.WithAttrs(as)}
}

func (h *textHandler) WithGroup(name string) slog.Handler {
	return &textHandler{shared: h.shared, attrs: h.attrs.WithGroup(name)}
}

func (h *textHandler) Handle(ctx context.Context, r slog.Record) error {
	s := h.shared
	s.mu.Lock()
	defer s.mu.Unlock()
	s.attrs.b = s.attrs.b[:0]
	if err := h.attrs.Handle(ctx, r); err != nil {
		return err
	}
	attrs := s.attrs.b
	if len(attrs) > 0 && attrs[len(attrs)-1] == '\n' {
		attrs = attrs[:len(attrs)-1]
	}
	line := s.line[:0]
	if !r.Time.IsZero() {
		line = r.Time.AppendFormat(line, "15:04:05.000 ")
	}
	line = fmt.Appendf(line, "%-5s %s", r.Level, r.Message)
	if len(attrs) > 0 {
		line = append(append(line, ' '), attrs...)
	}
	line = append(line, '\n')
	s.line = line[:0]
	_, err := s.w.Write(line)
	return err
}
