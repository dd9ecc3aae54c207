package mqttapi

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/eventbus-suite/eventbus/pkg/envelope"
	"github.com/eventbus-suite/eventbus/pkg/token"
)

// eventOf makes the event a client publishes on ch: its type is the
// channel's ("sensor/temp" is sensor.temp), its source the client
// ("mqtt:<client id>"), its subject the token's user, and its data the
// payload: a JSON object as the API takes one (a known type strictly),
// another JSON value as a google.protobuf.Value, anything else as
// google.protobuf.BytesValue. It returns the envelope's bytes.
func eventOf(ch, clientID string, claims *token.Claims, payload []byte, now time.Time) ([]byte, error) {
	typ := strings.ReplaceAll(ch, ":", ".")
	env := &envelope.Envelope{Type: typ, Channel: ch}
	if claims != nil {
		env.Subject = claims.Subject
	}
	var err error
	switch trimmed := strings.TrimSpace(string(payload)); {
	case len(payload) == 0:
	case strings.HasPrefix(trimmed, "{"):
		env.Data, err = envelope.DecodeData(typ, payload)
	case json.Valid(payload):
		var v structpb.Value
		if err = v.UnmarshalJSON(payload); err == nil {
			env.Data, err = anypb.New(&v)
		}
	default:
		env.Data, err = anypb.New(wrapperspb.Bytes(payload))
	}
	if err != nil {
		return nil, fmt.Errorf("payload: %w", err)
	}
	if err := envelope.FillStrict(env, "mqtt:"+clientID, now); err != nil {
		return nil, fmt.Errorf("payload: %w", err)
	}
	return envelope.Marshal(env)
}
