package redisbus

import (
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	eventbusv1 "github.com/eventbus-suite/eventbus/proto/gen/eventbus/v1"
)

// A live message carries a position only as the publish script writes
// it: the envelope's last two fields, offset then epoch, or the header of
// the release before; anything else, however close, is a payload as it
// is, so that no publisher can hand subscribers (and through the edge,
// browsers) a position of its making.
func TestSplitPosition(t *testing.T) {
	t.Parallel()
	env, err := proto.Marshal(&eventbusv1.Envelope{Id: "e1", Type: "order.placed", Channel: "order:placed"})
	if err != nil {
		t.Fatal(err)
	}
	at := bus.Position{Offset: "1732290000000-3", Epoch: "9f01"}
	field := func(b []byte, n protowire.Number, v string) []byte {
		return protowire.AppendString(protowire.AppendTag(b, n, protowire.BytesType), v)
	}
	withFields := string(appendPosition(slices.Clone(env), at))
	for _, tt := range []struct {
		payload, body string
		want          bus.Position
	}{
		{withFields, string(env), at},
		{string(appendPosition(nil, at)), "", at},
		{string(env), string(env), bus.Position{}},
		{string(field(field(slices.Clone(env), epochField, at.Epoch), offsetField, at.Offset)), "", bus.Position{}},                                   // the wrong order
		{string(field(slices.Clone(env), offsetField, at.Offset)), "", bus.Position{}},                                                                // no epoch
		{string(field(field(slices.Clone(env), offsetField, "1-3\""), epochField, at.Epoch)), "", bus.Position{}},                                     // not an offset
		{string(field(field(slices.Clone(env), offsetField, at.Offset), epochField, "9F01")), "", bus.Position{}},                                     // not an epoch
		{string(protowire.AppendVarint(protowire.AppendTag(appendPosition(slices.Clone(env), at), 11, protowire.VarintType), 1)), "", bus.Position{}}, // a field after
		{withFields[:len(withFields)-1], "", bus.Position{}},                                                                                          // cut short
		{`{"type":"order.placed"}`, `{"type":"order.placed"}`, bus.Position{}},
		// A payload that starts like the old header, with the position the
		// script appends: it comes back as it was published.
		{string(appendPosition([]byte("\x00eb1 9f01 1-3\nbody"), at)), "\x00eb1 9f01 1-3\nbody", at},
		// The JSON wire: two members before the closing brace.
		{`{"type":"order.placed","offset":"1732290000000-3","epoch":"9f01"}`, `{"type":"order.placed"}`, at},
		{`{"offset":"1732290000000-3","epoch":"9f01"}`, `{}`, at},
		{`{ "offset":"1732290000000-3","epoch":"9f01"}`, `{ }`, at},
		{`{"type":"x","epoch":"9f01","offset":"1732290000000-3"}`, "", bus.Position{}},  // the wrong order
		{`{"type":"x","offset":"1732290000000-3"}`, "", bus.Position{}},                 // no epoch
		{`{"type":"x","offset":"17x-3","epoch":"9f01"}`, "", bus.Position{}},            // not an offset
		{`{"type":"x" "offset":"1732290000000-3","epoch":"9f01"}`, "", bus.Position{}},  // no comma
		{`{"type":"x","offset":"1732290000000-3","epoch":"9f01"} `, "", bus.Position{}}, // not the script's end
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
		if tt.want.IsZero() && tt.body == "" {
			tt.body = tt.payload // no position: the payload as it is
		}
		if pos != tt.want || body != tt.body {
			t.Errorf("splitPosition(%q) = %+v, %q; want %+v, %q", tt.payload, pos, body, tt.want, tt.body)
		}
	}
}

func FuzzSplitPosition(f *testing.F) {
	f.Add("\x00eb1 9f01 1732290000000-3\n{}")
	f.Add("\x00eb1  \n")
	f.Add("{}")
	f.Add(`{"type":"x","offset":"1732290000000-3","epoch":"9f01"}`)
	f.Add(string(appendPosition([]byte("\x0a\x02e1"), bus.Position{Offset: "1732290000000-3", Epoch: "9f01"})))
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
		if positionHeader+pos.Epoch+" "+pos.Offset+"\n"+body != payload && string(appendPosition([]byte(body), pos)) != payload &&
			appendJSONPosition(body, pos) != payload {
			t.Fatalf("position and body of %q do not add up: %+v, %q", payload, pos, body)
		}
	})
}

// appendJSONPosition is what the publish script makes of a JSON object.
func appendJSONPosition(obj string, pos bus.Position) string {
	if len(obj) < 2 {
		return ""
	}
	members := `"offset":"` + pos.Offset + `","epoch":"` + pos.Epoch + `"}`
	if strings.TrimSpace(obj[1:len(obj)-1]) == "" {
		return obj[:len(obj)-1] + members
	}
	return obj[:len(obj)-1] + "," + members
}
