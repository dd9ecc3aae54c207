package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
)

// TestConsumerExamples runs the consumers of examples/ (docs/consumers.md)
// as a reader would, against Redis and the api binary: each must print the
// events published through the API, decoded, and survive a message that is
// no envelope. Once on a server of its own with no prefix and the default
// pattern, once on the shared server under a REDIS_PREFIX.
//
// Without node (or examples/node/node_modules: make examples installs it)
// the Node consumer is skipped, and without a python3 that has redis-py and
// protobuf (Debian: python3-redis, python3-protobuf) the Python one, unless
// EVENTBUS_REQUIRE_NODE=1 or EVENTBUS_REQUIRE_PYTHON=1 (as in CI) make that
// a failure.
func TestConsumerExamples(t *testing.T) {
	examples, err := filepath.Abs(filepath.Join("..", "examples"))
	if err != nil {
		t.Fatal(err)
	}
	for _, lang := range []struct {
		name    string
		command func(t *testing.T) *exec.Cmd
	}{
		{"node", func(t *testing.T) *exec.Cmd { return nodeConsumer(t, examples) }},
		{"python", func(t *testing.T) *exec.Cmd { return pythonConsumer(t, examples) }},
	} {
		t.Run(lang.name, func(t *testing.T) {
			for _, tt := range []struct {
				name   string
				prefix bool
			}{
				{name: "no prefix"},
				{name: "prefix", prefix: true},
			} {
				t.Run(tt.name, func(t *testing.T) {
					cmd := lang.command(t)
					var srv *redistest.Server
					prefix := ""
					if tt.prefix {
						srv = redistest.Shared(t)
						prefix = strings.TrimSuffix(redistest.Prefix(t), ":")
					} else {
						// The default pattern, *, sees every channel of the
						// server.
						srv = redistest.Start(t)
					}
					testConsumer(t, srv, prefix, cmd)
				})
			}
		})
	}
}

// testConsumer starts the api and the consumer cmd (not yet started) on
// srv under prefix, publishes, and checks what the consumer prints.
func testConsumer(t *testing.T, srv *redistest.Server, prefix string, cmd *exec.Cmd) {
	t.Helper()
	apiHTTP := freeAddr(t)
	api := start(t, "api", map[string]string{"REDIS_URL": srv.URL, "REDIS_PREFIX": prefix,
		"API_HTTP_ADDR": apiHTTP, "API_GRPC_ADDR": freeAddr(t)})

	busPrefix := ""
	if prefix != "" {
		busPrefix = prefix + ":"
	}
	cmd.Env = append(os.Environ(), "REDIS_URL="+srv.URL, "REDIS_PREFIX="+prefix,
		"PYTHONDONTWRITEBYTECODE=1") // no __pycache__ in the work tree
	lines := linesOf(t, cmd)
	consumer := startCmd(t, filepath.Base(cmd.Path), cmd)
	waitOutput(t, consumer, "subscribed "+busPrefix+"*\n")
	waitReady(t, api, "http://"+apiHTTP+"/readyz")

	// What someone publishes by hand on a bus channel is no envelope: the
	// consumer says so and goes on to the events after it.
	if err := srv.Client(t).Publish(t.Context(), busPrefix+"e2e:raw", `{"plain":"json"}`).Err(); err != nil {
		t.Fatal(err)
	}
	waitOutput(t, consumer, "not an envelope on "+busPrefix+"e2e:raw: ")

	// A known type, whose int64 fields JSON renders as strings (this one
	// is past 2^53, where a JavaScript number would round it), and a type
	// the bus does not know, whose data is a Struct.
	order := publishEvent(t, apiHTTP, `{"type":"order.placed","id":"consumer-order-1","subject":"o1",
		"time":"2025-01-02T03:04:05.5Z","data":{"order_id":"o1","user_id":"42","currency":"EUR",
		"items":[{"sku":"sku-1","name":"Big","quantity":1,"unit_price":9007199254740993}],"total":9007199254740993}}`)
	custom := publishEvent(t, apiHTTP, `{"type":"e2e.custom","id":"consumer-custom-1",
		"time":"2025-01-02T03:04:05.123456789Z","data":{"name":"Ada","count":3,"ratio":1.5,"ok":true,
		"none":null,"tags":["a",1],"nested":{"list":[]}}}`)

	for _, want := range []string{
		fmt.Sprintf(`{"id":"consumer-order-1","type":"order.placed","channel":"order:placed","subject":"o1",
			"time":"2025-01-02T03:04:05.500Z","epoch":%q,"offset":%q,
			"data":{"order_id":"o1","user_id":"42","currency":"EUR",
			"items":[{"sku":"sku-1","name":"Big","quantity":1,"unit_price":"9007199254740993"}],"total":"9007199254740993"}}`,
			order.Epoch, order.Offset),
		fmt.Sprintf(`{"id":"consumer-custom-1","type":"e2e.custom","channel":"e2e:custom",
			"time":"2025-01-02T03:04:05.123456789Z","epoch":%q,"offset":%q,
			"data":{"name":"Ada","count":3,"ratio":1.5,"ok":true,"none":null,"tags":["a",1],"nested":{"list":[]}}}`,
			custom.Epoch, custom.Offset),
	} {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("the consumer's output ended before %s", want)
			}
			var got, wantV any
			if err := json.Unmarshal([]byte(l), &got); err != nil {
				t.Fatalf("consumer printed %q: %v", l, err)
			}
			if err := json.Unmarshal([]byte(want), &wantV); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, wantV) {
				t.Errorf("consumer printed\n%s\nwant\n%s", l, strings.Join(strings.Fields(want), ""))
			}
		case <-time.After(15 * time.Second):
			t.Fatalf("the consumer printed nothing within 15s, want %s", want)
		}
	}
}

