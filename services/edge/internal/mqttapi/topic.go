package mqttapi

import (
	"errors"
	"strings"

	"github.com/eventbus-suite/eventbus/pkg/channel"
)

// Topics and channels are the same names spelled two ways: the levels of
// a topic are the tokens of a channel, "order/placed" ↔ "order:placed".

// errTopic is a topic or filter outside what maps to the channel grammar.
var errTopic = errors.New("want levels of [a-z0-9_-] separated by '/'")

// channelOf returns the channel of an MQTT topic name.
func channelOf(topic string) (string, error) {
	if strings.ContainsRune(topic, ':') {
		return "", errTopic
	}
	ch := strings.ReplaceAll(topic, "/", ":")
	if channel.Validate(ch) != nil {
		return "", errTopic
	}
	return ch, nil
}

// topicOf returns the MQTT topic name of a channel.
func topicOf(ch string) string { return strings.ReplaceAll(ch, ":", "/") }

// patternsOf returns the patterns whose union covers every channel an
// MQTT topic filter can match: the hub subscribes to them, and match
// then keeps what the filter, with MQTT's stricter semantics, takes. '+'
// becomes '*', which a glob lets match more levels than one; a trailing
// "/#" also matches its parent level (MQTT-4.7.1-2), "order/#" is
// "order:*" and "order"; a filter of '#' alone is '*'.
func patternsOf(filter string) ([]string, error) {
	if filter == "" || strings.ContainsAny(filter, ":*") {
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
		}
	}
	if len(levels) == 0 {
		return []string{"*"}, nil
	}
	p := strings.Join(levels, ":")
	if channel.ValidatePattern(p) != nil {
		return nil, errTopic
	}
	if !multi {
		return []string{p}, nil
	}
	return []string{p + ":*", p}, nil
}

// match reports whether topic matches filter with MQTT's semantics: '+'
// is exactly one level, '#' the remaining levels, none included.
func match(filter, topic string) bool {
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
