package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
)

// make run with every port moved (API_HTTP_ADDR=:18080 make run) carries
// them everywhere: the banner names the addresses it was given and no
// default port, the demo page's buttons reach the API through the edge
// (EDGE_DEMO_API_URL), and bin/eventbus, run by scripts/run.sh as a
// command, publishes through that API. The notification service's Web
// Push key is the development pair make run keeps in data/dev-vapid,
// made by the first run and kept by the next.
func TestMakeRunCarriesThePorts(t *testing.T) {
	srv := redistest.Shared(t)
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	addrs := map[string]string{}
	for _, v := range []string{"API_HTTP_ADDR", "API_GRPC_ADDR", "LOGGER_HTTP_ADDR", "EDGE_HTTP_ADDR", "EDGE_MQTT_ADDR", "NOTIFICATION_HTTP_ADDR"} {
		addrs[v] = servicetest.FreeAddr(t)
	}
	// What a newcomer types once make run is up, in the shell it runs in.
	const try = `set -e
"$EVENTBUS_BIN/eventbus" publish order.placed '{"order_id":"o2","user_id":"42","total":990,"currency":"EUR"}'
curl -sS --fail-with-body -H 'Content-Type: application/json' "http://$EDGE_HTTP_ADDR/demo/api/users" \
	-d '{"user_id":"ports1","email":"ports1@example.com","name":"Ports"}'
echo
curl -sS --fail-with-body "http://$NOTIFICATION_HTTP_ADDR/v1/push/vapid-public-key"
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
	vapidFile := filepath.Join(root, "data", "dev-vapid")
	before, _ := os.ReadFile(vapidFile) // none on a fresh checkout
	if err := cmd.Run(); err != nil {
		t.Fatalf("scripts/run.sh with the commands of its banner: %v\n%s", err, out)
	}
	pair, err := os.ReadFile(vapidFile)
	if err != nil {
		t.Fatalf("make run kept no VAPID pair: %v", err)
	}
	if len(before) > 0 && string(pair) != string(before) {
		t.Errorf("make run made a new VAPID pair, want the one in data/dev-vapid kept")
	}
	public := regexp.MustCompile(`(?m)^NOTIFY_VAPID_PUBLIC_KEY=(\S+)$`).FindStringSubmatch(string(pair))
	if public == nil || !strings.Contains(out.String(), `{"vapid_public_key":"`+public[1]+`"}`) {
		t.Errorf("the notification service's VAPID key is not data/dev-vapid's %q:\n%s", public, out)
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

// openPTY opens a pseudo-terminal: the terminal side, for a process's
// stdout and stderr, and the side that reads what it shows.
func openPTY(t *testing.T) (tty, term *os.File) {
	t.Helper()
	term, err := os.OpenFile("/dev/ptmx", os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("open /dev/ptmx: %v", err)
	}
	t.Cleanup(func() { term.Close() })
	var unlock int32
	if _, _, errno := syscall.Syscall(syscall.SYS_IOCTL, term.Fd(), syscall.TIOCSPTLCK, uintptr(unsafe.Pointer(&unlock))); errno != 0 {
		t.Fatalf("unlock the pty: %v", errno)
	}
	var n uint32
	if _, _, errno := syscall.Syscall(syscall.SYS_IOCTL, term.Fd(), syscall.TIOCGPTN, uintptr(unsafe.Pointer(&n))); errno != 0 {
		t.Fatalf("number the pty: %v", errno)
	}
	tty, err = os.OpenFile("/dev/pts/"+strconv.FormatUint(uint64(n), 10), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open the pty: %v", err)
	}
	t.Cleanup(func() { tty.Close() })
	return tty, term
}

// make run in a terminal, as a person sees it: text log lines, no line per
// event (the logger records them quietly), a dry-run email that reads as
// an email, and Ctrl-C (SIGINT to the whole process group, as a terminal
// sends it) ends it with status 0, so make says no "Error 130".
func TestMakeRunInATerminal(t *testing.T) {
	srv := redistest.Shared(t)
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	apiHTTP, loggerHTTP, notifyHTTP := servicetest.FreeAddr(t), servicetest.FreeAddr(t), servicetest.FreeAddr(t)
	tty, term := openPTY(t)
	cmd := exec.Command(filepath.Join(root, "scripts", "run.sh"))
	cmd.Env = append(os.Environ(), "EVENTBUS_BIN="+bin, "REDIS_URL="+srv.URL, "REDIS_PREFIX="+strings.TrimSuffix(redistest.Prefix(t), ":"),
		"API_HTTP_ADDR="+apiHTTP, "API_GRPC_ADDR="+servicetest.FreeAddr(t), "EDGE_HTTP_ADDR="+servicetest.FreeAddr(t), "EDGE_MQTT_ADDR="+servicetest.FreeAddr(t),
		"LOGGER_HTTP_ADDR="+loggerHTTP, "NOTIFICATION_HTTP_ADDR="+notifyHTTP, "LOGGER_DIR="+t.TempDir(),
		"EDGE_JWT_SECRET=run-terminal-e2e-secret-0123456789abcdef", "SENDGRID_API_KEY=",
		"LOG_FORMAT=", "LOGGER_STDOUT=") // as a newcomer has them: unset
	cmd.Stdout, cmd.Stderr = tty, tty
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	tty.Close() // the processes hold it now
	out := &servicetest.Buffer{}
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		_, _ = io.Copy(out, term) // ends with EIO once every process has let go
	}()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		if t.Failed() {
			t.Logf("scripts/run.sh in a terminal showed:\n%s", out)
		}
	})
	for _, a := range []string{apiHTTP, loggerHTTP, notifyHTTP} {
		servicetest.WaitFor(t, a+" to be ready", func() bool {
			resp, err := http.Get("http://" + a + "/readyz")
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK
		})
	}

	const orders = 20
	postAccepted(t, apiHTTP, "/v1/users", `{"user_id":"42","email":"ada@example.com","name":"Ada"}`)
	for i := range orders {
		postAccepted(t, apiHTTP, fmt.Sprintf("/v1/orders/o%d/ship", i), `{"user_id":"42","carrier":"DHL","tracking_number":"JD01"}`)
	}
	servicetest.WaitFor(t, "the logger to record every event", func() bool {
		return servicetest.Metric(t, "http://"+loggerHTTP, "eventbus_logger_events_logged_total") >= 1+orders
	})
	shown := func() string { return strings.ReplaceAll(out.String(), "\r\n", "\n") }
	servicetest.WaitFor(t, "the dry-run welcome email", func() bool { return strings.Contains(shown(), "Subject: Welcome to eventbus, Ada!") })

	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		stopped = true
		if err != nil {
			t.Errorf("scripts/run.sh after Ctrl-C: %v, want exit status 0", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("scripts/run.sh did not stop within 30 s of Ctrl-C")
	}
	<-copied

	text := regexp.MustCompile(`^\[(api|logger|edge|notification)\] \d\d:\d\d:\d\d\.\d{3} (DEBUG|INFO |WARN |ERROR) `)
	said := map[string]bool{}
	for _, line := range strings.Split(shown(), "\n") {
		if m := text.FindStringSubmatch(line); m != nil {
			said[m[1]] = true
		}
		if regexp.MustCompile(`^\[(api|logger|edge|notification)\] \{`).MatchString(line) {
			t.Errorf("a JSON line in a terminal: %s", line)
		}
	}
	for _, svc := range []string{"api", "logger", "edge", "notification"} {
		if !said[svc] {
			t.Errorf("no text log line of %s", svc)
		}
	}
	for _, want := range []string{
		"[notification] From:    eventbus <eventbus@example.com>\n[notification] To:      Ada <ada@example.com>\n[notification] Subject: Welcome to eventbus, Ada!\n",
		"bin/eventbus tail --logger http://" + loggerHTTP, "LOGGER_STDOUT=true make run",
	} {
		if !strings.Contains(shown(), want) {
			t.Errorf("the terminal does not show %q", want)
		}
	}
	if strings.Contains(shown(), "status 130") {
		t.Error("Ctrl-C is reported as a failure")
	}
}
