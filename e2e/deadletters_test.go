package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
)

// stallingSendGrid rejects the first email, holds the second until its
// client goes away, never accepting it, and accepts every later one.
type stallingSendGrid struct {
	srv     *httptest.Server
	stalled chan struct{} // gets a value when the second request arrives

	mu       sync.Mutex
	requests int
	accepted []string // custom_args.eventbus_key of each email accepted
}

func newStallingSendGrid(t *testing.T) *stallingSendGrid {
	f := &stallingSendGrid{stalled: make(chan struct{}, 1)}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			CustomArgs map[string]string `json:"custom_args"`
		}
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			http.Error(w, `{"errors":[{"message":"bad body"}]}`, http.StatusBadRequest)
			return
		}
		f.mu.Lock()
		f.requests++
		n := f.requests
		f.mu.Unlock()
		switch n {
		case 1:
			http.Error(w, `{"errors":[{"message":"scripted rejection"}]}`, http.StatusBadRequest)
		case 2:
			f.stalled <- struct{}{}
			<-r.Context().Done() // the sender died: nothing accepted
		default:
			f.mu.Lock()
			f.accepted = append(f.accepted, body.CustomArgs["eventbus_key"])
			f.mu.Unlock()
			w.WriteHeader(http.StatusAccepted)
		}
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *stallingSendGrid) acceptedKeys() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.accepted...)
}

// eventbus runs bin/eventbus with args and env and returns its standard
// output and error.
func eventbus(env map[string]string, args ...string) (stdout, stderr string, err error) {
	cmd := exec.Command(filepath.Join(bin, "eventbus"), args...)
	cmd.Env = os.Environ()
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	return out.String(), errOut.String(), err
}

// A replica killed (SIGKILL) while it retries a dead letter, after it took
// the email's claim and before SendGrid accepted the email, holds the email
// up only until its lease runs out: meanwhile another replica's retry
// leaves it, and afterwards sends it, once. The dead letter is kept
// throughout.
func TestDeadLetterRetrySurvivesAKilledReplica(t *testing.T) {
	srv := redistest.Shared(t)
	redistest.RequireReal(t, srv)
	prefix := strings.TrimSuffix(redistest.Prefix(t), ":")
	sg := newStallingSendGrid(t)
	const key = "e2e-operator-key"
	common := map[string]string{"REDIS_URL": srv.URL, "REDIS_PREFIX": prefix, "LOG_LEVEL": "info", "API_KEYS": key}
	apiHTTP := startAPI(t, common)
	var replicas []*process
	var addrs []string
	for i := range 2 {
		addr := servicetest.FreeAddr(t)
		p := start(t, "notification", merge(common, map[string]string{
			"NOTIFICATION_HTTP_ADDR": addr, "NOTIFICATION_MEMBER": fmt.Sprintf("replica-%d", i),
			// A send is cut at 2 s; the lease of a dead replica runs out after 4.
			"NOTIFICATION_VISIBILITY": "2s", "SENDGRID_API_KEY": "SG.test", "SENDGRID_API_URL": sg.srv.URL,
		}))
		waitReady(t, p, "http://"+addr+"/readyz")
		replicas = append(replicas, p)
		addrs = append(addrs, "http://"+addr)
	}
	cli := func(replica int) map[string]string {
		return map[string]string{"EVENTBUS_NOTIFICATION": addrs[replica], "EVENTBUS_API_KEY": key}
	}
	req, err := http.NewRequest(http.MethodPost, "http://"+apiHTTP+"/v1/users", strings.NewReader(`{"user_id":"dk1","email":"dk1@example.com","name":"Dee"}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST /v1/users = %s", resp.Status)
	}

	// SendGrid rejects the welcome email: a dead letter.
	var dl struct {
		ID           string `json:"id"`
		Key          string `json:"key"`
		EventID      string `json:"event_id"`
		Notification string `json:"notification"`
	}
	servicetest.WaitFor(t, "the dead letter", func() bool {
		out, _, err := eventbus(cli(1), "dead-letters", "list")
		return err == nil && json.Unmarshal([]byte(out), &dl) == nil && dl.ID != "" && dl.EventID != ""
	})

	// Replica 0 retries it and is killed while SendGrid holds the send.
	retrying := make(chan error, 1)
	go func() {
		_, _, err := eventbus(cli(0), "dead-letters", "retry")
		retrying <- err
	}()
	<-sg.stalled
	if err := replicas[0].cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-replicas[0].done // dead, so the cleanup does not expect a clean exit
	if err := <-retrying; err == nil {
		t.Error("eventbus dead-letters retry against the killed replica = nil, want the lost connection")
	}

	// Its lease holds: replica 1 leaves the email, and keeps the dead letter.
	claim := prefix + ":notification:claim:" + dl.EventID + ":" + dl.Notification
	out, stderr, err := eventbus(cli(1), "dead-letters", "retry", "--json", "--id", dl.ID)
	var sum struct {
		Sent      int
		Skipped   []struct{ ID, Reason string }
		Remaining int
	}
	if jerr := json.Unmarshal([]byte(out), &sum); err != nil || jerr != nil {
		t.Fatalf("retry while the dead replica's lease holds = %v, %q (%v)\n%s", err, out, jerr, stderr)
	}
	if holder, _ := srv.Client(t).Get(t.Context(), claim).Result(); sum.Sent != 0 || len(sum.Skipped) != 1 ||
		sum.Skipped[0].Reason != "in_progress" || sum.Remaining != 1 {
		t.Errorf("retry while the dead replica's lease holds = %+v (claim %q), want it in_progress and kept", sum, holder)
	}

	// Once the lease runs out, a retry sends the email, once.
	servicetest.WaitFor(t, "the dead replica's lease to run out", func() bool {
		n, err := srv.Client(t).Exists(t.Context(), claim).Result()
		return err == nil && n == 0
	})
	out, stderr, err = eventbus(cli(1), "dead-letters", "retry")
	if err != nil || !strings.HasPrefix(out, "sent 1, skipped 0, failed 0; 0 dead letter(s) remain") {
		t.Errorf("retry after the lease ran out = %v, printed %q\n%s", err, out, stderr)
	}
	if got := sg.acceptedKeys(); len(got) != 1 || got[0] != dl.Key {
		t.Errorf("SendGrid accepted emails keyed %q, want exactly one keyed %s", got, dl.Key)
	}
	if out, _, err := eventbus(cli(1), "dead-letters", "list"); err != nil || out != "" {
		t.Errorf("dead-letters list after the retry = %q, %v; want nothing", out, err)
	}
}
