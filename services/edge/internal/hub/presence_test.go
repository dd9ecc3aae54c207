package hub

import (
	"slices"
	"testing"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/envelope"
)

// publishPresence hands the hub a presence event of type typ on ch, as
// the roster publishes it, and returns once it is dispatched.
func (h *testHub) publishPresence(t *testing.T, typ, ch, subject string, patterns ...string) {
	t.Helper()
	env := &envelope.Envelope{Id: subject, Type: typ, Subject: subject, Channel: ch}
	payload, err := envelope.Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	h.sub.msgs <- bus.Message{Channel: ch, Patterns: patterns, Payload: payload}
	h.sub.msgs <- bus.Message{Channel: "sync", Patterns: []string{"sync"}}
}

// A channel's joins and leaves reach only the subscription to that
// channel that asked for them: a frame of one names that subscription
// alone, never a pattern of the same client that also matches it, and
// none comes through a pattern before the channel's own subscription is
// in place (WantPresence is called before Subscribe).
func TestPresenceOnlyThroughItsSubscription(t *testing.T) {
	t.Parallel()
	h := startHub(t, bounds)

	early := h.join(t)
	if err := h.Subscribe(t.Context(), early.Client, "room:*", nil, reply("")); err != nil {
		t.Fatal(err)
	}
	h.WantPresence(early.Client, "room:1", true) // its subscribe to room:1 is on its way
	h.publishPresence(t, "presence.join", "room:1", "p1", "room:*")
	if got := events(early); len(got) != 0 {
		t.Errorf("presence news before the channel's subscription = %q, want none: it came through the pattern", got)
	}

	both := h.join(t)
	for _, p := range []string{"room:*", "room:1"} {
		if err := h.Subscribe(t.Context(), both.Client, p, nil, reply("")); err != nil {
			t.Fatal(err)
		}
	}
	h.WantPresence(both.Client, "room:1", true)
	early.frames()
	h.publishPresence(t, "presence.join", "room:1", "p2", "room:*", "room:1")
	if got, want := events(both), []string{"p2 via room:1"}; !slices.Equal(got, want) {
		t.Errorf("presence news with a pattern too = %q, want %q: the pattern did not ask for it", got, want)
	}
	// An ordinary event still names every subscription that matched.
	h.publish(t, "room:1", "e1", "room:*", "room:1")
	if got, want := events(both), []string{"e1 via room:*,room:1"}; !slices.Equal(got, want) {
		t.Errorf("event = %q, want %q", got, want)
	}
}

// events summarises the event frames waiting for c, leaving out the
// empty replies of reply("").
func events(c *testClient) []string {
	return slices.DeleteFunc(summary(c.frames()), func(f string) bool { return f == "" })
}
