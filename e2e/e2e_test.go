package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	eventbusv1 "github.com/eventbus-suite/eventbus/proto/gen/eventbus/v1"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
	"github.com/eventbus-suite/eventbus/pkg/token"
)

// bin is the directory holding the binaries under test.
var bin string

// TestMain uses the binaries of EVENTBUS_BIN (make test sets it to bin/),
// or builds them, so that `go test work` alone works too.
func TestMain(m *testing.M) {
	bin = os.Getenv("EVENTBUS_BIN")
	if bin == "" {
		dir, err := os.MkdirTemp("", "eventbus-e2e-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		defer os.RemoveAll(dir)
		for name, pkg := range map[string]string{"api": "./services/api", "logger": "./services/logger", "edge": "./services/edge", "notification": "./services/notification", "eventbus": "./cmd/eventbus"} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(dir, name), pkg)
			cmd.Dir = ".."
			if out, err := cmd.CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "build %s: %v\n%s", name, err, out)
				os.Exit(1)
			}
		}
		bin = dir
	}
	redistest.Main(m)
}

// process is a binary started by a test.
type process struct {
	name string
	cmd  *exec.Cmd
	out  *servicetest.Buffer
	done chan error
}

// start runs bin/name with env and stops it with SIGTERM when the test ends.
// An edge listens for MQTT over TCP on a port of its own unless env says
// otherwise: its default, 1883, may be a local Mosquitto's, and tests
// start several edges.
func start(t *testing.T, name string, env map[string]string, args ...string) *process {
	t.Helper()
	if _, ok := env["EDGE_MQTT_ADDR"]; name == "edge" && !ok {
		env = merge(env, map[string]string{"EDGE_MQTT_ADDR": "127.0.0.1:0"})
	}
	cmd := exec.Command(filepath.Join(bin, name), args...)
	cmd.Env = os.Environ()
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	return startCmd(t, name, cmd)
}

// startCmd is start for a command the test prepared itself (another
// binary, another user), which it names name.
func startCmd(t *testing.T, name string, cmd *exec.Cmd) *process {
	t.Helper()
	p := &process{name: name, cmd: cmd, out: &servicetest.Buffer{}, done: make(chan error, 1)}
	if cmd.Stdout == nil {
		cmd.Stdout = p.out
	}
	cmd.Stderr = p.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() {
			t.Logf("%s output:\n%s", name, p.out)
		}
	})
	return p
}

// startEdges starts n edges with env, each on an address of its own, and
// returns their addresses, in order, and their processes by address, once
// each is ready.
func startEdges(t *testing.T, n int, env map[string]string) ([]string, map[string]*process) {
	t.Helper()
	var addrs []string
	procs := map[string]*process{}
	for range n {
		a := servicetest.FreeAddr(t)
		procs[a] = start(t, "edge", merge(env, map[string]string{"EDGE_HTTP_ADDR": a}))
		addrs = append(addrs, a)
	}
	for _, a := range addrs {
		waitReady(t, procs[a], "http://"+a+"/readyz")
	}
	return addrs, procs
}

// stop sends SIGTERM and fails the test unless the process exits cleanly
// within 10 s.
func (p *process) stop(t *testing.T) {
	t.Helper()
	if p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		if err != nil {
			t.Errorf("%s exited with %v after SIGTERM, want 0", p.name, err)
		}
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		t.Errorf("%s did not exit within 10s of SIGTERM", p.name)
	}
}

// waitReady polls url until it answers 200.
// postAccepted posts a JSON body to the API at addr and fails the test
// unless it answers 202.
func postAccepted(t *testing.T, addr, path, body string) {
	t.Helper()
	resp, err := http.Post("http://"+addr+path, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST %s = %d", path, resp.StatusCode)
	}
}

// postBatch posts NDJSON events to the API at addr and fails the test
// unless it answers 200.
func postBatch(t *testing.T, addr string, ndjson io.Reader) {
	t.Helper()
	resp, err := http.Post("http://"+addr+"/v1/events:batch", "application/x-ndjson", ndjson)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST /v1/events:batch = %s", resp.Status)
	}
}

// startAPI starts an api on free ports with env, and returns its HTTP
// address once it is ready.
func startAPI(t *testing.T, env map[string]string) string {
	t.Helper()
	addr := servicetest.FreeAddr(t)
	api := start(t, "api", merge(env, map[string]string{"API_HTTP_ADDR": addr, "API_GRPC_ADDR": servicetest.FreeAddr(t)}))
	waitReady(t, api, "http://"+addr+"/readyz")
	return addr
}

