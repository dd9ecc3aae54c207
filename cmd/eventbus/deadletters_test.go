package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// fakeNotification answers the dead-letter routes as the notification
// service does, and records the retry requests.
type fakeNotification struct {
	srv *httptest.Server

	mu      sync.Mutex
	retries []string // bodies of POST /v1/dead-letters/retry
	summary string
}

const (
	dl1 = `{"id":"e2/welcome_email","event_id":"e2","type":"user.created","notification":"welcome_email","user_id":"u2","to":"b@example.com","to_name":"","subject":"Welcome","key":"e2/welcome_email","attempts":2,"reason":"rejected","failed_at":"2026-11-22T05:00:00Z"}`
	dl2 = `{"id":"e1/welcome_email","event_id":"e1","type":"user.created","notification":"welcome_email","user_id":"u1","to":"a@example.com","to_name":"Ada","subject":"Welcome","key":"e1/welcome_email","attempts":1,"reason":"gave up","failed_at":"2026-11-22T04:00:00Z"}`
)

func newFakeNotification(t *testing.T, summary string) *fakeNotification {
	f := &fakeNotification{summary: summary}
	mux := http.NewServeMux()
	auth := func(next http.HandlerFunc) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("Authorization") != "Bearer k1" {
				w.WriteHeader(http.StatusUnauthorized)
				_, _ = io.WriteString(w, `{"error":{"code":"unauthorized","message":"missing or unknown API key"}}`)
				return
			}
			next(w, r)
		}
	}
	mux.HandleFunc("GET /v1/dead-letters", auth(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `{"dead_letters":[`+dl1+`,`+dl2+`],"total":3}`)
	}))
	mux.HandleFunc("POST /v1/dead-letters/retry", auth(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		f.retries = append(f.retries, string(body))
		f.mu.Unlock()
		_, _ = io.WriteString(w, f.summary)
	}))
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeNotification) env(key string) func(string) string {
	return func(k string) string {
		return map[string]string{"EVENTBUS_NOTIFICATION": f.srv.URL, "EVENTBUS_API_KEY": key}[k]
	}
}

func TestDeadLettersList(t *testing.T) {
	t.Parallel()
	f := newFakeNotification(t, "")
	var stdout, stderr bytes.Buffer
	if err := run(t.Context(), []string{"dead-letters", "list"}, f.env("k1"), &stdout, &stderr); err != nil {
		t.Fatalf("dead-letters list = %v\n%s", err, stderr.String())
	}
	if want := dl1 + "\n" + dl2 + "\n"; stdout.String() != want {
		t.Errorf("dead-letters list printed\n%s\nwant one JSON object a line, newest first:\n%s", stdout.String(), want)
	}
	if !strings.Contains(stderr.String(), "2 of 3 dead letters shown") {
		t.Errorf("stderr = %q, want how many there are in all", stderr.String())
	}

	// Flags over the environment, and the service's refusal as the error.
	err := run(t.Context(), []string{"dead-letters", "list", "--api-key", "wrong", "--notification", f.srv.URL + "/"}, f.env("k1"), io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "401 unauthorized") {
		t.Errorf("dead-letters list with a wrong key = %v, want the 401 unauthorized", err)
	}
}

func TestDeadLettersRetry(t *testing.T) {
	t.Parallel()
	const summary = `{"sent":2,"skipped":[{"id":"e3/welcome_email","reason":"in_progress"}],"failed":[],"remaining":1}`
	f := newFakeNotification(t, summary)
	var stdout bytes.Buffer
	if err := run(t.Context(), []string{"dead-letters", "retry"}, f.env("k1"), &stdout, io.Discard); err != nil {
		t.Fatalf("dead-letters retry = %v", err)
	}
	if want := "sent 2, skipped 1, failed 0; 1 dead letter(s) remain\nskipped e3/welcome_email: in_progress\n"; stdout.String() != want {
		t.Errorf("dead-letters retry printed %q, want %q", stdout.String(), want)
	}

	stdout.Reset()
	args := []string{"dead-letters", "retry", "--id", "e1/welcome_email", "--json", "--id", "e2/welcome_email"}
	if err := run(t.Context(), args, f.env("k1"), &stdout, io.Discard); err != nil {
		t.Fatalf("dead-letters retry --id --id = %v", err)
	}
	var got, want retrySummary
	if err := json.Unmarshal(stdout.Bytes(), &got); err != nil {
		t.Fatalf("--json printed %q: %v", stdout.String(), err)
	}
	_ = json.Unmarshal([]byte(summary), &want)
	if !cmp.Equal(got, want) {
		t.Errorf("--json printed %+v, want %+v", got, want)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if want := []string{"", `{"ids":["e1/welcome_email","e2/welcome_email"]}`}; !cmp.Equal(f.retries, want) {
		t.Errorf("retry bodies = %q, want %q: none for all, the ids for --id", f.retries, want)
	}
}

// A retry with failures exits non-zero, and prints an outside reason on
// one line, whatever it holds.
func TestDeadLettersRetryFailed(t *testing.T) {
	t.Parallel()
	f := newFakeNotification(t, `{"sent":0,"skipped":[],"failed":[{"id":"e1/welcome_email","reason":"sendgrid answered 503: down\nfor \u001b[2Jmaintenance"}],"remaining":1}`)
	var stdout bytes.Buffer
	err := run(t.Context(), []string{"dead-letters", "retry"}, f.env("k1"), &stdout, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "1 failed") {
		t.Errorf("dead-letters retry with a failure = %v, want an error saying 1 failed", err)
	}
	if want := "sent 0, skipped 0, failed 1; 1 dead letter(s) remain\n" +
		`failed  e1/welcome_email: "sendgrid answered 503: down\nfor \x1b[2Jmaintenance"` + "\n"; stdout.String() != want {
		t.Errorf("dead-letters retry printed %q, want %q", stdout.String(), want)
	}
}

func TestDeadLettersUsage(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"dead-letters"}, {"dead-letters", "nope"}, {"dead-letters", "list", "extra"}, {"dead-letters", "retry", "e1"},
		{"dead-letters", "retry", "--id", ""}, {"dead-letters", "list", "--bogus"},
	} {
		var stdout, stderr bytes.Buffer
		err := run(t.Context(), args, func(string) string { return "" }, &stdout, &stderr)
		if !errors.Is(err, errUsage) {
			t.Errorf("run(%q) = %v, want errUsage", args, err)
		}
		if stdout.Len()+stderr.Len() == 0 {
			t.Errorf("run(%q) printed nothing, want the usage", args)
		}
	}
}
