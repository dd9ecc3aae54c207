package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
)

// nodeClient runs clients/js/integration/resume.mjs: the JavaScript
// client, built (make js), in Node against this edge.
type nodeClient struct {
	t     *testing.T
	stdin io.Writer
	lines chan map[string]json.RawMessage
}

func startNodeClient(t *testing.T, env ...string) *nodeClient {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		if os.Getenv("EVENTBUS_REQUIRE_NODE") == "1" {
			t.Fatal("EVENTBUS_REQUIRE_NODE=1 but node is not on PATH")
		}
		t.Skip("needs node")
	}
	script, err := filepath.Abs("../../clients/js/integration/resume.mjs")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(script), "../dist/eventbus.js")); err != nil {
		t.Fatalf("the client is not built (make js): %v", err)
	}
	var args []string
	if out, _ := exec.Command(node, "-e", "process.stdout.write(typeof WebSocket)").Output(); string(out) != "function" {
		args = append(args, "--experimental-websocket") // Node 20
	}
	cmd := exec.Command(node, append(args, script)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = io.WriteString(stdin, "quit\n")
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	c := &nodeClient{t: t, stdin: stdin, lines: make(chan map[string]json.RawMessage, 1024)}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var m map[string]json.RawMessage
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				c.lines <- m
			}
		}
		close(c.lines)
	}()
	return c
}

func (c *nodeClient) send(cmd string) {
	c.t.Helper()
	if _, err := io.WriteString(c.stdin, cmd+"\n"); err != nil {
		c.t.Fatal(err)
	}
}

// until reads the client's lines until one has key, and returns it.
func (c *nodeClient) until(key string) json.RawMessage {
	c.t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case m, ok := <-c.lines:
			if !ok {
				c.t.Fatalf("the node client ended before %q", key)
			}
			if os.Getenv("DEBUG_NODE") != "" {
				b, _ := json.Marshal(m)
				fmt.Fprintln(os.Stderr, "node:", string(b))
			}
			if v, ok := m[key]; ok {
				return v
			}
		case <-timeout:
			c.t.Fatalf("no %q from the node client within 10s", key)
		}
	}
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
			c.until("subscribed")
			received := func(n int) []string {
				var got []string
				for range n {
					var s string
					_ = json.Unmarshal(c.until("event"), &s)
					got = append(got, s)
				}
				return got
			}
			if want, got := publish(0, 5), received(5); !equal(got, want...) {
				t.Fatalf("live: %q, want %q", got, want)
			}
			c.send("offline")
			var status string
			for status != "closed" {
				_ = json.Unmarshal(c.until("status"), &status)
			}
			missed := publish(5, 105)
			c.send("online")
			var reply struct {
				Recovered *bool
				Missed    int
			}
			if err := json.Unmarshal(c.until("subscribed"), &reply); err != nil || reply.Recovered == nil || !*reply.Recovered || reply.Missed != 100 {
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
