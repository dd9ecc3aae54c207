package main

import (
	"fmt"
	"slices"
	"testing"

	"github.com/eclipse/paho.golang/paho"
)

// A kept session resumes its filters with their options: No Local still
// keeps the client's own messages from its filter, and Retain As
// Published still keeps a live message's RETAIN, though the client sends
// no SUBSCRIBE again.
func TestMQTTResumedSessionKeepsSubscriptionOptions(t *testing.T) {
	t.Parallel()
	e := interopEdge(t)
	cp := paho.Connect{ClientID: "opts", CleanStart: true, Properties: &paho.ConnectProperties{SessionExpiryInterval: ptr(uint32(3600))}}
	first := connect5(t, e, cp)
	first.subscribe(paho.SubscribeOptions{Topic: "TopicA/mine/+", QoS: 1, NoLocal: true},
		paho.SubscribeOptions{Topic: "TopicA/kept/+", QoS: 1, RetainAsPublished: true, RetainHandling: 2})
	if err := first.Disconnect(&paho.Disconnect{}); err != nil {
		t.Fatal(err)
	}
	<-first.Done()

	cp.CleanStart = false
	me := connect5(t, e, cp)
	if !me.ack.SessionPresent {
		t.Fatal("the session was not resumed")
	}
	other := connect5(t, e, paho.Connect{ClientID: "other", CleanStart: true})
	me.publish("TopicA/mine/a", 1, false, "from me", nil) // PUBACKed: published before the rest
	other.publish("TopicA/mine/b", 1, false, "from other", nil)
	other.publish("TopicA/kept/c", 1, true, "kept", nil)
	var got []string
	for _, m := range me.until(2) {
		got = append(got, fmt.Sprintf("%s %s retain=%v", m.Topic, m.Payload, m.Retain))
	}
	if want := []string{"TopicA/mine/b from other retain=false", "TopicA/kept/c kept retain=true"}; !slices.Equal(got, want) {
		t.Fatalf("the resumed session got %q, want %q", got, want)
	}
}
