package eventlog_test

import (
	"encoding/base64"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/sse"
	"github.com/eventbus-suite/eventbus/services/logger/internal/eventlog"
)

func TestMarkRoundTrip(t *testing.T) {
	t.Parallel()
	for _, m := range []eventlog.Mark{
		{Floor: "1732290000000-0", Cursor: bus.Cursor{"order": {Offset: "1732290000005-3", Epoch: "9f86d081884c7d65"}}},
		{Floor: "1-0", Cursor: bus.Cursor{"a": {Offset: "2-0", Epoch: "ab"}, "b_c-d": {Offset: "3-1", Epoch: "0"}}},
		{Floor: "5-5", Cursor: bus.Cursor{}},
	} {
		s := m.String()
		if !strings.HasPrefix(s, "p1.") || !sse.ValidID(s) || strings.ContainsAny(s, " \t") {
			t.Errorf("Mark.String() = %q, want p1.… printable without spaces", s)
		}
		got, err := eventlog.ParseMark(s)
		if err != nil || !reflect.DeepEqual(got, m) {
			t.Errorf("ParseMark(%q) = %+v, %v; want %+v", s, got, err, m)
		}
	}
}

// A Last-Event-ID that is no mark is left to the caller (ErrNotMark); one
// that claims to be one but is not is refused with ErrBadCursor, never
// taken for a position.
func TestParseMarkRefuses(t *testing.T) {
	t.Parallel()
	b64 := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	for _, tc := range []struct {
		name, id string
		want     error
	}{
		{"empty", "", eventlog.ErrNotMark},
		{"envelope id", "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", eventlog.ErrNotMark},
		{"other version", "p2.1-0.e30", eventlog.ErrNotMark},
		{"prefix only", "p1.", bus.ErrBadCursor},
		{"no cursor", "p1.1-0", bus.ErrBadCursor},
		{"floor not an offset", "p1.x.e30", bus.ErrBadCursor},
		{"floor empty", "p1..e30", bus.ErrBadCursor},
		{"floor negative", "p1.-1-0.e30", bus.ErrBadCursor},
		{"cursor not base64", "p1.1-0.!!!", bus.ErrBadCursor},
		{"cursor not json", "p1.1-0." + b64("nope"), bus.ErrBadCursor},
		{"cursor wrong shape", "p1.1-0." + b64(`{"order":"1-0"}`), bus.ErrBadCursor},
		{"namespace with colon", "p1.1-0." + b64(`{"a:b":["1-0","ab"]}`), bus.ErrBadCursor},
		{"namespace upper case", "p1.1-0." + b64(`{"Order":["1-0","ab"]}`), bus.ErrBadCursor},
		{"offset bad", "p1.1-0." + b64(`{"order":["1","ab"]}`), bus.ErrBadCursor},
		{"epoch not hex", "p1.1-0." + b64(`{"order":["1-0","xyz"]}`), bus.ErrBadCursor},
		{"epoch empty", "p1.1-0." + b64(`{"order":["1-0",""]}`), bus.ErrBadCursor},
		{"line break", "p1.1-0.e30\nevent: lagged", bus.ErrBadCursor},
		{"too long", "p1.1-0." + strings.Repeat("A", eventlog.MaxMarkLen), bus.ErrBadCursor},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if m, err := eventlog.ParseMark(tc.id); !errors.Is(err, tc.want) {
				t.Errorf("ParseMark(%.80q) = %+v, %v; want an error wrapping %v", tc.id, m, err, tc.want)
			}
		})
	}
}

