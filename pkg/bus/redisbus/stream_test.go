package redisbus

import (
	"testing"

	"github.com/eventbus-suite/eventbus/pkg/bus"
)

// A live message carries a position only in the header the publish script
// writes; anything else, however close, is a payload as it is, so that no
// publisher can hand subscribers (and through the edge, browsers) a
// position of its making.
func TestSplitPosition(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		payload, body string
		want          bus.Position
	}{
		{"\x00eb1 9f01 1732290000000-3\n{}", "{}", bus.Position{Offset: "1732290000000-3", Epoch: "9f01"}},
		{"\x00eb1 9f01 1732290000000-3\n", "", bus.Position{Offset: "1732290000000-3", Epoch: "9f01"}},
		{"plain", "plain", bus.Position{}},
		{"\x00eb1 9f01 1732290000000-3", "\x00eb1 9f01 1732290000000-3", bus.Position{}}, // no newline
		{"\x00eb1 9F01 1-3\nx", "\x00eb1 9F01 1-3\nx", bus.Position{}},                   // epoch not lower hex
		{"\x00eb1 9f01 1-3\"\nx", "\x00eb1 9f01 1-3\"\nx", bus.Position{}},               // offset with a quote
		{"\x00eb1 9f\"01 1-3\nx", "\x00eb1 9f\"01 1-3\nx", bus.Position{}},               // epoch with a quote
		{"\x00eb1 9f01 1-3 4\nx", "\x00eb1 9f01 1-3 4\nx", bus.Position{}},               // a third field
		{"\x00eb2 9f01 1-3\nx", "\x00eb2 9f01 1-3\nx", bus.Position{}},                   // another version
	} {
		pos, body := splitPosition(tt.payload)
		if pos != tt.want || body != tt.body {
			t.Errorf("splitPosition(%q) = %+v, %q; want %+v, %q", tt.payload, pos, body, tt.want, tt.body)
		}
	}
}

func FuzzSplitPosition(f *testing.F) {
	f.Add("\x00eb1 9f01 1732290000000-3\n{}")
	f.Add("\x00eb1  \n")
	f.Add("{}")
	f.Fuzz(func(t *testing.T, payload string) {
		pos, body := splitPosition(payload)
		if pos.IsZero() {
			if body != payload || pos.Epoch != "" {
				t.Fatalf("no position, but body %q of %q, epoch %q", body, payload, pos.Epoch)
			}
			return
		}
		if !bus.IsOffset(pos.Offset) || !bus.IsEpoch(pos.Epoch) {
			t.Fatalf("position %+v of %q is not one", pos, payload)
		}
		if positionHeader+pos.Epoch+" "+pos.Offset+"\n"+body != payload {
			t.Fatalf("header and body of %q do not add up: %+v, %q", payload, pos, body)
		}
	})
}
