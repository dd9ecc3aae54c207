package main

import (
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	eventbusv1 "github.com/eventbus-suite/eventbus/proto/gen/eventbus/v1"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/bus/bustest"
	"github.com/eventbus-suite/eventbus/pkg/envelope"
	"github.com/eventbus-suite/eventbus/pkg/presence"
	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
)

// asMain, set to 1, makes the test binary run main: a replica of
// process().
const asMain = "EVENTBUS_NOTIFICATION_TEST_MAIN"

// online makes user online, as an edge would: a connection on
// notify:user:<user>, under the key the service reads (the bus's KeyOf,
// with the same prefix). It returns what makes the user offline again.
func (w *world) online(user string) (offline func()) {
	w.t.Helper()
	ps := presence.New(w.rdb, w.bus.KeyOf, time.Hour)
	m := presence.Member{Client: "c-" + user, User: user, Transport: "ws"}
	if _, err := ps.Join(w.t.Context(), "notify:user:"+user, m); err != nil {
		w.t.Fatal(err)
	}
	return func() {
		w.t.Helper()
		if _, err := ps.Leave(w.t.Context(), "notify:user:"+user, m); err != nil {
			w.t.Fatal(err)
		}
	}
}

// receipt publishes a notification.delivered as the edge does when a
// client acknowledges notification id of user.
func (w *world) receipt(id, user string, latencyMS int64) {
	w.t.Helper()
	w.publishEnvelope("eventbus/edge", "notification:delivered", &eventbusv1.NotificationDelivered{
		NotificationId: id, UserId: user, ClientId: "c-" + user, Transport: "ws", LatencyMs: latencyMS,
	})
}

// publishEnvelope publishes a notification.delivered from source on ch
// with data as it is (any message).
func (w *world) publishEnvelope(source, ch string, data proto.Message) {
	w.t.Helper()
	a, err := anypb.New(data)
	if err != nil {
		w.t.Fatal(err)
	}
	env := &envelope.Envelope{Type: "notification.delivered", Channel: ch, Data: a}
	// Filled without validation: a foreign receipt need not be valid.
	_ = envelope.Fill(env, source, time.Now())
	b, err := envelope.Marshal(env)
	if err != nil {
		w.t.Fatal(err)
	}
	if _, err := w.bus.Publish(w.t.Context(), ch, b); err != nil {
		w.t.Fatal(err)
	}
}

// acks returns the notifications whose receipt is awaited.
func (w *world) acks() []string {
	w.t.Helper()
	ids, err := w.rdb.ZRange(w.t.Context(), w.prefix+":notification:acks", 0, -1).Result()
	if err != nil {
		w.t.Fatal(err)
	}
	return ids
}

// routeState returns the Redis state of notification id.
func (w *world) routeState(id string) map[string]string {
	w.t.Helper()
	m, err := w.rdb.HGetAll(w.t.Context(), w.prefix+":notification:route:"+id).Result()
	if err != nil {
		w.t.Fatal(err)
	}
	return m
}

// barrier publishes an order.placed of user and waits for its in-page
// notification: a user's events are handled in order, each with all its
// sends, so every earlier event of the user is done with then.
func (w *world) barrier(notes bus.Subscription, user string) {
	w.t.Helper()
	id := w.publish("order.placed", &eventbusv1.OrderPlaced{OrderId: "barrier", UserId: user, Total: 1, Currency: "EUR"})
	for {
		if _, n := nextNotification(w.t, notes); n.GetCauseEventId() == id {
			return
		}
	}
}

// count returns how many requests the push service got.
func (f *fakePush) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.requests)
}

// emailsTo returns the subjects of the emails addr got.
func (w *world) emailsTo(addr string) []string {
	var out []string
	for _, m := range w.sg.to(addr) {
		out = append(out, m.Subject)
	}
	return out
}

// signUp records user's contact (user.created, whose welcome email it
// waits for) and, when sub is set, subscribes the user to pushes.
func (w *world) signUp(svc *servicetest.Service, user string, sub *subscriber) {
	w.t.Helper()
	w.publish("user.created", &eventbusv1.UserCreated{UserId: user, Email: user + "@example.com", Name: user})
	servicetest.WaitFor(w.t, "the welcome email of "+user, func() bool { return len(w.sg.to(user+"@example.com")) == 1 })
	if sub != nil {
		subscribe(w.t, svc, user, sub)
	}
}

