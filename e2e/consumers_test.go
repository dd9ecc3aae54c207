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
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
)

// TestConsumerExamples runs the consumers of examples/ (docs/consumers.md)
// as a reader would, against Redis and the api binary. Subscribed, each
// must print the events published through the API, decoded, and survive a
// message that is no envelope: once on a server of its own with no prefix
// and the default pattern, once on the shared server under a REDIS_PREFIX.
// Reading a namespace's stream with a consumer group, each must also get
// what was published while it was stopped.
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
			t.Run("no prefix", func(t *testing.T) {
				// The default pattern, *, sees every channel of the server.
				testSubscribingConsumer(t, redistest.Start(t), "", lang.command)
			})
			t.Run("prefix", func(t *testing.T) {
				testSubscribingConsumer(t, redistest.Shared(t), strings.TrimSuffix(redistest.Prefix(t), ":"), lang.command)
			})
			t.Run("stream", func(t *testing.T) {
				testStreamConsumer(t, redistest.Shared(t), strings.TrimSuffix(redistest.Prefix(t), ":"), lang.command)
			})
		})
	}
}

// An order.placed event, whose int64 fields JSON renders as strings (these
// are past 2^53, where a JavaScript number would round them), and the line
// a consumer prints for it, at a position.
const (
	consumerOrder = `{"type":"order.placed","id":"consumer-order-1","subject":"o1",
		"time":"2025-01-02T03:04:05.5Z","data":{"order_id":"o1","user_id":"42","currency":"EUR",
		"items":[{"sku":"sku-1","name":"Big","quantity":1,"unit_price":9007199254740993}],"total":9007199254740993}}`
	consumerOrderLine = `{"id":"consumer-order-1","type":"order.placed","channel":"order:placed","subject":"o1",
		"time":"2025-01-02T03:04:05.500Z",%s
		"data":{"order_id":"o1","user_id":"42","currency":"EUR",
		"items":[{"sku":"sku-1","name":"Big","quantity":1,"unit_price":"9007199254740993"}],"total":"9007199254740993"}}`
)

// consumerCustom is an event of a type the bus does not know, whose data is
// a Struct, numbered n, and consumerCustomLine the line a consumer prints
// for it, at a position.
func consumerCustom(n int) (event, line string) {
	data := `{"name":"Ada","count":3,"ratio":1.5,"ok":true,"none":null,"tags":["a",1],"nested":{"list":[]}}`
	event = fmt.Sprintf(`{"type":"e2e.custom","id":"consumer-custom-%d","time":"2025-01-02T03:04:05.123456789Z","data":%s}`, n, data)
	line = fmt.Sprintf(`{"id":"consumer-custom-%d","type":"e2e.custom","channel":"e2e:custom",
		"time":"2025-01-02T03:04:05.123456789Z",%%s"data":%s}`, n, data)
	return event, line
}

// testSubscribingConsumer checks a consumer that subscribes to the default
// pattern on srv under prefix.
func testSubscribingConsumer(t *testing.T, srv *redistest.Server, prefix string, command func(*testing.T) *exec.Cmd) {
	cmd := command(t)
	apiHTTP := startConsumerAPI(t, srv, prefix)
	busPrefix := ""
	if prefix != "" {
		busPrefix = prefix + ":"
	}
	consumer, lines := startConsumer(t, srv, prefix, cmd, "subscribed "+busPrefix+"*\n")

	// What someone publishes by hand on a bus channel is no envelope: the
	// consumer says so and goes on to the events after it.
	if err := srv.Client(t).Publish(t.Context(), busPrefix+"e2e:raw", `{"plain":"json"}`).Err(); err != nil {
		t.Fatal(err)
	}
	waitOutput(t, consumer, "not an envelope on "+busPrefix+"e2e:raw: ")

	order := publishEvent(t, apiHTTP, consumerOrder)
	expectLine(t, lines, fmt.Sprintf(consumerOrderLine, fmt.Sprintf(`"epoch":%q,"offset":%q,`, order.Epoch, order.Offset)))
	event, line := consumerCustom(1)
	custom := publishEvent(t, apiHTTP, event)
	expectLine(t, lines, fmt.Sprintf(line, fmt.Sprintf(`"epoch":%q,"offset":%q,`, custom.Epoch, custom.Offset)))
}

