package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
	"github.com/eventbus-suite/eventbus/pkg/token"
)

// recipeSecret signs the recipes' tokens: the test writes it where make
// run keeps its own, data/dev-secret, for bin/eventbus token to find.
const recipeSecret = "e2e-recipe-secret-0123456789"

// readmeRecipes returns the README's lines that begin with each of starts,
// one each, failing the test when a line is missing or not alone.
func readmeRecipes(t *testing.T, starts ...string) map[string]string {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for l := range strings.SplitSeq(string(b), "\n") {
		for _, s := range starts {
			if strings.HasPrefix(l, s) {
				if _, dup := got[s]; dup {
					t.Fatalf("the README has two lines beginning %q: which is the recipe?", s)
				}
				got[s] = l
			}
		}
	}
	for _, s := range starts {
		if got[s] == "" {
			t.Fatalf("the README has no line beginning %q", s)
		}
	}
	return got
}

// recipe is a README recipe running in bash from a directory laid out as
// make run leaves a checkout (bin/eventbus, data/dev-secret), with the
// API's address in API_HTTP_ADDR as make run exports it.
type recipe struct {
	dir, apiHTTP string
}

// command returns bash running script, the README's lines as they are.
func (r recipe) command(t *testing.T, script string, env ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), "bash", "-c", "set -eu\n"+script)
	cmd.Dir = r.dir
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); k != "EDGE_JWT_SECRET" && k != "EVENTBUS_API" {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, append(env, "API_HTTP_ADDR="+r.apiHTTP)...)
	return cmd
}

// subscribe runs script, whose mosquitto_sub takes one message (-C 1, at
// most 30 s) with its debug lines on, line-buffered, and returns once the
// edge has acknowledged the subscription; the returned function waits for
// the message and returns mosquitto_sub's line of it (with -v, "topic
// payload"). extra are more options of mosquitto_sub.
func (r recipe) subscribe(t *testing.T, name, script string, extra ...string) func() string {
	t.Helper()
	wrap := fmt.Sprintf("mosquitto_sub() { exec stdbuf -oL mosquitto_sub \"$@\" -d -C 1 -W 30 %s; }\n", strings.Join(extra, " "))
	cmd := r.command(t, wrap+script)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 64)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		for range lines {
		}
		_ = cmd.Wait()
	})
	var seen []string
	next := func(what string, ok func(string) bool) string {
		t.Helper()
		for l := range lines {
			seen = append(seen, l)
			if ok(l) {
				return l
			}
		}
		_ = cmd.Wait()
		t.Fatalf("%s: mosquitto_sub ended before %s: %s\n%s", name, what, stderr.String(), strings.Join(seen, "\n"))
		return ""
	}
	if l := next("its SUBACK", func(l string) bool { return strings.HasPrefix(l, "Subscribed ") }); l != "Subscribed (mid: 1): 0" {
		t.Fatalf("%s: %q, want QoS 0 granted", name, l)
	}
	return func() string {
		t.Helper()
		return next("a message", func(l string) bool { return !strings.HasPrefix(l, "Client ") && !strings.HasPrefix(l, "Subscribed ") })
	}
}

