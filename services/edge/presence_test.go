package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	paho3 "github.com/eclipse/paho.mqtt.golang"

	eventbusv1 "github.com/eventbus-suite/eventbus/proto/gen/eventbus/v1"

	"github.com/eventbus-suite/eventbus/pkg/envelope"
	"github.com/eventbus-suite/eventbus/pkg/presence"
	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
)

// presenceNews is a join or leave as a client reads it.
type presenceNews struct {
	Type string
	presence.Member
}

func (n presenceNews) String() string { return n.Type + " " + n.User + "/" + n.Transport }

// newsOf reads a presence event out of an event's envelope JSON.
func newsOf(t *testing.T, ev json.RawMessage) presenceNews {
	t.Helper()
	var e struct {
		Type string
		Data struct {
			ClientID  string `json:"client_id"`
			UserID    string `json:"user_id"`
			Transport string
		}
	}
	if err := json.Unmarshal(ev, &e); err != nil || !strings.HasPrefix(e.Type, "presence.") {
		t.Fatalf("event %s (%v), want a presence event", ev, err)
	}
	return presenceNews{e.Type, presence.Member{Client: e.Data.ClientID, User: e.Data.UserID, Transport: e.Data.Transport}}
}

// news reads the next frame, which must be a presence event on ch.
func (c *client) news(ch string) presenceNews {
	c.t.Helper()
	f := c.next()
	if f.Channel != ch || f.Event == nil {
		c.t.Fatalf("frame %+v, want a presence event on %s", f, ch)
	}
	return newsOf(c.t, f.Event)
}

func expectNews(t *testing.T, got presenceNews, typ, user, transport string) {
	t.Helper()
	if got.Type != typ || got.User != user || got.Transport != transport || got.Client == "" {
		t.Fatalf("got %s (client %q), want %s %s/%s with a client id", got, got.Client, typ, user, transport)
	}
}

// Presence on two edges: connections over WebSocket, SSE and MQTT over
// TCP are recorded in Redis on their channel, one member each; a
// subscription that asks for presence gets every join and leave in
// order, and one that does not gets none.
func TestPresenceAcrossEdgesAndTransports(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	redistest.RequireReal(t, srv)
	prefix := strings.TrimSuffix(redistest.Prefix(t), ":")
	env := map[string]string{"EDGE_PRESENCE_NAMESPACES": "room,notify"}
	e1 := startEdgeWithPrefix(t, srv, prefix, env)
	e2 := startEdgeWithPrefix(t, srv, prefix, env)
	store := presence.New(srv.Client(t), e1.bus.KeyOf, time.Minute)

	watcher := e1.dial(t, mint(t, "ada", "room:*"))
	if r := watcher.do(`{"action":"subscribe","channel":"room:1","presence":true,"id":"w"}`); !r.OK {
		t.Fatalf("subscribe with presence = %+v, want ok", r)
	}
	expectNews(t, watcher.news("room:1"), "presence.join", "ada", "ws")

	bob := e2.dial(t, mint(t, "bob", "room:*"))
	bob.subscribe("b", "room:1")
	expectNews(t, watcher.news("room:1"), "presence.join", "bob", "ws")

	carol := e1.openSSE(t, url.Values{"channel": {"room:1"}, "token": {mint(t, "carol", "room:1")}}, nil)
	if ev := carol.next(); ev.Type != "subscribed" {
		t.Fatalf("SSE first event %+v, want subscribed", ev)
	}
	expectNews(t, watcher.news("room:1"), "presence.join", "carol", "sse")

	opts := paho3.NewClientOptions().AddBroker("tcp://" + e2.mqtt).SetClientID("dave-device").
		SetUsername("device").SetPassword(mintMQTT(t, "dave", []string{"room:*"}, nil)).SetAutoReconnect(false)
	dave := paho3.NewClient(opts)
	if tk := dave.Connect(); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
		t.Fatalf("paho connect: %v", tk.Error())
	}
	if tk := dave.Subscribe("room/1", 1, nil); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
		t.Fatalf("paho subscribe: %v", tk.Error())
	}
	expectNews(t, watcher.news("room:1"), "presence.join", "dave", "mqtt-tcp")

	ms, stats, err := store.List(t.Context(), "room:1", 0)
	if err != nil {
		t.Fatal(err)
	}
	var who []string
	for _, m := range ms {
		who = append(who, m.User+"/"+m.Transport)
	}
	slices.Sort(who)
	if !slices.Equal(who, []string{"ada/ws", "bob/ws", "carol/sse", "dave/mqtt-tcp"}) || stats != (presence.Stats{Clients: 4, Users: 4}) {
		t.Fatalf("presence of room:1 = %v %+v, want one member per connection, over both edges", who, stats)
	}

	// bob asked for no presence: carol's and dave's joins never reach
	// him, so the next thing he reads is this event.
	e1.publish(t, "room:1", "hello", -1)
	if f := bob.next(); f.subject() != "hello" {
		t.Fatalf("bob read %s first, want the event: no presence news for a subscription without presence", f.Event)
	}
	if f := watcher.next(); f.subject() != "hello" {
		t.Fatalf("watcher read %s, want the event", f.Event)
	}

	bob.conn.CloseNow()
	expectNews(t, watcher.news("room:1"), "presence.leave", "bob", "ws")
	dave.Disconnect(0)
	expectNews(t, watcher.news("room:1"), "presence.leave", "dave", "mqtt-tcp")
	carol.resp.Body.Close()
	expectNews(t, watcher.news("room:1"), "presence.leave", "carol", "sse")
	if n, err := store.Count(t.Context(), "room:1"); err != nil || n != 1 {
		t.Fatalf("presence of room:1 counts %d (%v), want only the watcher", n, err)
	}
	// Unsubscribing leaves too, and the news stops with the subscription.
	if r := watcher.do(`{"action":"unsubscribe","channel":"room:1","id":"u"}`); !r.OK {
		t.Fatalf("unsubscribe = %+v", r)
	}
	// The roster writes the leave after the reply: nothing announces it
	// to a subscription that is gone, so wait for Redis to have it.
	servicetest.WaitFor(t, "room:1 empty once the last unsubscribed", func() bool {
		n, err := store.Count(t.Context(), "room:1")
		return err == nil && n == 0
	})
}

