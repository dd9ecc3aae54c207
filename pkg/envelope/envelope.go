// Package envelope builds, checks and encodes the eventbus.v1.Envelope that
// wraps every event on the bus.
package envelope

import (
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

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

// Fill completes env in place: a new id, the current time and the channel
// derived from the type where they are empty, and source where it is empty.
// It then validates env and returns the validation error, if any.
func Fill(env *Envelope, source string, now time.Time) error {
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
	return Validate(env)
}

// Validate checks that env can travel on the bus: a valid type and channel,
// an id, a source, a time, attribute names in the CloudEvents grammar and,
// for a registered type, data of that type that passes its own checks.
func Validate(env *Envelope) error {
	var errs []error
	if err := channel.ValidateType(env.GetType()); err != nil {
		errs = append(errs, fmt.Errorf("type: %w", err))
	}
	if err := channel.Validate(env.GetChannel()); err != nil {
		errs = append(errs, fmt.Errorf("channel: %w", err))
	}
	if env.GetId() == "" {
		errs = append(errs, errors.New("id: empty"))
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
	if t, ok := Lookup(env.GetType()); ok && env.GetData() != nil {
		msg, err := env.GetData().UnmarshalNew()
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("data: %w", err))
		case msg.ProtoReflect().Descriptor().FullName() != t.Descriptor().FullName():
			errs = append(errs, fmt.Errorf("data: type %s carries %s, want %s", env.GetType(),
				msg.ProtoReflect().Descriptor().FullName(), t.Descriptor().FullName()))
		default:
			if err := t.check(msg); err != nil {
				errs = append(errs, fmt.Errorf("data: %w", err))
			}
		}
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrInvalid, errors.Join(errs...))
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

// Unmarshal decodes an envelope from the protobuf wire format. It does not
// validate it: a consumer decides what to do with a malformed event.
func Unmarshal(b []byte) (*Envelope, error) {
	env := new(Envelope)
	if err := proto.Unmarshal(b, env); err != nil {
		return nil, fmt.Errorf("unmarshal envelope: %w", err)
	}
	return env, nil
}

// PackData wraps msg in an Any.
func PackData(msg proto.Message) (*anypb.Any, error) {
	a, err := anypb.New(msg)
	if err != nil {
		return nil, fmt.Errorf("pack %s: %w", msg.ProtoReflect().Descriptor().FullName(), err)
	}
	return a, nil
}
