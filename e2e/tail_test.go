package e2e

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eventbus-suite/eventbus/pkg/bus/redisbus"
	"github.com/eventbus-suite/eventbus/pkg/envelope"
	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
)

func TestTailCLISendsTheAPIKey(t *testing.T) {
	srv := redistest.Shared(t)
	prefix := strings.TrimSuffix(redistest.Prefix(t), ":")
	loggerHTTP, logDir := servicetest.FreeAddr(t), t.TempDir()
	logger := start(t, "logger", map[string]string{
		"REDIS_URL": srv.URL, "REDIS_PREFIX": prefix, "LOGGER_HTTP_ADDR": loggerHTTP,
		"LOGGER_DIR": logDir, "LOGGER_STDOUT": "false", "API_KEYS": "tail-key",
	})
	waitReady(t, logger, "http://"+loggerHTTP+"/readyz")
	eventbus := filepath.Join(bin, "eventbus")

	// Without a key the logger refuses, and the CLI says so and gives up.
	cmd := exec.Command(eventbus, "tail", "-n", "0", "--logger", "http://"+loggerHTTP)
	cmd.Env = append(os.Environ(), "EVENTBUS_API_KEY=")
	out, err := cmd.CombinedOutput()
	if ee := (*exec.ExitError)(nil); !errors.As(err, &ee) || !strings.Contains(string(out), "401") {
		t.Fatalf("eventbus tail without a key = %v\n%s\nwant exit status 1 naming the 401", err, out)
	}

	b, err := redisbus.New(srv.Client(t), redisbus.Options{Prefix: prefix + ":", HistoryMaxLen: 100_000})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	env := &envelope.Envelope{Type: "e2e.keyed"}
	if err := envelope.Fill(env, "e2e", time.Now()); err != nil {
		t.Fatal(err)
	}
	payload, err := envelope.Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Publish(t.Context(), env.GetChannel(), payload); err != nil {
		t.Fatal(err)
	}

	// With the key, in the flag or the environment, the event comes
	// through: in the backlog, or live if the logger had not recorded it
	// yet when the tail began.
	for _, withKey := range []func(*exec.Cmd){
		func(c *exec.Cmd) { c.Args = append(c.Args, "--api-key", "tail-key") },
		func(c *exec.Cmd) { c.Env = append(os.Environ(), "EVENTBUS_API_KEY=tail-key") },
	} {
		tail := exec.Command(eventbus, "tail", "--json", "-n", "1", "--logger", "http://"+loggerHTTP, "e2e:*")
		withKey(tail)
		lines := linesOf(t, tail)
		stderr := &strings.Builder{}
		tail.Stderr = stderr
		if err := tail.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- tail.Wait() }()
		select {
		case l := <-lines:
			if !strings.Contains(l, env.GetId()) {
				t.Errorf("eventbus tail with a key printed %s, want the event %s", l, env.GetId())
			}
			_ = tail.Process.Kill()
			<-exited
		case err := <-exited:
			t.Errorf("eventbus tail with a key exited (%v) before printing the event:\n%s", err, stderr)
		case <-time.After(30 * time.Second):
			t.Errorf("eventbus tail with a key printed nothing in 30s")
			_ = tail.Process.Kill()
			<-exited
		}
	}
}
