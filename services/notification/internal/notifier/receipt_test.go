package notifier

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	eventbusv1 "github.com/eventbus-suite/eventbus/proto/gen/eventbus/v1"

	"github.com/eventbus-suite/eventbus/pkg/envelope"
	"github.com/eventbus-suite/eventbus/services/notification/internal/push"
)

// receiptBytes is a notification.delivered envelope from source with
// data, as the bus carries it.
func receiptBytes(tb testing.TB, source string, data proto.Message) []byte {
	tb.Helper()
	a, err := anypb.New(data)
	if err != nil {
		tb.Fatal(err)
	}
	env := &envelope.Envelope{Type: receiptType, Channel: receiptChannel, Data: a}
	_ = envelope.Fill(env, source, time.Unix(1_800_000_000, 0))
	b, err := envelope.Marshal(env)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func TestParseReceipt(t *testing.T) {
	t.Parallel()
	id := notificationID("e1", "order_received_browser")
	good := func() *eventbusv1.NotificationDelivered {
		return &eventbusv1.NotificationDelivered{NotificationId: id, UserId: "u1", ClientId: "c1", Transport: "ws", LatencyMs: 42}
	}
	with := func(f func(*eventbusv1.NotificationDelivered)) *eventbusv1.NotificationDelivered {
		m := good()
		f(m)
		return m
	}
	for _, tt := range []struct {
		name   string
		source string
		data   proto.Message
		ok     bool
	}{
		{"the edge's", receiptSource, good(), true},
		{"another source", "eventbus/api", good(), false},
		{"another type of data", receiptSource, &eventbusv1.Notification{NotificationId: id, UserId: "u1"}, false},
		{"an id of another form", receiptSource, with(func(m *eventbusv1.NotificationDelivered) { m.NotificationId = "n-" + strings.Repeat("g", 32) }), false},
		{"a long id", receiptSource, with(func(m *eventbusv1.NotificationDelivered) { m.NotificationId = id + "0" }), false},
		{"a key in the id", receiptSource, with(func(m *eventbusv1.NotificationDelivered) { m.NotificationId = "x}:{a" }), false},
		{"no user", receiptSource, with(func(m *eventbusv1.NotificationDelivered) { m.UserId = "" }), false},
		{"a user of another form", receiptSource, with(func(m *eventbusv1.NotificationDelivered) { m.UserId = "U 1" }), false},
		{"a negative latency", receiptSource, with(func(m *eventbusv1.NotificationDelivered) { m.LatencyMs = -1 }), false},
		{"a latency of years", receiptSource, with(func(m *eventbusv1.NotificationDelivered) { m.LatencyMs = 1 << 50 }), false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			env, err := envelope.Unmarshal(receiptBytes(t, tt.source, tt.data))
			if err != nil {
				t.Fatal(err)
			}
			r, err := parseReceipt(env, receiptChannel)
			if (err == nil) != tt.ok {
				t.Fatalf("parseReceipt = %+v, %v; want ok %v", r, err, tt.ok)
			}
			if tt.ok && (r.notificationID != id || r.userID != "u1" || r.latency != 42*time.Millisecond || r.transport != "ws") {
				t.Errorf("parseReceipt = %+v", r)
			}
		})
	}
	env, _ := envelope.Unmarshal(receiptBytes(t, receiptSource, good()))
	if _, err := parseReceipt(env, "order:placed"); err == nil {
		t.Errorf("parseReceipt of a receipt on another channel = nil, want an error")
	}
}

// FuzzParseReceipt: no bytes on notification:delivered panic the
// receipt's reader; what it accepts has an id of ours, a user id that is
// a channel token and a latency within bounds, so it is safe in a Redis
// key and a histogram.
func FuzzParseReceipt(f *testing.F) {
	id := notificationID("e1", "n")
	for _, m := range []*eventbusv1.NotificationDelivered{
		{NotificationId: id, UserId: "u1", ClientId: "c1", Transport: "ws", LatencyMs: 42},
		{NotificationId: id, UserId: "u1", LatencyMs: -5},
		{NotificationId: "n-", UserId: "u1"},
		{NotificationId: id + "\x00", UserId: "ü"},
	} {
		f.Add(receiptBytes(f, receiptSource, m))
	}
	f.Add(receiptBytes(f, "someone", &eventbusv1.NotificationDelivered{NotificationId: id, UserId: "u1"}))
	f.Add(receiptBytes(f, receiptSource, &eventbusv1.UserCreated{UserId: "u1"}))
	f.Add([]byte{})
	f.Add([]byte("\xff\xff"))
	f.Add([]byte(`{"type":"notification.delivered"}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		env, err := envelope.Unmarshal(in)
		if err != nil {
			return
		}
		r, err := parseReceipt(env, receiptChannel)
		if err != nil {
			return
		}
		if !validNotificationID(r.notificationID) || push.CheckUserID(r.userID) != nil || r.latency < 0 || r.latency > maxReceiptLatency ||
			len(r.clientID) > 204 || len(r.transport) > 24 || env.GetSource() != receiptSource {
			t.Fatalf("parseReceipt(%q) accepted %+v", in, r)
		}
	})
}