// mintToken is a token of user granting grants, signed with secret.
func mintToken(t *testing.T, secret, user string, grants []string) string {
	t.Helper()
	tok, err := token.Issue([]byte(secret), user, grants, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// dialWS connects a JSON WebSocket client to the edge at addr with token
// tok; the test's end closes it.
func dialWS(ctx context.Context, t *testing.T, addr, tok string) (*websocket.Conn, error) {
	conn, _, err := websocket.Dial(ctx, "ws://"+addr+"/ws?token="+tok, nil)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { conn.CloseNow() })
	return conn, nil
}

// subscribeOK subscribes conn to ch and fails the test unless the edge
// says ok.
func subscribeOK(ctx context.Context, t *testing.T, conn *websocket.Conn, ch string) {
	t.Helper()
	if err := conn.Write(ctx, websocket.MessageText, []byte(`{"action":"subscribe","channel":"`+ch+`","id":"1"}`)); err != nil {
		t.Fatal(err)
	}
	if _, b, err := conn.Read(ctx); err != nil || !strings.Contains(string(b), `"ok":true`) {
		t.Fatalf("subscribe %s: %s, %v", ch, b, err)
	}
}

func waitReady(t *testing.T, p *process, url string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case err := <-p.done:
			t.Fatalf("%s exited (%v) before %s was ready:\n%s", p.name, err, url, p.out)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready after 15s:\n%s", url, p.out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// lines streams the stdout of a process line by line.
func linesOf(t *testing.T, cmd *exec.Cmd) <-chan string {
	t.Helper()
	r, w := io.Pipe()
	cmd.Stdout = w
	c := make(chan string, 1024)
	go func() {
		defer close(c)
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			c <- sc.Text()
		}
	}()
	t.Cleanup(func() { w.Close() })
	return c
}

func TestPublishedEventsReachTheLoggerTailInOrder(t *testing.T) {
	srv := redistest.Shared(t)
	prefix := strings.TrimSuffix(redistest.Prefix(t), ":")
	apiHTTP, apiGRPC, loggerHTTP := servicetest.FreeAddr(t), servicetest.FreeAddr(t), servicetest.FreeAddr(t)
	common := map[string]string{"REDIS_URL": srv.URL, "REDIS_PREFIX": prefix}
	logDir := t.TempDir()

	logger := start(t, "logger", merge(common, map[string]string{
		"LOGGER_HTTP_ADDR": loggerHTTP, "LOGGER_DIR": logDir, "LOGGER_STDOUT": "false"}))
	api := start(t, "api", merge(common, map[string]string{"API_HTTP_ADDR": apiHTTP, "API_GRPC_ADDR": apiGRPC}))
	waitReady(t, logger, "http://"+loggerHTTP+"/readyz")
	waitReady(t, api, "http://"+apiHTTP+"/readyz")

	// The CLI follows the logger from before the first event.
	tail := exec.Command(filepath.Join(bin, "eventbus"), "tail", "--json", "-n", "0", "--logger", "http://"+loggerHTTP, "e2e:*")
	lines := linesOf(t, tail)
	tailErr := &servicetest.Buffer{}
	tail.Stderr = tailErr
	if err := tail.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tail.Process.Kill(); _ = tail.Wait() })
	// The tail is connected once a marker published now reaches it.
	cli := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(filepath.Join(bin, "eventbus"), append(args, "--api", "http://"+apiHTTP)...).CombinedOutput()
		if err != nil {
			t.Fatalf("eventbus %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	for connected := false; !connected; {
		cli("publish", "e2e.marker", "{}")
		select {
		case l := <-lines:
			connected = strings.Contains(l, `"type":"e2e.marker"`)
		case <-time.After(200 * time.Millisecond):
		}
	}
	for drained := false; !drained; { // markers sent before the first one seen
		select {
		case <-lines:
		case <-time.After(200 * time.Millisecond):
			drained = true
		}
	}

	var want []string
	// 300 over HTTP, one request each.
	for i := range 300 {
		subject := "http-" + strconv.Itoa(i)
		body := fmt.Sprintf(`{"type":"e2e.http","subject":%q,"data":{"i":%d}}`, subject, i)
		resp, err := http.Post("http://"+apiHTTP+"/v1/events", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("POST /v1/events = %d", resp.StatusCode)
		}
		want = append(want, subject)
	}
	// 2000 over one gRPC stream.
	conn, err := grpc.NewClient(apiGRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stream, err := eventbusv1.NewEventServiceClient(conn).PublishStream(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2000 {
		subject := "grpc-" + strconv.Itoa(i)
		if err := stream.Send(&eventbusv1.PublishStreamRequest{Event: &eventbusv1.Envelope{Type: "e2e.grpc", Subject: subject}}); err != nil {
			t.Fatal(err)
		}
		want = append(want, subject)
	}
	resp, err := stream.CloseAndRecv()
	if err != nil || resp.GetAccepted() != 2000 {
		t.Fatalf("PublishStream = %v, %v; want 2000 accepted", resp, err)
	}
	// And one through the CLI.
	if out := cli("publish", "e2e.cli", `{"via":"cli"}`, "--subject", "cli-0"); !strings.Contains(out, "on e2e:cli at offset ") {
		t.Errorf("eventbus publish printed %q, want it published on e2e:cli at an offset", out)
	}
	want = append(want, "cli-0")

	for i, w := range want {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("eventbus tail ended after %d of %d events:\n%s", i, len(want), tailErr)
			}
			var rec struct {
				Event struct{ Subject string } `json:"event"`
			}
			if err := json.Unmarshal([]byte(l), &rec); err != nil {
				t.Fatalf("tail line %q: %v", l, err)
			}
			if rec.Event.Subject != w {
				t.Fatalf("tail event %d = %s, want %s: lost or out of order", i, rec.Event.Subject, w)
			}
		case <-time.After(15 * time.Second):
			t.Fatalf("tail stalled after %d of %d events:\n%s", i, len(want), tailErr)
		}
	}

	if out := cli("stats"); !strings.Contains(out, "pattern subscription(s) on the server") {
		t.Errorf("eventbus stats printed %q", out)
	}
	api.stop(t)
	logger.stop(t)
	// Everything is in the log file too, marker events aside.
	content, err := os.ReadFile(filepath.Join(logDir, "events.log"))
	if err != nil {
		t.Fatal(err)
	}
	// The top-level channel is followed by the matched pattern.
	if got := strings.Count(string(content), `"channel":"e2e:http","pattern"`) + strings.Count(string(content), `"channel":"e2e:grpc","pattern"`); got != 2300 {
		t.Errorf("events.log holds %d http and grpc events, want 2300", got)
	}
}

