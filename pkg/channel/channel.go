// Package channel is the grammar of bus channels, subscription patterns and
// event types, and the mapping between them.
//
// A channel is one or more lower-case tokens of [a-z0-9_-] joined by ':', such
// as "order:placed" or "notify:user:42". Any other byte is written as an
// escape, '~' and its two lower-case hex digits ("~41" for 'A'), and a
// token of '~' alone is an empty one: so every MQTT topic is a channel
// (FromTopic), and back (Topic). A pattern is a channel in which any
// token may also contain '*'. As in Redis PSUBSCRIBE, '*' matches any run of
// characters, ':' included, so "user:*" matches "user:42:deleted". Redis's
// other glob characters ('?', '[', '\') are not part of the grammar, which
// keeps every pattern's meaning the same in Redis and in Match.
//
// An event type is the same shape with '.' for ':' ("order.placed"), and it
// travels on the channel with the dots turned into colons.
package channel

import (
	"errors"
	"fmt"
	"strings"
)

// MaxLen is the longest channel, pattern or type accepted, in bytes.
const MaxLen = 256

// ErrInvalid is wrapped by every error this package returns for input
// outside the grammar.
var ErrInvalid = errors.New("invalid channel")

// Validate reports whether ch is a channel: tokens of [a-z0-9_-]+ joined by
// ':'. The error wraps ErrInvalid and says what is wrong.
func Validate(ch string) error {
	return check("channel", ch, ':', false)
}

// ValidatePattern reports whether p is a subscription pattern: a channel
// whose tokens may also contain '*'. Every channel is a pattern.
func ValidatePattern(p string) error {
	return check("pattern", p, ':', true)
}

// ValidateType reports whether t is an event type: tokens of [a-z0-9_-]+
// joined by '.'.
func ValidateType(t string) error {
	return check("type", t, '.', false)
}

// IsPattern reports whether p contains a wildcard, i.e. whether it needs a
// pattern subscription rather than a channel subscription.
func IsPattern(p string) bool {
	return strings.IndexByte(p, '*') >= 0
}

// FromType returns the channel an event of type t travels on:
// "order.placed" → "order:placed".
func FromType(t string) (string, error) {
	if err := ValidateType(t); err != nil {
		return "", err
	}
	return strings.ReplaceAll(t, ".", ":"), nil
}

// Match reports whether channel ch matches pattern p with Redis glob
// semantics restricted to the grammar: '*' matches any run of characters,
// ':' included; everything else matches itself.
func Match(p, ch string) bool {
	// Iterative glob with single-star backtracking: linear in practice and
	// never exponential, unlike the recursive form.
	pi, ci := 0, 0
	star, mark := -1, 0
	for ci < len(ch) {
		switch {
		case pi < len(p) && p[pi] == '*':
			star, mark = pi, ci
			pi++
		case pi < len(p) && p[pi] == ch[ci]:
			pi++
			ci++
		case star >= 0:
			mark++
			pi, ci = star+1, mark
		default:
			return false
		}
	}
	for pi < len(p) && p[pi] == '*' {
		pi++
	}
	return pi == len(p)
}

func check(what, s string, sep byte, wildcard bool) error {
	if s == "" {
		return fmt.Errorf("%w: empty %s", ErrInvalid, what)
	}
	if len(s) > MaxLen {
		return fmt.Errorf("%w: %s is %d bytes long, more than %d", ErrInvalid, what, len(s), MaxLen)
	}
	if s == string(escape) {
		return fmt.Errorf("%w: %s %q: an empty token alone names nothing", ErrInvalid, what, s)
	}
	tokenStart := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == sep:
			if i == tokenStart {
				return fmt.Errorf("%w: %s %q has an empty token at byte %d", ErrInvalid, what, s, i)
			}
			tokenStart = i + 1
		case plain(c):
		case c == '*' && wildcard:
		case c == escape:
			if i == tokenStart && (i+1 == len(s) || s[i+1] == sep) {
				continue // "~", an empty MQTT level
			}
			if wildcard && partialEscape(s[i:]) {
				continue // "~*", "~4*": a pattern may leave an escape to its wildcard
			}
			if _, ok := unescape(s[i:]); !ok {
				return fmt.Errorf("%w: %s %q has %q at byte %d, which is no escape: '~' and two lower-case hex digits of a byte other than a-z 0-9 _ -, or '~' alone as a token",
					ErrInvalid, what, s, c, i)
			}
			i += 2
		default:
			return fmt.Errorf("%w: %s %q has %q at byte %d; allowed are %s%s", ErrInvalid, what, s, c, i, allowed(sep, wildcard), suggest(s, sep, wildcard))
		}
	}
	if tokenStart == len(s) {
		return fmt.Errorf("%w: %s %q ends with %q", ErrInvalid, what, s, sep)
	}
	return nil
}

