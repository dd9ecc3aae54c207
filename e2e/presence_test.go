package e2e

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	paho3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/redis/go-redis/v9"

	"github.com/eventbus-suite/eventbus/pkg/bus/redisbus"
	"github.com/eventbus-suite/eventbus/pkg/presence"
	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
)

const presenceSecret = "presence-e2e-secret-0123456789"

func presenceToken(t *testing.T, user string) string {
	t.Helper()
	return mintToken(t, presenceSecret, user, []string{"room:*"})
}

// presenceConn is a JSON WebSocket client subscribed to a channel with
// presence. news hands out the joins and leaves it reads, as
// "<type> <user>/<transport>"; conn takes more requests.
type presenceConn struct {
	news <-chan string
	conn *websocket.Conn
}

// presenceFrames connects user's JSON WebSocket client to edge,
// subscribed to ch with presence.
func presenceFrames(t *testing.T, edge, user, ch string) *presenceConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := dialWS(ctx, t, edge, presenceToken(t, user))
	if err != nil {
		t.Fatal(err)
	}
	p := &presenceConn{conn: conn}
	p.send(t, `{"action":"subscribe","channel":"`+ch+`","presence":true,"id":"p"}`)
	out := make(chan string, 64)
	p.news = out
	go func() {
		defer close(out)
		for {
			_, b, err := conn.Read(context.Background())
			if err != nil {
				return
			}
			for line := range strings.SplitSeq(string(b), "\n") {
				var f struct {
					Event struct {
						Type string
						Data struct {
							UserID    string `json:"user_id"`
							Transport string
						}
					}
				}
				if json.Unmarshal([]byte(line), &f) == nil && strings.HasPrefix(f.Event.Type, "presence.") {
					out <- f.Event.Type + " " + f.Event.Data.UserID + "/" + f.Event.Data.Transport
				}
			}
		}
	}()
	return p
}

// send writes req, a request of the JSON protocol.
func (p *presenceConn) send(t *testing.T, req string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.conn.Write(ctx, websocket.MessageText, []byte(req)); err != nil {
		t.Fatalf("send %s: %v", req, err)
	}
}

// presenceSSE connects user to edge over SSE, subscribed to ch, and
// returns what disconnects it.
func presenceSSE(t *testing.T, edge, user, ch string) (disconnect func()) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://"+edge+"/sse?channel="+ch, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+presenceToken(t, user))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET /sse: %v", err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		t.Fatalf("GET /sse = %s", resp.Status)
	}
	t.Cleanup(func() { resp.Body.Close() })
	go func() { _, _ = io.Copy(io.Discard, resp.Body) }()
	return func() { resp.Body.Close() }
}

// presenceMQTT connects user to edge with paho's 3.1.1 client over
// WebSocket, as client id, subscribed to ch's topic.
func presenceMQTT(t *testing.T, edge, user, id, ch string) paho3.Client {
	t.Helper()
	opts := paho3.NewClientOptions().AddBroker("ws://" + edge + "/mqtt").SetClientID(id).
		SetUsername("device").SetPassword(presenceToken(t, user)).SetAutoReconnect(false)
	c := paho3.NewClient(opts)
	if tk := c.Connect(); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
		t.Fatalf("mqtt connect: %v", tk.Error())
	}
	t.Cleanup(func() { c.Disconnect(0) })
	if tk := c.Subscribe(strings.ReplaceAll(ch, ":", "/"), 1, nil); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
		t.Fatalf("mqtt subscribe: %v", tk.Error())
	}
	return c
}

// expectPresence fails the test unless the next len(want) joins and
// leaves that news hands out are want's, and those of each connection
// ("user/transport") in want's order.
//
// What is ordered: the news of one connection on a channel. Its edge
// writes its joins and leaves to Redis in the order they happened, from
// one goroutine, and announces each one (a publish it waits for) before
// writing the next; a lost edge's connection is announced gone by the
// edge that sweeps it, a TTL after its edge last wrote it. What is not:
// the news of different connections, beyond what a test orders by
// waiting for one before making the next. Two edges announce
// independently, and a sweep announces the members it finds expired in
// an order of its own.
func expectPresence(t *testing.T, news <-chan string, want ...string) {
	t.Helper()
	var got []string
	for len(got) < len(want) {
		select {
		case n, ok := <-news:
			if !ok {
				t.Fatalf("connection ended after %v, want %v", got, want)
			}
			got = append(got, n)
		case <-time.After(15 * time.Second):
			t.Fatalf("presence news %v, want %v", got, want)
		}
	}
	if !slices.Equal(sortedCopy(got), sortedCopy(want)) {
		t.Fatalf("presence news %v, want %v in any order across connections", got, want)
	}
	for _, w := range want {
		_, who, _ := strings.Cut(w, " ")
		if of := newsOf(got, who); !slices.Equal(of, newsOf(want, who)) {
			t.Fatalf("presence news of %s %v, want %v: one connection's news in order (all news %v)", who, of, newsOf(want, who), got)
		}
	}
}

