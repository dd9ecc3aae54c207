package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
)

// fakeSendGrid accepts every email at once and counts them by recipient.
type fakeSendGrid struct {
	mu   sync.Mutex
	to   map[string]int
	keys map[string]bool // custom_args.eventbus_key seen
	srv  *httptest.Server
}

func newFakeSendGrid(t *testing.T) *fakeSendGrid {
	f := &fakeSendGrid{to: map[string]int{}, keys: map[string]bool{}}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Personalizations []struct{ To []struct{ Email string } }
			CustomArgs       map[string]string `json:"custom_args"`
		}
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil || len(body.Personalizations) != 1 {
			http.Error(w, `{"errors":[{"message":"bad body"}]}`, http.StatusBadRequest)
			return
		}
		f.mu.Lock()
		f.to[body.Personalizations[0].To[0].Email]++
		f.keys[body.CustomArgs["eventbus_key"]] = true
		f.mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeSendGrid) count() (emails, recipients int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, n := range f.to {
		emails += n
	}
	return emails, len(f.to)
}

// Three notification replicas share the group; one is killed (SIGKILL)
// in the middle of 300 sign-ups. Every user gets a welcome email: what the
// dead replica held goes to the others. An email goes twice only if the
// replica died between SendGrid's acceptance and recording it as sent, so
// at most one per worker of the dead replica, each recognisable by its
// eventbus_key.
func TestNotificationSurvivesAKilledReplica(t *testing.T) {
	srv := redistest.Shared(t)
	redistest.RequireReal(t, srv)
	prefix := strings.TrimSuffix(redistest.Prefix(t), ":")
	sg := newFakeSendGrid(t)
	common := map[string]string{"REDIS_URL": srv.URL, "REDIS_PREFIX": prefix, "LOG_LEVEL": "warn"}
	apiHTTP := startAPI(t, common)
	const workers = 8
	var replicas []*process
	for i := range 3 {
		addr := servicetest.FreeAddr(t)
		p := start(t, "notification", merge(common, map[string]string{
			"NOTIFICATION_HTTP_ADDR": addr, "NOTIFICATION_MEMBER": fmt.Sprintf("replica-%d", i),
			"NOTIFICATION_VISIBILITY": "1s", "SENDGRID_API_KEY": "SG.test", "SENDGRID_API_URL": sg.srv.URL,
			"NOTIFICATION_WORKERS": fmt.Sprint(workers),
		}))
		waitReady(t, p, "http://"+addr+"/readyz")
		replicas = append(replicas, p)
	}
	const users = 300
	signUp := func(from, to int) {
		var body bytes.Buffer
		for i := from; i < to; i++ {
			fmt.Fprintf(&body, `{"type":"user.created","data":{"user_id":"k%d","email":"k%d@example.com"}}`+"\n", i, i)
		}
		postBatch(t, apiHTTP, &body)
	}
	signUp(0, users/2)
	// Kill a replica once some emails went out, with the rest in flight.
	servicetest.WaitFor(t, "the first emails", func() bool { n, _ := sg.count(); return n >= users/6 })
	if err := replicas[0].cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-replicas[0].done // dead, so the cleanup does not expect a clean exit
	signUp(users/2, users)
	servicetest.WaitFor(t, "a welcome email for every user", func() bool { _, r := sg.count(); return r >= users })
	sg.mu.Lock()
	defer sg.mu.Unlock()
	twice := 0
	for i := range users {
		switch n := sg.to[fmt.Sprintf("k%d@example.com", i)]; {
		case n == 2:
			twice++
		case n != 1:
			t.Errorf("user k%d got %d welcome emails, want 1 (2 if the kill fell in the window)", i, n)
		}
	}
	if twice > workers {
		t.Errorf("%d users got their welcome email twice, want at most %d (the dead replica's workers)", twice, workers)
	}
	if len(sg.keys) != users {
		t.Errorf("%d distinct eventbus_key custom args, want one per user (%d): a repeat carries its first's key", len(sg.keys), users)
	}
	t.Logf("%d of %d users got their welcome email twice", twice, users)
}
