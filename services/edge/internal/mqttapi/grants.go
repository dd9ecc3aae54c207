package mqttapi

import (
	"fmt"
	"slices"
	"strings"

	"github.com/eventbus-suite/eventbus/pkg/channel"
	"github.com/eventbus-suite/eventbus/pkg/token"
)

// A filter wider than what the connection is granted is narrowed to the
// grants, as Mosquitto's ACLs narrow it: the client gets the events the
// filter matches and a grant allows, nothing else, and SUBACK grants the
// QoS (5.0 says what it was narrowed to). Only a filter the grants leave
// nothing of is refused (0x87).

// maxReason bounds the reason string of a SUBACK.
const maxReason = 512

// cover returns the hub patterns that serve filter within the
// connection's grants: each pattern of patternsOf(filter) that the grants
// cover (access.Policy.Allowed), and in place of one they do not, the
// granted patterns that overlap it. The hub then routes only allowed
// events, and the filter's match keeps those it takes: an event reaches
// the client when the filter matches its topic and a grant its channel.
// narrowed reports that a pattern of the filter was not allowed whole; an
// empty result leaves the filter nothing. The error is errTopic.
func (s *session) cover(filter string) (patterns []string, narrowed bool, err error) {
	wanted, err := patternsOf(filter)
	if err != nil {
		return nil, false, err
	}
	claims := s.edge.Claims()
	add := func(p string) {
		if !slices.Contains(patterns, p) {
			patterns = append(patterns, p)
		}
	}
	for _, p := range wanted {
		if s.edge.Allowed(p) {
			add(p)
			continue
		}
		narrowed = true
		// Where the bus's namespace or an except pattern covers p whole,
		// a wider grant could bring none of p's events: the hub withholds
		// them. Only the user's own notifications are never withheld.
		withheld := channel.Reserved(p) || claims != nil && slices.ContainsFunc(claims.Except, func(e string) bool { return channel.Covers(e, p) })
		for _, g := range s.edge.Grants() {
			if withheld && (claims == nil || g != token.Own(claims.Subject)) {
				continue
			}
			if channel.Overlaps(g, p) && s.edge.Allowed(g) {
				add(g)
			}
		}
	}
	return patterns, narrowed, nil
}

// narrowedTo says what a filter was narrowed to.
func narrowedTo(filter string, patterns []string) string {
	return fmt.Sprintf("%s narrowed to %s, what the grants allow of it", filter, strings.Join(patterns, ", "))
}

// refusal says why a filter outside the grants was refused, naming them.
func (s *session) refusal(filter string) string {
	if ps, err := patternsOf(filter); err == nil && !slices.ContainsFunc(ps, func(p string) bool { return !channel.Reserved(p) }) {
		return fmt.Sprintf("%s: not authorized, %s is the bus's own namespace", filter, channel.ReservedNamespace)
	}
	g := s.edge.Grants()
	if len(g) == 0 {
		return fmt.Sprintf("%s: not authorized, this connection has no grants", filter)
	}
	why := fmt.Sprintf("%s: not authorized, outside the grants %s", filter, strings.Join(g, ", "))
	if c := s.edge.Claims(); c != nil && len(c.Except) > 0 {
		why += " except " + strings.Join(c.Except, ", ")
	}
	return why
}

// reason joins the notes of a SUBACK into its 5.0 reason string, at most
// maxReason bytes.
func reason(notes []string) string {
	r := strings.Join(notes, "; ")
	if len(r) > maxReason {
		r = strings.ToValidUTF8(r[:maxReason-3], "") + "..."
	}
	return r
}
