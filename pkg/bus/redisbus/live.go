package redisbus

import (
	"slices"

	"github.com/eventbus-suite/eventbus/pkg/channel"
)

// liveSet is what Redis has subscribed on a subscription's connection, as
// its confirmations arrive in the connection's reply stream: at any point
// of that stream it is exactly the set Redis matched a message against, so
// the deliveries of one publish can be told from the next publish's. Only
// the receiving goroutine touches it.
type liveSet struct {
	exact map[string]struct{}
	// Patterns whose first token is fixed ("order:*", "order:a*:eu") can
	// match only channels of that namespace; the rest ("*", "ord*") may
	// match any channel.
	byNamespace map[string][]string
	anywhere    []string

	// The publish being delivered: Redis sends one delivery per matching
	// subscription, back to back, each naming its subscription.
	channel string
	payload string
	group   []string // the subscriptions it matched
	seen    []string // those whose delivery came
}

func newLiveSet() *liveSet {
	return &liveSet{exact: make(map[string]struct{}), byNamespace: make(map[string][]string)}
}

// namespace returns the first token of every channel that p can match, or
// "" when p's first token has a wildcard.
func namespace(p string) string {
	if ns, wild := reach(p); !wild {
		return ns
	}
	return ""
}

// confirm applies one (un)subscribe confirmation.
func (l *liveSet) confirm(kind, name string) {
	switch kind {
	case "subscribe":
		l.exact[name] = struct{}{}
	case "unsubscribe":
		delete(l.exact, name)
	case "psubscribe":
		if ns := namespace(name); ns == "" {
			if !slices.Contains(l.anywhere, name) {
				l.anywhere = append(l.anywhere, name)
			}
		} else if !slices.Contains(l.byNamespace[ns], name) {
			l.byNamespace[ns] = append(l.byNamespace[ns], name)
		}
	case "punsubscribe":
		if ns := namespace(name); ns == "" {
			l.anywhere = slices.DeleteFunc(l.anywhere, func(p string) bool { return p == name })
		} else {
			l.byNamespace[ns] = slices.DeleteFunc(l.byNamespace[ns], func(p string) bool { return p == name })
			if len(l.byNamespace[ns]) == 0 {
				delete(l.byNamespace, ns)
			}
		}
	}
}

// reset forgets everything: the connection is gone, and a new one starts
// with nothing subscribed until go-redis's resubscription is confirmed.
func (l *liveSet) reset() {
	clear(l.exact)
	clear(l.byNamespace)
	l.anywhere = l.anywhere[:0]
	l.group, l.seen = nil, l.seen[:0]
}

// deliver sorts one delivery of payload on ch through subscription sub:
// it returns the subscriptions that matched the publish, sorted, when the
// delivery is the first of its publish, and nil for each further delivery
// of the same publish. A delivery through a subscription that has
// delivered this publish already starts the next publish: Redis delivers
// a publish once per subscription.
func (l *liveSet) deliver(ch, sub, payload string) []string {
	if ch == l.channel && payload == l.payload && slices.Contains(l.group, sub) && !slices.Contains(l.seen, sub) {
		l.seen = append(l.seen, sub)
		return nil
	}
	var matched []string
	if _, ok := l.exact[ch]; ok {
		matched = append(matched, ch)
	}
	for _, p := range l.byNamespace[namespace(ch)] {
		if channel.Match(p, ch) {
			matched = append(matched, p)
		}
	}
	for _, p := range l.anywhere {
		if channel.Match(p, ch) {
			matched = append(matched, p)
		}
	}
	if !slices.Contains(matched, sub) {
		// Redis matched sub, so it is subscribed: a confirmation this set
		// missed would be a bug, and dropping the message would hide it.
		matched = append(matched, sub)
	}
	slices.Sort(matched)
	l.channel, l.payload, l.group, l.seen = ch, payload, matched, append(l.seen[:0], sub)
	return matched
}
