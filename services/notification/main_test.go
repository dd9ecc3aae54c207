package main

import (
	"encoding/json"
	"io"
	"maps"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"

	eventbusv1 "github.com/eventbus-suite/eventbus/proto/gen/eventbus/v1"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/bus/bustest"
	"github.com/eventbus-suite/eventbus/pkg/bus/redisbus"
	"github.com/eventbus-suite/eventbus/pkg/envelope"
	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
	"github.com/eventbus-suite/eventbus/services/notification/internal/deadletter"
)

func TestMain(m *testing.M) {
	if os.Getenv(asMain) == "1" {
		main() // a replica of process(): exits on error
		os.Exit(0)
	}
	redistest.Main(m)
}

// world is a Redis prefix with a fake SendGrid and any number of replicas.
type world struct {
	t      *testing.T
	srv    *redistest.Server
	rdb    *redis.Client
	prefix string
	sg     *fakeSendGrid
	bus    *redisbus.Bus
	env    map[string]string
	// replicas started, for their member names
	replicas int
}

func newWorld(t *testing.T, sg *fakeSendGrid, env map[string]string) *world {
	t.Helper()
	return newWorldOn(t, redistest.Shared(t), sg, env)
}

// newWorldOn is newWorld on a Redis server of the test's own.
func newWorldOn(t *testing.T, srv *redistest.Server, sg *fakeSendGrid, env map[string]string) *world {
	t.Helper()
	prefix := strings.TrimSuffix(redistest.Prefix(t), ":")
	b, err := redisbus.New(srv.Client(t), redisbus.Options{Prefix: prefix + ":", HistoryMaxLen: 100_000})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	vars := map[string]string{
		"NOTIFICATION_HTTP_ADDR": "127.0.0.1:0", "REDIS_URL": srv.URL, "REDIS_PREFIX": prefix,
		"SENDGRID_API_KEY": sendGridKey, "SENDGRID_API_URL": sg.srv.URL, "NOTIFY_FROM_EMAIL": "shop@example.com",
		"NOTIFICATION_RETRY_BASE": "10ms", "LOG_LEVEL": "debug", "NOTIFICATION_VISIBILITY": "1s",
	}
	maps.Copy(vars, env)
	return &world{t: t, srv: srv, rdb: srv.Client(t), prefix: prefix, sg: sg, bus: b, env: vars}
}

// replica starts one notification service.
// replica starts one more replica, a member of the group of its own name.
func (w *world) replica() *servicetest.Service {
	w.t.Helper()
	w.replicas++
	env := maps.Clone(w.env)
	env["NOTIFICATION_MEMBER"] = "replica-" + strconv.Itoa(w.replicas)
	return servicetest.Start(w.t, run, env)
}

// publish sends an event with typed data and returns its id.
func (w *world) publish(typ string, data proto.Message) string {
	w.t.Helper()
	a, err := envelope.PackData(data)
	if err != nil {
		w.t.Fatal(err)
	}
	env := &envelope.Envelope{Type: typ, Data: a}
	if err := envelope.Fill(env, "test", time.Now()); err != nil {
		w.t.Fatal(err)
	}
	b, err := envelope.Marshal(env)
	if err != nil {
		w.t.Fatal(err)
	}
	if _, err := w.bus.Publish(w.t.Context(), env.GetChannel(), b); err != nil {
		w.t.Fatal(err)
	}
	return env.GetId()
}

// notifications subscribes to the browser notifications of every user.
func (w *world) notifications() bus.Subscription {
	w.t.Helper()
	sub, err := w.bus.Subscribe(w.t.Context(), "notify:user:*")
	if err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() { _ = sub.Close() })
	return sub
}

func nextNotification(t *testing.T, sub bus.Subscription) (*envelope.Envelope, *eventbusv1.Notification) {
	t.Helper()
	m := bustest.Receive(t, sub)
	env, err := envelope.Unmarshal(m.Payload)
	if err != nil {
		t.Fatal(err)
	}
	var n eventbusv1.Notification
	if err := env.GetData().UnmarshalTo(&n); err != nil {
		t.Fatalf("notification data: %v", err)
	}
	return env, &n
}

