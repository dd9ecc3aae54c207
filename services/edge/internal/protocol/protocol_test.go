package protocol_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/services/edge/internal/hub"
	"github.com/eventbus-suite/eventbus/services/edge/internal/protocol"
)

func TestParseRequest(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, frame, code string
	}{
		{"subscribe", `{"action":"subscribe","channel":"order:*","id":"7"}`, ""},
		{"subscribe without id, as the seed tutorial sends", `{"action":"subscribe","channel":"news"}`, ""},
		{"ping", `{"action":"ping","id":"9"}`, ""},
		{"auth", `{"action":"auth","token":"x.y.z"}`, ""},
		{"not json", `subscribe order:*`, protocol.CodeBadRequest},
		{"unknown field", `{"action":"subscribe","channel":"a","chanel":"b"}`, protocol.CodeBadRequest},
		{"unknown action", `{"action":"publish","channel":"a"}`, protocol.CodeBadRequest},
		{"missing action", `{"channel":"a"}`, protocol.CodeBadRequest},
		{"subscribe without channel", `{"action":"subscribe"}`, protocol.CodeBadRequest},
		{"auth without token", `{"action":"auth"}`, protocol.CodeBadRequest},
		{"two objects", `{"action":"ping"}{"action":"ping"}`, protocol.CodeBadRequest},
		{"array", `[{"action":"ping"}]`, protocol.CodeBadRequest},
		{"subscribe with presence", `{"action":"subscribe","channel":"room:1","presence":true}`, ""},
		{"presence with unsubscribe", `{"action":"unsubscribe","channel":"room:1","presence":true}`, protocol.CodeBadRequest},
		{"presence not a boolean", `{"action":"subscribe","channel":"room:1","presence":1}`, protocol.CodeBadRequest},
		{"ack", `{"action":"ack","id":"n-0a1b"}`, ""},
		{"ack without id", `{"action":"ack"}`, protocol.CodeBadRequest},
		{"ack with a channel", `{"action":"ack","id":"n-1","channel":"notify:user:1","presence":true}`, protocol.CodeBadRequest},
	}
	for _, tt := range tests {
		_, err := protocol.ParseRequest([]byte(tt.frame))
		if got := ""; err != nil {
			got = err.Code
			if got != tt.code {
				t.Errorf("%s: ParseRequest(%s) = %v, want code %q", tt.name, tt.frame, err, tt.code)
			}
		} else if tt.code != "" {
			t.Errorf("%s: ParseRequest(%s) = ok, want code %q", tt.name, tt.frame, tt.code)
		}
	}
}

func TestAppendEventIsJSON(t *testing.T) {
	t.Parallel()
	type frame struct {
		Channel       string
		Subscriptions []string
		Offset, Epoch string
		Stream        *string
		Event         map[string]string
	}
	pos := bus.Position{Offset: "1732290000000-7", Epoch: "9f01"}
	for _, tc := range []struct {
		stream string
		want   *string // the frame's stream: none where it is the namespace
	}{{"order", nil}, {"", nil}, {"order.3", new("order.3")}} {
		b := protocol.AppendEvent(nil, "order:placed", tc.stream, []string{"order:*", "order:placed"}, pos, []byte(`{"id":"1"}`))
		var v frame
		if err := json.Unmarshal(b, &v); err != nil || v.Channel != "order:placed" || len(v.Subscriptions) != 2 ||
			v.Offset != "1732290000000-7" || v.Epoch != "9f01" || v.Event["id"] != "1" ||
			(v.Stream == nil) != (tc.want == nil) || v.Stream != nil && *v.Stream != *tc.want {
			t.Errorf("AppendEvent(stream %q) = %s (%v), want the channel, both subscriptions, the position, the stream %v and the event", tc.stream, b, err, tc.want)
		}
	}
	if b := protocol.AppendEvent(nil, "a:b", "a.1", []string{"a:*"}, bus.Position{}, []byte(`{}`)); bytes.Contains(b, []byte("offset")) || bytes.Contains(b, []byte("stream")) {
		t.Errorf("AppendEvent without a position = %s, want no offset and no stream", b)
	}
}

