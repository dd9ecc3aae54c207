package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	eventbusv1 "github.com/eventbus-suite/eventbus/proto/gen/eventbus/v1"

	"github.com/eventbus-suite/eventbus/pkg/servicetest"
	"github.com/eventbus-suite/eventbus/services/notification/internal/deadletter"
)

// listing is the answer of GET /v1/dead-letters.
type listing struct {
	DeadLetters []deadletter.Letter `json:"dead_letters"`
	Total       int64               `json:"total"`
}

// call sends a request to a replica's HTTP port with the API key (when not
// empty), decodes the JSON answer into out and returns the status.
func call(t *testing.T, s *servicetest.Service, method, path, key, body string, out any) int {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, "http://"+s.Addrs["http_addr"]+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("%s %s = %d %q: %v", method, path, resp.StatusCode, raw, err)
		}
	}
	return resp.StatusCode
}

func list(t *testing.T, s *servicetest.Service) listing {
	t.Helper()
	var l listing
	if status := call(t, s, http.MethodGet, "/v1/dead-letters", "", "", &l); status != http.StatusOK {
		t.Fatalf("GET /v1/dead-letters = %d", status)
	}
	return l
}

func retry(t *testing.T, s *servicetest.Service, body string) deadletter.Summary {
	t.Helper()
	var sum deadletter.Summary
	if status := call(t, s, http.MethodPost, "/v1/dead-letters/retry", "", body, &sum); status != http.StatusOK {
		t.Fatalf("POST /v1/dead-letters/retry = %d", status)
	}
	return sum
}

// waitDeadLetters waits until the list holds n dead letters.
func waitDeadLetters(t *testing.T, s *servicetest.Service, n int) {
	t.Helper()
	servicetest.WaitFor(t, strconv.Itoa(n)+" dead letters", func() bool { return list(t, s).Total == int64(n) })
}

// rawDeadLetters reads the whole list from Redis, bodies included.
func (w *world) rawDeadLetters() []deadletter.Letter {
	w.t.Helper()
	raws, err := w.srv.Client(w.t).LRange(w.t.Context(), deadletter.ListKey(w.prefix+":"), 0, -1).Result()
	if err != nil {
		w.t.Fatal(err)
	}
	var out []deadletter.Letter
	for _, raw := range raws {
		var l deadletter.Letter
		if err := json.Unmarshal([]byte(raw), &l); err != nil {
			w.t.Fatal(err)
		}
		out = append(out, l)
	}
	return out
}

// claim reads the claim of an event's welcome email.
func (w *world) claim(event string) (string, error) {
	return w.srv.Client(w.t).Get(w.t.Context(), w.prefix+":notification:claim:"+event+":welcome_email").Result()
}

