package main

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	eventbusv1 "github.com/eventbus-suite/eventbus/proto/gen/eventbus/v1"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
)

// pending returns how many events of namespace ns the group notification
// has yet to acknowledge, delivered or not, or -1 when Redis does not say.
func (w *world) pending(ns string) int64 {
	w.t.Helper()
	st, err := w.bus.Stats(w.t.Context())
	if err != nil {
		return -1
	}
	for _, n := range st.Namespaces {
		for _, g := range n.Groups {
			if n.Namespace == ns && g.Name == "notification" {
				if g.Lag < 0 {
					return -1
				}
				return g.Pending + g.Lag
			}
		}
	}
	return -1
}

// sum adds up a metric over replicas.
func sum(t *testing.T, replicas []*servicetest.Service, name string) float64 {
	t.Helper()
	total := 0.0
	for _, r := range replicas {
		total += metric(t, r, name)
	}
	return total
}

// readyz returns the status of a replica's GET /readyz, 0 when it does not
// answer.
func readyz(s *servicetest.Service) int {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + s.Addrs["http_addr"] + "/readyz")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// users publishes user.created for users name0…name<n-1> and returns their
// addresses.
func (w *world) users(name string, n int) []string {
	w.t.Helper()
	var addrs []string
	for i := range n {
		u := name + strconv.Itoa(i)
		w.publish("user.created", &eventbusv1.UserCreated{UserId: u, Email: u + "@example.com"})
		addrs = append(addrs, u+"@example.com")
	}
	return addrs
}

// A SendGrid that accepts each email at once but answers only after twice
// the visibility timeout gets each once: the heartbeat keeps the event and
// the lease while the send runs, so neither the other replica nor a
// redelivery sends it again. (Before, the send was cut at the visibility
// timeout and the email went again with each redelivery.)
func TestSlowSendGridSendsEachEmailOnce(t *testing.T) {
	t.Parallel()
	sg := newFakeSendGrid(t)
	sg.answerAfter = 2 * time.Second // the world's visibility is 1 s
	w := newWorld(t, sg, nil)
	replicas := []*servicetest.Service{w.replica(), w.replica()}
	const n = 10
	addrs := w.users("slow", n)
	servicetest.WaitFor(t, "every welcome email sent and its event acknowledged", func() bool {
		return sum(t, replicas, "eventbus_notification_emails_sent_total") == n && w.pending("user") == 0
	})
	if got := len(sg.sent()); got != n {
		t.Errorf("SendGrid accepted %d emails, want %d", got, n)
	}
	for _, a := range addrs {
		if got := len(sg.to(a)); got != 1 {
			t.Errorf("%s got %d emails, want 1", a, got)
		}
	}
	if got := sum(t, replicas, "eventbus_notification_emails_sent_total"); got != float64(len(sg.sent())) {
		t.Errorf("emails_sent_total = %v, want %d, what SendGrid accepted", got, len(sg.sent()))
	}
	if got := sum(t, replicas, "eventbus_notification_emails_timed_out_total"); got != 0 {
		t.Errorf("emails_timed_out_total = %v, want 0", got)
	}
}

