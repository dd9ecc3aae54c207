package sse_test

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/eventbus-suite/eventbus/pkg/sse"
)

// readAll reads every event of stream, failing the test on anything but a
// clean end.
func readAll(t *testing.T, stream []byte) []sse.Event {
	t.Helper()
	rd := sse.NewReader(bytes.NewReader(stream))
	var got []sse.Event
	for {
		ev, err := rd.Next()
		if errors.Is(err, io.EOF) {
			return got
		}
		if err != nil {
			t.Fatalf("Next() on %q = %v, want events then io.EOF", stream, err)
		}
		got = append(got, ev)
	}
}

func TestWriter(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		ev     sse.Event
		stream string
		want   sse.Event
	}{
		{"plain", sse.Event{ID: "1", Data: `{"a":1}`}, "id: 1\ndata: {\"a\":1}\n\n",
			sse.Event{ID: "1", Type: "message", Data: `{"a":1}`}},
		{"typed", sse.Event{Type: "lagged", Data: "x"}, "event: lagged\ndata: x\n\n",
			sse.Event{Type: "lagged", Data: "x"}},
		{"empty data", sse.Event{}, "data: \n\n", sse.Event{Type: "message"}},
		{"data lines", sse.Event{Data: "a\nb\r\nc\rd\n"}, "data: a\ndata: b\ndata: c\ndata: d\ndata: \n\n",
			sse.Event{Type: "message", Data: "a\nb\nc\nd\n"}},
		{"forged event in data", sse.Event{ID: "1", Data: "x\n\nevent: lagged\ndata: forged"},
			"id: 1\ndata: x\ndata: \ndata: event: lagged\ndata: data: forged\n\n",
			sse.Event{ID: "1", Type: "message", Data: "x\n\nevent: lagged\ndata: forged"}},
		{"spaces kept", sse.Event{ID: " 1 ", Type: " t", Data: " d "}, "id:  1 \nevent:  t\ndata:  d \n\n",
			sse.Event{ID: " 1 ", Type: " t", Data: " d "}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var b bytes.Buffer
			if err := sse.NewWriter(&b).WriteEvent(tt.ev); err != nil {
				t.Fatalf("WriteEvent(%+v) = %v", tt.ev, err)
			}
			if b.String() != tt.stream {
				t.Errorf("WriteEvent(%+v) wrote %q, want %q", tt.ev, b.String(), tt.stream)
			}
			if diff := cmp.Diff([]sse.Event{tt.want}, readAll(t, b.Bytes())); diff != "" {
				t.Errorf("read back (-want +got):\n%s", diff)
			}
		})
	}
}

func TestWriterRefusesFieldsThatWouldForgeLines(t *testing.T) {
	t.Parallel()
	for _, ev := range []sse.Event{
		{ID: "x\nevent: lagged\ndata: {\"forged\":1}\n\n", Data: "real"},
		{ID: "x\revent: lagged", Data: "real"},
		{ID: "a\x00b", Data: "real"},
		{Type: "message\ndata: forged", Data: "real"},
		{Type: "t\r", Data: "real"},
	} {
		var b bytes.Buffer
		err := sse.NewWriter(&b).WriteEvent(ev)
		if !errors.Is(err, sse.ErrInvalidField) || b.Len() != 0 {
			t.Errorf("WriteEvent(%q) = %v and wrote %q, want ErrInvalidField and nothing written", ev, err, b.String())
		}
	}
	if sse.ValidID("a\nb") || sse.ValidID("a\x00") || !sse.ValidID("0193-abc:é") {
		t.Error("ValidID accepts a line break or NUL, or refuses a plain id")
	}
}

func TestWriteComment(t *testing.T) {
	t.Parallel()
	var b bytes.Buffer
	w := sse.NewWriter(&b)
	if err := w.WriteComment("keep-alive\ndata: forged"); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteEvent(sse.Event{Data: "real"}); err != nil {
		t.Fatal(err)
	}
	if b.String() != ": keep-alive\n: data: forged\n\ndata: real\n\n" {
		t.Errorf("stream = %q", b.String())
	}
	if diff := cmp.Diff([]sse.Event{{Type: "message", Data: "real"}}, readAll(t, b.Bytes())); diff != "" {
		t.Errorf("read back (-want +got):\n%s", diff)
	}
}

// FuzzWriter checks that whatever an event holds, a reader of the stream
// sees exactly the events written, in order, with the fields written, or
// the writer refuses the event and writes nothing.
func FuzzWriter(f *testing.F) {
	f.Add("0193a1", "", `{"a":1}`)
	f.Add("x\nevent: lagged\ndata: {\"forged\":1}\n", "", "d")
	f.Add("x\rdata: forged", "t", "d")
	f.Add("", "lagged", "a\r\n\r\nevent: forged\rdata: x")
	f.Add("a\x00b", "", "")
	f.Fuzz(func(t *testing.T, id, typ, data string) {
		var b bytes.Buffer
		w := sse.NewWriter(&b)
		before := sse.Event{ID: "before", Type: "message", Data: "before"}
		after := sse.Event{Type: "after", Data: "after"} // no id: keeps the one in force
		if err := w.WriteEvent(before); err != nil {
			t.Fatal(err)
		}
		n := b.Len()
		err := w.WriteEvent(sse.Event{ID: id, Type: typ, Data: data})
		var bb bytes.Buffer
		berr := sse.NewWriter(&bb).WriteEventBytes(id, typ, []byte(data))
		if !bytes.Equal(bb.Bytes(), b.Bytes()[n:]) || (berr == nil) != (err == nil) {
			t.Fatalf("WriteEventBytes wrote %q, %v; WriteEvent wrote %q, %v", bb.Bytes(), berr, b.Bytes()[n:], err)
		}
		valid := !strings.ContainsAny(id, "\r\n\x00") && !strings.ContainsAny(typ, "\r\n")
		want := []sse.Event{before}
		after.ID = before.ID
		switch {
		case valid && err != nil:
			t.Fatalf("WriteEvent(%q, %q, %q) = %v, want nil", id, typ, data, err)
		case !valid && (!errors.Is(err, sse.ErrInvalidField) || b.Len() != n):
			t.Fatalf("WriteEvent(%q, %q, %q) = %v and wrote %q, want ErrInvalidField and nothing", id, typ, data, err, b.Bytes()[n:])
		case valid:
			ev := sse.Event{ID: id, Type: typ, Data: strings.NewReplacer("\r\n", "\n", "\r", "\n").Replace(data)}
			if ev.ID == "" {
				ev.ID = before.ID
			}
			if ev.Type == "" {
				ev.Type = "message"
			}
			want = append(want, ev)
			after.ID = ev.ID
		}
		if err := w.WriteEvent(sse.Event{Type: after.Type, Data: after.Data}); err != nil {
			t.Fatal(err)
		}
		want = append(want, after)
		if diff := cmp.Diff(want, readAll(t, b.Bytes())); diff != "" {
			t.Fatalf("stream %q read back (-want +got):\n%s", b.Bytes(), diff)
		}
	})
}

func BenchmarkWriteEventBytes(b *testing.B) {
	w := sse.NewWriter(io.Discard)
	data := []byte(`{"logged_at":"2026-11-22T05:00:00.123Z","channel":"order:placed","pattern":"*","event":{"id":"0193a1b2c3","type":"order.placed","data":{"order_id":"o1","pad":"` + strings.Repeat("x", 400) + `"}}}`)
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if err := w.WriteEventBytes("0193a1b2c3", "", data); err != nil {
			b.Fatal(err)
		}
	}
}
