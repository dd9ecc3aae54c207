package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
)

// startNginx runs nginx with the repository's nginx.conf, its HTTP
// upstream and port replaced by the given edges and a free port, and
// returns its address and what it writes (its access log goes to standard
// output).
func startNginx(t *testing.T, edges ...string) (string, *servicetest.Buffer) {
	t.Helper()
	front, _, out := startNginxFor(t, edges, nil)
	return front, out
}

// startNginxFor is startNginx with the edges' MQTT over TCP too: it
// returns nginx's MQTT address as well, in front of mqttEdges (none: an
// address nothing listens on).
func startNginxFor(t *testing.T, httpEdges, mqttEdges []string) (front, mqttFront string, out *servicetest.Buffer) {
	t.Helper()
	nginx, err := exec.LookPath("nginx")
	if err != nil {
		servicetest.Needs(t, "EVENTBUS_REQUIRE_NGINX", "nginx is not installed (apt-get install nginx)")
	}
	conf, err := os.ReadFile("../deploy/nginx/nginx.conf")
	if err != nil {
		t.Fatal(err)
	}
	servers := func(addrs []string) string {
		var s []string
		for _, a := range addrs {
			s = append(s, "server "+a+" max_fails=1 fail_timeout=5s;")
		}
		return strings.Join(s, "\n        ")
	}
	if len(mqttEdges) == 0 {
		mqttEdges = []string{"127.0.0.1:1"}
	}
	addr, mqttAddr := servicetest.FreeAddr(t), servicetest.FreeAddr(t)
	s := strings.Replace(string(conf), "server edge:8081 max_fails=1 fail_timeout=5s;", servers(httpEdges), 1)
	s = strings.Replace(s, "server edge:1883 max_fails=1 fail_timeout=5s;", servers(mqttEdges), 1)
	s = strings.Replace(s, "listen 80;", "listen "+addr+";", 1)
	s = strings.Replace(s, "listen 1883;", "listen "+mqttAddr+";", 1)
	if !strings.Contains(s, "listen "+addr) || !strings.Contains(s, "listen "+mqttAddr) || strings.Contains(s, "edge:") {
		t.Fatal("nginx.conf no longer has the upstream and listen lines this test replaces")
	}
	s = string(servicetest.NginxModules(t, nginx)) + s
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "nginx.conf"), []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	global := "daemon off; error_log " + filepath.Join(dir, "error.log") + "; pid " + filepath.Join(dir, "nginx.pid") + ";"
	if os.Geteuid() == 0 {
		global += " user root;" // workers must reach the temp dirs under the test's private dir
	}
	cmd := exec.Command(nginx, "-p", dir, "-c", filepath.Join(dir, "nginx.conf"), "-g", global)
	out = &servicetest.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGQUIT)
		_ = cmd.Wait()
		if t.Failed() {
			logs, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Logf("nginx output:\n%s\n%s", out, logs)
		}
	})
	servicetest.WaitFor(t, "nginx to answer", func() bool {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return addr, mqttAddr, out
}

// TestComposeTopologyBehindNginx runs, as processes, what docker compose
// runs: a browser connected through nginx gets its notification once, and
// when its edge is killed it reconnects through nginx to the other edge and
// keeps receiving.
func TestComposeTopologyBehindNginx(t *testing.T) {
	srv := redistest.Shared(t)
	prefix := strings.TrimSuffix(redistest.Prefix(t), ":")
	common := map[string]string{"REDIS_URL": srv.URL, "REDIS_PREFIX": prefix}
	const secret = "compose-e2e-secret-0123456789"
	apiHTTP, apiGRPC, loggerHTTP := servicetest.FreeAddr(t), servicetest.FreeAddr(t), servicetest.FreeAddr(t)
	ready := map[*process]string{}
	api := start(t, "api", merge(common, map[string]string{"API_HTTP_ADDR": apiHTTP, "API_GRPC_ADDR": apiGRPC}))
	ready[api] = apiHTTP
	logger := start(t, "logger", merge(common, map[string]string{"LOGGER_HTTP_ADDR": loggerHTTP, "LOGGER_DIR": t.TempDir(), "LOGGER_STDOUT": "false"}))
	ready[logger] = loggerHTTP
	var notifications []string
	for range 2 {
		a := servicetest.FreeAddr(t)
		ready[start(t, "notification", merge(common, map[string]string{"NOTIFICATION_HTTP_ADDR": a}))] = a
		notifications = append(notifications, a)
	}
	for p, a := range ready {
		waitReady(t, p, "http://"+a+"/readyz")
	}
	edgeAddrs, edges := startEdges(t, 2, merge(common, map[string]string{"EDGE_JWT_SECRET": secret, "EDGE_DEMO": "true"}))
	front, _ := startNginx(t, edgeAddrs...)

	post := func(path, body string) {
		t.Helper()
		postAccepted(t, apiHTTP, path, body)
	}
	post("/v1/users", `{"user_id":"77","email":"u77@example.com","name":"Seventy"}`)

	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	conn := subscribeViaDemoToken(t, ctx, front, "77")
	post("/v1/orders/o1/ship", `{"user_id":"77","carrier":"DHL","tracking_number":"T1"}`)
	if body := nextNotificationBody(t, ctx, conn); !strings.Contains(body, "T1") {
		t.Fatalf("first notification = %q, want the shipment T1", body)
	}
	post("/v1/orders/o2/ship", `{"user_id":"77","carrier":"DHL","tracking_number":"T2"}`)
	if body := nextNotificationBody(t, ctx, conn); !strings.Contains(body, "T2") {
		t.Fatalf("second notification = %q, want T2: two notification replicas sent T1 twice", body)
	}

	// Kill the edge holding the connection, as a crash would.
	var victim string
	for _, a := range edgeAddrs {
		if servicetest.Metric(t, "http://"+a, "eventbus_edge_connections") == 1 {
			victim = a
		}
	}
	if victim == "" {
		t.Fatal("no edge reports the connection")
	}
	if err := edges[victim].cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-edges[victim].done
	if _, _, err := conn.Read(ctx); err == nil {
		t.Fatal("the connection survived its edge")
	}
	// The client reconnects through nginx, which now reaches the other edge.
	var survivor string
	for _, a := range edgeAddrs {
		if a != victim {
			survivor = a
		}
	}
	conn = subscribeViaDemoToken(t, ctx, front, "77")
	if got := servicetest.Metric(t, "http://"+survivor, "eventbus_edge_connections"); got != 1 {
		t.Fatalf("surviving edge has %v connections, want the reconnected client", got)
	}
	post("/v1/orders/o3/ship", `{"user_id":"77","carrier":"DHL","tracking_number":"T3"}`)
	if body := nextNotificationBody(t, ctx, conn); !strings.Contains(body, "T3") {
		t.Fatalf("notification after the failover = %q, want T3", body)
	}

	// Every metric the Grafana dashboard charts is exported by a running
	// service.
	var exported strings.Builder
	for _, a := range append([]string{apiHTTP, loggerHTTP, survivor}, notifications...) {
		resp, err := http.Get("http://" + a + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		exported.Write(b)
	}
	for _, name := range dashboardMetrics(t) {
		if !regexp.MustCompile(`(?m)^` + name + `[{ ]`).MatchString(exported.String()) {
			t.Errorf("the dashboard charts %s, which no service exports", name)
		}
	}
}

// subscribeViaDemoToken fetches a demo token from the edge (or the nginx in
// front of it) at addr and subscribes to the user's notifications.
func subscribeViaDemoToken(t *testing.T, ctx context.Context, addr, user string) *websocket.Conn {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/demo/token?user=" + user)
	if err != nil {
		t.Fatal(err)
	}
	var demo struct{ Token string }
	err = json.NewDecoder(resp.Body).Decode(&demo)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("demo token from %s: %v", addr, err)
	}
	conn, _, err := websocket.Dial(ctx, "ws://"+addr+"/ws?token="+demo.Token, nil)
	if err != nil {
		t.Fatalf("websocket to %s: %v", addr, err)
	}
	t.Cleanup(func() { conn.CloseNow() })
	sub := fmt.Sprintf(`{"action":"subscribe","channel":"notify:user:%s","id":"s"}`, user)
	if err := conn.Write(ctx, websocket.MessageText, []byte(sub)); err != nil {
		t.Fatal(err)
	}
	if _, b, err := conn.Read(ctx); err != nil || !strings.Contains(string(b), `"ok":true`) {
		t.Fatalf("subscribe via %s = %s, %v", addr, b, err)
	}
	return conn
}

func nextNotificationBody(t *testing.T, ctx context.Context, conn *websocket.Conn) string {
	t.Helper()
	_, b, err := conn.Read(ctx)
	if err != nil {
		t.Fatalf("read notification: %v", err)
	}
	var f struct {
		Event struct {
			Data struct{ Body string }
		}
	}
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	return f.Event.Data.Body
}

// dashboardMetrics lists the metric names the Grafana dashboard queries.
func dashboardMetrics(t *testing.T) []string {
	t.Helper()
	raw, err := os.ReadFile("../deploy/grafana/dashboards/eventbus.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct{ Targets []struct{ Expr string } }
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			names = append(names, regexp.MustCompile(`eventbus_[a-z_]+`).FindAllString(tg.Expr, -1)...)
		}
	}
	if len(names) == 0 {
		t.Fatal("the dashboard queries no eventbus metric")
	}
	return names
}

// nginx logs requests without their query string, where browsers that
// cannot set headers put their token.
func TestNginxLogsNoTokens(t *testing.T) {
	srv := redistest.Shared(t)
	a := servicetest.FreeAddr(t)
	p := start(t, "edge", map[string]string{"REDIS_URL": srv.URL, "EDGE_HTTP_ADDR": a, "EDGE_ALLOW_ANONYMOUS": "true"})
	waitReady(t, p, "http://"+a+"/readyz")
	front, logs := startNginx(t, a)
	resp, err := http.Get("http://" + front + "/sse?channel=x:y&token=SECRET-TOKEN-VALUE")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	servicetest.WaitFor(t, "nginx to log the request", func() bool { return strings.Contains(logs.String(), "GET /sse ") })
	if strings.Contains(logs.String(), "SECRET-TOKEN-VALUE") {
		t.Fatalf("nginx logged the token:\n%s", logs)
	}
}
