package main

import (
	"slices"
	"strings"
	"testing"

	"github.com/eclipse/paho.golang/paho"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
)

// willWaits reports whether the will of the session of user "interop"
// and client id waits in Redis for its delay.
func willWaits(t *testing.T, e *edge, clientID string) bool {
	t.Helper()
	err := e.redis.Client(t).ZScore(t.Context(), e.bus.GroupKey("mqtt:wills", "due"), "user:interop/"+clientID).Err()
	return err == nil
}

// willClient connects clientID to e with a will on topic, delayed by
// delay seconds, in a session that outlives its connection by expiry
// seconds.
func willClient(t *testing.T, e *edge, clientID, topic string, delay, expiry uint32, clean bool) *interop5 {
	t.Helper()
	return connect5(t, e, paho.Connect{ClientID: clientID, CleanStart: clean,
		Properties:     &paho.ConnectProperties{SessionExpiryInterval: ptr(expiry)},
		WillMessage:    &paho.WillMessage{Topic: topic, QoS: 1, Payload: []byte("gone: " + clientID)},
		WillProperties: &paho.WillProperties{WillDelayInterval: ptr(delay)}})
}

// A will with a delay waits in Redis: a new connection of its session
// within the delay takes it back, and it is never published
// (MQTT-3.1.3-9); a clean start, which ends the session, publishes it at
// once, and so does the end of a session shorter than the delay.
func TestMQTTWillDelay(t *testing.T) {
	t.Parallel()
	e := interopEdge(t)
	watcher := connect5(t, e, paho.Connect{ClientID: "watcher", CleanStart: true})
	watcher.subscribe(paho.SubscribeOptions{Topic: "TopicA/wills/#", QoS: 1})
	seen := func(payload string) bool { return slices.Contains(payloads(watcher.messages()), payload) }

	t.Run("resumed within the delay", func(t *testing.T) {
		c := willClient(t, e, "back", "TopicA/wills/back", 3600, 3600, true)
		_ = c.conn.Close() // cut: no DISCONNECT
		servicetest.WaitFor(t, "the will kept for its delay", func() bool { return willWaits(t, e, "back") })
		willClient(t, e, "back", "TopicA/wills/back", 3600, 3600, false)
		if willWaits(t, e, "back") {
			t.Fatal("the will still waits after its session resumed")
		}
		// A marker behind it on the same topic: the will, had it gone,
		// would have come first.
		watcher.publish("TopicA/wills/back", 1, false, "marker", nil)
		servicetest.WaitFor(t, "the marker", func() bool { return seen("marker") })
		if seen("gone: back") {
			t.Fatalf("got %q: the will was published, though its session resumed within the delay", payloads(watcher.messages()))
		}
	})
	t.Run("a clean start publishes it", func(t *testing.T) {
		c := willClient(t, e, "clean", "TopicA/wills/clean", 3600, 3600, true)
		_ = c.conn.Close()
		servicetest.WaitFor(t, "the will kept for its delay", func() bool { return willWaits(t, e, "clean") })
		willClient(t, e, "clean", "TopicA/wills/clean", 3600, 3600, true)
		servicetest.WaitFor(t, "the will, an hour before its delay", func() bool { return seen("gone: clean") })
	})
	t.Run("a session shorter than the delay", func(t *testing.T) {
		c := willClient(t, e, "short", "TopicA/wills/short", 3600, 1, true)
		_ = c.conn.Close()
		servicetest.WaitFor(t, "the will, as its one-second session ends", func() bool { return seen("gone: short") })
	})
	t.Run("no delay", func(t *testing.T) {
		c := willClient(t, e, "now", "TopicA/wills/now", 0, 3600, true)
		_ = c.conn.Close()
		servicetest.WaitFor(t, "the will", func() bool { return seen("gone: now") })
		if willWaits(t, e, "now") {
			t.Fatal("a will without a delay waits in Redis")
		}
	})
	if n := strings.Count(strings.Join(payloads(watcher.messages()), "\n"), "gone: "); n != 3 {
		t.Fatalf("wills published: %q, want 3, each once", payloads(watcher.messages()))
	}
}

// An edge that shuts down with a connection whose will has a delay loses
// no will: it waits in Redis, and another edge of the deployment
// publishes it when it comes due.
func TestMQTTWillDelaySurvivesItsEdge(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	prefix := strings.TrimSuffix(redistest.Prefix(t), ":")
	env := map[string]string{"EDGE_RATE_LIMIT": "1000", "EDGE_RATE_BURST": "1000"}
	a := startEdgeWithPrefix(t, srv, prefix, env)
	b := startEdgeWithPrefix(t, srv, prefix, env)
	watcher := connect5(t, b, paho.Connect{ClientID: "watcher", CleanStart: true})
	watcher.subscribe(paho.SubscribeOptions{Topic: "TopicA/wills/#", QoS: 1})
	willClient(t, a, "device", "TopicA/wills/device", 1, 3600, true)
	if err := a.svc.Stop(); err != nil { // the edge goes, and with it the connection
		t.Fatal(err)
	}
	watcher.until(1)
	watcher.publish("TopicA/wills/device", 1, false, "marker", nil) // behind a second will, were there one
	if got := watcher.until(2); !slices.Equal(payloads(got), []string{"gone: device", "marker"}) {
		t.Fatalf("the other edge's subscriber got %q, want the will once", payloads(got))
	}
	if willWaits(t, b, "device") {
		t.Fatal("the will still waits after it was published")
	}
}
