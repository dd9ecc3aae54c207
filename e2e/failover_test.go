package e2e

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
	"github.com/eventbus-suite/eventbus/pkg/token"
)

// The JavaScript client, in Node, behind nginx in front of two edges: the
// edge holding its connection is killed (-9) while events are published
// through the API, and the client resumes on the other edge with every
// event once, in order, and the edge saying it recovered.
func TestClientResumesOnTheOtherEdgeAfterAKill(t *testing.T) {
	needJSClient(t, "dist/eventbus.js")
	srv := redistest.Shared(t)
	prefix := strings.TrimSuffix(redistest.Prefix(t), ":")
	common := map[string]string{"REDIS_URL": srv.URL, "REDIS_PREFIX": prefix}
	const secret = "failover-e2e-secret-0123456789"
	apiHTTP, apiGRPC := servicetest.FreeAddr(t), servicetest.FreeAddr(t)
	api := start(t, "api", merge(common, map[string]string{"API_HTTP_ADDR": apiHTTP, "API_GRPC_ADDR": apiGRPC}))
	waitReady(t, api, "http://"+apiHTTP+"/readyz")
	edgeAddrs, procs := startEdges(t, 2, merge(common, map[string]string{"EDGE_JWT_SECRET": secret}))
	front, _ := startNginx(t, edgeAddrs...)

	script, err := filepath.Abs("../clients/js/integration/resume.mjs")
	if err != nil {
		t.Fatal(err)
	}
	tok, err := token.Issue([]byte(secret), "u1", []string{"fo:*"}, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	client := servicetest.StartNode(t, script, "EDGE=http://"+front, "TOKEN="+tok, "PATTERN=fo:*", "TRANSPORT=websocket")
	client.Until("subscribed")
	publish := func(from, to int) {
		for i := from; i < to; i++ {
			postAccepted(t, apiHTTP, "/v1/events", fmt.Sprintf(`{"type":"fo.placed","subject":"%d"}`, i))
		}
	}
	var got []string
	receive := func(n int) {
		t.Helper()
		for len(got) < n {
			var s string
			_ = json.Unmarshal(client.Until("event"), &s)
			got = append(got, s)
		}
	}
	publish(0, 5)
	receive(5)

	var victim string
	for _, a := range edgeAddrs {
		if servicetest.Metric(t, "http://"+a, "eventbus_edge_connections") == 1 {
			victim = a
		}
	}
	if victim == "" {
		t.Fatal("no edge reports the client's connection")
	}
	if err := procs[victim].cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-procs[victim].done
	publish(5, 55) // while the client finds the other edge
	var reply struct {
		Recovered *bool
		Missed    int
	}
	if err := json.Unmarshal(client.Until("subscribed"), &reply); err != nil || reply.Recovered == nil || !*reply.Recovered {
		t.Fatalf("the client resumed with %+v (%v), want recovered", reply, err)
	}
	receive(55)
	for i, s := range got {
		if s != fmt.Sprint(i) {
			t.Fatalf("the client got %q, want 0 to 54 once each, in order", got)
		}
	}
	t.Logf("recovered %d missed events on the other edge", reply.Missed)
}