func metric(t *testing.T, s *servicetest.Service, name string) float64 {
	t.Helper()
	return servicetest.Metric(t, "http://"+s.Addrs["http_addr"], name)
}

func TestRules(t *testing.T) {
	t.Parallel()
	w := newWorld(t, newFakeSendGrid(t), nil)
	w.replica()
	notes := w.notifications()

	w.publish("user.created", &eventbusv1.UserCreated{UserId: "u1", Email: "ada@example.com", Name: "Ada"})
	servicetest.WaitFor(t, "the welcome email", func() bool { return len(w.sg.sent()) == 1 })
	welcome := w.sg.sent()[0]
	if welcome.To != "ada@example.com" || welcome.ToName != "Ada" || welcome.From != "shop@example.com" ||
		!strings.Contains(welcome.Subject, "Ada") || !strings.Contains(welcome.Text, "ada@example.com") || !strings.Contains(welcome.HTML, "<p>") {
		t.Errorf("welcome email = %+v", welcome)
	}

	// Ada is offline and Web Push is off: the browser notification is
	// published (the record of it) and emailed.
	placed := w.publish("order.placed", &eventbusv1.OrderPlaced{OrderId: "o1", UserId: "u1", Total: 1299, Currency: "EUR"})
	env, n := nextNotification(t, notes)
	if env.GetChannel() != "notify:user:u1" || env.GetType() != "notification.created" || n.GetTitle() != "Order received" ||
		!strings.Contains(n.GetBody(), "12.99 EUR") || n.GetCauseEventId() != placed || n.GetUserId() != "u1" ||
		n.GetRoute() != "email" || n.GetRouteReason() != "offline_push_off" {
		t.Errorf("order received notification = %v on %s", n, env.GetChannel())
	}
	servicetest.WaitFor(t, "the order received email", func() bool { return len(w.sg.sent()) == 2 })
	if m := w.sg.sent()[1]; m.To != "ada@example.com" || m.Subject != "Order received" || !strings.Contains(m.Text, "12.99 EUR") ||
		!strings.Contains(m.Text, "/orders/o1") || !strings.Contains(m.HTML, `href="/orders/o1"`) || !strings.Contains(m.Text, "Hello Ada") {
		t.Errorf("order received email = %+v, want the notification's title, body and link, to Ada", m)
	}

	// order.shipped emails anyway: its browser notification is not
	// emailed a second time.
	shipped := w.publish("order.shipped", &eventbusv1.OrderShipped{OrderId: "o1", UserId: "u1", Carrier: "DHL", TrackingNumber: "JD0001"})
	servicetest.WaitFor(t, "the shipping email", func() bool { return len(w.sg.sent()) == 3 })
	if m := w.sg.sent()[2]; m.To != "ada@example.com" || !strings.Contains(m.Text, "DHL") || !strings.Contains(m.Text, "JD0001") || !strings.Contains(m.Subject, "o1") {
		t.Errorf("shipping email = %+v, want carrier and tracking number", m)
	}
	if _, n := nextNotification(t, notes); n.GetTitle() != "Order shipped" || n.GetCauseEventId() != shipped || !strings.Contains(n.GetBody(), "JD0001") ||
		n.GetRoute() != "none" || n.GetRouteReason() != "offline_emailed_anyway" {
		t.Errorf("shipping notification = %v", n)
	}

	w.publish("payment.completed", &eventbusv1.PaymentCompleted{PaymentId: "p1", OrderId: "o1", UserId: "u1", Amount: 1299, Currency: "EUR"})
	servicetest.WaitFor(t, "the receipt", func() bool { return len(w.sg.sent()) == 4 })
	if m := w.sg.sent()[3]; !strings.Contains(m.Subject, "12.99 EUR") || !strings.Contains(m.Text, "p1") {
		t.Errorf("receipt = %+v", m)
	}
	if _, n := nextNotification(t, notes); n.GetTitle() != "Payment received" {
		t.Errorf("payment notification = %v", n)
	}
	if got := len(w.sg.sent()); got != 4 {
		t.Errorf("%d emails sent, want 4: welcome, order received, shipping, receipt", got)
	}
}