// Presence is asked only where it is kept and granted: a channel of a
// namespace without presence, a pattern, a channel the token does not
// grant, and presence with anything but subscribe are refused, over
// WebSocket and SSE.
func TestPresenceRefusals(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	e := startEdge(t, srv, map[string]string{"EDGE_PRESENCE_NAMESPACES": "room"})
	c := e.dial(t, mint(t, "ada", "room:1", "room:*", "chat:*"))
	for _, tt := range []struct{ frame, code string }{
		{`{"action":"subscribe","channel":"room:*","presence":true,"id":"1"}`, "presence_off"},
		{`{"action":"subscribe","channel":"chat:1","presence":true,"id":"2"}`, "presence_off"},
		{`{"action":"unsubscribe","channel":"room:1","presence":true,"id":"3"}`, "bad_request"},
		{`{"action":"ack","id":""}`, "bad_request"},
		{`{"action":"subscribe","channel":"room:1","presence":"yes","id":"4"}`, "bad_request"},
	} {
		if r := c.do(tt.frame); r.OK || r.Error == nil || r.Error.Code != tt.code {
			t.Errorf("%s = %+v, want %s", tt.frame, r, tt.code)
		}
	}
	narrow := e.dial(t, mint(t, "bob", "room:1"))
	if r := narrow.do(`{"action":"subscribe","channel":"room:2","presence":true,"id":"5"}`); r.OK || r.Error == nil || r.Error.Code != "forbidden" {
		t.Errorf("presence of an ungranted channel = %+v, want forbidden", r)
	}
	// None of those was recorded.
	store := presence.New(srv.Client(t), e.bus.KeyOf, time.Minute)
	for _, ch := range []string{"room:1", "room:2", "chat:1"} {
		if n, err := store.Count(t.Context(), ch); err != nil || n != 0 {
			t.Errorf("presence of %s counts %d (%v), want 0", ch, n, err)
		}
	}
	tok := mint(t, "ada", "room:*", "chat:*")
	for _, tt := range []struct {
		q    url.Values
		code string
	}{
		{url.Values{"channel": {"room:1"}, "presence": {"maybe"}}, "bad_request"},
		{url.Values{"channel": {"room:*"}, "presence": {"true"}}, "presence_off"},
		{url.Values{"channel": {"chat:1", "room:*"}, "presence": {"true"}}, "presence_off"},
	} {
		tt.q.Set("token", tok)
		resp := e.getSSE(t, tt.q, nil)
		var body struct{ Error struct{ Code string } }
		_ = json.NewDecoder(resp.Body).Decode(&body)
		if resp.StatusCode != http.StatusBadRequest || body.Error.Code != tt.code {
			t.Errorf("GET /sse?%s = %d %q, want 400 %s", tt.q.Encode(), resp.StatusCode, body.Error.Code, tt.code)
		}
	}
	// An SSE stream with presence gets the news of its channels that keep
	// it, and none of the rest: the join it reads is room:9's.
	s := e.openSSE(t, url.Values{"channel": {"chat:9", "room:9"}, "presence": {"true"}, "token": {tok}}, nil)
	for range 2 {
		if ev := s.next(); ev.Type != "subscribed" {
			t.Fatalf("first SSE events %+v, want subscribed", ev)
		}
	}
	ev := s.next()
	var f frame
	if err := json.Unmarshal([]byte(ev.Data), &f); err != nil {
		t.Fatal(err)
	}
	expectNews(t, newsOf(t, f.Event), "presence.join", "ada", "sse")
}

