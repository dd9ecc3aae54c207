package channel_test

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/eventbus-suite/eventbus/pkg/channel"
)

func TestTopics(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ topic, ch string }{
		{"order/placed", "order:placed"}, // the API's channels keep their look
		{"notify/user/42", "notify:user:42"},
		{"TopicA", "~54opic~41"},
		{"TopicA/B", "~54opic~41:~42"},
		{"/TopicA", "~:~54opic~41"},
		{"TopicA/", "~54opic~41:~"},
		{"a//b", "a:~:b"},
		{"/", "~:~"},
		{"$SYS/broker/uptime", "~24~53~59~53:broker:uptime"},
		{"tele/X/SENSOR", "tele:~58:~53~45~4e~53~4f~52"},
		{"a:b.c d~", "a~3ab~2ec~20d~7e"},
		{"日本", "~e6~97~a5~e6~9c~ac"},
		{"a*b", "a~2ab"},
	} {
		ch, err := channel.FromTopic(tt.topic)
		if err != nil || ch != tt.ch {
			t.Errorf("FromTopic(%q) = %q, %v; want %q", tt.topic, ch, err, tt.ch)
			continue
		}
		if got := channel.Topic(ch); got != tt.topic {
			t.Errorf("Topic(%q) = %q, want %q", ch, got, tt.topic)
		}
	}
	for _, bad := range []string{"", "a/+", "#", "a/#/b", strings.Repeat("A", 100)} {
		if ch, err := channel.FromTopic(bad); err == nil || !errors.Is(err, channel.ErrInvalid) {
			t.Errorf("FromTopic(%q) = %q, %v; want refused", bad, ch, err)
		}
	}
}

// Escapes are canonical: a byte that needs none never has one, and '~'
// is nothing else, so no two channels name one topic.
func TestEscapesAreCanonical(t *testing.T) {
	t.Parallel()
	for _, bad := range []string{"~61", "a~2", "a~zz", "a~4A", "~~", "a~", "~a", "x:~~:y", "~5f", "~"} {
		if err := channel.Validate(bad); err == nil {
			t.Errorf("Validate(%q) = ok, want refused", bad)
		}
	}
	for _, good := range []string{"~:~", "~41", "a~3ab", "~e6~97~a5"} {
		if err := channel.Validate(good); err != nil {
			t.Errorf("Validate(%q) = %v, want ok", good, err)
		}
	}
	for _, p := range []string{"~54opic~41:*", "~*", "~5*", "a~*:b"} {
		if err := channel.ValidatePattern(p); err != nil {
			t.Errorf("ValidatePattern(%q) = %v: a wildcard may cut an escape short", p, err)
		}
	}
	for _, p := range []string{"~z*", "~*x~", "~"} {
		if err := channel.ValidatePattern(p); err == nil {
			t.Errorf("ValidatePattern(%q) = ok, want refused", p)
		}
	}
}

// FuzzTopic: every topic name with a channel maps to one that Topic maps
// back to it, and every channel is the channel of its topic.
func FuzzTopic(f *testing.F) {
	for _, s := range []string{"order/placed", "TopicA/B", "/", "$SYS/x", "a:b", "日本/~", "~54opic~41:~42", "~:~", "a~2ab"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if ch, err := channel.FromTopic(s); err == nil {
			if channel.Validate(ch) != nil || channel.Topic(ch) != s {
				t.Fatalf("FromTopic(%q) = %q, whose topic is %q", s, ch, channel.Topic(ch))
			}
		} else if utf8.ValidString(s) && s != "" && !strings.ContainsAny(s, "+#") && 3*len(s) <= channel.MaxLen/2 {
			t.Fatalf("FromTopic(%q) refused a short topic name: %v", s, err)
		}
		if channel.Validate(s) == nil {
			if ch, err := channel.FromTopic(channel.Topic(s)); err != nil || ch != s {
				t.Fatalf("channel %q: topic %q maps back to %q, %v", s, channel.Topic(s), ch, err)
			}
		}
	})
}
