package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
)

// TestMain stops the shared Redis of the tests that start an edge, and
// removes the edge they built.
func TestMain(m *testing.M) {
	defer func() {
		if builtDir != "" {
			os.RemoveAll(builtDir)
		}
	}()
	redistest.Main(m)
}

var (
	buildOnce sync.Once
	builtDir  string // where edgeBinary built the edge, removed by TestMain
	builtEdge string
	buildErr  error
)

// edgeBinary returns the edge binary of EVENTBUS_BIN (make test sets it
// to bin/), or builds one, once, so that go test alone works too.
func edgeBinary(t *testing.T) string {
	t.Helper()
	if dir := os.Getenv("EVENTBUS_BIN"); dir != "" {
		return filepath.Join(dir, "edge")
	}
	buildOnce.Do(func() {
		if builtDir, buildErr = os.MkdirTemp("", "eventbus-cli-test-"); buildErr != nil {
			return
		}
		builtEdge = filepath.Join(builtDir, "edge")
		cmd := exec.Command("go", "build", "-o", builtEdge, "./services/edge")
		cmd.Dir = filepath.Join("..", "..")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("build the edge: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtEdge
}

// startEdgeProcess runs the edge binary on free ports of 127.0.0.1 with a
// known token secret, MQTT over TCP on, and returns its HTTP and MQTT
// addresses once it is ready; it stops it with SIGTERM when the test ends.
func startEdgeProcess(t *testing.T, secret string) (httpAddr, mqttAddr string) {
	t.Helper()
	redis := redistest.Shared(t)
	httpAddr, mqttAddr = servicetest.FreeAddr(t), servicetest.FreeAddr(t)
	cmd := exec.Command(edgeBinary(t))
	cmd.Env = append(os.Environ(), "REDIS_URL="+redis.URL, "REDIS_PREFIX="+redistest.Prefix(t),
		"EDGE_HTTP_ADDR="+httpAddr, "EDGE_MQTT_ADDR="+mqttAddr, "EDGE_JWT_SECRET="+secret,
		"EDGE_DEMO=false", "LOG_LEVEL=warn")
	out := &servicetest.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("the edge exited with %v after SIGTERM, want 0", err)
			}
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			t.Errorf("the edge did not exit within 10s of SIGTERM")
		}
		if t.Failed() {
			t.Logf("edge output:\n%s", out)
		}
	})
	servicetest.WaitFor(t, "the edge to be ready", func() bool {
		select {
		case err := <-done:
			done <- err
			t.Fatalf("the edge exited (%v) before it was ready:\n%s", err, out)
		default:
		}
		resp, err := http.Get("http://" + httpAddr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return httpAddr, mqttAddr
}

// bench mqtt against a real edge, over TCP and WebSocket in one run, with
// a few subscribers: every message reaches every subscriber once, the
// figures add up, and the edge's memory is read from its /metrics.
func TestBenchMQTTAgainstTheEdge(t *testing.T) {
	t.Parallel()
	const secret = "bench-secret-0123456789abcdef"
	httpAddr, mqttAddr := startEdgeProcess(t, secret)
	urls := "tcp://" + mqttAddr + ",ws://" + httpAddr + "/mqtt"
	tests := []struct {
		name, version, qos string
	}{
		{name: "3.1.1 QoS 1", version: "3.1.1", qos: "1"},
		{name: "5 QoS 0", version: "5", qos: "0"},
	}
	for _, tt := range tests {
		// One after the other: the edge's connection count, which says
		// that it serves the URL, counts both runs' connections otherwise.
		t.Run(tt.name, func(t *testing.T) {
			const subscribers, rate = 4, 20 // for 1 s: 20 messages
			var out, stderr bytes.Buffer
			args := []string{"bench", "mqtt", "--url", urls, "--edge", "http://" + httpAddr, "--token-secret", secret,
				"--version", tt.version, "--qos", tt.qos, "--subscribers", fmt.Sprint(subscribers), "--rate", fmt.Sprint(rate),
				"--duration", "1s", "--settle", "0s", "--json"}
			if err := run(t.Context(), args, func(string) string { return "" }, &out, &stderr); err != nil {
				t.Fatalf("bench mqtt = %v\n%s\n%s", err, out.String(), stderr.String())
			}
			dec := json.NewDecoder(&out)
			for _, want := range strings.Split(urls, ",") {
				var r map[string]any
				if err := dec.Decode(&r); err != nil {
					t.Fatalf("decode the result of %s: %v", want, err)
				}
				n := func(k string) float64 {
					v, ok := r[k].(float64)
					if !ok {
						t.Errorf("%s: %s = %v, want a number", want, k, r[k])
					}
					return v
				}
				if r["url"] != want {
					t.Errorf("result for %v, want %s", r["url"], want)
				}
				if got := n("published"); got != rate {
					t.Errorf("%s: published = %v, want %d", want, got, rate)
				}
				for _, k := range []string{"expected", "delivered"} {
					if got := n(k); got != rate*subscribers {
						t.Errorf("%s: %s = %v, want %d", want, k, got, rate*subscribers)
					}
				}
				for _, k := range []string{"lost", "duplicated", "publish_errors", "subscribers_dropped"} {
					if got := n(k); got != 0 {
						t.Errorf("%s: %s = %v, want 0", want, k, got)
					}
				}
				if p50, p99, most := n("p50_ms"), n("p99_ms"), n("max_ms"); p50 <= 0 || p50 > p99 || p99 > most {
					t.Errorf("%s: p50 %v, p99 %v, max %v ms: want 0 < p50 ≤ p99 ≤ max", want, p50, p99, most)
				}
				if n("deliveries_per_sec") <= 0 {
					t.Errorf("%s: deliveries_per_sec = %v, want more than 0", want, r["deliveries_per_sec"])
				}
				if src, _ := r["memory_source"].(string); src != "http://"+httpAddr+"/metrics" {
					t.Errorf("%s: memory_source = %q, want the edge's /metrics", want, src)
				}
				n("rss_bytes_per_conn")
			}
		})
	}
	// Without a token the edge refuses the connections: bench mqtt says
	// so, and names the flags that send one.
	t.Run("without a token", func(t *testing.T) {
		args := []string{"bench", "mqtt", "--url", "tcp://" + mqttAddr, "--edge", "http://" + httpAddr,
			"--subscribers", "1", "--rate", "1", "--duration", "1s", "--settle", "0s"}
		err := run(t.Context(), args, func(string) string { return "" }, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "--token-secret") || errors.Is(err, errLoss) {
			t.Errorf("bench mqtt without a token = %v, want a connection error naming --token-secret", err)
		}
	})
}

func TestBenchMQTTUsage(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"--qos", "2"},
		{"--version", "4"},
		{"--url", "http://localhost:1883"},
		{"--url", "tcp://localhost"},
		{"--topic", "bench/#"},
		{"--rate", "0"},
		{"extra"},
	} {
		err := run(t.Context(), append([]string{"bench", "mqtt"}, args...), func(string) string { return "" }, io.Discard, io.Discard)
		if !errors.Is(err, errUsage) {
			t.Errorf("bench mqtt %q = %v, want a usage error", args, err)
		}
	}
}