// The README's MQTT recipes work together, run as written with the real
// binaries: the token of `eventbus token --sub 42 --channels 'order:*'`
// takes the documented order/# (narrowed to order:*, in 3.1.1 and 5.0)
// and # (narrowed to the grants), and receives the order the README's
// `eventbus publish order.placed` sends; the device token's mosquitto_pub
// puts its reading on the bus, where a subscriber of sensor/# gets it and
// 42's '#' does not. Only the port (make run's 11883) is the test's own.
func TestREADMEMQTTRecipes(t *testing.T) {
	for _, p := range []string{"mosquitto_sub", "mosquitto_pub", "stdbuf", "bash"} {
		if _, err := exec.LookPath(p); err != nil {
			servicetest.Needs(t, "EVENTBUS_REQUIRE_MOSQUITTO", fmt.Sprintf("no %s on PATH (apt-get install mosquitto-clients)", p))
		}
	}
	const (
		tokenLine   = "token=$(bin/eventbus token "
		subLine     = "mosquitto_sub "
		deviceLine  = "device=$(bin/eventbus token "
		pubLine     = "mosquitto_pub "
		publishLine = "bin/eventbus publish order.placed "
	)
	readme := readmeRecipes(t, tokenLine, subLine, deviceLine, pubLine, publishLine)

	srv := redistest.Shared(t)
	common := map[string]string{"REDIS_URL": srv.URL, "REDIS_PREFIX": strings.TrimSuffix(redistest.Prefix(t), ":")}
	apiHTTP, edgeHTTP, mqttAddr := servicetest.FreeAddr(t), servicetest.FreeAddr(t), servicetest.FreeAddr(t)
	api := start(t, "api", merge(common, map[string]string{"API_HTTP_ADDR": apiHTTP, "API_GRPC_ADDR": servicetest.FreeAddr(t)}))
	edge := start(t, "edge", merge(common, map[string]string{"EDGE_HTTP_ADDR": edgeHTTP, "EDGE_MQTT_ADDR": mqttAddr, "EDGE_JWT_SECRET": recipeSecret}))
	waitReady(t, api, "http://"+apiHTTP+"/readyz")
	waitReady(t, edge, "http://"+edgeHTTP+"/readyz")

	r := recipe{dir: t.TempDir(), apiHTTP: apiHTTP}
	for _, d := range []string{"bin", "data"} {
		if err := os.Mkdir(filepath.Join(r.dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(filepath.Join(bin, "eventbus"), filepath.Join(r.dir, "bin", "eventbus")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(r.dir, "data", "dev-secret"), []byte(recipeSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(mqttAddr)
	onPort := func(line string) string {
		t.Helper()
		if !strings.Contains(line, " -p 11883 ") {
			t.Fatalf("README recipe %q is not on make run's MQTT port, -p 11883", line)
		}
		return strings.Replace(line, " -p 11883 ", " -p "+port+" ", 1)
	}
	sub := readme[tokenLine] + "\n" + onPort(readme[subLine])
	if !strings.Contains(sub, "'order/#'") {
		t.Fatalf("README recipe %q subscribes to no 'order/#'", readme[subLine])
	}
	hash := strings.Replace(sub, "'order/#'", "'#'", 1)
	order := map[string]func() string{
		"order/# in 3.1.1": r.subscribe(t, "order/# in 3.1.1", sub),
		"order/# in 5.0":   r.subscribe(t, "order/# in 5.0", sub, "-V", "mqttv5"),
		"# in 5.0":         r.subscribe(t, "# in 5.0", hash, "-V", "mqttv5"),
	}
	sensorTok, err := token.Issue([]byte(recipeSecret), "checker", []string{"sensor:*"}, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	sensor := r.subscribe(t, "sensor/#", fmt.Sprintf("mosquitto_sub -p %s -u any -P %q -t 'sensor/#' -v", port, sensorTok))

	// The device's reading first: once its subscriber has it, 42's '#',
	// which it is no part of, must still get the order as its first.
	if out, err := r.command(t, readme[deviceLine]+"\n"+onPort(readme[pubLine])).CombinedOutput(); err != nil {
		t.Fatalf("the README's device recipe: %v\n%s", err, out)
	}
	// MQTT subscribers get a device's message as it sent it.
	if topic, payload, _ := strings.Cut(sensor(), " "); topic != "sensor/temp" || payload != `{"celsius":21.5}` {
		t.Errorf("sensor/# got %s %s, want dev1's reading as it sent it", topic, payload)
	}

	if out, err := r.command(t, readme[publishLine]).CombinedOutput(); err != nil {
		t.Fatalf("the README's %q: %v\n%s", readme[publishLine], err, out)
	}
	for name, next := range order {
		var ev struct {
			Type string
			Data struct {
				OrderID string `json:"order_id"`
			}
		}
		if topic, payload, _ := strings.Cut(next(), " "); topic != "order/placed" || json.Unmarshal([]byte(payload), &ev) != nil ||
			ev.Type != "order.placed" || ev.Data.OrderID != "o1" {
			t.Errorf("%s got %s %s, want order o1 placed", name, topic, payload)
		}
	}
}