func TestRetriesThenSends(t *testing.T) {
	t.Parallel()
	w := newWorld(t, newFakeSendGrid(t, http.StatusTooManyRequests, http.StatusInternalServerError, http.StatusServiceUnavailable), nil)
	s := w.replica()
	w.publish("user.created", &eventbusv1.UserCreated{UserId: "r1", Email: "r1@example.com"})
	servicetest.WaitFor(t, "the email after retries", func() bool { return len(w.sg.sent()) == 1 })
	if got := w.sg.requestCount(); got != 4 {
		t.Errorf("SendGrid saw %d requests, want 4 (three failures, one success)", got)
	}
	if got := metric(t, s, "eventbus_notification_emails_retried_total"); got != 3 {
		t.Errorf("emails_retried_total = %v, want 3", got)
	}
	if got := metric(t, s, "eventbus_notification_emails_sent_total"); got != 1 {
		t.Errorf("emails_sent_total = %v, want 1", got)
	}
}

func TestFailuresAreDeadLettered(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name     string
		script   []int
		requests int
		reason   string
	}{
		{"retries exhausted", []int{500, 502, 503}, 3, "gave up after 3 attempts"},
		{"rejected, not retried", []int{400}, 1, "rejected by sendgrid: 400"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			w := newWorld(t, newFakeSendGrid(t, tt.script...), map[string]string{"NOTIFICATION_MAX_ATTEMPTS": "3"})
			s := w.replica()
			id := w.publish("user.created", &eventbusv1.UserCreated{UserId: "d1", Email: "d1@example.com"})
			rdb := w.srv.Client(t)
			key := deadletter.ListKey(w.prefix + ":")
			servicetest.WaitFor(t, "the dead letter", func() bool { n, _ := rdb.LLen(t.Context(), key).Result(); return n == 1 })
			raw, err := rdb.LIndex(t.Context(), key, 0).Result()
			if err != nil {
				t.Fatal(err)
			}
			var dl deadletter.Letter
			if err := json.Unmarshal([]byte(raw), &dl); err != nil {
				t.Fatal(err)
			}
			if dl.EventID != id || dl.To != "d1@example.com" || dl.Name != "welcome_email" || !strings.Contains(dl.Reason, tt.reason) {
				t.Errorf("dead letter = %+v, want event %s to d1@example.com, reason %q", dl, id, tt.reason)
			}
			// Everything needed to send it again as it was tried.
			if want := id + "/welcome_email"; dl.ID != want || dl.Key != want || dl.Attempts != 1 ||
				!strings.Contains(dl.Subject, "Welcome") || !strings.Contains(dl.Text, "d1@example.com") || !strings.Contains(dl.HTML, "<p>") {
				t.Errorf("dead letter = %+v, want id and key %s, attempts 1, the subject, text and html bodies", dl, want)
			}
			if got := w.sg.requestCount(); got != tt.requests {
				t.Errorf("SendGrid saw %d requests, want %d", got, tt.requests)
			}
			if got := metric(t, s, "eventbus_notification_emails_failed_total"); got != 1 {
				t.Errorf("emails_failed_total = %v, want 1", got)
			}
			// The claim says dead-lettered: a redelivery of the event leaves
			// the email alone, and only a retry of its dead letter sends it.
			claim := w.prefix + ":notification:claim:" + id + ":welcome_email"
			if state, err := rdb.Get(t.Context(), claim).Result(); state != "dead_lettered" {
				t.Errorf("claim %s = %q, %v after the failure; want dead_lettered", claim, state, err)
			}
		})
	}
}