// suggest offers what s was likely meant to be, in lower case with the
// right separator (the seed tutorial's "iss.telemetry" is the channel
// "iss:telemetry"), when that is valid: "; did you mean …?", or "".
func suggest(s string, sep byte, wildcard bool) string {
	other := byte('.')
	if sep == '.' {
		other = ':'
	}
	t := strings.ReplaceAll(strings.ToLower(s), string(other), string(sep))
	if t == s || check("", t, sep, wildcard) != nil {
		return ""
	}
	return fmt.Sprintf("; did you mean %q?", t)
}

func allowed(sep byte, wildcard bool) string {
	a := fmt.Sprintf("a-z 0-9 _ -, '~' escapes (see FromTopic) and %q between tokens", sep)
	if wildcard {
		a += " and '*'"
	}
	return a
}

// Covers reports whether pattern a matches every channel that pattern p
// can match, so that a client allowed a may subscribe to p. It treats each
// '*' of p as a character only a '*' of a can absorb: sound (it never says
// yes wrongly) and exact for one allowed pattern against one requested
// pattern. Both are assumed valid patterns.
func Covers(a, p string) bool {
	// ok[j] reports whether a[i:] covers p[j:], for i going down from len(a).
	ok := make([]bool, len(p)+1)
	ok[len(p)] = true // a[len(a):] covers only the empty rest
	for i := len(a) - 1; i >= 0; i-- {
		next := ok
		ok = make([]bool, len(p)+1)
		if a[i] == '*' {
			// '*' absorbs p[j:k] for any k: ok[j] = next[j] || ok[j+1].
			ok[len(p)] = next[len(p)]
			for j := len(p) - 1; j >= 0; j-- {
				ok[j] = next[j] || ok[j+1]
			}
			continue
		}
		for j := len(p) - 1; j >= 0; j-- {
			ok[j] = p[j] == a[i] && next[j+1]
		}
	}
	return ok[0]
}

// Overlaps reports whether some string matches both patterns a and b:
// whether a subscription to a can carry an event a subscription to b
// takes. It is exact for Match's glob semantics; the grammar may still
// rule out every common string (a witness can need an empty token), so
// a yes means "possibly", a no "never". Both are assumed valid patterns.
func Overlaps(a, b string) bool {
	// reach[i][j]: some string takes a[:i] and b[:j] to where they
	// stand. A '*' may end (the other stays) or absorb the other's next
	// literal; two '*' absorb anything together, which takes neither on.
	n := len(b) + 1
	reach := make([]bool, (len(a)+1)*n)
	reach[0] = true
	for i := 0; i <= len(a); i++ {
		for j := 0; j <= len(b); j++ {
			if !reach[i*n+j] {
				continue
			}
			aStar := i < len(a) && a[i] == '*'
			bStar := j < len(b) && b[j] == '*'
			if aStar {
				reach[(i+1)*n+j] = true
			}
			if bStar {
				reach[i*n+j+1] = true
			}
			switch {
			case i == len(a) || j == len(b) || aStar && bStar:
			case aStar:
				reach[i*n+j+1] = true
			case bStar:
				reach[(i+1)*n+j] = true
			case a[i] == b[j]:
				reach[(i+1)*n+j+1] = true
			}
		}
	}
	return reach[len(reach)-1]
}

// ReservedNamespace is the namespace of the bus's own channels, such as
// the control channel the edges obey: events from outside (the API, MQTT
// clients) may not use it.
const ReservedNamespace = "eventbus"

// Reserved reports whether ch is in ReservedNamespace.
func Reserved(ch string) bool {
	ns, _, _ := strings.Cut(ch, ":")
	return ns == ReservedNamespace
}
