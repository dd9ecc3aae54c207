package e2e

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
)

// readmeBlock returns the first ```sh block of the README after the line
// starting with after.
func readmeBlock(t *testing.T, readme, after string) string {
	t.Helper()
	i := strings.Index(readme, "\n"+after)
	if i < 0 {
		t.Fatalf("the README has no line starting %q", after)
	}
	rest := readme[i:]
	start := strings.Index(rest, "\n```sh\n")
	if start < 0 {
		t.Fatalf("no sh block after %q", after)
	}
	rest = rest[start+len("\n```sh\n"):]
	end := strings.Index(rest, "\n```")
	if end < 0 {
		t.Fatalf("the sh block after %q does not end", after)
	}
	return rest[:end]
}

// comment is a shell comment after a command: blanks, '#', a blank.
var comment = regexp.MustCompile(`\s+# .*$`)

// port is the port of a host:port.
func port(t *testing.T, addr string) string {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// The README's quick start, top to bottom, as a script: make run
// (scripts/run.sh, as a newcomer has it: no secret, no prefix), then its
// two blocks of commands as they are written, in a shell of their own
// ("in another terminal"), which knows the services' ports as a user who
// moved them would (API_HTTP_ADDR and the like; the README's literal
// localhost ports are moved the same way). The commands that follow
// forever (mosquitto_sub, eventbus tail, the SSE tail) run in the
// background until the script ends; grpcurl runs when it is installed.
// Every command must succeed, and the followers must have seen the order
// the script publishes.
func TestTheREADMEQuickStartAsAScript(t *testing.T) {
	for _, p := range []string{"mosquitto_sub", "mosquitto_pub", "curl", "bash"} {
		if _, err := exec.LookPath(p); err != nil {
			servicetest.Needs(t, "EVENTBUS_REQUIRE_MOSQUITTO", "no "+p+" on PATH")
		}
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	script := readmeBlock(t, readme, "The same from a terminal") + "\n" + readmeBlock(t, readme, "More, in another terminal")

	srv := redistest.Start(t) // make run has no prefix: a server of its own
	addrs := map[string]string{}
	for _, v := range []string{"API_HTTP_ADDR", "API_GRPC_ADDR", "LOGGER_HTTP_ADDR", "EDGE_HTTP_ADDR", "EDGE_MQTT_ADDR", "NOTIFICATION_HTTP_ADDR"} {
		addrs[v] = servicetest.FreeAddr(t)
	}
	env := []string{"REDIS_URL=" + srv.URL, "LOGGER_DIR=" + t.TempDir(), "EDGE_JWT_SECRET=", "REDIS_PREFIX="}
	for v, a := range addrs {
		env = append(env, v+"="+a)
	}
	startRun(t, root, env, addrs["API_HTTP_ADDR"], addrs["EDGE_HTTP_ADDR"], addrs["LOGGER_HTTP_ADDR"])

	// The README's ports, moved to the test's.
	for from, to := range map[string]string{
		"localhost:8080": "localhost:" + port(t, addrs["API_HTTP_ADDR"]),
		"localhost:8082": "localhost:" + port(t, addrs["LOGGER_HTTP_ADDR"]),
		"localhost:9090": "localhost:" + port(t, addrs["API_GRPC_ADDR"]),
		"-p 11883":       "-p " + port(t, addrs["EDGE_MQTT_ADDR"]),
	} {
		script = strings.ReplaceAll(script, from, to)
	}
	dir := t.TempDir()
	var lines []string
	for l := range strings.SplitSeq(script, "\n") {
		cmd := comment.ReplaceAllString(l, "") // a comment after a command
		switch {
		case strings.TrimSpace(cmd) == "" || strings.HasPrefix(l, "#"):
			continue
		case strings.HasPrefix(l, "mosquitto_sub "):
			// In the background, and on once the edge has granted it.
			l = cmd + " -d -C 1 > " + dir + "/mqtt.out &\n" +
				"for i in $(seq 100); do grep -q '^Subscribed' " + dir + "/mqtt.out && break; sleep 0.1; done"
		case strings.HasPrefix(l, "bin/eventbus tail"):
			l = cmd + " > " + dir + "/tail.out &"
		case strings.HasPrefix(l, "curl -sN "):
			l = cmd + " > " + dir + "/sse.out &"
		case strings.HasPrefix(l, "grpcurl "):
			l = "if command -v grpcurl >/dev/null; then " + cmd + "; fi"
		}
		lines = append(lines, l)
	}
	// Followers run until the script has published, then a moment more
	// for what is in flight: they are killed when their output holds the
	// order, or at the end of the bound.
	wait := `
for f in mqtt.out tail.out sse.out; do
	for i in $(seq 100); do grep -q 'order' "` + dir + `/$f" 2>/dev/null && break; sleep 0.1; done
done
kill $(jobs -p) 2>/dev/null || true
`
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", "set -e\n"+strings.Join(lines, "\n")+wait)
	// A checkout as make run leaves it: this test's binaries in bin/, the
	// secret make run made in data/.
	cmd.Dir = t.TempDir()
	for name, target := range map[string]string{"bin": bin, "data": filepath.Join(root, "data")} {
		if err := os.Symlink(target, filepath.Join(cmd.Dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	cmd.Env = append(os.Environ(), "EVENTBUS_API=", "EDGE_JWT_SECRET=")
	// The script and whatever it left in the background go together.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	t.Cleanup(func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	for v, a := range addrs {
		cmd.Env = append(cmd.Env, v+"="+a)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the README's commands: %v\n%s", err, out)
	}
	for f, want := range map[string]string{"mqtt.out": "order/", "tail.out": "order.", "sse.out": "order."} {
		got, _ := os.ReadFile(filepath.Join(dir, f))
		if !strings.Contains(string(got), want) {
			t.Errorf("%s holds %q, want the order the script published (%s)\nscript output:\n%s", f, got, want, out)
		}
	}
}
