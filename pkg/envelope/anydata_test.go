package envelope

import (
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/structpb"

	eventbusv1 "github.com/eventbus-suite/eventbus/proto/gen/eventbus/v1"
)

// holdsAny finds a google.protobuf.Any inside a message, and none where
// there is none, through cycles: FillStrictDecoded decodes again the data
// of a type it finds one in, as only decoding can find the Any.
func TestHoldsAny(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		d    protoreflect.MessageDescriptor
		want bool
	}{
		{"Envelope, whose data is an Any", (&eventbusv1.Envelope{}).ProtoReflect().Descriptor(), true},
		{"Struct, whose Value and ListValue cycle back to it", (&structpb.Struct{}).ProtoReflect().Descriptor(), false},
	} {
		if got := holdsAny(tc.d, map[protoreflect.FullName]bool{}); got != tc.want {
			t.Errorf("holdsAny(%s) = %v, want %v", tc.name, got, tc.want)
		}
	}
}
