package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeSendGrid is a SendGrid v3 mail send endpoint of our own: it records
// the mails it accepts and answers as scripted.
type fakeSendGrid struct {
	srv *httptest.Server

	mu       sync.Mutex
	mails    []sentMail
	requests int
	script   []int         // statuses for the next requests; 202 once empty
	hold     chan struct{} // when set, each request waits for it to close
	started  chan struct{} // gets a value when a held request arrives
	// answerAfter, when set, makes SendGrid slow: it accepts each mail as
	// it arrives, and answers only this long after, whether the client
	// still waits or not.
	answerAfter time.Duration
	// failing, while set, answers every request 503 after failDelay (or
	// sooner if the client gives up), as SendGrid does in an outage.
	failing   bool
	failDelay time.Duration
}

type sentMail struct {
	To, ToName, From, Subject, Text, HTML string
	Key                                   string // custom_args.eventbus_key
}

const sendGridKey = "SG.test-key"

func newFakeSendGrid(t *testing.T, script ...int) *fakeSendGrid {
	f := &fakeSendGrid{script: script, started: make(chan struct{}, 16)}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeSendGrid) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/v3/mail/send" {
		http.Error(w, `{"errors":[{"message":"not found"}]}`, http.StatusNotFound)
		return
	}
	if r.Header.Get("Authorization") != "Bearer "+sendGridKey {
		http.Error(w, `{"errors":[{"message":"bad key"}]}`, http.StatusUnauthorized)
		return
	}
	var body struct {
		Personalizations []struct {
			To []struct{ Email, Name string }
		}
		From       struct{ Email string }
		Subject    string
		Content    []struct{ Type, Value string }
		CustomArgs map[string]string `json:"custom_args"`
	}
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil || len(body.Personalizations) != 1 || len(body.Personalizations[0].To) != 1 {
		http.Error(w, `{"errors":[{"message":"bad body"}]}`, http.StatusBadRequest)
		return
	}
	f.mu.Lock()
	f.requests++
	status := http.StatusAccepted
	if len(f.script) > 0 {
		status, f.script = f.script[0], f.script[1:]
	}
	hold, failing, failDelay, answerAfter := f.hold, f.failing, f.failDelay, f.answerAfter
	f.mu.Unlock()
	if failing {
		select {
		case <-time.After(failDelay):
		case <-r.Context().Done():
		}
		http.Error(w, `{"errors":[{"message":"outage"}]}`, http.StatusServiceUnavailable)
		return
	}
	if hold != nil {
		f.started <- struct{}{}
		select {
		case <-hold:
		case <-r.Context().Done():
			return // the client gave up: the mail is not accepted
		}
	}
	if status != http.StatusAccepted {
		if status == http.StatusTooManyRequests {
			w.Header().Set("Retry-After", "0")
		}
		http.Error(w, `{"errors":[{"message":"scripted failure"}]}`, status)
		return
	}
	m := sentMail{
		To: body.Personalizations[0].To[0].Email, ToName: body.Personalizations[0].To[0].Name, From: body.From.Email,
		Subject: body.Subject, Key: body.CustomArgs["eventbus_key"],
	}
	for _, c := range body.Content {
		switch c.Type {
		case "text/plain":
			m.Text = c.Value
		case "text/html":
			m.HTML = c.Value
		}
	}
	f.mu.Lock()
	f.mails = append(f.mails, m)
	f.mu.Unlock()
	if answerAfter > 0 {
		<-time.After(answerAfter) // accepted already: the client's leaving changes nothing
	}
	w.WriteHeader(http.StatusAccepted)
}

// release lets the held requests go and holds no more.
func (f *fakeSendGrid) release() {
	f.mu.Lock()
	defer f.mu.Unlock()
	close(f.hold)
	f.hold = nil
}

// setFailing starts or ends an outage (see failing).
func (f *fakeSendGrid) setFailing(on bool, delay time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failing, f.failDelay = on, delay
}

func (f *fakeSendGrid) sent() []sentMail {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]sentMail(nil), f.mails...)
}

func (f *fakeSendGrid) requestCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.requests
}

// to returns the mails sent to addr.
func (f *fakeSendGrid) to(addr string) []sentMail {
	var out []sentMail
	for _, m := range f.sent() {
		if strings.EqualFold(m.To, addr) {
			out = append(out, m)
		}
	}
	return out
}