func TestUnknownUserIsCounted(t *testing.T) {
	t.Parallel()
	w := newWorld(t, newFakeSendGrid(t), nil)
	s := w.replica()
	notes := w.notifications()
	w.publish("order.shipped", &eventbusv1.OrderShipped{OrderId: "o", UserId: "nobody", Carrier: "UPS", TrackingNumber: "1Z"})
	// The browser notification needs no contact and still goes out.
	if _, n := nextNotification(t, notes); n.GetUserId() != "nobody" {
		t.Fatalf("notification = %v", n)
	}
	servicetest.WaitFor(t, "the unknown user to be counted", func() bool {
		return metric(t, s, "eventbus_notification_unknown_users_total") == 1
	})
	if got := w.sg.requestCount(); got != 0 {
		t.Errorf("SendGrid saw %d requests for a user without contact, want 0", got)
	}
}

func TestExactlyOnceWithThreeReplicas(t *testing.T) {
	t.Parallel()
	w := newWorld(t, newFakeSendGrid(t), nil)
	replicas := []*servicetest.Service{w.replica(), w.replica(), w.replica()}
	notes := w.notifications()
	const n = 25
	for i := range n {
		u := "x" + strconv.Itoa(i)
		w.publish("user.created", &eventbusv1.UserCreated{UserId: u, Email: u + "@example.com"})
		w.publish("order.shipped", &eventbusv1.OrderShipped{OrderId: "o" + u, UserId: u, Carrier: "DHL", TrackingNumber: "T" + u})
	}
	// 3n notifications (n welcome emails, n shipping emails, n browser
	// notifications): the group hands each event to one replica.
	sum := func(name string) float64 {
		total := 0.0
		for _, r := range replicas {
			total += metric(t, r, name)
		}
		return total
	}
	servicetest.WaitFor(t, "the replicas to send every notification", func() bool {
		return sum("eventbus_notification_emails_sent_total") == 2*n && sum("eventbus_notification_notifications_published_total") == n
	})
	if got := len(w.sg.sent()); got != 2*n {
		t.Errorf("%d emails sent, want exactly %d", got, 2*n)
	}
	for i := range n {
		addr := "x" + strconv.Itoa(i) + "@example.com"
		if got := len(w.sg.to(addr)); got != 2 {
			t.Errorf("%s got %d emails, want 2 (welcome and shipping)", addr, got)
		}
	}
	seen := map[string]bool{}
	for range n {
		_, note := nextNotification(t, notes)
		if seen[note.GetCauseEventId()] {
			t.Fatalf("two browser notifications for event %s", note.GetCauseEventId())
		}
		seen[note.GetCauseEventId()] = true
	}
	if got := sum("eventbus_notification_notifications_published_total"); got != n {
		t.Errorf("%v browser notifications published, want exactly %d", got, n)
	}
}

func TestShutdownFinishesTheSendInFlight(t *testing.T) {
	t.Parallel()
	sg := newFakeSendGrid(t)
	sg.hold = make(chan struct{})
	// A send may take as long as the visibility timeout: longer than the
	// test holds it.
	w := newWorld(t, sg, map[string]string{"NOTIFICATION_VISIBILITY": "1m"})
	s := w.replica()
	w.publish("user.created", &eventbusv1.UserCreated{UserId: "s1", Email: "s1@example.com"})
	<-sg.started // the send is in flight, held by SendGrid
	stopped := make(chan error, 1)
	go func() { stopped <- s.Stop() }()
	// Release the send only once the service says it is shutting down
	// with the send still taken.
	servicetest.WaitFor(t, "the service to begin its shutdown", func() bool {
		logs := s.Logs()
		return strings.Contains(logs, "stopping: finishing the events already taken") && strings.Contains(logs, `"events":1`)
	})
	close(sg.hold)
	if err := <-stopped; err != nil {
		t.Fatalf("run = %v, want nil", err)
	}
	if got, reqs := len(sg.sent()), sg.requestCount(); got != 1 || reqs != 1 {
		t.Errorf("SendGrid accepted %d emails in %d requests, want the one in flight, sent once", got, reqs)
	}
	if !strings.Contains(s.Logs(), `"email sent"`) {
		t.Errorf("log lacks the email sent during shutdown:\n%s", s.Logs())
	}
}