// notification publishes a notification.created for user on its channel,
// as the notification service does, and returns its id.
func (e *edge) notification(t *testing.T, user string) string {
	t.Helper()
	data, err := envelope.PackData(&eventbusv1.Notification{NotificationId: "n-" + user, UserId: user, Title: "Order received"})
	if err != nil {
		t.Fatal(err)
	}
	env := &envelope.Envelope{Type: "notification.created", Channel: "notify:user:" + user, Subject: user, Data: data}
	if err := envelope.Fill(env, "eventbus/notification", time.Now()); err != nil {
		t.Fatal(err)
	}
	b, err := envelope.Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.bus.Publish(t.Context(), env.GetChannel(), b); err != nil {
		t.Fatal(err)
	}
	return env.GetId()
}

// receipts follows notification:delivered.
func (e *edge) receipts(t *testing.T) <-chan *eventbusv1.NotificationDelivered {
	t.Helper()
	sub, err := e.bus.Subscribe(t.Context(), "notification:delivered")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Close() })
	out := make(chan *eventbusv1.NotificationDelivered, 16)
	go func() {
		for m := range sub.Messages() {
			env, err := envelope.Unmarshal(m.Payload)
			if err != nil || env.GetType() != "notification.delivered" {
				continue
			}
			var d eventbusv1.NotificationDelivered
			if env.GetData().UnmarshalTo(&d) == nil {
				out <- &d
			}
		}
	}()
	return out
}

func nextReceipt(t *testing.T, rs <-chan *eventbusv1.NotificationDelivered) *eventbusv1.NotificationDelivered {
	t.Helper()
	select {
	case r := <-rs:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("no receipt within 10 s")
	}
	return nil
}

// A notification acknowledged over WebSocket ({"action":"ack"}) and by
// the PUBACK of a QoS 1 MQTT subscription becomes a notification.delivered
// event, once; an acknowledgement of a notification the connection was
// not given is refused.
func TestReceipts(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	e := startEdge(t, srv, nil)
	rs := e.receipts(t)

	c := e.dial(t, mint(t, "u7", "notify:user:u7"))
	c.subscribe("s", "notify:user:u7")
	id := e.notification(t, "u7")
	if f := c.next(); f.Channel != "notify:user:u7" {
		t.Fatalf("frame %+v, want the notification", f)
	}
	if r := c.do(fmt.Sprintf(`{"action":"ack","id":%q}`, id)); !r.OK || r.ID != id {
		t.Fatalf("ack = %+v, want ok with the notification's id", r)
	}
	r := nextReceipt(t, rs)
	if r.GetNotificationId() != id || r.GetUserId() != "u7" || r.GetTransport() != "ws" || r.GetClientId() == "" || r.GetLatencyMs() < 0 {
		t.Fatalf("receipt %v, want %s of u7 over ws from a client", r, id)
	}
	for _, ack := range []string{id, "n-never-given"} {
		if r := c.do(fmt.Sprintf(`{"action":"ack","id":%q}`, ack)); r.OK || r.Error == nil || r.Error.Code != "unknown_notification" {
			t.Errorf("ack of %s = %+v, want unknown_notification", ack, r)
		}
	}
	// Another user's notification, published where c cannot see it, is
	// no more c's to acknowledge.
	other := e.notification(t, "u9")
	if r := c.do(fmt.Sprintf(`{"action":"ack","id":%q}`, other)); r.OK || r.Error == nil || r.Error.Code != "unknown_notification" {
		t.Errorf("ack of another user's notification = %+v, want unknown_notification", r)
	}

	got := make(chan paho3.Message, 1)
	opts := paho3.NewClientOptions().AddBroker("tcp://" + e.mqtt).SetClientID("u8-phone").
		SetUsername("device").SetPassword(mintMQTT(t, "u8", []string{"notify:user:u8"}, nil)).SetAutoReconnect(false)
	phone := paho3.NewClient(opts)
	if tk := phone.Connect(); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
		t.Fatalf("paho connect: %v", tk.Error())
	}
	t.Cleanup(func() { phone.Disconnect(0) })
	if tk := phone.Subscribe("notify/user/u8", 1, func(_ paho3.Client, m paho3.Message) { got <- m }); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
		t.Fatalf("paho subscribe: %v", tk.Error())
	}
	id = e.notification(t, "u8")
	select {
	case m := <-got:
		if m.Qos() != 1 {
			t.Fatalf("notification at QoS %d, want 1", m.Qos())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the phone got no notification")
	}
	r = nextReceipt(t, rs)
	if r.GetNotificationId() != id || r.GetUserId() != "u8" || r.GetTransport() != "mqtt-tcp" {
		t.Fatalf("receipt %v, want %s of u8 over mqtt-tcp: paho's PUBACK", r, id)
	}
}