// While SendGrid fails, events wait in a replica's one worker's queue far
// longer than the visibility timeout; the heartbeat keeps them from the
// other replica. So the dead letters are exactly the emails never sent,
// each once, none of them sent later by a redelivery, and once SendGrid
// recovers every other email goes once.
func TestDeadLettersWhileSendGridFails(t *testing.T) {
	t.Parallel()
	sg := newFakeSendGrid(t)
	// Each email fails twice, 200 ms a try: the queued events wait
	// seconds, several visibility timeouts, before SendGrid recovers.
	sg.setFailing(true, 200*time.Millisecond)
	w := newWorld(t, sg, map[string]string{"NOTIFICATION_WORKERS": "1", "NOTIFICATION_MAX_ATTEMPTS": "2"})
	replicas := []*servicetest.Service{w.replica(), w.replica()}
	const n = 24
	addrs := w.users("outage", n)
	servicetest.WaitFor(t, "16 dead letters", func() bool { return len(w.rawDeadLetters()) >= 16 })
	sg.setFailing(false, 0)

	// Every event handled (an email or a dead letter per user) and
	// acknowledged: nothing can come again.
	dead := map[string]int{} // address → dead letters
	servicetest.WaitFor(t, "every email sent or dead-lettered, every event acknowledged", func() bool {
		clear(dead)
		for _, l := range w.rawDeadLetters() {
			dead[l.To]++
		}
		for _, a := range addrs {
			if dead[a] == 0 && len(sg.to(a)) == 0 {
				return false
			}
		}
		return w.pending("user") == 0
	})
	letters, sent := 0, 0
	for _, a := range addrs {
		got := len(sg.to(a))
		switch {
		case dead[a] > 1:
			t.Errorf("%s has %d dead letters, want 1", a, dead[a])
		case dead[a] == 1 && got != 0:
			t.Errorf("%s has a dead letter and got %d emails, want none: dead letters are emails never sent", a, got)
		case dead[a] == 0 && got != 1:
			t.Errorf("%s got %d emails, want 1", a, got)
		}
		letters += dead[a]
		sent += got
	}
	t.Logf("%d users: %d emails sent, %d dead letters", n, sent, letters)
	if letters < 16 || sent == 0 {
		t.Errorf("%d dead letters and %d emails sent, want at least 16 and 1: both the outage and the recovery", letters, sent)
	}
	if got := sum(t, replicas, "eventbus_notification_emails_failed_total"); got != float64(letters) {
		t.Errorf("emails_failed_total = %v, want %d, the dead letters", got, letters)
	}
	if got := sum(t, replicas, "eventbus_notification_emails_sent_total"); got != float64(sent) {
		t.Errorf("emails_sent_total = %v, want %d, what SendGrid accepted", got, sent)
	}
}

// Redis killed (its data kept in the append-only file) while sends are in
// flight: neither replica exits, each says unready on /readyz during the
// outage and ready after, logs the outage once, and every event's email
// goes once, those published before the outage and after it.
func TestRedisOutage(t *testing.T) {
	t.Parallel()
	srv := redistest.StartPersistent(t)
	sg := newFakeSendGrid(t)
	sg.hold = make(chan struct{})
	// A visibility timeout longer than the outage: nothing is redelivered,
	// every event goes on with the replica that had it.
	// At debug level, where a worker says it waits for Redis.
	w := newWorldOn(t, srv, sg, map[string]string{"NOTIFICATION_VISIBILITY": "10s", "LOG_LEVEL": "debug"})
	replicas := []*servicetest.Service{w.replica(), w.replica()}
	const n = 10
	before := w.users("before", n)
	<-sg.started // a send is in flight, held by SendGrid

	srv.Stop(t)
	for i, r := range replicas {
		servicetest.WaitFor(t, "replica "+strconv.Itoa(i+1)+" to say unready", func() bool { return readyz(r) == http.StatusServiceUnavailable })
		servicetest.WaitFor(t, "replica "+strconv.Itoa(i+1)+" to log the outage", func() bool {
			return strings.Contains(r.Logs(), "read the record failed; retrying until it works")
		})
	}
	sg.release() // SendGrid accepts the mails in flight while Redis is away
	servicetest.WaitFor(t, "a worker to wait for Redis to record a sent email", func() bool {
		return strings.Contains(replicas[0].Logs()+replicas[1].Logs(), "a step on redis failed; retrying")
	})
	srv.Restart(t)

	after := w.users("after", n)
	servicetest.WaitFor(t, "every email sent and every event acknowledged", func() bool {
		return len(sg.sent()) >= 2*n && w.pending("user") == 0
	})
	for _, a := range append(before, after...) {
		if got := len(sg.to(a)); got != 1 {
			t.Errorf("%s got %d emails, want 1", a, got)
		}
	}
	for i, r := range replicas {
		servicetest.WaitFor(t, "replica "+strconv.Itoa(i+1)+" to say ready", func() bool { return readyz(r) == http.StatusOK })
		// Its reads may still be waiting out their backoff while the other
		// replica does the work.
		servicetest.WaitFor(t, "replica "+strconv.Itoa(i+1)+" to read the record again", func() bool {
			return strings.Contains(r.Logs(), "read the record works again")
		})
		logs := r.Logs()
		if a, b := strings.Count(logs, "failed; retrying until it works"), strings.Count(logs, "works again"); a != 1 || b != 1 {
			t.Errorf("replica %d logged the outage %d times and its end %d times, want once each", i+1, a, b)
		}
		if err := r.Stop(); err != nil {
			t.Errorf("replica %d: run = %v, want nil: it rode the outage out", i+1, err)
		}
	}
}