func routeCount(t *testing.T, svc *servicetest.Service, route, reason string) float64 {
	t.Helper()
	return servicetest.Count(t, "http://"+svc.Addrs["http_addr"], `eventbus_notification_routes_total{reason="`+reason+`",route="`+route+`"}`)
}

// Online: the page, no push, no email; its receipt stops the fallback,
// and is timed as the realtime delivery.
func TestRouteOnlineGetsThePage(t *testing.T) {
	t.Parallel()
	fp := newFakePush(t)
	// An ack timeout longer than the test: no fallback can go but for a
	// bug; that none will is read from Redis (the awaited receipts).
	w, _ := newPushWorld(t, map[string]string{"NOTIFY_ACK_TIMEOUT": "1h"})
	svc := w.replica()
	notes := w.notifications()
	sub := fp.subscriber(t, "ada")
	w.signUp(svc, "ada", sub)
	offline := w.online("ada")

	placed := w.publish("order.placed", &eventbusv1.OrderPlaced{OrderId: "o1", UserId: "ada", Total: 1299, Currency: "EUR"})
	_, n := nextNotification(t, notes)
	if n.GetCauseEventId() != placed || n.GetRoute() != "realtime" || n.GetRouteReason() != "online" {
		t.Fatalf("notification = %v, want route realtime, reason online", n)
	}
	if got := w.acks(); len(got) != 1 || got[0] != n.GetNotificationId() {
		t.Errorf("awaited receipts = %v, want [%s]", got, n.GetNotificationId())
	}
	if got := routeCount(t, svc, "realtime", "online"); got != 1 {
		t.Errorf(`routes_total{realtime,online} = %v, want 1`, got)
	}

	w.receipt(n.GetNotificationId(), "ada", 42)
	// Once no receipt is awaited, nothing is left to fall back.
	servicetest.WaitFor(t, "the receipt, and the wait for it ended", func() bool {
		return metric(t, svc, `eventbus_notification_receipts_total{result="delivered"}`) == 1 && len(w.acks()) == 0
	})
	if st := w.routeState(n.GetNotificationId()); st["delivered"] == "" || st["user"] != "ada" || st["route"] != "realtime" {
		t.Errorf("route state = %v, want delivered, user ada, route realtime", st)
	}
	if c, s := metric(t, svc, `eventbus_notification_delivery_seconds_count{route="realtime"}`),
		metric(t, svc, `eventbus_notification_delivery_seconds_sum{route="realtime"}`); c != 1 || s != 0.042 {
		t.Errorf("delivery_seconds{realtime} = %v observations summing %v, want 1 of 0.042 (the receipt's latency_ms)", c, s)
	}
	// Another tab acknowledges it too: a repeat, not a second delivery.
	w.receipt(n.GetNotificationId(), "ada", 50)
	servicetest.WaitFor(t, "the repeated receipt", func() bool {
		return metric(t, svc, `eventbus_notification_receipts_total{result="repeat"}`) == 1
	})
	if c := metric(t, svc, `eventbus_notification_delivery_seconds_count{route="realtime"}`); c != 1 {
		t.Errorf("delivery_seconds{realtime} count = %v after a repeat, want 1", c)
	}

	offline()
	w.barrier(notes, "ada")
	topic := strings.TrimPrefix(n.GetNotificationId(), "n-")
	for _, r := range fp.to(sub) {
		if r.Header.Get("Topic") == topic {
			t.Errorf("the notification sent in the page was pushed too")
		}
	}
	// Offline now, the barrier is pushed: the subscription works.
	servicetest.WaitFor(t, "the barrier's push", func() bool { return len(fp.to(sub)) == 1 })
	if got := w.emailsTo("ada@example.com"); len(got) != 1 {
		t.Errorf("emails %q, want the welcome only", got)
	}
}