func merge(ms ...map[string]string) map[string]string {
	out := map[string]string{}
	for _, m := range ms {
		for k, v := range m {
			out[k] = v
		}
	}
	return out
}

// TestBadConfigurationExits checks that a bad variable stops a binary at
// once with its name.
func TestBadConfigurationExits(t *testing.T) {
	for _, tt := range []struct{ bin, name, value string }{
		{"api", "API_MAX_BODY_BYTES", "big"},
		{"logger", "LOGGER_PATTERNS", "Bad Pattern"},
	} {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		cmd := exec.CommandContext(ctx, filepath.Join(bin, tt.bin))
		cmd.Env = append(os.Environ(), tt.name+"="+tt.value)
		out, err := cmd.CombinedOutput()
		cancel()
		if err == nil || !strings.Contains(string(out), tt.name) {
			t.Errorf("%s with %s=%q: %v, output %q; want a non-zero exit naming the variable", tt.bin, tt.name, tt.value, err, out)
		}
	}
}

// TestAPIEventReachesABrowserThroughTheEdge follows a notification from an
// HTTP call through Redis and the edge binary to a WebSocket client.
func TestAPIEventReachesABrowserThroughTheEdge(t *testing.T) {
	srv := redistest.Shared(t)
	prefix := strings.TrimSuffix(redistest.Prefix(t), ":")
	apiHTTP, apiGRPC, edgeHTTP := servicetest.FreeAddr(t), servicetest.FreeAddr(t), servicetest.FreeAddr(t)
	const secret = "e2e-secret-0123456789abcdef"
	common := map[string]string{"REDIS_URL": srv.URL, "REDIS_PREFIX": prefix}
	api := start(t, "api", merge(common, map[string]string{"API_HTTP_ADDR": apiHTTP, "API_GRPC_ADDR": apiGRPC}))
	edge := start(t, "edge", merge(common, map[string]string{"EDGE_HTTP_ADDR": edgeHTTP, "EDGE_JWT_SECRET": secret}))
	waitReady(t, api, "http://"+apiHTTP+"/readyz")
	waitReady(t, edge, "http://"+edgeHTTP+"/readyz")

	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	conn, err := dialWS(ctx, t, edgeHTTP, mintToken(t, secret, "7", nil))
	if err != nil {
		t.Fatal(err)
	}
	subscribeOK(ctx, t, conn, "notify:user:7")
	body := `{"type":"notification.created","channel":"notify:user:7","data":{"user_id":"7","title":"Hello","body":"from the API"}}`
	resp, err := http.Post("http://"+apiHTTP+"/v1/events", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	reply, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted || !strings.Contains(string(reply), `"receivers":1`) {
		t.Fatalf("POST /v1/events = %d %s, want 202 with the edge as its receiver", resp.StatusCode, reply)
	}
	_, b, err := conn.Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Channel       string
		Subscriptions []string
		Event         struct {
			Type string
			Data struct{ Title, Body string }
		}
	}
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	if f.Channel != "notify:user:7" || f.Event.Type != "notification.created" || f.Event.Data.Title != "Hello" {
		t.Errorf("browser got %s, want the notification", b)
	}
	// Read while the edge stops, as a browser would, to answer its close.
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		edge.stop(t)
	}()
	if _, _, err := conn.Read(ctx); websocket.CloseStatus(err) != websocket.StatusGoingAway {
		t.Errorf("after SIGTERM the connection ended with %v, want 1001 going away", err)
	}
	<-stopped
}