// newsOf returns the news of who among news, in their order.
func newsOf(news []string, who string) []string {
	var out []string
	for _, n := range news {
		if strings.HasSuffix(n, " "+who) {
			out = append(out, n)
		}
	}
	return out
}

// sortedCopy returns s sorted, leaving s as it is.
func sortedCopy(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// presenceReply is the api's answer to GET /v1/presence.
type presenceReply struct {
	Channel  string
	Clients  []presence.Member
	Stats    presence.Stats `json:"presence_stats"`
	Complete bool
}

// presenceAt asks the api who is on ch.
func presenceAt(t *testing.T, api, ch string) presenceReply {
	t.Helper()
	resp, err := http.Get("http://" + api + "/v1/presence?channel=" + ch)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body presenceReply
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&body) != nil {
		t.Fatalf("GET /v1/presence?channel=%s = %s", ch, resp.Status)
	}
	return body
}

// presenceOf asks the api who is on ch, as "user/transport", sorted.
func presenceOf(t *testing.T, api, ch string) []string {
	t.Helper()
	var out []string
	for _, c := range presenceAt(t, api, ch).Clients {
		out = append(out, c.User+"/"+c.Transport)
	}
	slices.Sort(out)
	return out
}

// expectPresent fails the test unless the api's GET /v1/presence of ch
// is exactly want ("user/transport"): those clients, each with an id of
// its own, counted in presence_stats, and complete.
func expectPresent(t *testing.T, api, ch string, want ...string) {
	t.Helper()
	body := presenceAt(t, api, ch)
	var got []string
	ids := map[string]bool{}
	for _, c := range body.Clients {
		got = append(got, c.User+"/"+c.Transport)
		ids[c.Client] = true
	}
	users := map[string]bool{}
	for _, w := range want {
		user, _, _ := strings.Cut(w, "/")
		users[user] = true
	}
	switch {
	case !slices.Equal(sortedCopy(got), sortedCopy(want)):
		t.Fatalf("GET /v1/presence?channel=%s: clients %v, want %v", ch, sortedCopy(got), sortedCopy(want))
	case len(ids) != len(want) || ids[""]:
		t.Fatalf("GET /v1/presence?channel=%s: client ids %v, want %d distinct", ch, body.Clients, len(want))
	case body.Stats != (presence.Stats{Clients: len(want), Users: len(users)}):
		t.Fatalf("GET /v1/presence?channel=%s: presence_stats %+v, want %d clients of %d users", ch, body.Stats, len(want), len(users))
	case body.Channel != ch || !body.Complete:
		t.Fatalf("GET /v1/presence?channel=%s: channel %q, complete %v; want %s, complete", ch, body.Channel, body.Complete, ch)
	}
}

