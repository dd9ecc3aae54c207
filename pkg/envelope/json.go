package envelope

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// jsonOptions renders data with proto field names, as the docs show them,
// and resolves Any through the global registry that the generated packages
// fill when imported.
var jsonOptions = protojson.MarshalOptions{UseProtoNames: true}

// MarshalJSON renders env as compact JSON with proto field names, the same
// JSON protojson gives: data of a registered type is rendered as that message
// with an "@type" key. The envelope's own fields are written directly; only
// data goes through protojson, which is what the logger and the edge spend
// their time on per event.
func MarshalJSON(env *Envelope) ([]byte, error) {
	b := make([]byte, 0, 320)
	b = append(b, '{')
	sep := false
	field := func(name string) {
		if sep {
			b = append(b, ',')
		}
		sep = true
		b = append(b, '"')
		b = append(b, name...)
		b = append(b, '"', ':')
	}
	var err error
	str := func(name, v string) {
		if v == "" {
			return
		}
		field(name)
		b, err = appendString(b, v, err)
	}
	str("id", env.GetId())
	str("source", env.GetSource())
	str("type", env.GetType())
	str("subject", env.GetSubject())
	if ts := env.GetTime(); ts != nil {
		if verr := ts.CheckValid(); verr != nil {
			return nil, fmt.Errorf("marshal envelope as json: time: %w", verr)
		}
		field("time")
		b = appendTimestamp(b, ts)
	}
	str("channel", env.GetChannel())
	if attrs := env.GetAttributes(); len(attrs) > 0 {
		field("attributes")
		b = append(b, '{')
		keys := make([]string, 0, len(attrs))
		for k := range attrs {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for i, k := range keys {
			if i > 0 {
				b = append(b, ',')
			}
			b, err = appendString(b, k, err)
			b = append(b, ':')
			b, err = appendString(b, attrs[k], err)
		}
		b = append(b, '}')
	}
	if err != nil {
		return nil, fmt.Errorf("marshal envelope as json: %w", err)
	}
	if d := env.GetData(); d != nil {
		js, err := jsonOptions.Marshal(d)
		if err != nil {
			return nil, fmt.Errorf("marshal envelope as json: data: %w", err)
		}
		field("data")
		b = append(b, compact(js)...)
	}
	return append(b, '}'), nil
}

var errUTF8 = errors.New("string field contains invalid UTF-8")

// appendString appends s as a JSON string, keeping the first error.
func appendString(b []byte, s string, err error) ([]byte, error) {
	if err == nil && !utf8.ValidString(s) {
		err = errUTF8
	}
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		b = append(b, s[start:i]...)
		switch c {
		case '"', '\\':
			b = append(b, '\\', c)
		case '\n':
			b = append(b, '\\', 'n')
		case '\r':
			b = append(b, '\\', 'r')
		case '\t':
			b = append(b, '\\', 't')
		default:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		}
		start = i + 1
	}
	b = append(b, s[start:]...)
	return append(b, '"'), err
}

// appendTimestamp writes a valid timestamp as protojson does: RFC 3339 in
// UTC with 0, 3, 6 or 9 fractional digits.
func appendTimestamp(b []byte, ts *timestamppb.Timestamp) []byte {
	x := ts.AsTime().UTC().Format("2006-01-02T15:04:05.000000000")
	x = strings.TrimSuffix(x, "000")
	x = strings.TrimSuffix(x, "000")
	x = strings.TrimSuffix(x, ".000")
	b = append(b, '"')
	b = append(b, x...)
	return append(b, 'Z', '"')
}

// compact drops the whitespace outside strings from JSON that is known to
// be valid, in place: protojson varies its whitespace on purpose, and
// json.Compact's validating scanner costs more than the encoding itself.
func compact(b []byte) []byte {
	out := b[:0]
	inString, escaped := false, false
	for _, c := range b {
		switch {
		case escaped:
			escaped = false
		case inString && c == '\\':
			escaped = true
		case c == '"':
			inString = !inString
		case !inString && (c == ' ' || c == '\n' || c == '\t' || c == '\r'):
			continue
		}
		out = append(out, c)
	}
	return out
}
