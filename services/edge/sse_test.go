package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
	"github.com/eventbus-suite/eventbus/pkg/sse"
)

// sseStream is a test SSE connection.
type sseStream struct {
	t    *testing.T
	resp *http.Response
	r    *sse.Reader
}

// openSSE opens /sse with query q and header h, failing unless it streams.
func (e *edge) openSSE(t *testing.T, q url.Values, h http.Header) *sseStream {
	t.Helper()
	resp := e.getSSE(t, q, h)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET /sse?%s = %s %s, want a stream", q.Encode(), resp.Status, b)
	}
	return &sseStream{t: t, resp: resp, r: sse.NewReader(resp.Body)}
}

func (e *edge) getSSE(t *testing.T, q url.Values, h http.Header) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, e.base+"/sse?"+q.Encode(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range h {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// next reads one event; a missing event fails the test after 10 s.
func (s *sseStream) next() sse.Event {
	s.t.Helper()
	got := make(chan sse.Event, 1)
	errs := make(chan error, 1)
	go func() {
		ev, err := s.r.Next()
		if err != nil {
			errs <- err
			return
		}
		got <- ev
	}()
	select {
	case ev := <-got:
		return ev
	case err := <-errs:
		s.t.Fatalf("read event: %v", err)
	case <-time.After(10 * time.Second):
		s.t.Fatal("no event within 10s")
	}
	return sse.Event{}
}

// event reads one event frame and returns its subject, with the event's id.
func (s *sseStream) event() (subject, id string) {
	s.t.Helper()
	ev := s.next()
	var f frame
	if ev.Type != "message" || json.Unmarshal([]byte(ev.Data), &f) != nil || f.Offset == "" {
		s.t.Fatalf("event %+v, want an event frame with its position", ev)
	}
	return f.subject(), ev.ID
}

// An EventSource subscribes with its channel parameters, gets a
// "subscribed" event per channel, then the events, each with an id; sent
// back as Last-Event-ID, that id resumes every subscription.
func TestSSEStreamsAndResumes(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), nil)
	rec := e.recorder(t)
	publish := func(ch, subject string) {
		t.Helper()
		if _, err := rec.Publish(t.Context(), ch, event(t, ch, subject)); err != nil {
			t.Fatal(err)
		}
	}
	publish("sa:x", "before") // so sa has a position when the stream opens
	q := url.Values{"channel": {"sa:*", "sb:*"}, "token": {mint(t, "u1", "sa:*", "sb:*")}}
	s := e.openSSE(t, q, nil)
	for range 2 {
		ev := s.next()
		var r struct{ Channel string }
		if ev.Type != "subscribed" || json.Unmarshal([]byte(ev.Data), &r) != nil || (r.Channel != "sa:*" && r.Channel != "sb:*") {
			t.Fatalf("first events: %+v, want subscribed for each channel", ev)
		}
		if r.Channel == "sa:*" && ev.ID == "" {
			t.Fatalf("subscribed to sa:* = %+v, want an id with sa's position", ev)
		}
	}
	publish("sa:x", "1")
	publish("sb:y", "2")
	var last string
	for _, want := range []string{"1", "2"} {
		subject, id := s.event()
		if subject != want || id == "" {
			t.Fatalf("event %q with id %q, want %s with an id", subject, id, want)
		}
		last = id
	}
	s.resp.Body.Close()
	for i := range 5 {
		publish([]string{"sa:x", "sb:y"}[i%2], fmt.Sprint("m", i))
	}
	s = e.openSSE(t, q, http.Header{"Last-Event-ID": {last}})
	// Each subscription's reply comes before its own events; the two
	// subscriptions' may interleave.
	missed, replies := 0, 0
	got := map[string]bool{}
	for range 2 + 5 {
		ev := s.next()
		if ev.Type == "message" {
			var f frame
			if json.Unmarshal([]byte(ev.Data), &f) != nil {
				t.Fatalf("event %+v is no frame", ev)
			}
			got[f.subject()] = true
			continue
		}
		var r struct {
			Channel   string
			Recovered *bool
			Missed    int
		}
		if ev.Type != "subscribed" || json.Unmarshal([]byte(ev.Data), &r) != nil || r.Recovered == nil || !*r.Recovered {
			t.Fatalf("after reconnecting: %+v, want subscribed and recovered", ev)
		}
		missed += r.Missed
		replies++
	}
	if missed != 5 || replies != 2 {
		t.Fatalf("%d replies, %d missed in all; want 2, 5", replies, missed)
	}
	for i := range 5 {
		if !got[fmt.Sprint("m", i)] {
			t.Fatalf("recovered %v, want m0 to m4", got)
		}
	}
}

// A stream is refused, with a JSON error, before it begins.
func TestSSERefusals(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), map[string]string{"EDGE_MAX_SUBSCRIPTIONS": "2"})
	tok := mint(t, "u1", "ok:*")
	for _, tt := range []struct {
		name   string
		q      url.Values
		h      http.Header
		status int
		code   string
	}{
		{"no channel", url.Values{"token": {tok}}, nil, 400, "bad_request"},
		{"bad channel", url.Values{"token": {tok}, "channel": {"a b"}}, nil, 400, "invalid_channel"},
		{"too many channels", url.Values{"token": {tok}, "channel": {"ok:a", "ok:b", "ok:c"}}, nil, 400, "too_many_subscriptions"},
		{"no token", url.Values{"channel": {"ok:a"}}, nil, 401, "unauthorized"},
		{"bad token", url.Values{"channel": {"ok:a"}, "token": {"nope"}}, nil, 401, "unauthorized"},
		{"not bearer", url.Values{"channel": {"ok:a"}}, http.Header{"Authorization": {"Basic " + tok}}, 401, "unauthorized"},
		{"not granted", url.Values{"channel": {"other:a"}, "token": {tok}}, nil, 403, "forbidden"},
		{"bad Last-Event-ID", url.Values{"channel": {"ok:a"}, "token": {tok}}, http.Header{"Last-Event-ID": {"!!"}}, 400, "bad_request"},
		{"huge Last-Event-ID", url.Values{"channel": {"ok:a"}, "token": {tok}}, http.Header{"Last-Event-ID": {strings.Repeat("a", 17<<10)}}, 400, "bad_request"},
	} {
		resp := e.getSSE(t, tt.q, tt.h)
		code, message, err := servicetest.ErrorReply(resp)
		if resp.StatusCode != tt.status || err != nil || code != tt.code || message == "" {
			t.Errorf("%s: %s %s %q (%v), want %d %s", tt.name, resp.Status, code, message, err, tt.status, tt.code)
		}
	}
	// The header works as the parameter does.
	s := e.openSSE(t, url.Values{"channel": {"ok:a"}}, http.Header{"Authorization": {"Bearer " + tok}})
	if ev := s.next(); ev.Type != "subscribed" {
		t.Fatalf("with the header: %+v, want subscribed", ev)
	}
}

// An idle stream gets a comment every EDGE_SSE_KEEPALIVE.
func TestSSEKeepAlive(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), map[string]string{"EDGE_SSE_KEEPALIVE": "20ms"})
	resp := e.getSSE(t, url.Values{"channel": {"ka:a"}, "token": {mint(t, "u1", "ka:a")}}, nil)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	context.AfterFunc(ctx, func() { resp.Body.Close() })
	lines := bufio.NewScanner(resp.Body)
	for lines.Scan() {
		if lines.Text() == ": keep-alive" {
			return
		}
	}
	t.Fatalf("no keep-alive comment: %v", lines.Err())
}
