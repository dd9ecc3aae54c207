package protocol_test

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/eventbus-suite/eventbus/pkg/bus"
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
	b := protocol.AppendEvent(nil, "order:placed", []string{"order:*", "order:placed"}, bus.Position{Offset: "1732290000000-7", Epoch: "9f01"}, []byte(`{"id":"1"}`))
	var v struct {
		Channel       string
		Subscriptions []string
		Offset, Epoch string
		Event         map[string]string
	}
	if err := json.Unmarshal(b, &v); err != nil || v.Channel != "order:placed" || len(v.Subscriptions) != 2 ||
		v.Offset != "1732290000000-7" || v.Epoch != "9f01" || v.Event["id"] != "1" {
		t.Errorf("AppendEvent = %s (%v), want the channel, both subscriptions, the position and the event", b, err)
	}
	if b := protocol.AppendEvent(nil, "a:b", []string{"a:*"}, bus.Position{}, []byte(`{}`)); bytes.Contains(b, []byte("offset")) {
		t.Errorf("AppendEvent without a position = %s, want no offset", b)
	}
}

// FuzzParseRequest: no frame panics the parser, and a request it accepts
// has a known action with its argument.
func FuzzParseRequest(f *testing.F) {
	for _, s := range []string{`{"action":"subscribe","channel":"order:*","id":"7"}`, `{"action":"auth","token":"t"}`, `{"action":"ping"}`, `{`, `null`, `{"action":"subscribe","channel":1}`} {
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
		switch r.Action {
		case protocol.ActionSubscribe, protocol.ActionUnsubscribe:
			if r.Channel == "" {
				t.Fatalf("accepted %s without channel", r.Action)
			}
		case protocol.ActionAuth:
			if r.Token == "" {
				t.Fatal("accepted auth without token")
			}
		case protocol.ActionPing:
		default:
			t.Fatalf("accepted unknown action %q", r.Action)
		}
	})
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
