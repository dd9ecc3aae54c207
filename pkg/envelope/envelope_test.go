package envelope_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/structpb"

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