// published is the API's reply to POST /v1/events.
type published struct {
	Offset, Epoch string
}

// publishEvent posts an event to the API at addr and returns its
// position, failing the test unless the API answers 202.
func publishEvent(t *testing.T, addr, body string) published {
	t.Helper()
	resp, err := http.Post("http://"+addr+"/v1/events", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var p published
	if err := json.NewDecoder(resp.Body).Decode(&p); err != nil || resp.StatusCode != http.StatusAccepted || p.Offset == "" {
		t.Fatalf("POST /v1/events = %s, %+v, %v; want 202 with a position", resp.Status, p, err)
	}
	return p
}

// waitOutput waits until what p wrote on stderr contains s, failing the
// test if p exits first or after 15 s.
func waitOutput(t *testing.T, p *process, s string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(p.out.String(), s) {
		select {
		case err := <-p.done:
			t.Fatalf("%s exited (%v) before writing %q:\n%s", p.name, err, s, p.out)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not write %q within 15s:\n%s", p.name, s, p.out)
		}
	}
}

// nodeConsumer returns the command of the Node consumer.
func nodeConsumer(t *testing.T, examples string) *exec.Cmd {
	t.Helper()
	node, err := exec.LookPath("node")
	if err == nil {
		_, err = os.Stat(filepath.Join(examples, "node", "node_modules", "redis"))
		if err != nil {
			err = fmt.Errorf("examples/node has no node_modules: run make examples (%w)", err)
		}
	}
	if err != nil {
		if os.Getenv("EVENTBUS_REQUIRE_NODE") == "1" {
			t.Fatalf("EVENTBUS_REQUIRE_NODE=1 but %v", err)
		}
		t.Skipf("needs node and the example's packages: %v", err)
	}
	return exec.Command(node, filepath.Join(examples, "node", "consumer.js"))
}

// pythonConsumer returns the command of the Python consumer, run by the
// first python3 that has redis-py and protobuf: Debian's /usr/bin/python3,
// which Debian's python3-redis and python3-protobuf install for, before a
// python3 found first on PATH (pyenv's, a virtualenv's).
func pythonConsumer(t *testing.T, examples string) *exec.Cmd {
	t.Helper()
	candidates := []string{"/usr/bin/python3"}
	if p, err := exec.LookPath("python3"); err == nil {
		candidates = append(candidates, p)
	}
	for _, python := range candidates {
		if exec.Command(python, "-c", "import redis, google.protobuf").Run() == nil {
			return exec.Command(python, filepath.Join(examples, "python", "consumer.py"))
		}
	}
	if os.Getenv("EVENTBUS_REQUIRE_PYTHON") == "1" {
		t.Fatalf("EVENTBUS_REQUIRE_PYTHON=1 but no python3 among %v imports redis and google.protobuf (apt-get install python3-redis python3-protobuf)", candidates)
	}
	t.Skipf("needs a python3 with redis-py and protobuf (apt-get install python3-redis python3-protobuf)")
	return nil
}
