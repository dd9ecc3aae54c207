package mqttapi

import (
	"slices"
	"strings"
	"testing"

	"github.com/eventbus-suite/eventbus/pkg/channel"
)

func TestMatchIsMQTTs(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		filter, topic string
		want          bool
	}{
		{"order/+", "order/placed", true},
		{"order/+", "order/placed/eu", false},
		{"order/+", "order", false},
		{"order/#", "order/placed/eu", true},
		{"order/#", "order", true},
		{"order/#", "orders", false},
		{"#", "order/placed", true},
		{"#", "order", true},
		{"+", "order", true},
		{"+", "order/placed", false},
		{"+/placed", "order/placed", true},
		{"+/placed", "a/order/placed", false},
		{"order/placed", "order/placed", true},
		{"order/placed", "order/placed2", false},
		{"user/+/deleted", "user/42/deleted", true},
		{"user/+/deleted", "user/42/created", false},
		{"a/+/#", "a/b", true},
		{"a/+/#", "a", false},
		{"TopicA/+", "TopicA/B", true},
		{"+/+", "/TopicA", true},
		{"/#", "/TopicA", true},
		{"#", "$SYS/uptime", false}, // a leading wildcard takes no $-topic
		{"+/uptime", "$SYS/uptime", false},
		{"$SYS/#", "$SYS/uptime", true},
		{"$SYS/+", "$SYS/uptime", true},
	} {
		if got := match(tt.filter, tt.topic); got != tt.want {
			t.Errorf("match(%q, %q) = %v, want %v", tt.filter, tt.topic, got, tt.want)
		}
	}
}

func TestPatternsOf(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		filter string
		want   []string
	}{
		{"order/placed", []string{"order:placed"}},
		{"order/+", []string{"order:*"}},
		{"order/#", []string{"order:*", "order"}},
		{"#", []string{"*"}},
		{"+/placed", []string{"*:placed"}},
		{"user/+/deleted", []string{"user:*:deleted"}},
		{"TopicA/#", []string{"~54opic~41:*", "~54opic~41"}},
		{"/+", []string{"~:*"}},
		{"/#", []string{"~:*"}},
		{"$SYS/#", []string{"~24~53~59~53:*", "~24~53~59~53"}},
		{"order:placed", []string{"order~3aplaced"}},
		{"order/*", []string{"order:~2a"}},
	} {
		if got, err := patternsOf(tt.filter); err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("patternsOf(%q) = %q, %v; want %q", tt.filter, got, err, tt.want)
		}
	}
	for _, bad := range []string{"", "order/pl#", "order/#/x", "order/a+", "$share/g/order"} {
		if got, err := patternsOf(bad); err == nil {
			t.Errorf("patternsOf(%q) = %q, want it refused", bad, got)
		}
	}
}

func TestChannelOf(t *testing.T) {
	t.Parallel()
	if ch, err := channelOf("sensor/temp"); err != nil || ch != "sensor:temp" || topicOf(ch) != "sensor/temp" {
		t.Errorf("channelOf(sensor/temp) = %q, %v", ch, err)
	}
	for _, tt := range []struct{ topic, ch string }{{"Sensor/temp", "~53ensor:temp"}, {"sensor//temp", "sensor:~:temp"}, {"a:b", "a~3ab"}} {
		if ch, err := channelOf(tt.topic); err != nil || ch != tt.ch || topicOf(ch) != tt.topic {
			t.Errorf("channelOf(%q) = %q, %v; want %q", tt.topic, ch, err, tt.ch)
		}
	}
	for _, bad := range []string{"", "sensor/+", "sensor/#", strings.Repeat("X", 100)} {
		if ch, err := channelOf(bad); err == nil {
			t.Errorf("channelOf(%q) = %q, want it refused", bad, ch)
		}
	}
}

// Whatever the filter, the patterns the hub subscribes to cover every
// topic the filter matches: no event a filter takes is left out of Redis.
func FuzzFilterPatterns(f *testing.F) {
	for _, s := range []string{"order/+|order/placed", "order/#|order", "#|a/b/c", "+/x|y/x", "a/+/#|a/b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		filter, topic, ok := strings.Cut(s, "|")
		if !ok {
			return
		}
		patterns, err := patternsOf(filter)
		ch, terr := channelOf(topic)
		if err != nil || terr != nil || !match(filter, topic) {
			return
		}
		for _, p := range patterns {
			if channel.ValidatePattern(p) != nil {
				t.Fatalf("patternsOf(%q) gave %q, outside the grammar", filter, p)
			}
			if channel.Match(p, ch) {
				return
			}
		}
		t.Fatalf("filter %q matches %q, but none of %q covers %q", filter, topic, patterns, ch)
	})
}
