package main

import (
	"encoding/json"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/eventbus-suite/eventbus/pkg/bus/redisbus"
	"github.com/eventbus-suite/eventbus/pkg/presence"
	"github.com/eventbus-suite/eventbus/pkg/redistest"
)

// GET /v1/presence reads what the edges record, at the keys every process
// of the deployment agrees on (partitioned here), with counts over every
// member however few the limit returns, and refuses what is no channel.
func TestPresence(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	redistest.RequireReal(t, srv)
	a := startAPI(t, srv, map[string]string{"BUS_PARTITIONS": "4"})
	b, err := redisbus.New(srv.Client(t), redisbus.Options{Prefix: a.prefix + ":", Partitions: 4})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	edge := presence.New(srv.Client(t), b.KeyOf, time.Minute) // as an edge writes it
	members := []presence.Member{
		{Client: "c1", User: "ada", Transport: "ws"},
		{Client: "c2", User: "ada", Transport: "sse"},
		{Client: "c3", User: "bob", Transport: "mqtt-tcp"},
	}
	for _, m := range members {
		if _, err := edge.Join(t.Context(), "room:1", m); err != nil {
			t.Fatal(err)
		}
	}
	type answer struct {
		Channel  string
		Clients  []presence.Member
		Stats    presence.Stats `json:"presence_stats"`
		Complete bool
	}
	read := func(query string) answer {
		t.Helper()
		r := a.get(t, "/v1/presence?"+query)
		var got answer
		if r.status != http.StatusOK || json.Unmarshal([]byte(r.raw), &got) != nil {
			t.Fatalf("GET /v1/presence?%s = %d %s", query, r.status, r.raw)
		}
		return got
	}
	got := read("channel=room:1")
	clients := func(ms []presence.Member) []string {
		var out []string
		for _, m := range ms {
			out = append(out, m.Client+"/"+m.User+"/"+m.Transport)
		}
		slices.Sort(out)
		return out
	}
	if got.Channel != "room:1" || !slices.Equal(clients(got.Clients), []string{"c1/ada/ws", "c2/ada/sse", "c3/bob/mqtt-tcp"}) ||
		got.Stats != (presence.Stats{Clients: 3, Users: 2}) || !got.Complete {
		t.Fatalf("presence = %+v, want the three connections of two users, complete", got)
	}
	if got := read("channel=room:1&limit=2"); len(got.Clients) != 2 || got.Stats.Clients != 3 || got.Complete {
		t.Fatalf("limit=2: %+v, want 2 clients of counts 3, not complete", got)
	}
	if got := read("channel=room:1&limit=0"); len(got.Clients) != 0 || got.Stats != (presence.Stats{Clients: 3, Users: 2}) {
		t.Fatalf("limit=0: %+v, want the counts alone", got)
	}
	if got := read("channel=room:2"); len(got.Clients) != 0 || got.Clients == nil || got.Stats != (presence.Stats{}) || !got.Complete {
		t.Fatalf("an empty channel: %+v, want [] and zero counts", got)
	}
	for _, q := range []string{"", "channel=room:*", "channel=Room", "channel=eventbus:control", "channel=room:1&limit=-1", "channel=room:1&limit=10001", "channel=room:1&limit=x"} {
		if r := a.get(t, "/v1/presence?"+q); r.status != http.StatusBadRequest || r.errorCode() != "invalid_argument" {
			t.Errorf("GET /v1/presence?%s = %d %s, want 400 invalid_argument", q, r.status, r.raw)
		}
	}
	if r := a.post(t, "/v1/presence?channel=room:1", "application/json", "{}"); r.status != http.StatusMethodNotAllowed {
		t.Errorf("POST /v1/presence = %d, want 405", r.status)
	}
}
