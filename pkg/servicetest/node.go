package servicetest

import (
	"bufio"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"testing"
	"time"
)

// Node is a Node.js program run by a test, such as a driver of the
// JavaScript client: it prints one JSON object per line, and reads
// commands, one per line, on its standard input.
type Node struct {
	t     testing.TB
	stdin io.Writer
	lines chan map[string]json.RawMessage
}

// StartNode runs node on script with env added to the test's environment,
// and stops it when the test ends, sending "quit" first. Without node the
// test is skipped, unless EVENTBUS_REQUIRE_NODE=1 (as in CI) makes that a
// failure. Node 20 gets the flag its global WebSocket needs.
func StartNode(t testing.TB, script string, env ...string) *Node {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		Needs(t, "EVENTBUS_REQUIRE_NODE", "node is not on PATH")
	}
	var args []string
	if out, _ := exec.Command(node, "-e", "process.stdout.write(typeof WebSocket)").Output(); string(out) != "function" {
		args = append(args, "--experimental-websocket")
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
	n := &Node{t: t, stdin: stdin, lines: make(chan map[string]json.RawMessage, 1024)}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var m map[string]json.RawMessage
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				n.lines <- m
			}
		}
		close(n.lines)
	}()
	return n
}

// Send writes a command line.
func (n *Node) Send(cmd string) {
	n.t.Helper()
	if _, err := io.WriteString(n.stdin, cmd+"\n"); err != nil {
		n.t.Fatal(err)
	}
}

// Until reads lines until one has key, and returns its value; it fails the
// test if none comes within 15 s.
func (n *Node) Until(key string) json.RawMessage {
	n.t.Helper()
	timeout := time.After(15 * time.Second)
	for {
		select {
		case m, ok := <-n.lines:
			if !ok {
				n.t.Fatalf("the node program ended before %q", key)
			}
			if v, ok := m[key]; ok {
				return v
			}
		case <-timeout:
			n.t.Fatalf("no %q from the node program within 15s", key)
		}
	}
}
