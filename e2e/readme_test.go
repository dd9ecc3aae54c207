package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
)

// The README's flow, as a newcomer runs it: make run (scripts/run.sh), then
// eventbus token --sub 42 --channels 'order:*', then a WebSocket client
// with that token receives an order event published through the API.
func TestTheREADMEFlow(t *testing.T) {
	srv := redistest.Shared(t)
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	apiHTTP, edgeHTTP := servicetest.FreeAddr(t), servicetest.FreeAddr(t)
	out := startRun(t, root, []string{"REDIS_URL=" + srv.URL, "REDIS_PREFIX=" + strings.TrimSuffix(redistest.Prefix(t), ":"),
		"API_HTTP_ADDR=" + apiHTTP, "API_GRPC_ADDR=" + servicetest.FreeAddr(t), "EDGE_HTTP_ADDR=" + edgeHTTP, "EDGE_MQTT_ADDR=" + servicetest.FreeAddr(t),
		"LOGGER_HTTP_ADDR=" + servicetest.FreeAddr(t), "NOTIFICATION_HTTP_ADDR=" + servicetest.FreeAddr(t), "LOGGER_DIR=" + t.TempDir(),
		"EDGE_JWT_SECRET="}, // as on a newcomer's machine
		apiHTTP, edgeHTTP)
	if !strings.Contains(out.String(), "bin/eventbus token --sub 42") {
		t.Errorf("make run does not say how to mint a token:\n%s", out)
	}

	mint := exec.Command(filepath.Join(bin, "eventbus"), "token", "--sub", "42", "--channels", "order:*")
	mint.Dir = root
	mint.Env = append(os.Environ(), "EDGE_JWT_SECRET=")
	tok, err := mint.Output()
	if err != nil {
		t.Fatalf("eventbus token: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, "ws://"+edgeHTTP+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseNow()
	for _, frame := range []string{
		fmt.Sprintf(`{"action":"auth","token":%q,"id":"1"}`, strings.TrimSpace(string(tok))),
		`{"action":"subscribe","channel":"order:*","id":"2"}`,
	} {
		if err := conn.Write(ctx, websocket.MessageText, []byte(frame)); err != nil {
			t.Fatal(err)
		}
		if _, reply, err := conn.Read(ctx); err != nil || !strings.Contains(string(reply), `"ok":true`) {
			t.Fatalf("reply to %s: %s, %v", frame, reply, err)
		}
	}
	postAccepted(t, apiHTTP, "/v1/orders/o1/ship", `{"user_id":"42","carrier":"DHL","tracking_number":"JD01"}`)
	if _, msg, err := conn.Read(ctx); err != nil || !strings.Contains(string(msg), `"order.shipped"`) {
		t.Fatalf("the client got %s, %v; want the order.shipped event", msg, err)
	}
}

// startRun runs scripts/run.sh (make run) from root with env added to the
// test's environment, as a process group it stops when the test ends, and
// returns its output once every address of ready answers /readyz.
func startRun(t *testing.T, root string, env []string, ready ...string) *servicetest.Buffer {
	t.Helper()
	cmd := exec.Command(filepath.Join(root, "scripts", "run.sh"))
	cmd.Env = append(append(os.Environ(), "EVENTBUS_BIN="+bin), env...)
	out := &servicetest.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		if t.Failed() {
			t.Logf("scripts/run.sh output:\n%s", out)
		}
	})
	for _, a := range ready {
		servicetest.WaitFor(t, a+" to be ready", func() bool {
			resp, err := http.Get("http://" + a + "/readyz")
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK
		})
	}
	return out
}