// Offline: a push when subscribed, else an email; never both.
func TestRouteOffline(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name       string
		push, sub  bool
		route, why string
	}{
		{"subscribed", true, true, "push", "offline_push_subscribed"},
		{"not subscribed", true, false, "email", "offline_no_push_subscription"},
		{"push off", false, false, "email", "offline_push_off"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fp := newFakePush(t)
			var w *world
			if tt.push {
				w, _ = newPushWorld(t, nil)
			} else {
				w = newWorld(t, newFakeSendGrid(t), map[string]string{"NOTIFY_PUSH_ALLOW_HTTP": "true"})
			}
			svc := w.replica()
			notes := w.notifications()
			var sub *subscriber
			if tt.sub {
				sub = fp.subscriber(t, "bob")
			}
			w.signUp(svc, "bob", sub)

			placed := w.publish("order.placed", &eventbusv1.OrderPlaced{OrderId: "o1", UserId: "bob", Total: 1299, Currency: "EUR"})
			_, n := nextNotification(t, notes)
			if n.GetCauseEventId() != placed || n.GetRoute() != tt.route || n.GetRouteReason() != tt.why {
				t.Fatalf("notification = %v, want route %s, reason %s", n, tt.route, tt.why)
			}
			// Observed once the push service or SendGrid answered.
			servicetest.WaitFor(t, "the "+tt.route+"'s delivery", func() bool {
				return metric(t, svc, `eventbus_notification_delivery_seconds_count{route="`+tt.route+`"}`) == 1
			})
			if tt.route == "push" {
				if got := len(fp.to(sub)); got != 1 {
					t.Errorf("%d pushes, want 1", got)
				}
			} else if got := w.emailsTo("bob@example.com"); len(got) != 2 || got[1] != "Order received" {
				t.Errorf("emails %q, want the welcome and the order received", got)
			}
			if got := routeCount(t, svc, tt.route, tt.why); got != 1 {
				t.Errorf("routes_total{%s,%s} = %v, want 1", tt.route, tt.why, got)
			}
			if got := w.acks(); len(got) != 0 {
				t.Errorf("awaited receipts = %v, want none: nothing went to the page", got)
			}
			w.barrier(notes, "bob")
			emails := w.emailsTo("bob@example.com")
			switch tt.route {
			case "push":
				if len(emails) != 1 {
					t.Errorf("emails %q, want the welcome only: pushed, not emailed", emails)
				}
			case "email":
				if len(emails) < 2 || emails[1] != "Order received" {
					t.Errorf("emails %q, want the welcome and the order received", emails)
				}
				if got := pushMetric(t, svc, "sent"); got != 0 {
					t.Errorf("%v pushes sent, want none", got)
				}
			}
		})
	}
}

// "Both", where the rule says so: order.shipped has an email of its own
// besides its browser notification. That email goes whatever the route;
// the notification is routed as any other, but is never emailed a second
// time.
func TestRouteBoth(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name        string
		online, sub bool
		route, why  string
	}{
		{"online", true, true, "realtime", "online"},
		{"offline, subscribed", false, true, "push", "offline_push_subscribed"},
		{"offline, not subscribed", false, false, "none", "offline_emailed_anyway"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fp := newFakePush(t)
			w, _ := newPushWorld(t, map[string]string{"NOTIFY_ACK_TIMEOUT": "1h"})
			svc := w.replica()
			notes := w.notifications()
			var sub *subscriber
			if tt.sub {
				sub = fp.subscriber(t, "cy")
			}
			w.signUp(svc, "cy", sub)
			if tt.online {
				w.online("cy")
			}

			shipped := w.publish("order.shipped", &eventbusv1.OrderShipped{OrderId: "o1", UserId: "cy", Carrier: "DHL", TrackingNumber: "JD0001"})
			_, n := nextNotification(t, notes)
			if n.GetCauseEventId() != shipped || n.GetRoute() != tt.route || n.GetRouteReason() != tt.why {
				t.Fatalf("notification = %v, want route %s, reason %s", n, tt.route, tt.why)
			}
			servicetest.WaitFor(t, "the shipping email", func() bool { return len(w.emailsTo("cy@example.com")) == 2 })
			if tt.route == "push" {
				servicetest.WaitFor(t, "the push", func() bool { return len(fp.to(sub)) == 1 })
			}
			// The barrier is routed too, after the shipment is done with.
			w.barrier(notes, "cy")
			// Offline with nothing else to reach cy, the barrier is
			// emailed, after its page: its email ends the count.
			want := []string{"Welcome to eventbus, cy!", "Your order o1 is on its way"}
			if tt.route == "none" {
				want = append(want, "Order received")
				servicetest.WaitFor(t, "the barrier's email", func() bool { return slices.Contains(w.emailsTo("cy@example.com"), "Order received") })
			}
			if got := w.emailsTo("cy@example.com"); !slices.Equal(got, want) {
				t.Errorf("emails %q, want %q: the shipping email once, its notification never emailed", got, want)
			}
			topic := strings.TrimPrefix(n.GetNotificationId(), "n-")
			pushed := 0
			if sub != nil {
				for _, r := range fp.to(sub) {
					if r.Header.Get("Topic") == topic {
						pushed++
					}
				}
			}
			if want := map[bool]int{true: 1}[tt.route == "push"]; pushed != want {
				t.Errorf("the shipment's notification pushed %d times, want %d", pushed, want)
			}
		})
	}
}

