package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
)

// startNodeClient runs clients/js/integration/resume.mjs: the JavaScript
// client, built (make js), in Node against an edge.
func startNodeClient(t *testing.T, env ...string) *servicetest.Node {
	t.Helper()
	return startNodeScript(t, "resume.mjs", env...)
}

// startNodeScript runs the script clients/js/integration/name.
func startNodeScript(t *testing.T, name string, env ...string) *servicetest.Node {
	t.Helper()
	script, err := filepath.Abs("../../clients/js/integration/" + name)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(script), "../dist/eventbus.js")); err != nil {
		servicetest.Needs(t, "EVENTBUS_REQUIRE_NODE", fmt.Sprintf("the JavaScript client is not built: run make js (%v)", err))
	}
	return servicetest.StartNode(t, script, env...)
}

// The JavaScript client, run in Node, over WebSocket and over SSE: it gets
// the live events, loses its connection while events are published, and
// on reconnecting resumes: every event once, in order, recovered.
func TestJSClientFromNode(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	for _, transport := range []string{"websocket", "sse"} {
		t.Run(transport, func(t *testing.T) {
			t.Parallel()
			e := startEdge(t, srv, nil)
			rec := e.recorder(t)
			publish := func(from, to int) []string {
				var want []string
				for i := from; i < to; i++ {
					s := fmt.Sprint(i)
					if _, err := rec.Publish(t.Context(), "nj:x", event(t, "nj:x", s)); err != nil {
						t.Fatal(err)
					}
					want = append(want, s)
				}
				return want
			}
			c := startNodeClient(t, "EDGE="+e.base, "TOKEN="+mint(t, "u1", "nj:*"), "PATTERN=nj:*", "TRANSPORT="+transport)
			c.Until("subscribed")
			received := func(n int) []string {
				var got []string
				for range n {
					var s string
					_ = json.Unmarshal(c.Until("event"), &s)
					got = append(got, s)
				}
				return got
			}
			if want, got := publish(0, 5), received(5); !equal(got, want...) {
				t.Fatalf("live: %q, want %q", got, want)
			}
			c.Send("offline")
			var status string
			for status != "closed" {
				_ = json.Unmarshal(c.Until("status"), &status)
			}
			missed := publish(5, 105)
			c.Send("online")
			var reply struct {
				Recovered *bool
				Missed    int
			}
			if err := json.Unmarshal(c.Until("subscribed"), &reply); err != nil || reply.Recovered == nil || !*reply.Recovered || reply.Missed != 100 {
				t.Fatalf("resumed with %+v (%v), want recovered, 100 missed", reply, err)
			}
			if got := received(100); !equal(got, missed...) {
				t.Fatalf("recovered %q, want %q", strings.Join(got, ","), strings.Join(missed, ","))
			}
			if want, got := publish(105, 108), received(3); !equal(got, want...) {
				t.Fatalf("then: %q, want %q", got, want)
			}
		})
	}
}

// The JavaScript client in "auto", with WebSockets refused, reads the
// edge over SSE; once WebSockets are accepted again it moves back to
// WebSocket by itself, says so, and resumes there: every event once, in
// order, those published around the move included.
func TestJSClientMovesBackToWebSocket(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	e := startEdge(t, srv, nil)
	rec := e.recorder(t)
	publish := func(from, to int) []string {
		var want []string
		for i := from; i < to; i++ {
			s := fmt.Sprint(i)
			if _, err := rec.Publish(t.Context(), "up:x", event(t, "up:x", s)); err != nil {
				t.Fatal(err)
			}
			want = append(want, s)
		}
		return want
	}
	c := startNodeScript(t, "upgrade.mjs", "EDGE="+e.base, "TOKEN="+mint(t, "u1", "up:*"), "PATTERN=up:*")
	type seen struct {
		Transport  string
		Subscribed json.RawMessage
		Event      *string
	}
	next := func() seen {
		var s seen
		if err := json.Unmarshal(c.Until("seen"), &s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	// events reads until n events have come, and returns them with the
	// transport each came over, and the moves seen meanwhile.
	events := func(n int) (got, over, moves []string) {
		for len(got) < n {
			s := next()
			if s.Transport != "" && s.Event == nil {
				moves = append(moves, s.Transport)
			}
			if s.Event != nil {
				got = append(got, *s.Event)
				over = append(over, s.Transport)
			}
		}
		return got, over, moves
	}

	for s := next(); s.Subscribed == nil; s = next() {
		if s.Transport != "" && s.Transport != "sse" {
			t.Fatalf("moved to %q with WebSockets refused, want sse", s.Transport)
		}
	}
	want := publish(0, 5)
	if got, over, _ := events(5); !equal(got, want...) || !equal(over, "sse", "sse", "sse", "sse", "sse") {
		t.Fatalf("over SSE: %q over %q, want %q over sse", got, over, want)
	}

	want = publish(5, 55)
	c.Send("accept")
	want = append(want, publish(55, 105)...)
	got, _, moves := events(100)
	if !equal(got, want...) {
		t.Fatalf("around the move: %q, want %q", strings.Join(got, ","), strings.Join(want, ","))
	}
	for len(moves) == 0 {
		if s := next(); s.Transport != "" && s.Event == nil {
			moves = append(moves, s.Transport)
		}
	}
	if !equal(moves, "websocket") {
		t.Fatalf("moves %q, want [websocket]", moves)
	}
	want = publish(105, 110)
	if got, over, _ := events(5); !equal(got, want...) || !equal(over, "websocket", "websocket", "websocket", "websocket", "websocket") {
		t.Fatalf("then: %q over %q, want %q over websocket", got, over, want)
	}
}
