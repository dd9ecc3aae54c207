// Package envelope builds, checks and encodes the eventbus.v1.Envelope that
// wraps every event on the bus.
package envelope

import (
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"
	// The wrappers' types, for every service that links this package to
	// resolve: the edge wraps MQTT payloads that are no JSON in BytesValue.
	_ "google.golang.org/protobuf/types/known/wrapperspb"

	eventbusv1 "github.com/eventbus-suite/eventbus/proto/gen/eventbus/v1"

	"github.com/eventbus-suite/eventbus/pkg/channel"
)

// ErrInvalid is wrapped by every error that reports an envelope or event
// data the caller got wrong.
var ErrInvalid = errors.New("invalid event")

// Envelope is the generated message, named here so that callers of this
// package need not import the generated package for it.
type Envelope = eventbusv1.Envelope

// NewID returns a new time-sortable event id (UUIDv7).
func NewID() string {
	return uuid.Must(uuid.NewV7()).String()
}

// MaxIDLen is the most characters an event id may have.
const MaxIDLen = 255

// MaxDataDepth is how deeply the data of an event from outside the bus may
// nest, counted in the objects and arrays of its JSON form: {"a":{"b":[1]}}
// is 3 deep, and each field of a message, list or map is a level as it is in
// JSON. Consumers decode data with protobuf's default recursion limit of
// 10,000 nested messages, which JSON data reaches at about 3,333 levels
// (google.protobuf.Struct costs three messages per level); 64 is far from
// that and deeper than any event needs.
const MaxDataDepth = 64

// dataRecursionLimit bounds the messages nested in data that ValidateStrict
// decodes before it counts levels: Struct, its map entry and Value are three
// messages per JSON level, so no data of MaxDataDepth levels comes near it.
const dataRecursionLimit = 4*MaxDataDepth + 8

// Fill completes env in place: a new id, the current time and the channel
// derived from the type where they are empty, and source where it is
// empty; an offset and epoch are cleared, for the bus sets them.
// It then validates env with Validate and returns the validation error, if
// any. An event from outside the bus goes through FillStrict instead.
func Fill(env *Envelope, source string, now time.Time) error {
	complete(env, source, now)
	return Validate(env)
}

// FillStrict completes env as Fill does, then validates it with
// ValidateStrict: what an event from outside the bus must pass.
func FillStrict(env *Envelope, source string, now time.Time) error {
	complete(env, source, now)
	return ValidateStrict(env)
}

// FillStrictDecoded is FillStrict for an event whose data DecodeData made,
// for the event's type, from JSON: DecodeData checked that data as
// ValidateStrict would (its message type, the type's own checks, its
// depth), so it is not decoded again, unless the type's message could hold
// a google.protobuf.Any, which only decoding finds. Everything else is
// validated as FillStrict does. An event from anywhere else, with data
// another process packed, goes through FillStrict.
func FillStrictDecoded(env *Envelope, source string, now time.Time) error {
	complete(env, source, now)
	return validate(env, true, true)
}

func complete(env *Envelope, source string, now time.Time) {
	// The position is the bus's to set, on a live message: one from a
	// publisher would only mislead whoever decodes the record.
	env.Offset, env.Epoch = "", ""
	if env.GetId() == "" {
		env.Id = NewID()
	}
	if env.GetTime() == nil {
		env.Time = timestamppb.New(now)
	}
	if env.GetSource() == "" {
		env.Source = source
	}
	if env.GetChannel() == "" && channel.ValidateType(env.GetType()) == nil {
		env.Channel, _ = channel.FromType(env.GetType())
	}
}

// Validate checks that env can travel on the bus: a valid type and channel,
// an id, a source, a time, attribute names in the CloudEvents grammar and,
// for a registered type with data, data of that type that passes its own
// checks. It is what a consumer may expect of any envelope; an event from
// outside the bus must pass ValidateStrict.
func Validate(env *Envelope) error {
	return validate(env, false, false)
}

// ValidateStrict checks an event from outside the bus: everything Validate
// checks and what consumers rely on without checking again. The id is 1 to
// MaxIDLen printable characters (ValidateID), so that it can go on a line
// of the logger's Server-Sent Events tail or into a JSON string as it is; an
// event of a registered type carries data, so that its required fields
// cannot be skipped by leaving data out; and data nests at most
// MaxDataDepth levels and holds no google.protobuf.Any of its own, so that
// every consumer can decode it. Data of a message type this process cannot
// resolve is not decoded, so its depth is not checked (nor can a consumer
// linked with the same types decode it). Errors wrap ErrInvalid and name
// the field.
func ValidateStrict(env *Envelope) error {
	return validate(env, true, false)
}