// Online, but the page never acknowledges: after the ack timeout, a push
// (subscribed) or an email (not), once.
func TestRouteFallsBackWithoutReceipt(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name       string
		sub        bool
		route, why string
	}{
		{"to push", true, "push", "ack_timeout_push_subscribed"},
		{"to email", false, "email", "ack_timeout_no_push_subscription"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fp := newFakePush(t)
			w, _ := newPushWorld(t, map[string]string{"NOTIFY_ACK_TIMEOUT": "200ms"})
			svc := w.replica()
			notes := w.notifications()
			var sub *subscriber
			if tt.sub {
				sub = fp.subscriber(t, "cy")
			}
			w.signUp(svc, "cy", sub)
			w.online("cy")

			w.publish("order.placed", &eventbusv1.OrderPlaced{OrderId: "o1", UserId: "cy", Total: 1299, Currency: "EUR"})
			_, n := nextNotification(t, notes)
			if n.GetRoute() != "realtime" {
				t.Fatalf("notification = %v, want route realtime", n)
			}
			servicetest.WaitFor(t, "the fallback", func() bool { return routeCount(t, svc, tt.route, tt.why) == 1 })
			servicetest.WaitFor(t, "the fallback done with", func() bool { return len(w.acks()) == 0 })
			if tt.sub {
				reqs := fp.to(sub)
				if len(reqs) != 1 {
					t.Fatalf("%d pushes, want 1", len(reqs))
				}
				if got := reqs[0].Header.Get("Topic"); got != strings.TrimPrefix(n.GetNotificationId(), "n-") {
					t.Errorf("push Topic = %q, want the notification's", got)
				}
			} else if got := w.emailsTo("cy@example.com"); len(got) != 2 || got[1] != "Order received" {
				t.Errorf("emails %q, want the welcome and the order received", got)
			}
			// A receipt after the fallback is still the first: counted, once.
			w.receipt(n.GetNotificationId(), "cy", 5000)
			servicetest.WaitFor(t, "the late receipt", func() bool {
				return metric(t, svc, `eventbus_notification_receipts_total{result="delivered"}`) == 1
			})
			if st := w.routeState(n.GetNotificationId()); st["fallback"] != tt.route || st["fallback_reason"] != tt.why {
				t.Errorf("route state = %v, want fallback %s (%s)", st, tt.route, tt.why)
			}
			if got := len(w.emailsTo("cy@example.com")) + fp.count(); got != 2 {
				t.Errorf("%d emails and pushes, want 2: the welcome and one fallback", got)
			}
		})
	}
}