// presenceKeyOf returns what names a channel's presence key as every
// service does: the KeyOf of a bus on rdb under prefix (partitioned as
// theirs, on a cluster).
func presenceKeyOf(t *testing.T, rdb redis.UniversalClient, prefix string) func(ch string) string {
	t.Helper()
	b, err := redisbus.New(rdb, redisbus.Options{Prefix: prefix + ":"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return func(ch string) string { return b.KeyOf("presence", ch) }
}

// presenceScores reads the presence set at key: each member, as
// "user/transport", with its score, when it expires in milliseconds of
// Redis's clock.
func presenceScores(t *testing.T, rdb redis.Cmdable, key string) map[string]float64 {
	t.Helper()
	zs, err := rdb.ZRangeWithScores(context.Background(), key, 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, z := range zs {
		var m presence.Member
		if s, _ := z.Member.(string); json.Unmarshal([]byte(s), &m) != nil {
			t.Fatalf("presence member %v of %s is no member", z.Member, key)
		}
		out[m.User+"/"+m.Transport] = z.Score
	}
	return out
}

// Presence through the real services: connections over WebSocket, SSE
// and MQTT on two edges show in the api's GET /v1/presence, and their
// joins and leaves reach a subscription with presence, those of each
// connection in order. After one edge is killed (-9), its connections'
// expiry times in Redis lie within EDGE_PRESENCE_TTL of the kill, on
// Redis's clock; once that clock passes them the api no longer counts
// them, and the surviving edge announces their leaves.
func TestPresenceSurvivesAKilledEdge(t *testing.T) {
	srv := redistest.Shared(t)
	prefix := strings.TrimSuffix(redistest.Prefix(t), ":")
	common := map[string]string{"REDIS_URL": srv.URL, "REDIS_PREFIX": prefix}
	apiHTTP := startAPI(t, common)
	const ttl = time.Second
	edges, procs := startEdges(t, 2, merge(common, map[string]string{
		"EDGE_JWT_SECRET": presenceSecret, "EDGE_PRESENCE_NAMESPACES": "room", "EDGE_PRESENCE_TTL": ttl.String(),
	}))
	survivor, victim := edges[0], edges[1]

	watcher := presenceFrames(t, survivor, "ada", "room:1").news
	expectPresence(t, watcher, "presence.join ada/ws")
	bob := presenceFrames(t, victim, "bob", "room:1")
	expectPresence(t, watcher, "presence.join bob/ws")
	// bob drops its subscription and takes it again at once: its edge
	// announces the leave, then the join, though both may reach Redis
	// in one flush.
	bob.send(t, `{"action":"unsubscribe","channel":"room:1","id":"u"}`)
	bob.send(t, `{"action":"subscribe","channel":"room:1","presence":true,"id":"p2"}`)
	expectPresence(t, watcher, "presence.leave bob/ws", "presence.join bob/ws")

	presenceSSE(t, survivor, "carol", "room:1")
	expectPresence(t, watcher, "presence.join carol/sse")
	presenceMQTT(t, victim, "dave", "dave", "room:1")
	expectPresence(t, watcher, "presence.join dave/mqtt")
	expectPresent(t, apiHTTP, "room:1", "ada/ws", "bob/ws", "carol/sse", "dave/mqtt")

	// Every join and renewal scores a member now + TTL on Redis's clock,
	// and a lost edge writes nothing after it dies: so the victim's
	// members expire within the TTL of the kill. Writes wait (CLIENT
	// PAUSE WRITE) from before the kill until the scores are read: no
	// renewal of the victim's can come after the clock is read, and no
	// sweep can take a member before it is read, however slowly the test
	// runs. Reads go on.
	rdb := srv.Client(t)
	ctx := t.Context()
	key := presenceKeyOf(t, rdb, prefix)("room:1")
	if err := rdb.Do(ctx, "CLIENT", "PAUSE", (10 * time.Second).Milliseconds(), "WRITE").Err(); err != nil {
		t.Fatalf("CLIENT PAUSE: %v", err)
	}
	unpause := func() {
		if err := rdb.ClientUnpause(context.WithoutCancel(ctx)).Err(); err != nil {
			t.Errorf("CLIENT UNPAUSE: %v", err)
		}
	}
	t.Cleanup(unpause)
	if err := procs[victim].cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-procs[victim].done
	killed, err := rdb.Time(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	scores := presenceScores(t, rdb, key)
	unpause()
	for _, lost := range []string{"bob/ws", "dave/mqtt"} {
		score, ok := scores[lost]
		if !ok {
			t.Fatalf("%s of the killed edge is not in %s at the kill: %v", lost, key, scores)
		}
		if limit := killed.Add(ttl); score > float64(limit.UnixMilli()) {
			t.Errorf("%s of the killed edge expires at %d, %v after the kill, past EDGE_PRESENCE_TTL (%v)",
				lost, int64(score), time.UnixMilli(int64(score)).Sub(killed), ttl)
		}
	}
	// A renewal the victim sent just before it died, held by the pause,
	// may yet run as writes resume (Redis drops it with the dead
	// connection, if it notices first): it would score the TTL from
	// then, well within a beat of the clock read above, a beat being a
	// third of the TTL, how often the roster renews.
	gone := killed.Add(ttl + ttl/3)
	servicetest.WaitFor(t, "Redis's clock past the kill's TTL and a beat", func() bool {
		now, err := rdb.Time(ctx).Result()
		return err == nil && now.After(gone)
	})
	expectPresent(t, apiHTTP, "room:1", "ada/ws", "carol/sse")
	// The survivor sweeps what the lost edge can no longer renew, and
	// announces each leave once.
	expectPresence(t, watcher, "presence.leave bob/ws", "presence.leave dave/mqtt")
	if got := presenceScores(t, rdb, key); len(got) != 2 {
		t.Fatalf("%s holds %v after the sweep, want the survivor's connections alone", key, got)
	}
}