// FuzzParseRequest: no frame panics the parser, and a request it accepts
// has a known action with its argument.
func FuzzParseRequest(f *testing.F) {
	for _, s := range []string{`{"action":"subscribe","channel":"order:*","id":"7"}`, `{"action":"auth","token":"t"}`, `{"action":"ping"}`, `{`, `null`, `{"action":"subscribe","channel":1}`,
		`{"action":"subscribe","channel":"order:*","since":{"order":{"offset":"1732290000000-0","epoch":"9f01"}}}`,
		`{"action":"subscribe","channel":"*","since":{"a:b":{"offset":"1-0","epoch":"9f"}}}`,
		`{"action":"subscribe","channel":"room:1","presence":true}`, `{"action":"ack","id":"n-1"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		r, err := protocol.ParseRequest(frame)
		if err != nil {
			if err.Code == "" || err.Message == "" {
				t.Fatalf("ParseRequest(%q) error without code or message: %+v", frame, err)
			}
			return
		}
		if r.Since != nil {
			if r.Action != protocol.ActionSubscribe || len(r.Since) > protocol.MaxSince {
				t.Fatalf("accepted since with %s, %d namespaces", r.Action, len(r.Since))
			}
			for ns, p := range r.Since {
				if strings.ContainsAny(ns, ":*") || !bus.IsOffset(p.Offset) || !bus.IsEpoch(p.Epoch) {
					t.Fatalf("accepted since %q: %+v", ns, p)
				}
			}
		}
		if r.Presence && r.Action != protocol.ActionSubscribe {
			t.Fatalf("accepted presence with %s", r.Action)
		}
		switch r.Action {
		case protocol.ActionSubscribe, protocol.ActionUnsubscribe:
			if r.Channel == "" {
				t.Fatalf("accepted %s without channel", r.Action)
			}
		case protocol.ActionAuth:
			if r.Token == "" {
				t.Fatal("accepted auth without token")
			}
		case protocol.ActionAck:
			if r.ID == "" {
				t.Fatal("accepted ack without the notification's id")
			}
		case protocol.ActionPing:
		default:
			t.Fatalf("accepted unknown action %q", r.Action)
		}
	})
}

// A since is refused unless every part of it is a position of a
// namespace, on a subscribe.
func TestParseSince(t *testing.T) {
	t.Parallel()
	ok := `{"action":"subscribe","channel":"*","since":{"order":{"offset":"1732290000000-3","epoch":"9f01"},"user":{"offset":"1-0","epoch":"ab"}}}`
	r, err := protocol.ParseRequest([]byte(ok))
	if err != nil || len(r.Cursor()) != 2 || r.Cursor()["order"] != (bus.Position{Offset: "1732290000000-3", Epoch: "9f01"}) {
		t.Fatalf("ParseRequest(%s) = %+v, %v", ok, r, err)
	}
	if r, _ := protocol.ParseRequest([]byte(`{"action":"subscribe","channel":"*"}`)); r.Cursor() != nil {
		t.Fatalf("Cursor without since = %v, want nil", r.Cursor())
	}
	many := make([]string, protocol.MaxSince+1)
	for i := range many {
		many[i] = fmt.Sprintf(`"n%d":{"offset":"1-0","epoch":"ab"}`, i)
	}
	for _, frame := range []string{
		`{"action":"unsubscribe","channel":"*","since":{"order":{"offset":"1-0","epoch":"ab"}}}`,
		`{"action":"subscribe","channel":"*","since":{"order:placed":{"offset":"1-0","epoch":"ab"}}}`,
		`{"action":"subscribe","channel":"*","since":{"ord*":{"offset":"1-0","epoch":"ab"}}}`,
		`{"action":"subscribe","channel":"*","since":{"order":{"offset":"1","epoch":"ab"}}}`,
		`{"action":"subscribe","channel":"*","since":{"order":{"offset":"1-0","epoch":"AB\""}}}`,
		`{"action":"subscribe","channel":"*","since":{"order":{"offset":"1-0"}}}`,
		`{"action":"subscribe","channel":"*","since":{"order":{"offset":"1-0","epoch":"ab","x":1}}}`,
		`{"action":"subscribe","channel":"*","since":[]}`,
		`{"action":"subscribe","channel":"*","since":{` + strings.Join(many, ",") + `}}`,
	} {
		if _, err := protocol.ParseRequest([]byte(frame)); err == nil || err.Code != protocol.CodeBadRequest {
			t.Errorf("ParseRequest(%.120s) = %v, want bad_request", frame, err)
		}
	}
}

// The subscribe reply says how the subscription began, in the names
// clients rely on.
func TestSubscribed(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		r    hub.Recovery
		want string
	}{
		{hub.Recovery{}, `{"id":"7","ok":true}`},
		{hub.Recovery{Positions: bus.Cursor{"order": {Offset: "1-0", Epoch: "ab"}}}, `{"id":"7","ok":true,"positions":{"order":{"offset":"1-0","epoch":"ab"}}}`},
		{hub.Recovery{Resumed: true, Recovered: true}, `{"id":"7","ok":true,"recovered":true,"missed":0}`},
		{hub.Recovery{Resumed: true, Recovered: true, Missed: 12}, `{"id":"7","ok":true,"recovered":true,"missed":12}`},
		{hub.Recovery{Resumed: true, Reason: hub.ReasonEpochChanged}, `{"id":"7","ok":true,"recovered":false,"reason":"epoch_changed"}`},
	} {
		if got := string(protocol.Subscribed("7", tt.r)); got != tt.want {
			t.Errorf("Subscribed(%+v) = %s, want %s", tt.r, got, tt.want)
		}
	}
}

func TestCloseReason(t *testing.T) {
	t.Parallel()
	for _, reason := range []string{"", "short", strings.Repeat("x", 123), strings.Repeat("x", 124), strings.Repeat("Ü", 100)} {
		got := protocol.CloseReason(reason)
		if len(got) > protocol.MaxCloseReason || !utf8.ValidString(got) {
			t.Errorf("CloseReason(%d bytes) = %d bytes, valid UTF-8 %v; want at most %d and valid", len(reason), len(got), utf8.ValidString(got), protocol.MaxCloseReason)
		}
		if len(reason) <= protocol.MaxCloseReason && got != reason {
			t.Errorf("CloseReason(%q) = %q, want it unchanged", reason, got)
		}
	}
}

// FuzzCloseReason: whatever the reason, the close frame can carry it, and
// a valid UTF-8 reason stays valid.
func FuzzCloseReason(f *testing.F) {
	f.Add("token expired")
	f.Add(strings.Repeat("Ü", 100))
	f.Fuzz(func(t *testing.T, reason string) {
		got := protocol.CloseReason(reason)
		if len(got) > protocol.MaxCloseReason {
			t.Fatalf("CloseReason = %d bytes, want at most %d", len(got), protocol.MaxCloseReason)
		}
		if utf8.ValidString(reason) && !utf8.ValidString(got) {
			t.Fatalf("CloseReason(%q) = %q, not valid UTF-8", reason, got)
		}
		if !strings.HasPrefix(reason, strings.TrimSuffix(got, "…")) {
			t.Fatalf("CloseReason(%q) = %q, not a prefix", reason, got)
		}
	})
}