// A receipt that is malformed, not the edge's, or for another user's
// notification is ignored and acknowledged: the notification still
// awaits its receipt, and the service goes on.
func TestRouteRefusesBadReceipts(t *testing.T) {
	t.Parallel()
	w, _ := newPushWorld(t, map[string]string{"NOTIFY_ACK_TIMEOUT": "1h"})
	svc := w.replica()
	notes := w.notifications()
	w.online("dee")
	w.publish("order.placed", &eventbusv1.OrderPlaced{OrderId: "o1", UserId: "dee", Total: 100, Currency: "EUR"})
	_, n := nextNotification(t, notes)
	id := n.GetNotificationId()
	good := func() *eventbusv1.NotificationDelivered {
		return &eventbusv1.NotificationDelivered{NotificationId: id, UserId: "dee", ClientId: "c1", Transport: "ws", LatencyMs: 10}
	}
	with := func(f func(*eventbusv1.NotificationDelivered)) *eventbusv1.NotificationDelivered {
		m := good()
		f(m)
		return m
	}
	invalid := []struct {
		source, ch string
		data       proto.Message
	}{
		{"eventbus/api", "notification:delivered", good()},                                  // not the edge's
		{"someone", "notification:delivered", good()},                                       // not the edge's
		{"eventbus/edge", "notification:delivered", &eventbusv1.UserCreated{UserId: "dee"}}, // data of another type
		{"eventbus/edge", "notification:delivered", with(func(m *eventbusv1.NotificationDelivered) { m.UserId = "Dee:1" })},
		{"eventbus/edge", "notification:delivered", with(func(m *eventbusv1.NotificationDelivered) { m.LatencyMs = -1 })},
	}
	for _, r := range invalid {
		w.publishEnvelope(r.source, r.ch, r.data)
	}
	// Well-formed, but of no notification of dee's this service made:
	// another user's receipt of it, and ids not of its form (which go into
	// no Redis key).
	unknown := []*eventbusv1.NotificationDelivered{
		with(func(m *eventbusv1.NotificationDelivered) { m.UserId = "eve" }),
		with(func(m *eventbusv1.NotificationDelivered) { m.NotificationId = "../../" + id }),
		with(func(m *eventbusv1.NotificationDelivered) { m.NotificationId = strings.ToUpper(id) }),
		with(func(m *eventbusv1.NotificationDelivered) { m.NotificationId = "" }),
	}
	for _, r := range unknown {
		w.publishEnvelope("eventbus/edge", "notification:delivered", r)
	}
	// No envelope at all.
	if _, err := w.bus.Publish(t.Context(), "notification:delivered", []byte("\xffnot an envelope")); err != nil {
		t.Fatal(err)
	}
	servicetest.WaitFor(t, "every bad receipt handled and acknowledged", func() bool {
		return metric(t, svc, `eventbus_notification_receipts_total{result="invalid"}`) == float64(len(invalid)) &&
			metric(t, svc, `eventbus_notification_receipts_total{result="unknown"}`) == float64(len(unknown)) &&
			metric(t, svc, "eventbus_notification_malformed_total") == 1 &&
			w.pending("notification") == 0
	})
	if st := w.routeState(id); st["delivered"] != "" {
		t.Errorf("route state = %v after bad receipts, want it not delivered", st)
	}
	if got := w.acks(); len(got) != 1 || got[0] != id {
		t.Errorf("awaited receipts = %v, want still [%s]", got, id)
	}
	// The service goes on: the real receipt counts.
	w.receipt(id, "dee", 10)
	servicetest.WaitFor(t, "the good receipt, and the wait for it ended", func() bool {
		return metric(t, svc, `eventbus_notification_receipts_total{result="delivered"}`) == 1 && len(w.acks()) == 0
	})
}

func TestAckTimeoutConfig(t *testing.T) {
	t.Parallel()
	for _, v := range []string{"-1s", "soon"} {
		env := map[string]string{"NOTIFY_ACK_TIMEOUT": v}
		err := run(t.Context(), func(k string) string { return env[k] }, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "NOTIFY_ACK_TIMEOUT") {
			t.Errorf("run with NOTIFY_ACK_TIMEOUT=%s = %v, want an error naming it", v, err)
		}
	}
}

// With NOTIFY_ACK_TIMEOUT=0 nothing is awaited: a notification sent in the
// page stays there, and its receipt still counts.
func TestAckTimeoutOff(t *testing.T) {
	t.Parallel()
	w, _ := newPushWorld(t, map[string]string{"NOTIFY_ACK_TIMEOUT": "0"})
	svc := w.replica()
	notes := w.notifications()
	w.online("fay")
	w.publish("order.placed", &eventbusv1.OrderPlaced{OrderId: "o1", UserId: "fay", Total: 100, Currency: "EUR"})
	_, n := nextNotification(t, notes)
	if n.GetRoute() != "realtime" {
		t.Fatalf("notification = %v, want route realtime", n)
	}
	if got := w.acks(); len(got) != 0 {
		t.Errorf("awaited receipts = %v, want none with the fallback off", got)
	}
	w.receipt(n.GetNotificationId(), "fay", 7)
	servicetest.WaitFor(t, "the receipt", func() bool {
		return metric(t, svc, `eventbus_notification_delivery_seconds_count{route="realtime"}`) == 1
	})
	if !strings.Contains(svc.Logs(), "NOTIFY_ACK_TIMEOUT is 0") {
		t.Errorf("the log does not say the fallback is off")
	}
}

