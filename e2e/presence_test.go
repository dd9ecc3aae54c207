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

	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
	"github.com/eventbus-suite/eventbus/pkg/token"
)

const presenceSecret = "presence-e2e-secret-0123456789"

func presenceToken(t *testing.T, user string) string {
	t.Helper()
	tok, err := token.Issue([]byte(presenceSecret), user, []string{"room:*"}, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// presenceFrames is a JSON WebSocket client subscribed to a channel with
// presence: it hands out the joins and leaves it reads, as "type user/transport".
func presenceFrames(t *testing.T, edge, user, ch string) <-chan string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, "ws://"+edge+"/ws?token="+presenceToken(t, user), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.CloseNow() })
	if err := conn.Write(ctx, websocket.MessageText, []byte(`{"action":"subscribe","channel":"`+ch+`","presence":true,"id":"p"}`)); err != nil {
		t.Fatal(err)
	}
	out := make(chan string, 64)
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
	return out
}

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
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("presence news %v, want %v", got, want)
	}
}

// presenceOf asks the api who is on ch, as "user/transport", sorted.
func presenceOf(t *testing.T, api, ch string) []string {
	t.Helper()
	resp, err := http.Get("http://" + api + "/v1/presence?channel=" + ch)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Clients []struct{ User, Transport string }
	}
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&body) != nil {
		t.Fatalf("GET /v1/presence = %s", resp.Status)
	}
	var out []string
	for _, c := range body.Clients {
		out = append(out, c.User+"/"+c.Transport)
	}
	slices.Sort(out)
	return out
}

// Presence through the real services: connections over WebSocket, SSE
// and MQTT on two edges show in the api's GET /v1/presence; after one
// edge is killed (-9), its connections stop counting within
// EDGE_PRESENCE_TTL, and the surviving edge announces their leaves to a
// subscription with presence.
func TestPresenceSurvivesAKilledEdge(t *testing.T) {
	srv := redistest.Shared(t)
	prefix := strings.TrimSuffix(redistest.Prefix(t), ":")
	common := map[string]string{"REDIS_URL": srv.URL, "REDIS_PREFIX": prefix}
	apiHTTP := servicetest.FreeAddr(t)
	api := start(t, "api", merge(common, map[string]string{"API_HTTP_ADDR": apiHTTP, "API_GRPC_ADDR": servicetest.FreeAddr(t)}))
	waitReady(t, api, "http://"+apiHTTP+"/readyz")
	edges, procs := startEdges(t, 2, merge(common, map[string]string{
		"EDGE_JWT_SECRET": presenceSecret, "EDGE_PRESENCE_NAMESPACES": "room", "EDGE_PRESENCE_TTL": "1s",
	}))
	survivor, victim := edges[0], edges[1]

	watcher := presenceFrames(t, survivor, "ada", "room:1")
	expectPresence(t, watcher, "presence.join ada/ws")
	_ = presenceFrames(t, victim, "bob", "room:1")
	expectPresence(t, watcher, "presence.join bob/ws")

	req, err := http.NewRequest(http.MethodGet, "http://"+survivor+"/sse?channel=room:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+presenceToken(t, "carol"))
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /sse = %v, %v", resp, err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	go func() { _, _ = io.Copy(io.Discard, resp.Body) }()
	expectPresence(t, watcher, "presence.join carol/sse")

	opts := paho3.NewClientOptions().AddBroker("ws://" + victim + "/mqtt").SetClientID("dave").
		SetUsername("device").SetPassword(presenceToken(t, "dave")).SetAutoReconnect(false)
	dave := paho3.NewClient(opts)
	if tk := dave.Connect(); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
		t.Fatalf("mqtt connect: %v", tk.Error())
	}
	if tk := dave.Subscribe("room/1", 1, nil); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
		t.Fatalf("mqtt subscribe: %v", tk.Error())
	}
	expectPresence(t, watcher, "presence.join dave/mqtt")

	if got := presenceOf(t, apiHTTP, "room:1"); !slices.Equal(got, []string{"ada/ws", "bob/ws", "carol/sse", "dave/mqtt"}) {
		t.Fatalf("presence of room:1 = %v, want every connection on both edges", got)
	}

	if err := procs[victim].cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-procs[victim].done
	// The survivor sweeps what the lost edge can no longer renew.
	expectPresence(t, watcher, "presence.leave bob/ws", "presence.leave dave/mqtt")
	if got := presenceOf(t, apiHTTP, "room:1"); !slices.Equal(got, []string{"ada/ws", "carol/sse"}) {
		t.Fatalf("presence of room:1 after the kill = %v, want the survivor's connections only", got)
	}
}
