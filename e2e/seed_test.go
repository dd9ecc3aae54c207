package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
)

// The seed tutorial's consumer, run as written against make run with
// BUS_WIRE=json: it subscribes to user:* with node-redis and JSON.parses
// what it gets. make run has no prefix, so the channel is the event's own,
// and each message is the envelope's canonical JSON with its position.
func TestSeedConsumerReadsMakeRunWithTheJSONWire(t *testing.T) {
	node, err := exec.LookPath("node")
	root, rerr := filepath.Abs("..")
	if rerr != nil {
		t.Fatal(rerr)
	}
	modules := filepath.Join(root, "examples", "node", "node_modules")
	if err == nil {
		_, err = os.Stat(filepath.Join(modules, "redis"))
	}
	if err != nil {
		servicetest.Needs(t, "EVENTBUS_REQUIRE_NODE", "node and examples/node's node_modules (make examples): "+err.Error())
	}
	srv := redistest.Start(t) // a server of its own: make run's channels carry no prefix
	apiHTTP := servicetest.FreeAddr(t)
	startRun(t, root, []string{"REDIS_URL=" + srv.URL, "BUS_WIRE=json",
		"API_HTTP_ADDR=" + apiHTTP, "API_GRPC_ADDR=" + servicetest.FreeAddr(t), "EDGE_HTTP_ADDR=" + servicetest.FreeAddr(t), "EDGE_MQTT_ADDR=" + servicetest.FreeAddr(t),
		"LOGGER_HTTP_ADDR=" + servicetest.FreeAddr(t), "NOTIFICATION_HTTP_ADDR=" + servicetest.FreeAddr(t), "LOGGER_DIR=" + t.TempDir()},
		apiHTTP)

	seed := exec.Command(node, filepath.Join(root, "e2e", "testdata", "seed-consumer.js"))
	seed.Env = append(os.Environ(), "REDIS_URL="+srv.URL, "NODE_PATH="+modules)
	lines := linesOf(t, seed)
	stderr := &servicetest.Buffer{}
	seed.Stderr = stderr
	if err := seed.Start(); err != nil {
		t.Fatal(err)
	}
	// The seed's code has no way to stop but being killed.
	t.Cleanup(func() { _ = seed.Process.Kill(); _ = seed.Wait() })
	servicetest.WaitFor(t, "the seed's consumer to subscribe", func() bool { return strings.Contains(stderr.String(), "subscribed") })
	res := publishEvent(t, apiHTTP, `{"type":"user.greeted","subject":"u1","data":{"name":"Ada"}}`)
	for {
		var line string
		select {
		case line = <-lines:
		case <-time.After(30 * time.Second):
			t.Fatal("the seed's consumer printed nothing for the sign-up")
		}
		msg, ok := strings.CutPrefix(line, "Message from user:greeted: ")
		if !ok {
			continue
		}
		var got struct {
			Type, Subject, Channel, Offset, Epoch string
			Data                                  struct {
				Type  string         `json:"@type"`
				Value map[string]any `json:"value"`
			}
		}
		if err := json.Unmarshal([]byte(msg), &got); err != nil {
			t.Fatalf("the seed printed %q: %v", line, err)
		}
		if got.Type != "user.greeted" || got.Subject != "u1" || got.Channel != "user:greeted" || got.Offset != res.Offset || got.Epoch != res.Epoch {
			t.Errorf("the seed parsed %+v, want user.greeted of u1 at %+v", got, res)
		}
		if got.Data.Type != "type.googleapis.com/google.protobuf.Struct" || got.Data.Value["name"] != "Ada" {
			t.Errorf("the seed parsed data %+v, want the Struct it was published with", got.Data)
		}
		return
	}
}