// A welcome email SendGrid rejects is dead-lettered with its body; once
// SendGrid takes email again, a retry sends it exactly once, as first
// tried and with the same key, and the list is empty.
func TestDeadLetterRetrySendsItOnce(t *testing.T) {
	t.Parallel()
	w := newWorld(t, newFakeSendGrid(t, http.StatusBadRequest), nil)
	s := w.replica()
	event := w.publish("user.created", &eventbusv1.UserCreated{UserId: "dl1", Email: "dl1@example.com", Name: "Ada"})
	id := event + "/welcome_email"
	waitDeadLetters(t, s, 1)

	got := list(t, s).DeadLetters[0]
	if got.ID != id || got.Key != id || got.EventID != event || got.Type != "user.created" || got.UserID != "dl1" ||
		got.To != "dl1@example.com" || got.ToName != "Ada" || got.Attempts != 1 || !strings.Contains(got.Reason, "400") {
		t.Errorf("listed dead letter = %+v, want id %s to Ada <dl1@example.com>, attempts 1, SendGrid's reason", got, id)
	}
	if got.Text != "" || got.HTML != "" {
		t.Errorf("listed dead letter has its bodies (%d and %d bytes); the listing leaves them out", len(got.Text), len(got.HTML))
	}
	stored := w.rawDeadLetters()[0]
	if stored.Text == "" || stored.HTML == "" {
		t.Fatalf("stored dead letter lacks its bodies: %+v", stored)
	}

	sum := retry(t, s, "")
	if want := (deadletter.Summary{Sent: 1, Skipped: []deadletter.Outcome{}, Failed: []deadletter.Outcome{}, Remaining: 0}); !cmp.Equal(sum, want) {
		t.Errorf("retry = %+v, want %+v", sum, want)
	}
	mails := w.sg.sent()
	want := sentMail{To: "dl1@example.com", ToName: "Ada", From: "shop@example.com", Subject: stored.Subject, Text: stored.Text, HTML: stored.HTML, Key: id}
	if len(mails) != 1 || !cmp.Equal(mails[0], want) {
		t.Fatalf("SendGrid accepted %+v, want exactly %+v", mails, want)
	}
	if state, err := w.claim(event); state != "sent" {
		t.Errorf("claim of %s = %q, %v; want sent", id, state, err)
	}
	if l := list(t, s); l.Total != 0 || len(l.DeadLetters) != 0 {
		t.Errorf("after the retry the list holds %+v, want nothing", l)
	}
	// Nothing left to send: a second retry sends nothing.
	if sum := retry(t, s, ""); sum.Sent != 0 || len(sum.Skipped)+len(sum.Failed) != 0 {
		t.Errorf("second retry = %+v, want nothing done", sum)
	}
	if got := w.sg.requestCount(); got != 2 {
		t.Errorf("SendGrid saw %d requests, want 2 (the rejection and the retry)", got)
	}
	if got := metric(t, s, `eventbus_notification_dead_letter_retries_total{result="sent"}`); got != 1 {
		t.Errorf("dead_letter_retries_total{sent} = %v, want 1", got)
	}
}

// While one replica's retry is sending a dead letter, another's leaves it;
// the email goes once.
func TestDeadLetterRetryWhileAnotherSends(t *testing.T) {
	t.Parallel()
	sg := newFakeSendGrid(t, http.StatusBadRequest)
	w := newWorld(t, sg, map[string]string{"NOTIFICATION_VISIBILITY": "1m"})
	r1, r2 := w.replica(), w.replica()
	event := w.publish("user.created", &eventbusv1.UserCreated{UserId: "dl2", Email: "dl2@example.com"})
	id := event + "/welcome_email"
	waitDeadLetters(t, r1, 1)

	sg.mu.Lock()
	sg.hold = make(chan struct{})
	sg.mu.Unlock()
	first := make(chan deadletter.Summary, 1)
	go func() { first <- retry(t, r1, "") }()
	<-sg.started // r1 holds the claim and SendGrid holds r1's send
	second := retry(t, r2, `{"ids":["`+id+`"]}`)
	if want := []deadletter.Outcome{{ID: id, Reason: "in_progress"}}; second.Sent != 0 || !cmp.Equal(second.Skipped, want) || len(second.Failed) != 0 || second.Remaining != 1 {
		t.Errorf("retry during the other's send = %+v, want %v skipped and the dead letter kept", second, want)
	}
	close(sg.hold)
	if sum := <-first; sum.Sent != 1 || sum.Remaining != 0 {
		t.Errorf("first retry = %+v, want 1 sent, none remaining", sum)
	}
	if mails := sg.sent(); len(mails) != 1 || mails[0].Key != id {
		t.Errorf("SendGrid accepted %+v, want one email keyed %s", mails, id)
	}
}