func FuzzParseMark(f *testing.F) {
	for _, s := range []string{
		"", "p1.", "p1.1-0.e30", "0193a1b2c3", "p1.1-0.!!!",
		eventlog.Mark{Floor: "1732290000000-0", Cursor: bus.Cursor{"order": {Offset: "1732290000005-3", Epoch: "9f86d081884c7d65"}}}.String(),
		"p1.1-0." + base64.RawURLEncoding.EncodeToString([]byte(`{"a":["1-0","ab"],"b":["2-2","cd"]}`)),
		"p1.1-0." + base64.RawURLEncoding.EncodeToString([]byte(`{"a":["1-0","ab"],"a":["2-2","cd"]}`)),
		"p1.99999999999999999999-99999999999999999999.e30",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		m, err := eventlog.ParseMark(s)
		if err != nil {
			if !errors.Is(err, eventlog.ErrNotMark) && !errors.Is(err, bus.ErrBadCursor) {
				t.Fatalf("ParseMark(%q) = %v, want ErrNotMark or ErrBadCursor", s, err)
			}
			return
		}
		// What parses is a mark the logger could have made: it goes out
		// as an SSE id that cannot forge a line, and reads back the same.
		out := m.String()
		if !sse.ValidID(out) || strings.ContainsAny(out, " \r\n") {
			t.Fatalf("ParseMark(%q).String() = %q, not a safe SSE id", s, out)
		}
		again, err := eventlog.ParseMark(out)
		if err != nil || !reflect.DeepEqual(again, m) {
			t.Fatalf("ParseMark(%q) = %+v; its String %q reads back as %+v, %v", s, m, out, again, err)
		}
		for ns, p := range m.Cursor {
			if ns == "" || strings.Contains(ns, ":") || !bus.IsOffset(p.Offset) || p.Epoch == "" {
				t.Fatalf("ParseMark(%q) holds %q: %+v, not a namespace's position", s, ns, p)
			}
		}
	})
}

func TestMarkAfter(t *testing.T) {
	t.Parallel()
	m := eventlog.Mark{Floor: "100-0", Cursor: bus.Cursor{"a": {Offset: "200-1", Epoch: "e1"}}}
	for _, tc := range []struct {
		ns   string
		p    bus.Position
		want bool
	}{
		{"a", bus.Position{Offset: "200-1", Epoch: "e1"}, false},
		{"a", bus.Position{Offset: "200-0", Epoch: "e1"}, false},
		{"a", bus.Position{Offset: "99-9", Epoch: "e1"}, false},
		{"a", bus.Position{Offset: "200-2", Epoch: "e1"}, true},
		{"a", bus.Position{Offset: "1000-0", Epoch: "e1"}, true},
		{"a", bus.Position{Offset: "1-0", Epoch: "e2"}, true}, // the stream was made again
		{"b", bus.Position{Offset: "1-0", Epoch: "e1"}, true}, // not named: the floor is the replay's business
	} {
		if got := m.After(tc.ns, tc.p); got != tc.want {
			t.Errorf("Mark.After(%s, %+v) = %v, want %v", tc.ns, tc.p, got, tc.want)
		}
	}
}

func TestReaches(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		pattern, ns string
		want        bool
	}{
		{"*", "order", true},
		{"order:*", "order", true},
		{"order:*", "orders", false},
		{"order", "order", true},
		{"ord*", "orders", true},
		{"ord*", "user", false},
		{"*:placed", "user", true},
		{"order:placed", "order", true},
		{"order:pl*", "order", true},
		{"user:*", "order", false},
	} {
		if got := eventlog.Reaches(tc.pattern, tc.ns); got != tc.want {
			t.Errorf("Reaches(%q, %q) = %v, want %v", tc.pattern, tc.ns, got, tc.want)
		}
	}
}

func TestCompareOffsets(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		a, b string
		want int
	}{
		{"1-0", "1-0", 0},
		{"9-0", "10-0", -1}, // as numbers, not text
		{"10-2", "10-10", -1},
		{"1732290000001-0", "1732290000000-99", 1},
	} {
		if got := eventlog.CompareOffsets(tc.a, tc.b); got != tc.want {
			t.Errorf("CompareOffsets(%s, %s) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}
}

func ExampleMark_String() {
	m := eventlog.Mark{Floor: "1732290000000-0", Cursor: bus.Cursor{"order": {Offset: "1732290000005-3", Epoch: "9f86"}}}
	fmt.Println(m.String())
	// Output: p1.1732290000000-0.eyJvcmRlciI6WyIxNzMyMjkwMDAwMDA1LTMiLCI5Zjg2Il19
}
