package channel

import (
	"fmt"
	"strings"
)

// MQTT topics and channels are the same names spelled two ways: a topic's
// levels are a channel's tokens, "order/placed" ↔ "order:placed". A level
// of [a-z0-9_-] is its token as it is; any other byte of a level (upper
// case, ':', '.', '$', UTF-8, …) is escaped as '~' and two lower-case hex
// digits, and an empty level is the token "~": "TopicA/B" ↔
// "~54opic~41:~42", "/a" ↔ "~:a", "$SYS/x" ↔ "~24~53~59~53:x". Escapes are
// canonical (a byte that needs none never has one), so the mapping is one
// to one: FromTopic(Topic(ch)) == ch for every channel, and
// Topic(FromTopic(t)) == t for every topic that has a channel.

// escape starts an escaped byte, or is an empty token by itself.
const escape = '~'

// plain reports whether c stands for itself in a token.
func plain(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

const hexDigits = "0123456789abcdef"

// unescape reads the escape at the start of s ("~41"), reporting whether
// it is one: '~', two lower-case hex digits, of a byte that is not plain.
func unescape(s string) (byte, bool) {
	if len(s) < 3 || s[0] != escape {
		return 0, false
	}
	hi, lo := strings.IndexByte(hexDigits, s[1]), strings.IndexByte(hexDigits, s[2])
	if hi < 0 || lo < 0 {
		return 0, false
	}
	b := byte(hi<<4 | lo)
	return b, !plain(b)
}

// partialEscape reports whether s, starting at '~', is an escape a
// wildcard cuts short: "~*" or "~4*".
func partialEscape(s string) bool {
	switch {
	case len(s) >= 2 && s[1] == '*':
		return true
	case len(s) >= 3 && strings.IndexByte(hexDigits, s[1]) >= 0 && s[2] == '*':
		return true
	}
	return false
}

// Level returns an MQTT topic level as a channel token (see above).
func Level(level string) string {
	if level == "" {
		return string(escape)
	}
	var b strings.Builder
	for i := 0; i < len(level); i++ {
		c := level[i]
		if plain(c) {
			b.WriteByte(c)
			continue
		}
		b.WriteByte(escape)
		b.WriteByte(hexDigits[c>>4])
		b.WriteByte(hexDigits[c&0xf])
	}
	return b.String()
}

// FromTopic returns the channel of an MQTT topic name: its levels as
// tokens. A topic with a wildcard ('+', '#'), or one whose channel is
// longer than MaxLen, has none.
func FromTopic(topic string) (string, error) {
	if topic == "" || strings.ContainsAny(topic, "+#") {
		return "", fmt.Errorf("%w: topic %q: want a topic name without '+' or '#'", ErrInvalid, topic)
	}
	levels := strings.Split(topic, "/")
	for i, l := range levels {
		levels[i] = Level(l)
	}
	ch := strings.Join(levels, ":")
	if err := Validate(ch); err != nil {
		return "", fmt.Errorf("topic %q: %w", topic, err)
	}
	return ch, nil
}

// Topic returns the MQTT topic name of channel ch, a valid channel.
func Topic(ch string) string {
	if strings.IndexByte(ch, escape) < 0 {
		return strings.ReplaceAll(ch, ":", "/") // the common case: nothing escaped
	}
	var b strings.Builder
	for i, t := range strings.Split(ch, ":") {
		if i > 0 {
			b.WriteByte('/')
		}
		if t == string(escape) {
			continue // an empty level
		}
		for j := 0; j < len(t); j++ {
			if c, ok := unescape(t[j:]); ok {
				b.WriteByte(c)
				j += 2
				continue
			}
			b.WriteByte(t[j])
		}
	}
	return b.String()
}