// Two replicas retry the same 20 dead letters at the same moment: each
// email goes exactly once, and none is left.
func TestDeadLetterRetriesAtOnce(t *testing.T) {
	t.Parallel()
	const n = 20
	w := newWorld(t, newFakeSendGrid(t, slices.Repeat([]int{http.StatusBadRequest}, n)...), nil)
	r1, r2 := w.replica(), w.replica()
	for i := range n {
		u := "race" + strconv.Itoa(i)
		w.publish("user.created", &eventbusv1.UserCreated{UserId: u, Email: u + "@example.com"})
	}
	waitDeadLetters(t, r1, n)

	start := make(chan struct{})
	sums := make([]deadletter.Summary, 2)
	var wg sync.WaitGroup
	for i, r := range []*servicetest.Service{r1, r2} {
		wg.Go(func() {
			<-start
			sums[i] = retry(t, r, "")
		})
	}
	close(start)
	wg.Wait()

	if sent := sums[0].Sent + sums[1].Sent; sent != n {
		t.Errorf("the retries sent %d + %d emails, want %d in all", sums[0].Sent, sums[1].Sent, n)
	}
	for _, sum := range sums {
		if len(sum.Failed) != 0 {
			t.Errorf("retry failed %+v, want none", sum.Failed)
		}
		for _, o := range sum.Skipped {
			if o.Reason != "in_progress" && o.Reason != "sent_already" {
				t.Errorf("retry skipped %+v, want only in_progress or sent_already", o)
			}
		}
	}
	keys := map[string]int{}
	for _, m := range w.sg.sent() {
		keys[m.Key]++
	}
	for i := range n {
		if got := len(w.sg.to("race" + strconv.Itoa(i) + "@example.com")); got != 1 {
			t.Errorf("race%d got %d emails, want exactly 1", i, got)
		}
	}
	if len(keys) != n {
		t.Errorf("%d distinct keys among the emails, want %d", len(keys), n)
	}
	if l := list(t, r1); l.Total != 0 {
		t.Errorf("%d dead letters left, want none", l.Total)
	}
}

