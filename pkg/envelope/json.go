package envelope

import (
	"errors"
	"fmt"
	"slices"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// jsonOptions renders data with proto field names, as the docs show them,
// and resolves Any through the global registry that the generated packages
// fill when imported.
var jsonOptions = protojson.MarshalOptions{UseProtoNames: true}

// MarshalJSON renders env as compact JSON with proto field names, the same
// JSON protojson gives: data of a registered type is rendered as that message
// with an "@type" key, and the data of any other type (a Struct) as the plain
// JSON object it was sent as. The envelope's own fields are written directly; only
// data goes through protojson, which is what the logger and the edge spend
// their time on per event.
func MarshalJSON(env *Envelope) ([]byte, error) {
	return AppendJSON(make([]byte, 0, 320), env)
}

// AppendJSON appends env rendered as MarshalJSON does to b. On error it
// returns b as it was.
func AppendJSON(b []byte, env *Envelope) ([]byte, error) {
	e := jsonEncoder{b: append(b, '{')}
	e.str("id", env.GetId())
	e.str("source", env.GetSource())
	e.str("type", env.GetType())
	e.str("subject", env.GetSubject())
	if ts := env.GetTime(); ts != nil {
		if err := ts.CheckValid(); err != nil {
			return b, fmt.Errorf("marshal envelope as json: time: %w", err)
		}
		e.field("time")
		e.b = appendTimestamp(e.b, ts)
	}
	e.str("channel", env.GetChannel())
	if attrs := env.GetAttributes(); len(attrs) > 0 {
		e.field("attributes")
		e.b = append(e.b, '{')
		keys := make([]string, 0, len(attrs))
		for k := range attrs {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for i, k := range keys {
			if i > 0 {
				e.b = append(e.b, ',')
			}
			e.b, e.err = appendString(e.b, k, e.err)
			e.b = append(e.b, ':')
			e.b, e.err = appendString(e.b, attrs[k], e.err)
		}
		e.b = append(e.b, '}')
	}
	if e.err != nil {
		return b, fmt.Errorf("marshal envelope as json: %w", e.err)
	}
	if d := env.GetData(); d != nil {
		var js []byte
		var err error
		if d.MessageIs((*structpb.Struct)(nil)) {
			// The data of a type the bus does not know is the JSON object
			// it was sent as, not {"@type":"…Struct","value":{…}}.
			var st structpb.Struct
			if err = d.UnmarshalTo(&st); err == nil {
				js, err = jsonOptions.Marshal(&st)
			}
		} else {
			js, err = jsonOptions.Marshal(d)
		}
		if err != nil {
			return b, fmt.Errorf("marshal envelope as json: data: %w", err)
		}
		e.field("data")
		e.b = append(e.b, compact(js)...)
	}
	if m := env.GetMqtt(); m != nil {
		js, err := jsonOptions.Marshal(m)
		if err != nil {
			return b, fmt.Errorf("marshal envelope as json: mqtt: %w", err)
		}
		e.field("mqtt")
		e.b = append(e.b, compact(js)...)
	}
	return append(e.b, '}'), nil
}

// jsonEncoder writes the fields of one JSON object.
type jsonEncoder struct {
	b   []byte
	sep bool
	err error // the first string that was no valid UTF-8
}

func (e *jsonEncoder) field(name string) {
	if e.sep {
		e.b = append(e.b, ',')
	}
	e.sep = true
	e.b = append(e.b, '"')
	e.b = append(e.b, name...)
	e.b = append(e.b, '"', ':')
}

// str writes a string field unless it is empty, as protojson does.
func (e *jsonEncoder) str(name, v string) {
	if v == "" {
		return
	}
	e.field(name)
	e.b, e.err = appendString(e.b, v, e.err)
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
	t := ts.AsTime().UTC()
	b = append(b, '"')
	b = t.AppendFormat(b, "2006-01-02T15:04:05")
	if ns := t.Nanosecond(); ns != 0 {
		digits := 9
		for digits > 3 && ns%1000 == 0 {
			ns /= 1000
			digits -= 3
		}
		var frac [9]byte
		for i := digits - 1; i >= 0; i-- {
			frac[i] = byte('0' + ns%10)
			ns /= 10
		}
		b = append(append(b, '.'), frac[:digits]...)
	}
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
