package channel_test

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/eventbus-suite/eventbus/pkg/channel"
)

func TestValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		in      string
		channel bool
		pattern bool
	}{
		{name: "two tokens", in: "order:placed", channel: true, pattern: true},
		{name: "one token", in: "orders", channel: true, pattern: true},
		{name: "digits underscore dash", in: "notify:user:42_a-b", channel: true, pattern: true},
		{name: "empty", in: ""},
		{name: "upper case", in: "Order:placed"},
		{name: "leading colon", in: ":order"},
		{name: "trailing colon", in: "order:"},
		{name: "double colon", in: "order::placed"},
		{name: "dot", in: "order.placed"},
		{name: "space", in: "order placed"},
		{name: "non ascii", in: "ordér"},
		{name: "star token", in: "order:*", pattern: true},
		{name: "star alone", in: "*", pattern: true},
		{name: "star inside token", in: "us*r:4*", pattern: true},
		{name: "question mark", in: "order:?"},
		{name: "bracket", in: "order:[ab]"},
		{name: "backslash", in: `order:\*`},
		{name: "longest", in: strings.Repeat("a", channel.MaxLen), channel: true, pattern: true},
		{name: "too long", in: strings.Repeat("a", channel.MaxLen+1)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if err := channel.Validate(tt.in); (err == nil) != tt.channel {
				t.Errorf("Validate(%q) = %v, want valid %v", tt.in, err, tt.channel)
			} else if err != nil && !errors.Is(err, channel.ErrInvalid) {
				t.Errorf("Validate(%q) = %v, want it to wrap ErrInvalid", tt.in, err)
			}
			if err := channel.ValidatePattern(tt.in); (err == nil) != tt.pattern {
				t.Errorf("ValidatePattern(%q) = %v, want valid %v", tt.in, err, tt.pattern)
			}
		})
	}
}

