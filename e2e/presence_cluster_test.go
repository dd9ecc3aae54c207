package e2e

import (
	"fmt"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
)

// presenceChannel is a channel whose presence key lies on master.
type presenceChannel struct {
	name, key, master string
}

// presenceChannels returns channels of room, one for each master of c,
// whose presence keys, named by keyOf, lie on that master.
func presenceChannels(t *testing.T, c *redistest.Cluster, rdb *redis.ClusterClient, keyOf func(string) string) []presenceChannel {
	t.Helper()
	masters := c.Masters(t)
	onMaster := map[string]bool{}
	var out []presenceChannel
	for n := 0; len(out) < len(masters) && n < 100; n++ {
		ch := fmt.Sprintf("room:%d", n)
		slot, err := rdb.ClusterKeySlot(t.Context(), keyOf(ch)).Result()
		if err != nil {
			t.Fatal(err)
		}
		if m := c.MasterOf(t, int(slot)); !onMaster[m] {
			onMaster[m] = true
			out = append(out, presenceChannel{name: ch, key: keyOf(ch), master: m})
		}
	}
	if len(out) < 2 {
		t.Fatalf("the presence keys of room:0 to room:99 lie on %v; want channels on two masters at least", out)
	}
	return out
}

// Presence on the package's Redis Cluster (3 masters, 3 replicas), with
// two edges and the api: on channels whose presence keys lie on
// different masters, connections over WebSocket, SSE and MQTT on both
// edges are recorded on the master that KeyOf's slot names, and renewed
// there by both edges; the api's GET /v1/presence is exact, members and
// counts; subscribers with presence on either edge hear every join and
// leave, those of each connection in order; and disconnects leave.
func TestPresenceOnACluster(t *testing.T) {
	c := redistest.SharedCluster(t)
	prefix := strings.TrimSuffix(redistest.Prefix(t), ":")
	common := map[string]string{"REDIS_URL": c.URL, "REDIS_PREFIX": prefix}
	apiHTTP := startAPI(t, common)
	// A TTL of a second: the edges renew every third of it, so the test
	// sees renewals on every master, and a renewal the cluster lost would
	// show as a member swept and its leave announced.
	edges, _ := startEdges(t, 2, merge(common, map[string]string{
		"EDGE_JWT_SECRET": presenceSecret, "EDGE_PRESENCE_NAMESPACES": "room", "EDGE_PRESENCE_TTL": "1s",
	}))
	rdb := c.Client(t)
	for i, ch := range presenceChannels(t, c, rdb, presenceKeyOf(t, rdb, prefix)) {
		here, there := edges[i%2], edges[(i+1)%2]
		t.Run(ch.name, func(t *testing.T) { presenceOnACluster(t, apiHTTP, here, there, ch) })
	}
}

// presenceOnACluster runs TestPresenceOnACluster on one channel: ada
// watches it from the edge here, bob from there.
func presenceOnACluster(t *testing.T, api, here, there string, ch presenceChannel) {
	ada := presenceFrames(t, here, "ada", ch.name)
	expectPresence(t, ada.news, "presence.join ada/ws")
	bob := presenceFrames(t, there, "bob", ch.name)
	expectPresence(t, ada.news, "presence.join bob/ws")
	expectPresence(t, bob.news, "presence.join bob/ws")

	// Joins on both edges at once: each arrives, in no order between them.
	leaveSSE := presenceSSE(t, there, "carol", ch.name)
	dave := presenceMQTT(t, here, "dave", "presence-dave-"+strings.ReplaceAll(ch.name, ":", "-"), ch.name)
	for _, w := range []*presenceConn{ada, bob} {
		expectPresence(t, w.news, "presence.join carol/sse", "presence.join dave/mqtt")
	}
	expectPresent(t, api, ch.name, "ada/ws", "bob/ws", "carol/sse", "dave/mqtt")

	// The set is on the master of its slot, and both edges renew it
	// there: every member's expiry moves on.
	node := redis.NewClient(&redis.Options{Addr: ch.master})
	defer node.Close()
	first := presenceScores(t, node, ch.key)
	if len(first) != 4 {
		t.Fatalf("%s on %s holds %v, want the 4 connections", ch.key, ch.master, first)
	}
	servicetest.WaitFor(t, "every connection on "+ch.name+" renewed", func() bool {
		now := presenceScores(t, node, ch.key)
		for m, score := range first {
			if now[m] <= score {
				return false
			}
		}
		return true
	})

	// bob drops its subscription and takes it again at once: its edge
	// announces the leave, then the join. (Whether bob hears its own
	// leave depends on when it is announced: bob's news are not read on.)
	bob.send(t, `{"action":"unsubscribe","channel":"`+ch.name+`","id":"u"}`)
	bob.send(t, `{"action":"subscribe","channel":"`+ch.name+`","presence":true,"id":"p2"}`)
	expectPresence(t, ada.news, "presence.leave bob/ws", "presence.join bob/ws")

	// Disconnects on both edges at once: each leave arrives.
	leaveSSE()
	dave.Disconnect(0)
	if err := bob.conn.Close(4000, "bye"); err != nil {
		t.Fatalf("close bob's WebSocket: %v", err)
	}
	expectPresence(t, ada.news, "presence.leave carol/sse", "presence.leave dave/mqtt", "presence.leave bob/ws")
	expectPresent(t, api, ch.name, "ada/ws")
	if got := presenceScores(t, node, ch.key); len(got) != 1 {
		t.Fatalf("%s on %s holds %v after the disconnects, want ada's connection alone", ch.key, ch.master, got)
	}
}
