package envelope

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"net/mail"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	eventbusv1 "github.com/eventbus-suite/eventbus/proto/gen/eventbus/v1"
)

// Type is an event type the bus knows: its data has a protobuf message and
// checks of its own.
type Type struct {
	name  string
	zero  proto.Message
	check func(proto.Message) error
	// mayHoldAny: the message has a google.protobuf.Any somewhere in it,
	// which data decoded from JSON may fill and strict validation refuses.
	mayHoldAny bool
}

// Descriptor describes the data message of the type.
func (t Type) Descriptor() protoreflect.MessageDescriptor {
	return t.zero.ProtoReflect().Descriptor()
}

// New returns an empty data message of the type.
func (t Type) New() proto.Message { return t.zero.ProtoReflect().New().Interface() }

// Check reports what is missing or wrong in msg, a message of the type.
func (t Type) Check(msg proto.Message) error { return t.check(msg) }

func typed[M proto.Message](name string, check func(M) error) Type {
	var zero M
	z := zero.ProtoReflect().Type().Zero().Interface()
	return Type{
		name:       name,
		zero:       z,
		check:      func(m proto.Message) error { return check(m.(M)) },
		mayHoldAny: holdsAny(z.ProtoReflect().Descriptor(), map[protoreflect.FullName]bool{}),
	}
}

// holdsAny reports whether a message of d has a google.protobuf.Any field
// anywhere inside it; seen breaks cycles.
func holdsAny(d protoreflect.MessageDescriptor, seen map[protoreflect.FullName]bool) bool {
	if d.FullName() == "google.protobuf.Any" {
		return true
	}
	if seen[d.FullName()] {
		return false
	}
	seen[d.FullName()] = true
	fields := d.Fields()
	for i := range fields.Len() {
		f := fields.Get(i)
		if f.IsMap() {
			f = f.MapValue()
		}
		if m := f.Message(); m != nil && holdsAny(m, seen) {
			return true
		}
	}
	return false
}

var registry = map[string]Type{}

func register(ts ...Type) {
	for _, t := range ts {
		registry[t.name] = t
	}
}

func init() {
	register(
		typed("user.created", func(m *eventbusv1.UserCreated) error {
			return errors.Join(required("user_id", m.GetUserId()), email(m.GetEmail()))
		}),
		typed("order.placed", func(m *eventbusv1.OrderPlaced) error {
			errs := []error{required("order_id", m.GetOrderId()), required("user_id", m.GetUserId()),
				nonNegative("total", m.GetTotal()), currency(m.GetCurrency())}
			var sum int64
			overflow := false
			for i, it := range m.GetItems() {
				q, p := int64(it.GetQuantity()), it.GetUnitPrice()
				if q <= 0 {
					errs = append(errs, fmt.Errorf("items[%d].quantity: must be positive, got %d", i, q))
				}
				if p < 0 {
					errs = append(errs, fmt.Errorf("items[%d].unit_price: must not be negative", i))
				}
				if q <= 0 || p < 0 || overflow {
					continue
				}
				// Both factors are non-negative here: the product and the sum
				// overflow exactly when they pass math.MaxInt64.
				if p > 0 && q > math.MaxInt64/p || sum > math.MaxInt64-q*p {
					errs = append(errs, fmt.Errorf("items[%d]: quantity × unit_price brings the sum of the items past %d", i, int64(math.MaxInt64)))
					overflow = true
					continue
				}
				sum += q * p
			}
			if len(m.GetItems()) > 0 && !overflow && sum != m.GetTotal() {
				errs = append(errs, fmt.Errorf("total: %d is not the sum of the items, %d", m.GetTotal(), sum))
			}
			return errors.Join(errs...)
		}),
		typed("order.shipped", func(m *eventbusv1.OrderShipped) error {
			return errors.Join(required("order_id", m.GetOrderId()), required("user_id", m.GetUserId()),
				required("carrier", m.GetCarrier()), required("tracking_number", m.GetTrackingNumber()))
		}),
		typed("payment.completed", func(m *eventbusv1.PaymentCompleted) error {
			return errors.Join(required("payment_id", m.GetPaymentId()), required("order_id", m.GetOrderId()),
				required("user_id", m.GetUserId()), nonNegative("amount", m.GetAmount()), currency(m.GetCurrency()))
		}),
		typed("notification.created", func(m *eventbusv1.Notification) error {
			return errors.Join(required("user_id", m.GetUserId()), required("title", m.GetTitle()))
		}),
		// The edge's: a connection acknowledged a notification.
		typed("notification.delivered", func(m *eventbusv1.NotificationDelivered) error {
			return errors.Join(required("notification_id", m.GetNotificationId()), required("user_id", m.GetUserId()),
				required("transport", m.GetTransport()), nonNegative("latency_ms", m.GetLatencyMs()))
		}),
		// The edge's, published live on the channel itself.
		typed("presence.join", checkPresence),
		typed("presence.leave", checkPresence),
	)
}