// A dead letter whose email went meanwhile (its claim says sent, say
// because its event came again and was sent) is not sent again, and is
// removed.
func TestDeadLetterSentAlreadyIsRemoved(t *testing.T) {
	t.Parallel()
	w := newWorld(t, newFakeSendGrid(t, http.StatusBadRequest), nil)
	s := w.replica()
	event := w.publish("user.created", &eventbusv1.UserCreated{UserId: "dl3", Email: "dl3@example.com"})
	id := event + "/welcome_email"
	waitDeadLetters(t, s, 1)
	claim := w.prefix + ":notification:claim:" + event + ":welcome_email"
	if err := w.srv.Client(t).Set(t.Context(), claim, "sent", time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	sum := retry(t, s, "")
	if want := []deadletter.Outcome{{ID: id, Reason: "sent_already"}}; sum.Sent != 0 || !cmp.Equal(sum.Skipped, want) || len(sum.Failed) != 0 || sum.Remaining != 0 {
		t.Errorf("retry = %+v, want %v skipped and nothing remaining", sum, want)
	}
	if got := w.sg.requestCount(); got != 1 {
		t.Errorf("SendGrid saw %d requests, want only the first send's", got)
	}
}

// A retry while SendGrid still fails keeps the dead letter, counts the
// attempt and records the new reason, sets the claim back to
// dead-lettered, and a later retry sends it.
func TestDeadLetterRetryFailsAgain(t *testing.T) {
	t.Parallel()
	w := newWorld(t, newFakeSendGrid(t, http.StatusBadRequest, http.StatusServiceUnavailable, http.StatusBadGateway),
		map[string]string{"NOTIFICATION_MAX_ATTEMPTS": "2"})
	s := w.replica()
	event := w.publish("user.created", &eventbusv1.UserCreated{UserId: "dl4", Email: "dl4@example.com"})
	id := event + "/welcome_email"
	waitDeadLetters(t, s, 1)
	before := w.rawDeadLetters()[0]

	sum := retry(t, s, `{"ids":["`+id+`"]}`)
	if sum.Sent != 0 || len(sum.Skipped) != 0 || len(sum.Failed) != 1 || sum.Failed[0].ID != id ||
		!strings.Contains(sum.Failed[0].Reason, "gave up after 2 attempts") || sum.Remaining != 1 {
		t.Fatalf("retry = %+v, want %s failed (gave up after 2 attempts) and kept", sum, id)
	}
	after := w.rawDeadLetters()
	if len(after) != 1 {
		t.Fatalf("%d dead letters after the failed retry, want the one, replaced", len(after))
	}
	a := after[0]
	if a.Attempts != 2 || a.Reason != sum.Failed[0].Reason || !a.FailedAt.After(before.FailedAt) {
		t.Errorf("dead letter after the failed retry: attempts %d, reason %q, failed at %v; want 2, %q, after %v",
			a.Attempts, a.Reason, a.FailedAt, sum.Failed[0].Reason, before.FailedAt)
	}
	a.Attempts, a.Reason, a.FailedAt = before.Attempts, before.Reason, before.FailedAt
	if !cmp.Equal(a, before) {
		t.Errorf("the failed retry changed the email: %s", cmp.Diff(before, a))
	}
	if state, err := w.claim(event); state != "dead_lettered" {
		t.Errorf("claim after the failed retry = %q, %v; want dead_lettered: released to the next retry, not to a redelivery", state, err)
	}

	// SendGrid takes email again.
	if sum := retry(t, s, ""); sum.Sent != 1 || sum.Remaining != 0 {
		t.Errorf("retry once SendGrid works = %+v, want 1 sent", sum)
	}
	if mails := w.sg.sent(); len(mails) != 1 || mails[0].Key != id {
		t.Errorf("SendGrid accepted %+v, want one email keyed %s", mails, id)
	}
}

// Once a send fails for a reason SendGrid may cure, a retry starts no more:
// the rest are reported not_tried, and every dead letter is kept.
func TestDeadLetterRetryStopsWhileSendGridIsDown(t *testing.T) {
	t.Parallel()
	const n = 8
	script := append(slices.Repeat([]int{http.StatusBadRequest}, n), slices.Repeat([]int{http.StatusServiceUnavailable}, n)...)
	w := newWorld(t, newFakeSendGrid(t, script...), map[string]string{"NOTIFICATION_MAX_ATTEMPTS": "1"})
	s := w.replica()
	for i := range n {
		u := "down" + strconv.Itoa(i)
		w.publish("user.created", &eventbusv1.UserCreated{UserId: u, Email: u + "@example.com"})
	}
	waitDeadLetters(t, s, n)
	sum := retry(t, s, "")
	// Sends run four at a time, so up to four fail before the call stops.
	if sum.Sent != 0 || len(sum.Failed) < 1 || len(sum.Failed) > 4 || len(sum.Failed)+len(sum.Skipped) != n || sum.Remaining != n {
		t.Fatalf("retry = %+v, want 1 to 4 failed, the rest not tried, all %d kept", sum, n)
	}
	for _, o := range sum.Skipped {
		if o.Reason != "not_tried" {
			t.Errorf("skipped %+v, want not_tried", o)
		}
	}
	if got := w.sg.requestCount(); got != n+len(sum.Failed) {
		t.Errorf("SendGrid saw %d requests, want %d (the first sends and the failed retries)", got, n+len(sum.Failed))
	}
	attempts := map[int]int{}
	for _, l := range w.rawDeadLetters() {
		attempts[l.Attempts]++
	}
	if want := map[int]int{1: n - len(sum.Failed), 2: len(sum.Failed)}; !cmp.Equal(attempts, want) {
		t.Errorf("dead letters by attempts = %v, want %v", attempts, want)
	}
}

// Ids no dead letter has are reported not_found; the others are retried.
func TestDeadLetterRetryByID(t *testing.T) {
	t.Parallel()
	w := newWorld(t, newFakeSendGrid(t, http.StatusBadRequest, http.StatusBadRequest), nil)
	s := w.replica()
	a := w.publish("user.created", &eventbusv1.UserCreated{UserId: "dl5", Email: "dl5@example.com"}) + "/welcome_email"
	b := w.publish("user.created", &eventbusv1.UserCreated{UserId: "dl6", Email: "dl6@example.com"}) + "/welcome_email"
	waitDeadLetters(t, s, 2)
	sum := retry(t, s, fmt.Sprintf(`{"ids":[%q,"nope/welcome_email",%q]}`, a, a))
	if want := []deadletter.Outcome{{ID: "nope/welcome_email", Reason: "not_found"}}; sum.Sent != 1 || !cmp.Equal(sum.Failed, want) || sum.Remaining != 1 {
		t.Errorf("retry = %+v, want 1 sent, %v, 1 remaining", sum, want)
	}
	if l := list(t, s); len(l.DeadLetters) != 1 || l.DeadLetters[0].ID != b {
		t.Errorf("left %+v, want only %s", l.DeadLetters, b)
	}
}

func TestDeadLettersRefusals(t *testing.T) {
	t.Parallel()
	w := newWorld(t, newFakeSendGrid(t), map[string]string{"API_KEYS": "k1,k2"})
	s := w.replica()
	for _, tt := range []struct {
		name, method, path, key, body string
		status                        int
		code                          string
	}{
		{"list without key", "GET", "/v1/dead-letters", "", "", 401, "unauthorized"},
		{"list with a wrong key", "GET", "/v1/dead-letters", "k3", "", 401, "unauthorized"},
		{"retry without key", "POST", "/v1/dead-letters/retry", "", "", 401, "unauthorized"},
		{"retry with a wrong key", "POST", "/v1/dead-letters/retry", "k", `{"ids":["a"]}`, 401, "unauthorized"},
		{"not JSON", "POST", "/v1/dead-letters/retry", "k1", "{", 400, "invalid_argument"},
		{"ids not a list", "POST", "/v1/dead-letters/retry", "k1", `{"ids":"a"}`, 400, "invalid_argument"},
		{"id not a string", "POST", "/v1/dead-letters/retry", "k1", `{"ids":[1]}`, 400, "invalid_argument"},
		{"unknown field", "POST", "/v1/dead-letters/retry", "k1", `{"id":["a"]}`, 400, "invalid_argument"},
		{"empty id", "POST", "/v1/dead-letters/retry", "k2", `{"ids":[""]}`, 400, "invalid_argument"},
		{"two objects", "POST", "/v1/dead-letters/retry", "k1", `{} {}`, 400, "invalid_argument"},
		{"too many ids", "POST", "/v1/dead-letters/retry", "k1", `{"ids":["a"` + strings.Repeat(`,"a"`, deadletter.MaxPerCall) + `]}`, 400, "invalid_argument"},
		{"too long an id", "POST", "/v1/dead-letters/retry", "k1", `{"ids":["` + strings.Repeat("a", deadletter.MaxIDBytes+1) + `"]}`, 400, "invalid_argument"},
		{"too large a body", "POST", "/v1/dead-letters/retry", "k1", strings.Repeat(" ", deadletter.MaxBodyBytes+1), 413, "payload_too_large"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var e struct {
				Error struct{ Code, Message string }
			}
			status := call(t, s, tt.method, tt.path, tt.key, tt.body, &e)
			if status != tt.status || e.Error.Code != tt.code || e.Error.Message == "" {
				t.Errorf("%s %s = %d %+v, want %d %s with a message", tt.method, tt.path, status, e.Error, tt.status, tt.code)
			}
		})
	}
	var l listing
	if status := call(t, s, "GET", "/v1/dead-letters", "k2", "", &l); status != 200 || l.Total != 0 || l.DeadLetters == nil {
		t.Errorf("GET /v1/dead-letters with a key = %d %+v, want 200 and an empty list", status, l)
	}
	var sum deadletter.Summary
	if status := call(t, s, "POST", "/v1/dead-letters/retry", "k1", `{"ids":["x/y"]}`, &sum); status != 200 ||
		!cmp.Equal(sum.Failed, []deadletter.Outcome{{ID: "x/y", Reason: "not_found"}}) {
		t.Errorf("retry of an unknown id = %d %+v, want 200 with x/y not_found", status, sum)
	}
	if got := w.sg.requestCount(); got != 0 {
		t.Errorf("SendGrid saw %d requests, want none", got)
	}
	if status := call(t, s, "GET", "/readyz", "", "", nil); status != 200 {
		t.Errorf("GET /readyz = %d without a key, want 200: probes send none", status)
	}
}
