package deadletter_test

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"

	"github.com/eventbus-suite/eventbus/services/notification/internal/deadletter"
)

func TestParseRetryRequest(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		body string
		want []string
	}{
		{"no body", "", nil},
		{"blank", " \n", nil},
		{"empty object", "{}", nil},
		{"null", "null", nil},
		{"no ids", `{"ids":[]}`, nil},
		{"ids", `{"ids":["e1/welcome_email","e2/receipt_email"]}`, []string{"e1/welcome_email", "e2/receipt_email"}},
		{"twice taken once", `{"ids":["a","b","a"]}`, []string{"a", "b"}},
		{"trailing space", "{\"ids\":[\"a\"]}\n", []string{"a"}},
		{"as many as allowed", `{"ids":["x"` + strings.Repeat(`,"x"`, deadletter.MaxPerCall-1) + `]}`, []string{"x"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := deadletter.ParseRetryRequest([]byte(tt.body))
			if err != nil || !cmp.Equal(got, tt.want) {
				t.Errorf("ParseRetryRequest(%q) = %q, %v; want %q", tt.body, got, err, tt.want)
			}
		})
	}
}

func TestParseRetryRequestRefuses(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ name, body, says string }{
		{"not JSON", "{", "want"},
		{"a list", `["a"]`, "want"},
		{"ids a string", `{"ids":"a"}`, "want"},
		{"id a number", `{"ids":[1]}`, "want"},
		{"unknown field", `{"id":["a"]}`, "unknown field"},
		{"two objects", `{}{}`, "one JSON object"},
		{"garbage after", `{"ids":["a"]} x`, "one JSON object"},
		{"empty id", `{"ids":["a",""]}`, "ids[1] is empty"},
		{"long id", `{"ids":["` + strings.Repeat("é", deadletter.MaxIDBytes) + `"]}`, "ids[0] is 2048 bytes"},
		{"too many", `{"ids":["x"` + strings.Repeat(`,"x"`, deadletter.MaxPerCall) + `]}`, "1001 given"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := deadletter.ParseRetryRequest([]byte(tt.body))
			if !errors.Is(err, deadletter.ErrInvalidRequest) || !strings.Contains(err.Error(), tt.says) {
				t.Errorf("ParseRetryRequest(%.40q) = %q, %v; want ErrInvalidRequest saying %q", tt.body, got, err, tt.says)
			}
		})
	}
}

// FuzzParseRetryRequest: no body panics the parser; it refuses with
// ErrInvalidRequest or returns distinct, bounded, non-empty ids.
func FuzzParseRetryRequest(f *testing.F) {
	for _, s := range []string{
		"", "{}", "null", `{"ids":[]}`, `{"ids":["e1/welcome_email","e1/welcome_email"]}`, `{"ids":[""]}`,
		`{"ids":"a"}`, `{"ids":[1,{}]}`, `{"id":[]}`, `{}{}`, `{"ids":["\u0000","\ud800"]}`, "\xff", `{"ids":null}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		ids, err := deadletter.ParseRetryRequest(body)
		if err != nil {
			if !errors.Is(err, deadletter.ErrInvalidRequest) || ids != nil {
				t.Fatalf("ParseRetryRequest(%q) = %q, %v; want nil and ErrInvalidRequest", body, ids, err)
			}
			return
		}
		if len(ids) > deadletter.MaxPerCall {
			t.Fatalf("ParseRetryRequest(%q) = %d ids, want at most %d", body, len(ids), deadletter.MaxPerCall)
		}
		seen := map[string]bool{}
		for _, id := range ids {
			if id == "" || len(id) > deadletter.MaxIDBytes || !utf8.ValidString(id) || seen[id] {
				t.Fatalf("ParseRetryRequest(%q) accepted id %q (empty, too long, not UTF-8 or repeated)", body, id)
			}
			seen[id] = true
		}
	})
}