// testStreamConsumer checks a consumer that reads the stream of the
// namespace e2e on srv under prefix with a consumer group, and is
// restarted.
func testStreamConsumer(t *testing.T, srv *redistest.Server, prefix string, command func(*testing.T) *exec.Cmd) {
	cmd := command(t)
	apiHTTP := startConsumerAPI(t, srv, prefix)
	args := []string{"--stream", "e2e", "--group", "g", "--consumer", "c1"}
	key := prefix + ":stream:{e2e}"
	ready := "reading " + key + " as g/c1\n"
	cmd.Args = append(cmd.Args, args...)
	consumer, lines := startConsumer(t, srv, prefix, cmd, ready)

	// An entry added by hand that holds no envelope is reported and
	// acknowledged like the others.
	rdb := srv.Client(t)
	if err := rdb.Do(t.Context(), "XADD", key, "*", "c", prefix+":e2e:raw", "p", `{"plain":"json"}`).Err(); err != nil {
		t.Fatal(err)
	}
	waitOutput(t, consumer, "not an envelope on "+prefix+":e2e:raw: ")
	event, line := consumerCustom(1)
	first := publishEvent(t, apiHTTP, event)
	expectLine(t, lines, fmt.Sprintf(line, fmt.Sprintf(`"offset":%q,`, first.Offset)))
	// Acknowledged: a consumer stopped between printing and acknowledging
	// would get the event again (at least once).
	acknowledged := func() {
		t.Helper()
		servicetest.WaitFor(t, "the group to have acknowledged everything", func() bool {
			pending, err := rdb.Do(t.Context(), "XPENDING", key, "g").Slice()
			return err == nil && len(pending) > 0 && pending[0] == int64(0)
		})
	}
	acknowledged()

	// Published while no consumer of the group runs: the next one gets it.
	consumer.stop(t)
	event, line = consumerCustom(2)
	second := publishEvent(t, apiHTTP, event)
	cmd = command(t)
	cmd.Args = append(cmd.Args, args...)
	_, lines = startConsumer(t, srv, prefix, cmd, ready)
	expectLine(t, lines, fmt.Sprintf(line, fmt.Sprintf(`"offset":%q,`, second.Offset)))
	acknowledged()
}

// startConsumerAPI starts the api on srv under prefix and returns its
// HTTP address once it is ready.
func startConsumerAPI(t *testing.T, srv *redistest.Server, prefix string) string {
	t.Helper()
	addr := freeAddr(t)
	api := start(t, "api", map[string]string{"REDIS_URL": srv.URL, "REDIS_PREFIX": prefix,
		"API_HTTP_ADDR": addr, "API_GRPC_ADDR": freeAddr(t)})
	waitReady(t, api, "http://"+addr+"/readyz")
	return addr
}

// startConsumer starts cmd, a consumer of examples/, on srv under prefix,
// and returns it and the lines it prints once it has written ready on
// stderr.
func startConsumer(t *testing.T, srv *redistest.Server, prefix string, cmd *exec.Cmd, ready string) (*process, <-chan string) {
	t.Helper()
	cmd.Env = append(os.Environ(), "REDIS_URL="+srv.URL, "REDIS_PREFIX="+prefix,
		"PYTHONDONTWRITEBYTECODE=1") // no __pycache__ in the work tree
	lines := linesOf(t, cmd)
	p := startCmd(t, filepath.Base(cmd.Path), cmd)
	waitOutput(t, p, ready)
	return p, lines
}

// expectLine fails the test unless the next line is the JSON of want,
// whatever the order of keys and the spelling of numbers.
func expectLine(t *testing.T, lines <-chan string, want string) {
	t.Helper()
	var wantV any
	if err := json.Unmarshal([]byte(want), &wantV); err != nil {
		t.Fatalf("bad want %s: %v", want, err)
	}
	want = strings.Join(strings.Fields(want), "")
	select {
	case l, ok := <-lines:
		if !ok {
			t.Fatalf("the consumer's output ended before %s", want)
		}
		var got any
		if err := json.Unmarshal([]byte(l), &got); err != nil {
			t.Fatalf("consumer printed %q: %v", l, err)
		}
		if !reflect.DeepEqual(got, wantV) {
			t.Errorf("consumer printed\n%s\nwant\n%s", l, want)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("the consumer printed nothing within 15s, want %s", want)
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
		servicetest.Needs(t, "EVENTBUS_REQUIRE_NODE", err.Error())
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
	servicetest.Needs(t, "EVENTBUS_REQUIRE_PYTHON", fmt.Sprintf("no python3 among %v imports redis and google.protobuf (apt-get install python3-redis python3-protobuf)", candidates))
	return nil
}