func TestDryRunLogsEmails(t *testing.T) {
	t.Parallel()
	w := newWorld(t, newFakeSendGrid(t), map[string]string{"SENDGRID_API_KEY": ""})
	s := w.replica()
	w.publish("user.created", &eventbusv1.UserCreated{UserId: "dry", Email: "dry@example.com", Name: "Dry"})
	servicetest.WaitFor(t, "the dry-run log line", func() bool { return strings.Contains(s.Logs(), "dry-run: would send email") })
	for _, want := range []string{"dry-run mode", `"to":"dry@example.com"`, "Welcome to eventbus, Dry!"} {
		if !strings.Contains(s.Logs(), want) {
			t.Errorf("log lacks %q", want)
		}
	}
	if got := w.sg.requestCount(); got != 0 {
		t.Errorf("SendGrid saw %d requests in dry-run mode, want 0", got)
	}
}

// With LOG_FORMAT=text (as scripts/run.sh sets in a terminal) the log is
// text lines and a dry-run email reads as the email would.
func TestDryRunShowsEmailsAsTheyRead(t *testing.T) {
	t.Parallel()
	w := newWorld(t, newFakeSendGrid(t), map[string]string{"SENDGRID_API_KEY": "", "LOG_FORMAT": "text", "NOTIFY_FROM_NAME": "The Shop"})
	s := w.replica()
	w.publish("user.created", &eventbusv1.UserCreated{UserId: "ada", Email: "ada@example.com", Name: "Ada"})
	servicetest.WaitFor(t, "the dry-run email", func() bool { return strings.Contains(s.Logs(), "─── dry-run email") })
	logs := s.Logs()
	i := strings.Index(logs, "─── dry-run email")
	email := logs[i:]
	email = email[:strings.Index(email, "\n───\n")+len("\n───\n")]
	re := regexp.MustCompile(`^─── dry-run email, not sent \(no SENDGRID_API_KEY\) ───
From:    The Shop <shop@example\.com>
To:      Ada <ada@example\.com>
Subject: Welcome to eventbus, Ada!

(?s:.*Ada.*)
───
$`)
	if !re.MatchString(email) {
		t.Errorf("the dry-run email reads\n%s\nwant From, To, Subject and the text", email)
	}
	for _, line := range strings.Split(strings.TrimSpace(logs[:i]), "\n") {
		if !regexp.MustCompile(`^\d\d:\d\d:\d\d\.\d{3} (DEBUG|INFO |WARN |ERROR) `).MatchString(line) {
			t.Errorf("log line %q is not a text line", line)
		}
	}
	if strings.Contains(logs, `{"`) {
		t.Errorf("LOG_FORMAT=text but the log has JSON:\n%s", logs)
	}
}

func TestConfigErrorsNameEveryVariable(t *testing.T) {
	t.Parallel()
	env := map[string]string{"SENDGRID_API_URL": "ftp://x", "NOTIFY_FROM_EMAIL": "not an address", "NOTIFICATION_WORKERS": "0"}
	err := run(t.Context(), func(k string) string { return env[k] }, io.Discard)
	if err == nil {
		t.Fatal("run with bad configuration = nil")
	}
	for k := range env {
		if !strings.Contains(err.Error(), k) {
			t.Errorf("error %q does not name %s", err, k)
		}
	}
}

// Events published while no replica runs are not lost: the group keeps
// its place, and the next replica to start sends them all.
func TestEventsWhileEveryReplicaIsDown(t *testing.T) {
	t.Parallel()
	w := newWorld(t, newFakeSendGrid(t), nil)
	first := w.replica() // makes the group
	if err := first.Stop(); err != nil {
		t.Fatal(err)
	}
	const n = 100
	for i := range n {
		u := "down" + strconv.Itoa(i)
		w.publish("user.created", &eventbusv1.UserCreated{UserId: u, Email: u + "@example.com"})
	}
	s := w.replica()
	servicetest.WaitFor(t, "every welcome email", func() bool {
		return metric(t, s, "eventbus_notification_emails_sent_total") == n
	})
	for i := range n {
		if got := len(w.sg.to("down" + strconv.Itoa(i) + "@example.com")); got != 1 {
			t.Errorf("down%d got %d emails, want 1", i, got)
		}
	}
}