// process is a replica run as a process of its own (this test binary,
// running main), which a test can kill -9.
type process struct {
	cmd  *exec.Cmd
	logs *servicetest.Buffer
	addr string
	done chan struct{}
}

// process starts one more replica as a process and waits for it to be
// ready. The test stops it when it ends, unless killed before.
func (w *world) process() *process {
	w.t.Helper()
	w.replicas++
	env := maps.Clone(w.env)
	env["NOTIFICATION_MEMBER"] = "replica-" + strconv.Itoa(w.replicas)
	env["LOG_FORMAT"] = "json"
	p := &process{cmd: exec.Command(os.Args[0], "-test.run=^$"), logs: &servicetest.Buffer{}, done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), asMain+"=1")
	for k, v := range env {
		p.cmd.Env = append(p.cmd.Env, k+"="+v)
	}
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		w.t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	w.t.Cleanup(func() {
		select {
		case <-p.done:
			return
		default:
		}
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if w.t.Failed() {
			w.t.Logf("log of %s:\n%s", env["NOTIFICATION_MEMBER"], p.logs.String())
		}
	})
	listening := regexp.MustCompile(`"msg":"listening".*?"http_addr":"([^"]+)"`)
	servicetest.WaitFor(w.t, env["NOTIFICATION_MEMBER"]+" to listen", func() bool {
		select {
		case <-p.done:
			w.t.Fatalf("%s exited:\n%s", env["NOTIFICATION_MEMBER"], p.logs.String())
		default:
		}
		m := listening.FindStringSubmatch(p.logs.String())
		if m == nil {
			return false
		}
		p.addr = m[1]
		return true
	})
	servicetest.WaitFor(w.t, env["NOTIFICATION_MEMBER"]+" to be ready", func() bool {
		c := http.Client{Timeout: time.Second}
		resp, err := c.Get("http://" + p.addr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return p
}

// kill kills the replica with SIGKILL and waits for it to be gone.
func (p *process) kill(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-p.done
}

// accepted returns the pushes to s the push service answered 201.
func (f *fakePush) accepted(s *subscriber) []pushRequest {
	var out []pushRequest
	for _, r := range f.to(s) {
		if !r.Hung && r.Status == http.StatusCreated {
			out = append(out, r)
		}
	}
	return out
}

// hung returns how many requests the push service never answered.
func (f *fakePush) hung() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, r := range f.requests {
		if r.Hung {
			n++
		}
	}
	return n
}

// Two replicas as processes; one is killed with SIGKILL while it holds
// fallbacks (their pushes hanging at the push service) and events of
// every route. The other takes them all over: each user gets the
// notification by the route of its kind, and a push once exactly (the
// dead replica's were never answered); an email at most twice (one
// SendGrid accepted just before the kill, not yet recorded: one per
// worker of the dead replica at most), and never by another route.
func TestRoutesOnceWithAKilledReplica(t *testing.T) {
	t.Parallel()
	redistest.RequireReal(t, redistest.Shared(t))
	fp := newFakePush(t)
	const workers = 4
	w, _ := newPushWorld(t, map[string]string{
		"NOTIFY_ACK_TIMEOUT": "200ms", "NOTIFICATION_WORKERS": strconv.Itoa(workers), "LOG_LEVEL": "info",
		// A hanging push is tried again and again, never given up within
		// the test, and soon once the push service answers.
		"NOTIFY_PUSH_TIMEOUT": "300ms", "NOTIFICATION_MAX_ATTEMPTS": "1000", "NOTIFICATION_RETRY_MAX": "100ms",
	})
	a := w.process()
	svc := &servicetest.Service{Addrs: map[string]string{"http_addr": a.addr}} // for subscribe
	notes := w.notifications()
	const n = 8
	// online and never acknowledging, offline and subscribed, offline and not
	kinds := map[string]string{"on": "realtime", "sub": "push", "mail": "email"}
	subs := map[string]*subscriber{}
	byKind := map[string][]string{}
	for _, k := range []string{"on", "sub", "mail"} {
		for i := range n {
			u := k + strconv.Itoa(i)
			byKind[k] = append(byKind[k], u)
			w.publish("user.created", &eventbusv1.UserCreated{UserId: u, Email: u + "@example.com", Name: u})
			if k != "mail" {
				subs[u] = fp.subscriber(t, u)
				subscribe(t, svc, u, subs[u])
			}
			if k == "on" {
				w.online(u)
			}
		}
	}
	users := append(append(slices.Clone(byKind["on"]), byKind["sub"]...), byKind["mail"]...)
	servicetest.WaitFor(t, "every welcome email", func() bool { return len(w.sg.sent()) == len(users) })

	// Replica a alone sends the online users' notifications in the page;
	// no receipt comes, and its fallbacks hang at the push service.
	fp.setHang(true)
	placed := map[string]string{} // user → event id
	for _, u := range byKind["on"] {
		placed[u] = w.publish("order.placed", &eventbusv1.OrderPlaced{OrderId: "o-" + u, UserId: u, Total: 100, Currency: "EUR"})
	}
	servicetest.WaitFor(t, "replica a's workers to hang on fallback pushes", func() bool { return fp.hung() >= workers })
	b := w.process()
	for _, u := range append(slices.Clone(byKind["sub"]), byKind["mail"]...) {
		placed[u] = w.publish("order.placed", &eventbusv1.OrderPlaced{OrderId: "o-" + u, UserId: u, Total: 100, Currency: "EUR"})
	}
	a.kill(t)
	fp.setHang(false)

	servicetest.WaitFor(t, "every notification sent by its route, every event acknowledged, no receipt awaited", func() bool {
		for _, u := range users {
			if subs[u] != nil && len(fp.accepted(subs[u])) == 0 {
				return false
			}
			if subs[u] == nil && len(w.sg.to(u+"@example.com")) < 2 {
				return false
			}
		}
		return w.pending("order") == 0 && len(w.acks()) == 0
	})
	twice := 0
	for _, u := range users {
		emails := w.emailsTo(u + "@example.com")[1:] // after the welcome
		if subs[u] != nil {
			if got := len(fp.accepted(subs[u])); got != 1 {
				t.Errorf("%s: the push service accepted %d pushes, want 1", u, got)
			}
			if len(emails) != 0 {
				t.Errorf("%s got emails %q, want none: pushed", u, emails)
			}
			continue
		}
		if len(emails) < 1 || len(emails) > 2 || emails[0] != "Order received" {
			t.Errorf("%s got emails %q, want one order received (2 if the kill fell in the window)", u, emails)
		}
		if len(emails) == 2 {
			twice++
		}
	}
	if twice > workers {
		t.Errorf("%d users got their email twice, want at most %d (the dead replica's workers)", twice, workers)
	}

	// Each notification was published with the route of its user's kind.
	seen := map[string]bool{}
	for len(seen) < len(users) {
		m := bustest.Receive(t, notes)
		env, err := envelope.Unmarshal(m.Payload)
		if err != nil {
			t.Fatal(err)
		}
		var note eventbusv1.Notification
		if err := env.GetData().UnmarshalTo(&note); err != nil {
			t.Fatal(err)
		}
		u := note.GetUserId()
		if note.GetCauseEventId() != placed[u] {
			continue
		}
		if want := kinds[strings.TrimRight(u, "0123456789")]; note.GetRoute() != want {
			t.Errorf("%s's notification went by %s, want %s", u, note.GetRoute(), want)
		}
		seen[u] = true
	}
	fa, fb := strings.Count(a.logs.String(), "falling back"), strings.Count(b.logs.String(), "falling back")
	if fa == 0 || fa+fb != n {
		t.Errorf("fallbacks chosen: %d by the killed replica, %d by the other; want %d in all, some by the killed one", fa, fb, n)
	}
	t.Logf("%d pushes hung; fallbacks chosen: %d by the killed replica, %d by the other; %d of %d mail users emailed twice", fp.hung(), fa, fb, twice, n)
}
