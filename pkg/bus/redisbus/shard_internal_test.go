package redisbus

import (
	"testing"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
)

// A message on a shard channel that names a channel of another shard
// channel is not delivered as that channel's.
func TestShardMessageNamingAnotherChannelIsDropped(t *testing.T) {
	t.Parallel()
	c := redistest.SharedCluster(t)
	prefix := redistest.Prefix(t)
	b, err := New(clusterClient(t, c), Options{Prefix: prefix, HistoryMaxLen: 1000})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := t.Context()
	if _, err := b.Publish(ctx, "forge:x", []byte("known")); err != nil {
		t.Fatal(err)
	}
	sub, err := b.Subscribe(ctx, "*")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	st := b.streamFor("forge:x")
	for _, forged := range []string{
		channelHeader + prefix + "user:1\nforged",        // another namespace's channel
		channelHeader + "forge:x\nforged",                // without the bus's prefix
		channelHeader + prefix + "forge:x y\nforged",     // not a channel
		channelHeader + prefix + "forge:x\x00:1\nforged", // nor this
	} {
		if err := b.client.SPublish(ctx, st.live, forged).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.Publish(ctx, "forge:x", []byte("legit")); err != nil {
		t.Fatal(err)
	}
	for m := range sub.Messages() {
		if m.Gap {
			continue
		}
		if m.Channel != "forge:x" || string(m.Payload) != "legit" {
			t.Fatalf("first message = %q on %q, want legit on forge:x", m.Payload, m.Channel)
		}
		return
	}
}