// validate checks env, strictly when strict; decoded says its data was
// made by DecodeData for its type (FillStrictDecoded).
func validate(env *Envelope, strict, decoded bool) error {
	var errs []error
	typeErr := channel.ValidateType(env.GetType())
	if typeErr != nil {
		errs = append(errs, fmt.Errorf("type: %w", typeErr))
	}
	// An empty channel derives from the type: with a bad type, saying the
	// channel is empty as well would only repeat the type's error.
	if err := channel.Validate(env.GetChannel()); err != nil && (typeErr == nil || env.GetChannel() != "") {
		errs = append(errs, fmt.Errorf("channel: %w", err))
	}
	switch {
	case env.GetId() == "":
		errs = append(errs, errors.New("id: empty"))
	case strict:
		if err := ValidateID(env.GetId()); err != nil {
			errs = append(errs, fmt.Errorf("id: %w", err))
		}
	}
	if env.GetSource() == "" {
		errs = append(errs, errors.New("source: empty"))
	}
	if env.GetTime() == nil {
		errs = append(errs, errors.New("time: missing"))
	} else if err := env.GetTime().CheckValid(); err != nil {
		errs = append(errs, fmt.Errorf("time: %w", err))
	}
	for k := range env.GetAttributes() {
		if !validAttributeName(k) {
			errs = append(errs, fmt.Errorf("attributes: name %q is not 1-20 characters of a-z and 0-9", k))
		}
	}
	if err := validateData(env, strict, decoded); err != nil {
		errs = append(errs, fmt.Errorf("data: %w", err))
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrInvalid, errors.Join(errs...))
}

// validateData checks the data of env against its registered type and, when
// strict, that a registered type has data and that data is not too deep;
// decoded data (FillStrictDecoded) was checked so already.
func validateData(env *Envelope, strict, decoded bool) error {
	t, known := Lookup(env.GetType())
	data := env.GetData()
	if data == nil {
		if strict && known {
			return fmt.Errorf("required: a %s event carries %s", env.GetType(), t.Descriptor().FullName())
		}
		return nil
	}
	if decoded && (!known || !t.mayHoldAny) {
		return nil // DecodeData decoded it for this type and checked it
	}
	if !known && !strict {
		return nil
	}
	opts := proto.UnmarshalOptions{}
	if strict {
		opts.RecursionLimit = dataRecursionLimit
	}
	msg, err := anypb.UnmarshalNew(data, opts)
	switch {
	case err != nil && !known && errors.Is(err, protoregistry.NotFound):
		return nil // not ours to decode, nor any consumer's
	case err != nil && strict && strings.Contains(err.Error(), "exceeded maximum recursion depth"):
		return fmt.Errorf("nested more than %d levels deep", MaxDataDepth)
	case err != nil:
		return err
	case known && msg.ProtoReflect().Descriptor().FullName() != t.Descriptor().FullName():
		return fmt.Errorf("type %s carries %s, want %s", env.GetType(),
			msg.ProtoReflect().Descriptor().FullName(), t.Descriptor().FullName())
	}
	if strict {
		d, ok := depth(msg.ProtoReflect())
		switch {
		case !ok:
			return errors.New("a google.protobuf.Any inside data is not supported")
		case d > MaxDataDepth:
			return fmt.Errorf("nested %d levels deep, at most %d", d, MaxDataDepth)
		}
	}
	if known {
		return t.check(msg)
	}
	return nil
}

// depth counts the levels of m as its JSON form nests objects and arrays:
// a message, a list and a map are a level each; Struct and ListValue are
// JSON's object and array, and Value is no level of its own. It reports
// ok false for a google.protobuf.Any inside m: its content would need
// decoding, level by level, to be counted.
func depth(m protoreflect.Message) (d int, ok bool) {
	ok = true
	visit := func(v protoreflect.Value, extra int) {
		n, vok := depth(v.Message())
		d, ok = max(d, extra+n), ok && vok
	}
	switch m.Descriptor().FullName() {
	case "google.protobuf.Any":
		return 1, false
	case "google.protobuf.Value":
		m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			if fd.Message() != nil {
				visit(v, 0)
			}
			return true
		})
		return d, ok
	case "google.protobuf.Struct", "google.protobuf.ListValue":
		m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			switch {
			case fd.IsMap():
				v.Map().Range(func(_ protoreflect.MapKey, v protoreflect.Value) bool {
					visit(v, 0)
					return true
				})
			case fd.IsList():
				for i := range v.List().Len() {
					visit(v.List().Get(i), 0)
				}
			}
			return true
		})
		return 1 + d, ok
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList():
			d = max(d, 1)
			if fd.Message() != nil {
				for i := range v.List().Len() {
					visit(v.List().Get(i), 1)
				}
			}
		case fd.IsMap():
			d = max(d, 1)
			if fd.MapValue().Message() != nil {
				v.Map().Range(func(_ protoreflect.MapKey, v protoreflect.Value) bool {
					visit(v, 1)
					return true
				})
			}
		case fd.Message() != nil:
			visit(v, 0)
		}
		return true
	})
	return 1 + d, ok
}

