package envelope

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	eventbusv1 "github.com/eventbus-suite/eventbus/proto/gen/eventbus/v1"
)

// sameAsProtojson checks MarshalJSON against protojson, the reference: the
// two must decode to the same JSON value.
func sameAsProtojson(t *testing.T, env *Envelope) {
	t.Helper()
	got, err := MarshalJSON(env)
	want, werr := protojson.MarshalOptions{UseProtoNames: true}.Marshal(env)
	if (err != nil) != (werr != nil) {
		t.Fatalf("MarshalJSON error %v, protojson error %v", err, werr)
	}
	if err != nil {
		return
	}
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("MarshalJSON gave invalid JSON %s: %v", got, err)
	}
	if err := json.Unmarshal(want, &w); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(w, g); diff != "" {
		t.Errorf("MarshalJSON differs from protojson (-protojson +ours):\n%s\nours: %s", diff, got)
	}
}

func TestMarshalJSONMatchesProtojson(t *testing.T) {
	t.Parallel()
	typed, _ := PackData(&eventbusv1.OrderPlaced{OrderId: "o1", UserId: "u", Total: 1299, Currency: "EUR",
		Items: []*eventbusv1.OrderItem{{Sku: "a", Quantity: 2, UnitPrice: 650}}})
	st, _ := structpb.NewStruct(map[string]any{"a": 1.5, "b": []any{"x", nil, true}})
	free, _ := PackData(st)
	for _, env := range []*Envelope{
		{},
		{Id: "1", Type: "a.b", Channel: "a:b", Source: "s"},
		{Id: "2", Subject: "quote \" backslash \\ newline \n tab \t bell \a é 日本 \u2028", Time: timestamppb.New(time.Date(2026, 11, 22, 5, 0, 0, 0, time.UTC))},
		{Time: timestamppb.New(time.Date(2026, 1, 2, 3, 4, 5, 120000000, time.UTC))},
		{Time: timestamppb.New(time.Date(2026, 1, 2, 3, 4, 5, 123456000, time.UTC))},
		{Time: timestamppb.New(time.Date(2026, 1, 2, 3, 4, 5, 123456789, time.UTC))},
		{Time: timestamppb.New(time.Date(2026, 1, 2, 3, 4, 5, 1, time.UTC))},
		{Time: timestamppb.New(time.Date(2026, 1, 2, 3, 4, 5, 1000, time.UTC))},
		{Attributes: map[string]string{"traceparent": "00-x-01", "b": "2", "a": "<&>"}},
		{Id: "3", Type: "order.placed", Data: typed},
		{Id: "5", Type: "dev.x", Mqtt: &eventbusv1.MqttMessage{Payload: []byte{0, 0xff}, Qos: 1, ContentType: "application/cbor",
			UserProperties: []*eventbusv1.MqttUserProperty{{Key: "k", Value: "v"}}, CorrelationData: []byte("c"), MessageExpirySeconds: 60}},
		{Time: &timestamppb.Timestamp{Seconds: -1e12}}, // out of range: both refuse
	} {
		sameAsProtojson(t, env)
	}
	// The data of a type the bus does not know is the plain object it was
	// sent as, where protojson would write {"@type":…,"value":…}.
	got, err := MarshalJSON(&Envelope{Id: "4", Type: "x.y", Data: free})
	if err != nil {
		t.Fatal(err)
	}
	var v struct{ Data map[string]any }
	if err := json.Unmarshal(got, &v); err != nil || !cmp.Equal(v.Data, map[string]any{"a": 1.5, "b": []any{"x", nil, true}}) {
		t.Errorf("MarshalJSON of Struct data = %s (%v), want the plain object", got, err)
	}
}

func FuzzMarshalJSON(f *testing.F) {
	f.Add("id", "src", "a.b", "subj\x00\"", "a:b", "k", "v", int64(1763787600), int32(5))
	f.Fuzz(func(t *testing.T, id, source, typ, subject, ch, k, v string, secs int64, nanos int32) {
		env := &Envelope{Id: id, Source: source, Type: typ, Subject: subject, Channel: ch,
			Time: &timestamppb.Timestamp{Seconds: secs, Nanos: nanos}, Attributes: map[string]string{k: v}}
		sameAsProtojson(t, env)
	})
}

func FuzzCompact(f *testing.F) {
	for _, s := range []string{`{"a": "b c", "d":[1, 2]}`, `{"s":"quote \" and \\ , : "}`, "{\n \"x\" :\t true }", `"\u0020 "`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !json.Valid([]byte(s)) {
			return
		}
		var want bytes.Buffer
		if err := json.Compact(&want, []byte(s)); err != nil {
			t.Fatal(err)
		}
		if got := compact([]byte(s)); !bytes.Equal(got, want.Bytes()) {
			t.Fatalf("compact(%q) = %q, want %q", s, got, want.Bytes())
		}
	})
}
