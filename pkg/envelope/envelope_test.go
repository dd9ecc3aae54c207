package envelope_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	eventbusv1 "github.com/eventbus-suite/eventbus/proto/gen/eventbus/v1"

	"github.com/eventbus-suite/eventbus/pkg/envelope"
)

func TestDecodeData(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		typ     string
		data    string
		want    string // error substring; "" for success
		wantMsg any
	}{
		{name: "known type", typ: "user.created", data: `{"user_id":"42","email":"a@example.com","name":"Ada"}`,
			wantMsg: &eventbusv1.UserCreated{UserId: "42", Email: "a@example.com", Name: "Ada"}},
		{name: "unknown field named", typ: "user.created", data: `{"user_id":"42","email":"a@example.com","nmae":"Ada"}`,
			want: `unknown field "nmae"`},
		{name: "wrong json type named", typ: "order.placed", data: `{"order_id":"o1","user_id":"u","total":"lots","currency":"EUR"}`,
			want: "total"},
		{name: "missing required field named", typ: "order.shipped", data: `{"order_id":"o1","user_id":"u","carrier":"DHL"}`,
			want: "tracking_number: required"},
		{name: "bad currency", typ: "payment.completed", data: `{"payment_id":"p","order_id":"o","user_id":"u","amount":5,"currency":"euro"}`,
			want: "currency"},
		{name: "bad email", typ: "user.created", data: `{"user_id":"42","email":"not an address"}`,
			want: "email"},
		{name: "unregistered type is a struct", typ: "thing.happened", data: `{"a":1,"b":["x"]}`,
			wantMsg: mustStruct(t, map[string]any{"a": 1, "b": []any{"x"}})},
		{name: "unregistered type needs an object", typ: "thing.happened", data: `[1,2]`, want: "JSON object"},
		{name: "malformed json", typ: "thing.happened", data: `{"a":`, want: "data of thing.happened"},
		{name: "null data", typ: "user.created", data: `null`},
		{name: "64 levels", typ: "thing.happened", data: nested(63), wantMsg: structFromJSON(t, nested(63))},
		{name: "65 levels", typ: "thing.happened", data: nested(64), want: "nested more than 64 levels deep"},
		{name: "9999 levels", typ: "thing.happened", data: nested(9998), want: "nested more than 64 levels deep"},
		{name: "brackets in strings do not count", typ: "thing.happened", data: `{"a":"` + strings.Repeat(`[{\"`, 100) + `"}`,
			wantMsg: mustStruct(t, map[string]any{"a": strings.Repeat(`[{"`, 100)})},
		{name: "quantity × unit_price overflows", typ: "order.placed",
			data: `{"order_id":"o","user_id":"u","currency":"EUR","total":0,"items":[{"sku":"a","quantity":4,"unit_price":4611686018427387904}]}`,
			want: "items[0]: quantity × unit_price"},
		{name: "sum of items overflows", typ: "order.placed",
			data: `{"order_id":"o","user_id":"u","currency":"EUR","total":0,"items":[{"sku":"a","quantity":1,"unit_price":9223372036854775807},{"sku":"b","quantity":1,"unit_price":1}]}`,
			want: "items[1]: quantity × unit_price"},
		{name: "largest sum", typ: "order.placed",
			data: `{"order_id":"o","user_id":"u","currency":"EUR","total":9223372036854775807,"items":[{"sku":"a","quantity":1,"unit_price":9223372036854775806},{"sku":"b","quantity":1,"unit_price":1}]}`,
			wantMsg: &eventbusv1.OrderPlaced{OrderId: "o", UserId: "u", Currency: "EUR", Total: math.MaxInt64, Items: []*eventbusv1.OrderItem{
				{Sku: "a", Quantity: 1, UnitPrice: math.MaxInt64 - 1}, {Sku: "b", Quantity: 1, UnitPrice: 1}}}},
		{name: "no data", typ: "thing.happened", data: ``},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := envelope.DecodeData(tt.typ, []byte(tt.data))
			if tt.want != "" {
				if err == nil || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, envelope.ErrInvalid) {
					t.Fatalf("DecodeData(%s, %s) = %v, want an ErrInvalid containing %q", tt.typ, tt.data, err, tt.want)
				}
				return
			}
			if err != nil {
				t.Fatalf("DecodeData(%s, %s) = %v", tt.typ, tt.data, err)
			}
			if tt.wantMsg == nil {
				if got != nil {
					t.Fatalf("DecodeData(%s, %s) = %v, want nil", tt.typ, tt.data, got)
				}
				return
			}
			msg, err := got.UnmarshalNew()
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.wantMsg, msg, protocmp.Transform()); diff != "" {
				t.Errorf("DecodeData(%s) (-want +got):\n%s", tt.typ, diff)
			}
		})
	}
}