// TestSignupAndShippingReachTheUser runs what make run runs and follows a
// user through it: POST /v1/users logs a dry-run welcome email, and
// shipping that user's order shows a notification to the user's browser.
func TestSignupAndShippingReachTheUser(t *testing.T) {
	srv := redistest.Shared(t)
	prefix := strings.TrimSuffix(redistest.Prefix(t), ":")
	apiHTTP, apiGRPC, edgeHTTP, notifyHTTP := servicetest.FreeAddr(t), servicetest.FreeAddr(t), servicetest.FreeAddr(t), servicetest.FreeAddr(t)
	common := map[string]string{"REDIS_URL": srv.URL, "REDIS_PREFIX": prefix}
	api := start(t, "api", merge(common, map[string]string{"API_HTTP_ADDR": apiHTTP, "API_GRPC_ADDR": apiGRPC}))
	edge := start(t, "edge", merge(common, map[string]string{"EDGE_HTTP_ADDR": edgeHTTP, "EDGE_DEMO": "true"}))
	notification := start(t, "notification", merge(common, map[string]string{"NOTIFICATION_HTTP_ADDR": notifyHTTP}))
	for p, addr := range map[*process]string{api: apiHTTP, edge: edgeHTTP, notification: notifyHTTP} {
		waitReady(t, p, "http://"+addr+"/readyz")
	}

	// The browser: a demo token for user 42, subscribed to its notifications.
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	conn := subscribeViaDemoToken(t, ctx, edgeHTTP, "42")

	post := func(path, body string) {
		t.Helper()
		postAccepted(t, apiHTTP, path, body)
	}
	post("/v1/users", `{"user_id":"42","email":"ada@example.com","name":"Ada"}`)
	servicetest.WaitFor(t, "the dry-run welcome email", func() bool {
		return strings.Contains(notification.out.String(), "dry-run: would send email") &&
			strings.Contains(notification.out.String(), "Welcome to eventbus, Ada!")
	})
	post("/v1/orders/o1/ship", `{"user_id":"42","carrier":"DHL","tracking_number":"JD0001"}`)
	_, b, err := conn.Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Channel string
		Event   struct {
			Type string
			Data struct{ Title, Body string }
		}
	}
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	if f.Channel != "notify:user:42" || f.Event.Data.Title != "Order shipped" || !strings.Contains(f.Event.Data.Body, "JD0001") {
		t.Errorf("browser got %s, want the shipping notification", b)
	}
	servicetest.WaitFor(t, "the dry-run shipping email", func() bool {
		return strings.Contains(notification.out.String(), "Your order o1 is on its way")
	})
}
