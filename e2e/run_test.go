package e2e

import (
	"context"
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

// make run with every port moved (API_HTTP_ADDR=:18080 make run) carries
// them everywhere: the banner names the addresses it was given and no
// default port, the demo page's buttons reach the API through the edge
// (EDGE_DEMO_API_URL), and bin/eventbus, run by scripts/run.sh as a
// command, publishes through that API.
func TestMakeRunCarriesThePorts(t *testing.T) {
	srv := redistest.Shared(t)
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	addrs := map[string]string{}
	for _, v := range []string{"API_HTTP_ADDR", "API_GRPC_ADDR", "LOGGER_HTTP_ADDR", "EDGE_HTTP_ADDR", "EDGE_MQTT_ADDR", "NOTIFICATION_HTTP_ADDR"} {
		addrs[v] = freeAddr(t)
	}
	// What a newcomer types once make run is up, in the shell it runs in.
	const try = `set -e
"$EVENTBUS_BIN/eventbus" publish order.placed '{"order_id":"o2","user_id":"42","total":990,"currency":"EUR"}'
curl -sS --fail-with-body -H 'Content-Type: application/json' "http://$EDGE_HTTP_ADDR/demo/api/users" \
	-d '{"user_id":"ports1","email":"ports1@example.com","name":"Ports"}'
echo`
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(root, "scripts", "run.sh"), "bash", "-c", try)
	cmd.Env = append(os.Environ(), "EVENTBUS_BIN="+bin, "REDIS_URL="+srv.URL, "REDIS_PREFIX="+strings.TrimSuffix(redistest.Prefix(t), ":"),
		"LOGGER_DIR="+t.TempDir(), "EDGE_JWT_SECRET=run-ports-e2e-secret-0123456789abcdef",
		"EVENTBUS_API=http://127.0.0.1:1") // outside the run: the command must not follow it
	for v, a := range addrs {
		cmd.Env = append(cmd.Env, v+"="+a)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	out := &servicetest.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Run(); err != nil {
		t.Fatalf("scripts/run.sh with the commands of its banner: %v\n%s", err, out)
	}
	if !strings.Contains(out.String(), "published ") || !strings.Contains(out.String(), `"user_id":"ports1"`) {
		t.Errorf("bin/eventbus publish and the demo page's sign-up did not both reach the API:\n%s", out)
	}

	var banner strings.Builder
	for _, line := range strings.Split(out.String(), "\n") {
		if strings.HasPrefix(line, "[run]") {
			banner.WriteString(line + "\n")
		}
	}
	if m := regexp.MustCompile(`:(8080|8081|8082|8083|9090)\b`).FindString(banner.String()); m != "" {
		t.Errorf("the banner names the default port %s, not the one given:\n%s", m, banner.String())
	}
	for v, a := range addrs {
		if !strings.Contains(banner.String(), a) {
			t.Errorf("the banner does not name %s=%s:\n%s", v, a, banner.String())
		}
	}
	for _, want := range []string{"curl -s http://" + addrs["API_HTTP_ADDR"] + "/v1/users", "--api http://" + addrs["API_HTTP_ADDR"],
		"bin/eventbus tail --logger http://" + addrs["LOGGER_HTTP_ADDR"]} {
		if !strings.Contains(banner.String(), want) {
			t.Errorf("the banner does not say %q:\n%s", want, banner.String())
		}
	}
}