// --url takes a comma list or repeats, replacing the default, which is
// the edge's MQTT address as make run sets it.
func TestBenchMQTTURLs(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{name: "default", want: "tcp://localhost:1883"},
		{name: "make run", env: map[string]string{"EDGE_MQTT_ADDR": ":11883"}, want: "tcp://localhost:11883"},
		{name: "comma list", args: []string{"--url", "tcp://a:1, ws://b:2/mqtt"}, want: "tcp://a:1,ws://b:2/mqtt"},
		{name: "repeated", args: []string{"--url", "mqtt://a:1", "--url", "wss://b:443/mqtt"}, want: "tcp://a:1,wss://b:443/mqtt"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := env{getenv: func(k string) string { return tt.env[k] }, stderr: io.Discard}
			fs := flags(e, "bench mqtt", "", "")
			var o mqttOptions
			o.register(fs, e)
			if _, err := parse(fs, tt.args); err != nil {
				t.Fatal(err)
			}
			if got := o.urls.String(); got != tt.want {
				t.Errorf("--url after %q = %s, want %s", tt.args, got, tt.want)
			}
		})
	}
}

// A payload keeps its sequence number and due time readable whether it
// comes back as published (Mosquitto) or inside an event the edge made of
// it, and is padded to --size.
func TestBenchMQTTPayload(t *testing.T) {
	t.Parallel()
	marker := []byte("ebm:run1:")
	due := time.Unix(1_800_000_000, 123456789)
	p := payloadOf(marker, 42, due, 100)
	if len(p) != 100 || !json.Valid(p) {
		t.Fatalf("payloadOf(42, size 100) = %q (%d bytes), want 100 bytes of JSON", p, len(p))
	}
	tests := []struct {
		name    string
		payload []byte
		ok      bool
	}{
		{name: "as published", payload: p, ok: true},
		{name: "in an event", payload: fmt.Appendf(nil, `{"id":"x","type":"bench.mqtt.run1","data":{"bench":  %s}}`, p[len(`{"bench":`):len(p)-1]), ok: true},
		{name: "another run", payload: payloadOf([]byte("ebm:run2:"), 42, due, 0)},
		{name: "truncated", payload: []byte(`{"bench":"ebm:run1:42:18000`)},
		{name: "not ours", payload: []byte("hello")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			seq, got, ok := parseMarker(marker, tt.payload)
			if ok != tt.ok || ok && (seq != 42 || got != due.UnixNano()) {
				t.Errorf("parseMarker(%q) = %d, %d, %v; want 42, %d, %v", tt.payload, seq, got, ok, due.UnixNano(), tt.ok)
			}
		})
	}
}
