package bus_test

import (
	"errors"
	"maps"
	"testing"

	"github.com/eventbus-suite/eventbus/pkg/bus"
)

func TestCursorRoundTrip(t *testing.T) {
	t.Parallel()
	c := bus.Cursor{"order": {Offset: "1732290000000-3", Epoch: "9f2c"}, "user": {Offset: "1-0", Epoch: "ab"}}
	got, err := bus.ParseCursor(c.String())
	if err != nil || !maps.Equal(got, c) {
		t.Fatalf("ParseCursor(String()) = %v, %v; want %v", got, err, c)
	}
}

func TestParseCursorRefuses(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"", "!!", "bm90IGpzb24", bus.Cursor{"Order": {Offset: "1-0", Epoch: "ab"}}.String(),
		bus.Cursor{"order": {Offset: "x", Epoch: "ab"}}.String(), bus.Cursor{"order": {Offset: "1-0", Epoch: "XYZ"}}.String(),
		bus.Cursor{"a:b": {Offset: "1-0", Epoch: "ab"}}.String()} {
		if _, err := bus.ParseCursor(s); !errors.Is(err, bus.ErrBadCursor) {
			t.Errorf("ParseCursor(%q) = %v, want ErrBadCursor", s, err)
		}
	}
}

// FuzzParseCursor: whatever a client sends, ParseCursor refuses it or
// gives a cursor that encodes back to one it parses the same.
func FuzzParseCursor(f *testing.F) {
	f.Add(bus.Cursor{"order": {Offset: "1732290000000-3", Epoch: "9f2c"}}.String())
	f.Add("e30")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := bus.ParseCursor(s)
		if err != nil {
			if !errors.Is(err, bus.ErrBadCursor) {
				t.Fatalf("ParseCursor error %v does not wrap ErrBadCursor", err)
			}
			return
		}
		again, err := bus.ParseCursor(c.String())
		if err != nil || !maps.Equal(again, c) {
			t.Fatalf("ParseCursor(%q) = %v, but its String parses as %v, %v", s, c, again, err)
		}
	})
}

func TestIsStream(t *testing.T) {
	t.Parallel()
	for s, want := range map[string]bool{
		"order": true, "order.0": true, "order.17": true, "a-b_c.3": true,
		"": false, "order.": false, "order.01": false, "order.-1": false, "order.x": false, ".1": false,
		"Order": false, "a:b": false, "a:b.1": false, "order.1.2": false,
	} {
		if got := bus.IsStream(s); got != want {
			t.Errorf("IsStream(%q) = %v, want %v", s, got, want)
		}
	}
}