func TestFromType(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		in      string
		want    string
		wantErr bool
	}{
		{name: "two tokens", in: "order.placed", want: "order:placed"},
		{name: "reverse dns", in: "com.example.thing.done", want: "com:example:thing:done"},
		{name: "one token", in: "ping", want: "ping"},
		{name: "colon is not a type separator", in: "order:placed", wantErr: true},
		{name: "empty token", in: "order..placed", wantErr: true},
		{name: "wildcard", in: "order.*", wantErr: true},
		{name: "upper case", in: "Order.Placed", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := channel.FromType(tt.in)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("FromType(%q) = %q, %v; want %q, error %v", tt.in, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestMatch(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		pattern string
		channel string
		want    bool
	}{
		{name: "exact", pattern: "order:placed", channel: "order:placed", want: true},
		{name: "exact differs", pattern: "order:placed", channel: "order:shipped"},
		{name: "prefix only", pattern: "order", channel: "order:placed"},
		{name: "star suffix", pattern: "order:*", channel: "order:placed", want: true},
		{name: "star crosses colon", pattern: "user:*", channel: "user:42:deleted", want: true},
		{name: "star matches empty", pattern: "order:*", channel: "order:", want: true},
		{name: "star needs the colon", pattern: "order:*", channel: "order", want: false},
		{name: "star everything", pattern: "*", channel: "anything:at:all", want: true},
		{name: "star middle", pattern: "notify:*:42", channel: "notify:user:42", want: true},
		{name: "star middle mismatch", pattern: "notify:*:42", channel: "notify:user:43"},
		{name: "star prefix", pattern: "*:placed", channel: "order:placed", want: true},
		{name: "two stars", pattern: "*:user:*", channel: "notify:user:7", want: true},
		{name: "backtracking", pattern: "a*b*c", channel: "aXbYbZc", want: true},
		{name: "backtracking fails", pattern: "a*b*c", channel: "aXbYbZ"},
		{name: "empty pattern", pattern: "", channel: "x"},
		{name: "many stars long channel", pattern: "*a*a*a*a*b", channel: strings.Repeat("a", 200)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := channel.Match(tt.pattern, tt.channel); got != tt.want {
				t.Errorf("Match(%q, %q) = %v, want %v", tt.pattern, tt.channel, got, tt.want)
			}
		})
	}
}

func FuzzValidatePattern(f *testing.F) {
	for _, s := range []string{"order:*", "user:42", "*", "a::b", "x*y*z", "notify:user:*"} {
		f.Add(s, "order:placed")
	}
	f.Fuzz(func(t *testing.T, p, ch string) {
		if channel.ValidatePattern(p) != nil {
			return
		}
		// A valid pattern without a wildcard is a channel and matches only itself.
		if !channel.IsPattern(p) {
			if channel.Validate(p) != nil {
				t.Fatalf("ValidatePattern(%q) ok but Validate failed", p)
			}
			if channel.Match(p, ch) != (p == ch) {
				t.Fatalf("Match(%q, %q) = %v, want %v", p, ch, !(p == ch), p == ch)
			}
		}
		// Every pattern matches the channel obtained by deleting its stars
		// from a pattern ending with a token.
		if lit := strings.ReplaceAll(p, "*", ""); !channel.Match(p, lit) {
			t.Fatalf("Match(%q, %q) = false, want true", p, lit)
		}
	})
}

func TestCovers(t *testing.T) {
	t.Parallel()
	tests := []struct {
		allowed, requested string
		want               bool
	}{
		{"order:*", "order:*", true},
		{"order:*", "order:placed", true},
		{"order:*", "order:*:eu", true},
		{"*", "anything:*", true},
		{"notify:user:42", "notify:user:42", true},
		{"notify:user:42", "notify:user:*", false},
		{"notify:user:4*", "notify:user:*", false},
		{"order:*", "*", false},
		{"order:*", "order*", false}, // order* also matches "orders"
		{"order:placed", "order:*", false},
		{"*:placed", "order:placed", true},
		{"*:placed", "order:*", false},
		{"*a*", "x*a*y", true},
		{"*ab*", "*a*b*", false}, // a*b matches aXb, which has no "ab"
		{"a*b", "a*b*b", true},
	}
	for _, tt := range tests {
		if got := channel.Covers(tt.allowed, tt.requested); got != tt.want {
			t.Errorf("Covers(%q, %q) = %v, want %v", tt.allowed, tt.requested, got, tt.want)
		}
	}
}

// FuzzCovers checks Covers against Match: when a covers p, every channel p
// matches, a matches too.
func FuzzCovers(f *testing.F) {
	f.Add("order:*", "order:*:x", "order:a:x")
	f.Add("*a*", "x*a*y", "xzay")
	f.Add("a*b", "a*b*b", "ab-b")
	f.Fuzz(func(t *testing.T, a, p, ch string) {
		if channel.ValidatePattern(a) != nil || channel.ValidatePattern(p) != nil || channel.Validate(ch) != nil {
			return
		}
		if channel.Covers(a, p) && channel.Match(p, ch) && !channel.Match(a, ch) {
			t.Fatalf("Covers(%q, %q) = true, but %q matches only the second", a, p, ch)
		}
		if !channel.IsPattern(p) && channel.Covers(a, p) != channel.Match(a, p) {
			t.Fatalf("Covers(%q, %q) = %v, want Match = %v for a plain channel", a, p, channel.Covers(a, p), channel.Match(a, p))
		}
	})
}

func TestOverlaps(t *testing.T) {
	t.Parallel()
	tests := []struct {
		a, b string
		want bool
	}{
		{"order:*", "order:*", true},
		{"order:*", "*", true},
		{"order:*", "order", false}, // order:* needs a token after order
		{"order:*", "*:placed", true},
		{"order:placed", "*:placed", true},
		{"order:*", "user:*", false},
		{"notify:user:42", "notify:*", true},
		{"notify:user:42", "notify:user:7", false},
		{"*a", "b*", true},
		{"a*", "b*", false},
		{"*ab*", "*ba*", true},
		{"x*y", "*z*", true},
		{"x", "x*", true},
		{"xy", "x*z", false},
	}
	for _, tt := range tests {
		if got := channel.Overlaps(tt.a, tt.b); got != tt.want {
			t.Errorf("Overlaps(%q, %q) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
		if got := channel.Overlaps(tt.b, tt.a); got != tt.want {
			t.Errorf("Overlaps(%q, %q) = %v, want %v", tt.b, tt.a, got, tt.want)
		}
	}
}

// Overlaps agrees with Match on every pair of short patterns over a small
// alphabet: it says yes exactly when some short string matches both.
func TestOverlapsAgreesWithMatch(t *testing.T) {
	t.Parallel()
	words := func(alphabet string, max int) []string {
		out := []string{""}
		for l, from := 0, 0; l < max; l++ {
			to := len(out)
			for _, w := range out[from:to] {
				for _, c := range alphabet {
					out = append(out, w+string(c))
				}
			}
			from = to
		}
		return out
	}
	patterns := words("a:*", 4)
	strs := words("ab:", 6)
	for _, a := range patterns {
		for _, b := range patterns {
			want := slices.ContainsFunc(strs, func(s string) bool { return channel.Match(a, s) && channel.Match(b, s) })
			if got := channel.Overlaps(a, b); got != want {
				t.Fatalf("Overlaps(%q, %q) = %v, want %v", a, b, got, want)
			}
		}
	}
}

// A channel written as a type, or in upper case, is refused with what it
// was likely meant to be.
func TestErrorsSuggestTheChannel(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		err  error
		want string
	}{
		{channel.Validate("iss.telemetry"), `did you mean "iss:telemetry"?`},
		{channel.ValidatePattern("Order:*"), `did you mean "order:*"?`},
		{channel.ValidateType("Order.Placed"), `did you mean "order.placed"?`},
		{channel.ValidateType("order:placed"), `did you mean "order.placed"?`},
	} {
		if tt.err == nil || !strings.Contains(tt.err.Error(), tt.want) {
			t.Errorf("error %v, want it to suggest %s", tt.err, tt.want)
		}
	}
	if err := channel.Validate("a b"); err == nil || strings.Contains(err.Error(), "did you mean") {
		t.Errorf("Validate(a b) = %v, want no suggestion (none is valid)", err)
	}
}

// Overlaps is symmetric, and never says "never" of two patterns a channel
// matches both.
func FuzzOverlaps(f *testing.F) {
	f.Add("order:*", "*:placed", "order:placed")
	f.Add("*ab*", "*ba*", "xaba")
	f.Add("order:*", "order", "order")
	f.Fuzz(func(t *testing.T, a, b, ch string) {
		if channel.ValidatePattern(a) != nil || channel.ValidatePattern(b) != nil {
			return
		}
		if channel.Overlaps(a, b) != channel.Overlaps(b, a) {
			t.Fatalf("Overlaps(%q, %q) = %v, but the other way round %v", a, b, channel.Overlaps(a, b), channel.Overlaps(b, a))
		}
		if channel.Validate(ch) == nil && channel.Match(a, ch) && channel.Match(b, ch) && !channel.Overlaps(a, b) {
			t.Fatalf("Overlaps(%q, %q) = false, but %q matches both", a, b, ch)
		}
	})
}