func checkPresence(m *eventbusv1.Presence) error {
	return errors.Join(required("client_id", m.GetClientId()), required("transport", m.GetTransport()))
}

// EdgeOnly reports whether events of type t are the edge's to publish:
// presence joins and leaves, and delivery receipts. The api refuses them,
// so that no publisher can fake a user's presence or a receipt.
func EdgeOnly(t string) bool {
	return strings.HasPrefix(t, "presence.") || t == "notification.delivered"
}

// Lookup returns the registered type called name.
func Lookup(name string) (Type, bool) {
	t, ok := registry[name]
	return t, ok
}

func required(field, v string) error {
	if v == "" {
		return fmt.Errorf("%s: required", field)
	}
	return nil
}

func email(v string) error {
	if v == "" {
		return errors.New("email: required")
	}
	if a, err := mail.ParseAddress(v); err != nil || a.Address != v {
		return fmt.Errorf("email: want a bare address such as ada@example.com, got %q", v)
	}
	return nil
}

func nonNegative(field string, v int64) error {
	if v < 0 {
		return fmt.Errorf("%s: must not be negative, got %d", field, v)
	}
	return nil
}

func currency(c string) error {
	if len(c) != 3 || c[0] < 'A' || c[0] > 'Z' || c[1] < 'A' || c[1] > 'Z' || c[2] < 'A' || c[2] > 'Z' {
		return fmt.Errorf("currency: want a three-letter ISO 4217 code such as \"EUR\", got %q", c)
	}
	return nil
}

// strictJSON rejects unknown fields, so a typo in a field name is an error
// that names the field rather than data silently lost.
var strictJSON = protojson.UnmarshalOptions{}

// DecodeData turns the JSON data of an event of type typ into an Any. Data
// of a registered type is decoded strictly into its message (an unknown
// field or a wrong JSON type is an error naming the field) and checked;
// data of any other type must be a JSON object and travels as a
// google.protobuf.Struct. Data nested more than MaxDataDepth objects and
// arrays deep is refused before it is decoded. Empty or null data gives nil
// (which ValidateStrict refuses for a registered type). Errors wrap
// ErrInvalid.
func DecodeData(typ string, data []byte) (*anypb.Any, error) {
	data = bytes.TrimSpace(data)
	if len(data) == 0 || bytes.Equal(data, []byte("null")) {
		return nil, nil
	}
	if jsonDepth(data) > MaxDataDepth {
		return nil, fmt.Errorf("%w: data of %s: nested more than %d levels deep", ErrInvalid, typ, MaxDataDepth)
	}
	var msg proto.Message
	if t, ok := Lookup(typ); ok {
		msg = t.New()
		if err := strictJSON.Unmarshal(data, msg); err != nil {
			return nil, fmt.Errorf("%w: data of %s: %s", ErrInvalid, typ, ErrorText(err))
		}
		if err := t.Check(msg); err != nil {
			return nil, fmt.Errorf("%w: data of %s: %w", ErrInvalid, typ, err)
		}
	} else {
		if data[0] != '{' {
			return nil, fmt.Errorf("%w: data of %s: want a JSON object", ErrInvalid, typ)
		}
		s := new(structpb.Struct)
		if err := strictJSON.Unmarshal(data, s); err != nil {
			return nil, fmt.Errorf("%w: data of %s: %s", ErrInvalid, typ, ErrorText(err))
		}
		msg = s
	}
	return PackData(msg)
}

// ErrorText renders a protojson error for someone who sent JSON: without
// the "proto: " prefix, whose following space protojson deliberately
// varies between ' ' and U+00A0.
func ErrorText(err error) string {
	s := strings.TrimPrefix(err.Error(), "proto:")
	return strings.TrimLeft(s, " \u00a0")
}

// jsonDepth returns how deeply data nests objects and arrays, counting no
// further than MaxDataDepth+1. It reads only brackets and strings: data
// that is not JSON is left to the decoder to refuse.
func jsonDepth(data []byte) int {
	d, deepest := 0, 0
	inString, escaped := false, false
	for _, c := range data {
		switch {
		case escaped:
			escaped = false
		case inString:
			switch c {
			case '\\':
				escaped = true
			case '"':
				inString = false
			}
		case c == '"':
			inString = true
		case c == '{' || c == '[':
			d++
			if d > deepest {
				deepest = d
				if deepest > MaxDataDepth {
					return deepest
				}
			}
		case c == '}' || c == ']':
			d--
		}
	}
	return deepest
}
