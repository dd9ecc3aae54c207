package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/eventbus-suite/eventbus/pkg/channel"
	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/revocation"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
)

// The bus's own namespace reaches no client of any transport, whatever its
// grants: a '#' and a "+/+" MQTT subscriber and a '*' WebSocket subscriber
// (live, and resuming from the record) see no eventbus channel while MQTT
// clients connect, take each other over and revocations and disconnects
// are commanded; asking for it outright is refused. Takeovers cost no
// event in the eventbus stream the logger reads.
func TestReservedNamespaceReachesNoClient(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), nil)
	rec := e.recorder(t) // publishes as the API does, into the record
	publish := func(ch, subject string) {
		t.Helper()
		if _, err := rec.Publish(t.Context(), ch, event(t, ch, subject)); err != nil {
			t.Fatal(err)
		}
	}
	command := func(c revocation.Command) {
		t.Helper()
		b, err := c.Payload("api", time.Now())
		if err == nil {
			_, err = rec.Publish(t.Context(), revocation.ControlChannel, b)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	all := mint(t, "1", "*")
	publish("zz:start", "start")

	ws := e.dial(t, all)
	r := ws.do(`{"action":"subscribe","channel":"*","id":"1"}`)
	if !r.OK {
		t.Fatalf("subscribe * = %+v, want ok", r)
	}
	before := positions{}
	for ns, p := range r.Positions {
		before[ns] = p
	}
	if _, ok := before["zz"]; !ok {
		t.Fatalf("subscribe * gave positions %v, want zz's", r.Positions)
	}
	if r := ws.do(`{"action":"subscribe","channel":"eventbus:control","id":"2"}`); r.Error == nil || r.Error.Code != "forbidden" {
		t.Errorf("subscribe eventbus:control = %+v, want forbidden", r)
	}

	hash := e.dialMQTT(t, "/mqtt", 5)
	hash.connect("hash", all, 60)
	if codes := hash.subscribe(1, map[string]byte{"#": 0, "eventbus/#": 0}, "#", "eventbus/#"); codes[0] != 0 || codes[1] != 0x87 {
		t.Fatalf("SUBACK %#x, want # granted and eventbus/# not authorized (0x87)", codes)
	}
	plus := e.dialMQTT(t, "/mqtt", 4)
	plus.connect("plus", all, 60)
	if codes := plus.subscribe(1, map[string]byte{"+/+": 0}, "+/+"); codes[0] != 0 {
		t.Fatalf("SUBACK %#x, want +/+ granted", codes)
	}

	// Three CONNECTs of one client id (two takeovers), a revocation and a
	// forced disconnect, as the API commands them.
	const connects = 3
	for range connects {
		d := e.dialMQTT(t, "/mqtt", 5)
		if ack := d.connect("device", mint(t, "9", "order:*"), 60); ack.ReasonCode != 0 {
			t.Fatalf("CONNACK %#x, want success", ack.ReasonCode)
		}
	}
	command(revocation.Command{Action: revocation.ActionRevoke, JTI: "gone"})
	command(revocation.Command{Action: revocation.ActionDisconnect, Sub: "8"})
	// Every command has reached this edge, so Redis sent them before the
	// event that follows, on the hub's connection as on the control one.
	servicetest.WaitFor(t, "the edge to carry out every command", func() bool {
		// Each action's series appears with its first command.
		count := func(action string) float64 {
			return servicetest.Count(t, e.base, `eventbus_edge_control_commands_total{action="`+action+`"}`)
		}
		return count("mqtt_takeover") == connects+2 && // and hash's and plus's
			count("revoke") == 1 && count("disconnect") == 1
	})
	publish("zz:end", "end")

	for {
		f := ws.next()
		if channel.Reserved(f.Channel) {
			t.Fatalf("the * WebSocket subscriber got %s: %s", f.Channel, f.Event)
		}
		if f.Channel == "zz:end" {
			break
		}
	}
	for _, m := range []*mqttConn{hash, plus} {
		for {
			pk := m.expect(packets.Publish)
			if strings.HasPrefix(pk.TopicName, channel.ReservedNamespace) {
				t.Fatalf("an MQTT subscriber got %s: %s", pk.TopicName, pk.Payload)
			}
			if pk.TopicName == "zz/end" {
				break
			}
		}
	}

	// What the record holds of the eventbus namespace (the recorded
	// commands) is not replayed to a resuming subscription either.
	again := e.dial(t, all)
	if r := again.resume("1", "*", before); !r.OK || r.Recovered == nil || !*r.Recovered {
		t.Fatalf("resume * = %+v, want recovered", r)
	}
	if got := again.follow(positions{}, 1); fmt.Sprint(got) != "[end]" {
		t.Fatalf("resumed * got %q, want only the end event", got)
	}

	page, err := rec.History(t.Context(), revocation.ControlChannel, nil, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var actions []string
	for _, ev := range page.Events {
		c, err := revocation.Parse(ev.Payload)
		if err != nil {
			t.Fatal(err)
		}
		actions = append(actions, c.Action)
	}
	if fmt.Sprint(actions) != "[revoke disconnect]" {
		t.Errorf("the eventbus stream holds %q, want the revocation and the disconnect only: no takeover", actions)
	}
}

// A demo token grants what the demo page needs, every channel for its
// live feeds and its own notifications, and never another user's
// notifications: subscribing to them is refused, and a '*' or '#'
// subscriber is not given them.
func TestDemoTokenSeesNoOtherUsersNotifications(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), map[string]string{"EDGE_DEMO": "true"})
	resp, err := http.Get(e.base + "/demo/token?user=42")
	if err != nil {
		t.Fatal(err)
	}
	var body struct{ Token string }
	err = json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	if err != nil || body.Token == "" {
		t.Fatalf("demo token = %v, %v", body, err)
	}
	ws := e.dial(t, body.Token)
	ws.subscribe("1", "*")
	for _, p := range []string{"notify:user:7", "notify:*"} {
		if r := ws.do(fmt.Sprintf(`{"action":"subscribe","channel":%q,"id":"2"}`, p)); r.Error == nil || r.Error.Code != "forbidden" {
			t.Errorf("subscribe %s with a demo token = %+v, want forbidden", p, r)
		}
	}
	ws.subscribe("3", "notify:user:42")
	m := e.dialMQTT(t, "/mqtt", 5)
	m.connect("demo", body.Token, 60)
	if codes := m.subscribe(1, map[string]byte{"#": 0, "notify/user/7": 0}, "#", "notify/user/7"); codes[0] != 0 || codes[1] != 0x87 {
		t.Fatalf("SUBACK %#x, want # granted and notify/user/7 not authorized (0x87)", codes)
	}
	for _, ch := range []string{"notify:user:7", "notify:user:42", "order:placed"} {
		e.publish(t, ch, ch, -1)
	}
	var got []string
	for len(got) < 2 {
		f := ws.next()
		if f.Channel == "notify:user:7" {
			t.Fatalf("the demo page's * feed got another user's notification: %s", f.Event)
		}
		if f.Event != nil {
			got = append(got, f.Channel)
		}
	}
	if fmt.Sprint(got) != "[notify:user:42 order:placed]" {
		t.Errorf("the * feed got %q, want its own notification and the order", got)
	}
	for _, want := range []string{"notify/user/42", "order/placed"} {
		if pk := m.expect(packets.Publish); pk.TopicName != want {
			t.Fatalf("the # subscriber got %s, want %s (and never notify/user/7)", pk.TopicName, want)
		}
	}
}