// Redis restarted without its data loses every edge's presence; each
// edge renews its connections on its next beat, so presence comes back
// whole, with its joins announced again, and a connection that left
// while Redis was away is not among them.
func TestPresenceComesBackAfterRedisRestarts(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	redistest.RequireReal(t, srv)
	e := startEdge(t, srv, map[string]string{"EDGE_PRESENCE_NAMESPACES": "room", "EDGE_PRESENCE_TTL": "1s"})
	store := presence.New(srv.Client(t), e.bus.KeyOf, time.Minute)
	watcher := e.dial(t, mint(t, "ada", "room:*"))
	if r := watcher.do(`{"action":"subscribe","channel":"room:1","presence":true,"id":"w"}`); !r.OK {
		t.Fatalf("subscribe = %+v", r)
	}
	expectNews(t, watcher.news("room:1"), "presence.join", "ada", "ws")
	leaving := e.dial(t, mint(t, "bob", "room:*"))
	leaving.subscribe("b", "room:1")
	expectNews(t, watcher.news("room:1"), "presence.join", "bob", "ws")

	srv.Stop(t)
	leaving.conn.CloseNow()
	servicetest.WaitFor(t, "the edge to see bob go", func() bool { return e.metric(t, "eventbus_edge_presence_members") == 1 })
	srv.Restart(t)
	servicetest.WaitFor(t, "presence back in Redis", func() bool {
		ms, _, err := store.List(t.Context(), "room:1", 0)
		return err == nil && len(ms) == 1 && ms[0].User == "ada"
	})
	// Back, ada's join is news again (the watcher hears it if its own
	// subscription is back in Redis first); bob's leave, written to a
	// Redis that had forgotten him, is none.
	servicetest.WaitFor(t, "ada's join announced again", func() bool {
		return servicetest.Count(t, e.base, `eventbus_edge_presence_events_total{kind="join"}`) == 3
	})
	if n := servicetest.Count(t, e.base, `eventbus_edge_presence_events_total{kind="leave"}`); n != 0 {
		t.Fatalf("%v leaves announced, want none: bob left a Redis that no longer had him", n)
	}
}

// Subscribing anew to a channel one has says again whether one wants its
// news: presence turned on, then off, without a second member.
func TestPresenceAskedAgain(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	redistest.RequireReal(t, srv)
	e := startEdge(t, srv, map[string]string{"EDGE_PRESENCE_NAMESPACES": "room"})
	store := presence.New(srv.Client(t), e.bus.KeyOf, time.Minute)
	c := e.dial(t, mint(t, "ada", "room:*"))
	c.subscribe("1", "room:1")
	if r := c.do(`{"action":"subscribe","channel":"room:1","presence":true,"id":"2"}`); !r.OK {
		t.Fatalf("subscribe again with presence = %+v", r)
	}
	bob := e.dial(t, mint(t, "bob", "room:*"))
	bob.subscribe("b", "room:1")
	news := c.news("room:1")
	if news.User == "ada" { // its own join, announced as it asked: the roster writes in the background
		news = c.news("room:1")
	}
	expectNews(t, news, "presence.join", "bob", "ws")
	if n, err := store.Count(t.Context(), "room:1"); err != nil || n != 2 {
		t.Fatalf("presence counts %d (%v), want 2: subscribing anew adds no member", n, err)
	}
	c.subscribe("3", "room:1") // and off again
	bob.conn.CloseNow()
	servicetest.WaitFor(t, "bob's leave written", func() bool {
		n, err := store.Count(t.Context(), "room:1")
		return err == nil && n == 1
	})
	e.publish(t, "room:1", "after", -1)
	if f := c.next(); f.subject() != "after" {
		t.Fatalf("read %s, want the event: no news once presence is off", f.Event)
	}
}