// nested returns a JSON object with n objects nested inside it: n+1 levels.
func nested(n int) string {
	return strings.Repeat(`{"a":`, n) + "{}" + strings.Repeat("}", n)
}

func structFromJSON(t *testing.T, js string) *structpb.Struct {
	s := new(structpb.Struct)
	if err := protojson.Unmarshal([]byte(js), s); err != nil {
		t.Fatal(err)
	}
	return s
}

func mustStruct(t *testing.T, m map[string]any) *structpb.Struct {
	s, err := structpb.NewStruct(m)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestFillAndRoundTrip(t *testing.T) {
	t.Parallel()
	data, err := envelope.DecodeData("order.placed", []byte(`{"order_id":"o1","user_id":"u1","total":1299,"currency":"EUR","items":[{"sku":"s","quantity":1,"unit_price":1299}]}`))
	if err != nil {
		t.Fatal(err)
	}
	env := &envelope.Envelope{Type: "order.placed", Subject: "o1", Data: data, Attributes: map[string]string{"traceparent": "00-x"}}
	now := time.Date(2026, 11, 22, 5, 0, 0, 0, time.UTC)
	if err := envelope.Fill(env, "test", now); err != nil {
		t.Fatalf("Fill = %v", err)
	}
	if env.GetChannel() != "order:placed" || env.GetSource() != "test" || env.GetId() == "" || !env.GetTime().AsTime().Equal(now) {
		t.Fatalf("Fill left %v", env)
	}
	b, err := envelope.Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	back, err := envelope.Unmarshal(b)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(env, back, protocmp.Transform()); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
	js, err := envelope.MarshalJSON(env)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"channel":"order:placed"`, `"@type":"type.googleapis.com/eventbus.v1.OrderPlaced"`, `"order_id":"o1"`} {
		if !strings.Contains(string(js), want) {
			t.Errorf("MarshalJSON = %s, lacks %s", js, want)
		}
	}
}

func TestIDsSortByTime(t *testing.T) {
	t.Parallel()
	prev := envelope.NewID()
	for range 1000 {
		id := envelope.NewID()
		if id <= prev {
			t.Fatalf("NewID() = %s after %s, want increasing", id, prev)
		}
		prev = id
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	good := func() *envelope.Envelope {
		env := &envelope.Envelope{Type: "thing.done"}
		if err := envelope.Fill(env, "src", time.Now()); err != nil {
			t.Fatal(err)
		}
		return env
	}
	user, err := envelope.PackData(&eventbusv1.UserCreated{UserId: "1", Email: "a@b.c"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		mutate func(*envelope.Envelope)
		want   string
	}{
		{name: "valid", mutate: func(*envelope.Envelope) {}},
		{name: "bad type", mutate: func(e *envelope.Envelope) { e.Type = "Thing" }, want: "type:"},
		{name: "bad channel", mutate: func(e *envelope.Envelope) { e.Channel = "a:*" }, want: "channel:"},
		{name: "no id", mutate: func(e *envelope.Envelope) { e.Id = "" }, want: "id: empty"},
		{name: "bad attribute", mutate: func(e *envelope.Envelope) { e.Attributes = map[string]string{"Trace-Parent": "x"} }, want: "attributes"},
		{name: "data of the wrong message", mutate: func(e *envelope.Envelope) { e.Type, e.Channel, e.Data = "order.placed", "order:placed", user }, want: "want eventbus.v1.OrderPlaced"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			env := good()
			tt.mutate(env)
			err := envelope.Validate(env)
			if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
				t.Errorf("Validate = %v, want error containing %q", err, tt.want)
			}
		})
	}
}

func FuzzDecodeData(f *testing.F) {
	for _, s := range []string{`{"user_id":"1","email":"a@b.c"}`, `{"a":[1,{"b":null}]}`, `{"total":"1e3"}`, `[`, `null`} {
		f.Add("user.created", s)
		f.Add("other.type", s)
	}
	f.Fuzz(func(t *testing.T, typ, data string) {
		a, err := envelope.DecodeData(typ, []byte(data))
		if err != nil {
			if !errors.Is(err, envelope.ErrInvalid) {
				t.Fatalf("DecodeData error %v does not wrap ErrInvalid", err)
			}
			return
		}
		if a == nil {
			return
		}
		if _, err := a.UnmarshalNew(); err != nil {
			t.Fatalf("DecodeData produced an Any that does not unpack: %v", err)
		}
	})
}

func TestValidateID(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, id, want string // want: error substring, "" for valid
	}{
		{name: "uuid", id: "0193a4e2-7c1d-7b3e-9f00-1a2b3c4d5e6f"},
		{name: "spaces and punctuation", id: `a b "c" <d> \e`},
		{name: "unicode", id: "ordre-été-日本-🙂"},
		{name: "replacement character itself", id: "a\ufffdb"},
		{name: "255 characters", id: strings.Repeat("é", 255)},
		{name: "empty", id: "", want: "empty"},
		{name: "256 characters", id: strings.Repeat("a", 256), want: "256 characters; want at most 255"},
		{name: "newline", id: "x\nevent: lagged", want: "U+000A at byte 1"},
		{name: "carriage return", id: "x\r", want: "U+000D"},
		{name: "nul", id: "x\x00y", want: "U+0000"},
		{name: "tab", id: "a\tb", want: "U+0009"},
		{name: "del", id: "a\x7f", want: "U+007F"},
		{name: "c1 next line", id: "a\u0085b", want: "U+0085"},
		{name: "line separator", id: "a\u2028b", want: "U+2028"},
		{name: "paragraph separator", id: "a\u2029b", want: "U+2029"},
		{name: "invalid utf-8", id: "a\xffb", want: "invalid UTF-8 at byte 1"},
		{name: "truncated utf-8", id: "a\xc3", want: "invalid UTF-8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := envelope.ValidateID(tt.id)
			if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
				t.Errorf("ValidateID(%q) = %v, want error containing %q", tt.id, err, tt.want)
			}
		})
	}
}

func TestValidateStrict(t *testing.T) {
	t.Parallel()
	pack := func(m proto.Message) *anypb.Any {
		a, err := envelope.PackData(m)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	deep := func(levels int) *anypb.Any { return pack(structFromJSON(t, nested(levels-1))) }
	tests := []struct {
		name string
		env  *envelope.Envelope
		want string // error substring; "" for valid
	}{
		{name: "event of an unknown type without data", env: &envelope.Envelope{Type: "thing.done"}},
		{name: "known type with data", env: &envelope.Envelope{Type: "user.created", Data: pack(&eventbusv1.UserCreated{UserId: "1", Email: "a@b.co"})}},
		{name: "known type without data", env: &envelope.Envelope{Type: "user.created"}, want: "data: required: a user.created event carries eventbus.v1.UserCreated"},
		{name: "id with a newline", env: &envelope.Envelope{Type: "a.b", Id: "x\ny"}, want: "id: control character U+000A"},
		{name: "data 64 levels deep", env: &envelope.Envelope{Type: "a.b", Data: deep(64)}},
		{name: "data 65 levels deep", env: &envelope.Envelope{Type: "a.b", Data: deep(65)}, want: "data: nested 65 levels deep, at most 64"},
		{name: "data 3334 levels deep", env: &envelope.Envelope{Type: "a.b", Data: deep(3334)}, want: "data: nested more than 64 levels deep"},
		{name: "list levels", env: &envelope.Envelope{Type: "a.b", Data: pack(mustStruct(t, map[string]any{"a": []any{[]any{map[string]any{}}}}))}},
		{name: "any inside data", env: &envelope.Envelope{Type: "a.b", Data: pack(pack(mustStruct(t, map[string]any{})))}, want: "data: a google.protobuf.Any inside data is not supported"},
		{name: "data of an unresolvable type", env: &envelope.Envelope{Type: "a.b", Data: &anypb.Any{TypeUrl: "type.googleapis.com/acme.Thing", Value: []byte{8, 1}}}},
		{name: "overflowing order", env: &envelope.Envelope{Type: "order.placed", Data: pack(&eventbusv1.OrderPlaced{
			OrderId: "o", UserId: "u", Currency: "EUR", Items: []*eventbusv1.OrderItem{{Sku: "a", Quantity: 4, UnitPrice: 1 << 62}}})},
			want: "data: items[0]: quantity × unit_price"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := envelope.FillStrict(tt.env, "src", time.Now())
			if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, envelope.ErrInvalid)) {
				t.Errorf("FillStrict(%s) = %v, want error containing %q", tt.name, err, tt.want)
			}
		})
	}
	// Validate stays what any envelope on the bus may be: consumers and
	// services build envelopes without data for known types, with any id.
	if err := envelope.Fill(&envelope.Envelope{Type: "user.created", Id: "x\ny"}, "src", time.Now()); err != nil {
		t.Errorf("Fill(user.created without data, id with a newline) = %v, want nil", err)
	}
}

// validIDReference is ValidateID's rule written the plain way.
func validIDReference(id string) bool {
	if !utf8.ValidString(id) || id == "" || utf8.RuneCountInString(id) > envelope.MaxIDLen {
		return false
	}
	for _, r := range id {
		if r < 0x20 || r >= 0x7f && r <= 0x9f || r == 0x2028 || r == 0x2029 {
			return false
		}
	}
	return true
}

func FuzzValidateID(f *testing.F) {
	for _, s := range []string{"a", "0193a4e2-7c1d-7b3e-9f00-1a2b3c4d5e6f", "x\nevent: lagged\ndata: {}\n\n", "x\ry", "\x00",
		"\u0085", "\u2028", "\xff", "\xe2\x80", "é", strings.Repeat("a", 255), strings.Repeat("日", 256), " "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		err := envelope.ValidateID(id)
		if want := validIDReference(id); (err == nil) != want {
			t.Fatalf("ValidateID(%q) = %v, want valid %v", id, err, want)
		}
		if id == "" {
			return // FillStrict gives the event an id of its own
		}
		env := &envelope.Envelope{Id: id, Type: "a.b"}
		serr := envelope.FillStrict(env, "src", time.Now())
		if err != nil {
			if serr == nil || !errors.Is(serr, envelope.ErrInvalid) || !strings.Contains(serr.Error(), "id: ") {
				t.Fatalf("FillStrict(id %q) = %v, want an ErrInvalid naming id", id, serr)
			}
			return
		}
		if serr != nil {
			t.Fatalf("FillStrict(id %q) = %v, want nil", id, serr)
		}
		// What consumers do with a valid id: a line of Server-Sent Events,
		// and JSON that gives the id back.
		if strings.ContainsAny(id, "\r\n\x00") {
			t.Fatalf("valid id %q would break an SSE line", id)
		}
		js, err := envelope.MarshalJSON(env)
		if err != nil {
			t.Fatalf("MarshalJSON(id %q) = %v", id, err)
		}
		var back struct {
			ID string `json:"id"`
		}
		if err := json.Unmarshal(js, &back); err != nil || back.ID != id {
			t.Fatalf("MarshalJSON(id %q) = %s, decodes to %q, %v", id, js, back.ID, err)
		}
	})
}

// A bad type is one error, not also an empty channel derived from it.
func TestABadTypeIsOneError(t *testing.T) {
	t.Parallel()
	err := envelope.FillStrict(&envelope.Envelope{Type: "Order.Placed"}, "test", time.Now())
	if err == nil || !strings.Contains(err.Error(), "type:") || strings.Contains(err.Error(), "\nchannel:") {
		t.Fatalf("FillStrict with a bad type = %v, want the type's error alone", err)
	}
	if err := envelope.FillStrict(&envelope.Envelope{Type: "a.b", Channel: "A B"}, "test", time.Now()); err == nil || !strings.HasPrefix(err.Error(), "invalid event: channel:") {
		t.Fatalf("FillStrict with a bad channel = %v, want the channel's error", err)
	}
}

// A position is the bus's to set on a live message: one a publisher sends
// is cleared, so the record never holds one of its making.
func TestFillClearsThePosition(t *testing.T) {
	t.Parallel()
	for _, fill := range []func(*envelope.Envelope, string, time.Time) error{envelope.Fill, envelope.FillStrict} {
		env := &envelope.Envelope{Type: "order.note", Offset: "1-1", Epoch: "ab"}
		if err := fill(env, "test", time.Now()); err != nil {
			t.Fatal(err)
		}
		if env.GetOffset() != "" || env.GetEpoch() != "" {
			t.Errorf("filled envelope keeps the position %s/%s", env.GetOffset(), env.GetEpoch())
		}
	}
}

// The JSON wire: ToJSON renders an envelope as its canonical protobuf
// JSON, which JSON.parse reads and Unmarshal reads back to the same
// envelope; anything that is no envelope passes as it is.
func TestJSONWire(t *testing.T) {
	t.Parallel()
	data, err := envelope.DecodeData("order.note", []byte(`{"text":"gift wrap","boxes":2}`))
	if err != nil {
		t.Fatal(err)
	}
	env := &envelope.Envelope{Type: "order.note", Subject: "o1", Data: data, Attributes: map[string]string{"traceparent": "00-1"}}
	if err := envelope.Fill(env, "test", time.Now()); err != nil {
		t.Fatal(err)
	}
	b, err := envelope.Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	js := envelope.ToJSON(b)
	var plain map[string]any
	if err := json.Unmarshal(js, &plain); err != nil || plain["type"] != "order.note" || plain["subject"] != "o1" {
		t.Fatalf("ToJSON = %s, %v; want a JSON object with the envelope's fields", js, err)
	}
	// The same envelope, data compared unpacked: a Struct's fields are a
	// map, marshalled in no set order, so the Any's bytes may differ.
	back, err := envelope.Unmarshal(js)
	if err != nil {
		t.Fatal(err)
	}
	gotData, err1 := back.GetData().UnmarshalNew()
	wantData, err2 := env.GetData().UnmarshalNew()
	if err1 != nil || err2 != nil || !proto.Equal(gotData, wantData) {
		t.Fatalf("Unmarshal(ToJSON) data = %v (%v), want %v (%v)", gotData, err1, wantData, err2)
	}
	back.Data, env.Data = nil, nil
	if !proto.Equal(back, env) {
		t.Fatalf("Unmarshal(ToJSON) = %v, want %v", back, env)
	}
	if again := envelope.ToJSON(js); !bytes.Equal(again, js) {
		t.Errorf("ToJSON of JSON = %s, want it as it was", again)
	}
	for _, other := range [][]byte{[]byte("plain"), {0x0a, 0x02, 'e', '1'}, nil} {
		if got := envelope.ToJSON(other); !bytes.Equal(got, other) {
			t.Errorf("ToJSON(%q) = %q, want it as it was", other, got)
		}
	}
	if _, err := envelope.Unmarshal([]byte(`{"type":`)); err == nil {
		t.Error("Unmarshal of cut JSON = nil error")
	}
}

// On the JSON wire an envelope goes as JSON only when every service can
// read its data back: the edge's BytesValue of an MQTT payload does, data
// of a type only one process links stays protobuf.
func TestJSONWireOnlyForDataEveryServiceKnows(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		data proto.Message
		json bool
	}{
		{wrapperspb.Bytes([]byte{0xde, 0xad}), true},
		{&descriptorpb.FileDescriptorProto{Name: proto.String("x.proto")}, false},
	} {
		data, err := anypb.New(tt.data)
		if err != nil {
			t.Fatal(err)
		}
		env := &envelope.Envelope{Id: "1", Type: "sensor.raw", Channel: "sensor:raw", Source: "s", Data: data}
		b, err := envelope.Marshal(env)
		if err != nil {
			t.Fatal(err)
		}
		out := envelope.ToJSON(b)
		if got := len(out) > 0 && out[0] == '{'; got != tt.json {
			t.Errorf("ToJSON of %T data: JSON %v, want %v", tt.data, got, tt.json)
		}
		back, err := envelope.Unmarshal(out)
		if err != nil || !proto.Equal(back, env) {
			t.Errorf("Unmarshal(ToJSON) of %T data = %v, %v; want %v", tt.data, back, err, env)
		}
	}
}

// FillStrictDecoded refuses what FillStrict refuses, for data DecodeData
// made: the data it does not decode again was checked as it was decoded.
func FuzzFillStrictDecodedAgrees(f *testing.F) {
	for _, s := range []string{`{"user_id":"1","email":"a@b.c"}`, `{"user_id":"1"}`, `{"a":[1,{"b":null}]}`,
		`{"a":{"b":{"c":{"d":{"e":{"f":{"g":{"h":{"i":{"j":{"k":{"l":{"m":{"n":{"o":{"p":{"q":{"r":{"s":{"t":{"u":{"v":{"w":{"x":{"y":{"z":{"aa":{"bb":{"cc":{"dd":{"ee":{"ff":{"gg":1}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}`,
		`{"order_id":"o1","user_id":"42","currency":"EUR","items":[{"sku":"s","name":"n","quantity":1,"unit_price":1}],"total":1}`, `{}`, ``} {
		for _, typ := range []string{"user.created", "order.placed", "other.type", "Bad Type"} {
			f.Add(typ, s, "id-1")
		}
	}
	f.Fuzz(func(t *testing.T, typ, data, id string) {
		a, err := envelope.DecodeData(typ, []byte(data))
		if err != nil {
			return // the API answers 400 before either
		}
		if id == "" {
			id = "fuzz" // else each would make an id of its own
		}
		now := time.Unix(1700000000, 0)
		strict := &envelope.Envelope{Type: typ, Id: id, Data: a}
		decoded := proto.Clone(strict).(*envelope.Envelope)
		errStrict := envelope.FillStrict(strict, "fuzz", now)
		errDecoded := envelope.FillStrictDecoded(decoded, "fuzz", now)
		if (errStrict == nil) != (errDecoded == nil) {
			t.Fatalf("type %q, data %q: FillStrict says %v, FillStrictDecoded %v", typ, data, errStrict, errDecoded)
		}
		if !proto.Equal(strict, decoded) {
			t.Fatalf("the two completed the event apart:\n%v\n%v", strict, decoded)
		}
	})
}
