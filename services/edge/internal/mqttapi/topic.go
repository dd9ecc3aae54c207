package mqttapi

import (
	"errors"
	"strings"

	"github.com/eventbus-suite/eventbus/pkg/channel"
)

// Topics and channels are the same names spelled two ways
// (channel.FromTopic): a topic's levels are a channel's tokens,
// "order/placed" ↔ "order:placed", with anything outside [a-z0-9_-]
// escaped ("TopicA/B" ↔ "~54opic~41:~42"), so any topic MQTT allows
// reaches the bus and comes back as it was.

// errTopic is a topic or filter with no channel or pattern.
var errTopic = errors.New("want a topic of at most about 80 bytes outside [a-z0-9_-] (each is escaped in three), '+' and '#' only as whole levels of a filter, '#' last")

// channelOf returns the channel of an MQTT topic name.
func channelOf(topic string) (string, error) {
	ch, err := channel.FromTopic(topic)
	if err != nil {
		return "", errTopic
	}
	return ch, nil
}

// topicOf returns the MQTT topic name of a channel.
func topicOf(ch string) string { return channel.Topic(ch) }

// patternsOf returns the patterns whose union covers every channel an
// MQTT topic filter can match: the hub subscribes to them, and match
// then keeps what the filter, with MQTT's stricter semantics, takes. '+'
// becomes '*', which a glob lets match more levels than one; a trailing
// "/#" also matches its parent level (MQTT-4.7.1-2), "order/#" is
// "order:*" and "order"; a filter of '#' alone is '*'.
func patternsOf(filter string) ([]string, error) {
	if filter == "" || strings.HasPrefix(filter, "$share/") {
		return nil, errTopic
	}
	levels := strings.Split(filter, "/")
	multi := levels[len(levels)-1] == "#"
	if multi {
		levels = levels[:len(levels)-1]
	}
	for i, l := range levels {
		switch {
		case l == "+":
			levels[i] = "*"
		case strings.ContainsAny(l, "+#"):
			return nil, errTopic // a wildcard is a whole level; '#' only the last
		default:
			levels[i] = channel.Level(l)
		}
	}
	if len(levels) == 0 {
		return []string{"*"}, nil
	}
	p := strings.Join(levels, ":")
	if multi && p == "~" {
		return []string{"~:*"}, nil // "/#": its parent level would be the empty topic, which is none
	}
	if channel.ValidatePattern(p) != nil {
		return nil, errTopic
	}
	if !multi {
		return []string{p}, nil
	}
	return []string{p + ":*", p}, nil
}

// match reports whether topic matches filter with MQTT's semantics: '+'
// is exactly one level, '#' the remaining levels, none included; a
// filter beginning with a wildcard matches no topic beginning with '$'
// (MQTT-4.7.2-1), which are the server's.
func match(filter, topic string) bool {
	if strings.HasPrefix(topic, "$") && (strings.HasPrefix(filter, "+") || strings.HasPrefix(filter, "#")) {
		return false
	}
	for {
		f, frest, fmore := strings.Cut(filter, "/")
		if f == "#" {
			return true
		}
		t, trest, tmore := strings.Cut(topic, "/")
		if f != "+" && f != t {
			return false
		}
		switch {
		case !fmore && !tmore:
			return true
		case !tmore:
			return frest == "#" // "a/#" matches "a"
		case !fmore:
			return false
		}
		filter, topic = frest, trest
	}
}