// ValidateID reports what is wrong with an event id, or nil. An id is 1 to
// MaxIDLen characters of valid UTF-8 with no control character: none of C0
// (U+0000–U+001F, CR and LF among them), DEL (U+007F), C1 (U+0080–U+009F),
// nor the line and paragraph separators U+2028 and U+2029. Consumers put the
// id where such characters do harm: on a line of a Server-Sent Events
// stream, in JSON read by JavaScript, in log lines. Spaces and any other
// printable character are allowed.
func ValidateID(id string) error {
	if id == "" {
		return fmt.Errorf("empty; want 1 to %d printable characters", MaxIDLen)
	}
	n := 0
	for i := 0; i < len(id); n++ {
		if c := id[i]; c < utf8.RuneSelf {
			if c < 0x20 || c == 0x7f {
				return fmt.Errorf("control character %U at byte %d; want printable characters", c, i)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(id[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			return fmt.Errorf("invalid UTF-8 at byte %d", i)
		case r <= 0x9f, r == 0x2028, r == 0x2029:
			return fmt.Errorf("control character %U at byte %d; want printable characters", r, i)
		}
		i += size
	}
	if n > MaxIDLen {
		return fmt.Errorf("%d characters; want at most %d", n, MaxIDLen)
	}
	return nil
}

// validAttributeName follows the CloudEvents rule for attribute names.
func validAttributeName(k string) bool {
	if k == "" || len(k) > 20 {
		return false
	}
	for i := 0; i < len(k); i++ {
		if c := k[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// Marshal encodes env in the protobuf wire format, as it travels on the bus.
func Marshal(env *Envelope) ([]byte, error) {
	b, err := proto.Marshal(env)
	if err != nil {
		return nil, fmt.Errorf("marshal envelope: %w", err)
	}
	return b, nil
}

// Unmarshal decodes an envelope as it travels on the bus: the protobuf wire
// format, or, from a bus with BUS_WIRE=json, its canonical protobuf JSON
// (a JSON object; no protobuf envelope starts with '{'). It does not
// validate it: a consumer decides what to do with a malformed event.
func Unmarshal(b []byte) (*Envelope, error) {
	env := new(Envelope)
	if isJSON(b) {
		if err := wireJSON.Unmarshal(b, env); err != nil {
			return nil, fmt.Errorf("unmarshal envelope from JSON: %s", ErrorText(err))
		}
		return env, nil
	}
	if err := proto.Unmarshal(b, env); err != nil {
		return nil, fmt.Errorf("unmarshal envelope: %w", err)
	}
	return env, nil
}

// everyServiceKnows reports whether every service can resolve the message
// type name, as the JSON wire's readers must: ours (eventbus.v1, linked
// through this package), and the well-known types it links.
func everyServiceKnows(name protoreflect.FullName) bool {
	if name.Parent() == "eventbus.v1" {
		return true
	}
	switch name {
	case "google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue",
		"google.protobuf.BytesValue", "google.protobuf.StringValue", "google.protobuf.BoolValue",
		"google.protobuf.Int64Value", "google.protobuf.UInt64Value", "google.protobuf.Int32Value",
		"google.protobuf.UInt32Value", "google.protobuf.DoubleValue", "google.protobuf.FloatValue",
		"google.protobuf.Timestamp":
		return true
	}
	return false
}

// wireJSON reads the JSON wire: fields a newer publisher added are
// skipped, as the protobuf wire skips them.
var wireJSON = protojson.UnmarshalOptions{DiscardUnknown: true}

// isJSON reports whether b is on the JSON wire: it starts with '{'. A
// protobuf envelope starts with the tag of one of its fields, and '{'
// would be field 15, which it does not have, as a group.
func isJSON(b []byte) bool { return len(b) > 0 && b[0] == '{' }

// ToJSON turns an envelope in the protobuf wire format into its canonical
// protobuf JSON, the wire of BUS_WIRE=json, which consumers written for
// plain JSON (the seed's JSON.parse) read. Anything that is no envelope,
// or is JSON already, is returned as it is: the bus carries any bytes. So
// is an envelope whose data another service could not read back from
// JSON: protobuf JSON names the type of an Any, and a reader must know
// it, where protobuf carries bytes it need not decode. Every service
// knows the types of this package (ours, Struct and the wrappers, which
// the edge uses for MQTT payloads), and no other.
func ToJSON(b []byte) []byte {
	if isJSON(b) {
		return b
	}
	env := new(Envelope)
	if proto.Unmarshal(b, env) != nil || env.GetType() == "" {
		return b
	}
	if d := env.GetData(); d != nil && !everyServiceKnows(d.MessageName()) {
		return b
	}
	out, err := protojson.Marshal(env)
	if err != nil {
		return b
	}
	return out
}

// PackData wraps msg in an Any.
func PackData(msg proto.Message) (*anypb.Any, error) {
	a, err := anypb.New(msg)
	if err != nil {
		return nil, fmt.Errorf("pack %s: %w", msg.ProtoReflect().Descriptor().FullName(), err)
	}
	return a, nil
}
