package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
)

// Events published through the API are readable as history through the
// CLI, which pages on by itself and prints the cursor to go on from.
func TestHistoryCLI(t *testing.T) {
	srv := redistest.Shared(t)
	redistest.RequireReal(t, srv)
	prefix := strings.TrimSuffix(redistest.Prefix(t), ":")
	apiHTTP := servicetest.FreeAddr(t)
	api := start(t, "api", map[string]string{
		"REDIS_URL": srv.URL, "REDIS_PREFIX": prefix, "API_HTTP_ADDR": apiHTTP, "API_GRPC_ADDR": servicetest.FreeAddr(t),
	})
	waitReady(t, api, "http://"+apiHTTP+"/readyz")
	const n, batch = 1500, 500 // more than one page of 1000
	for from := 0; from < n; from += batch {
		var body bytes.Buffer
		for i := from; i < from+batch; i++ {
			fmt.Fprintf(&body, `{"type":"e2ehist.step","subject":"%d"}`+"\n", i)
		}
		postBatch(t, apiHTTP, &body)
	}
	cmd := exec.Command(filepath.Join(bin, "eventbus"), "history", "--api", "http://"+apiHTTP, "e2ehist:*")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("eventbus history = %v\n%s", err, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	if len(lines) != n {
		t.Fatalf("eventbus history printed %d lines, want %d", len(lines), n)
	}
	for i, l := range lines {
		var e struct {
			Offset, Channel string
			Event           struct{ Subject string }
		}
		if err := json.Unmarshal([]byte(l), &e); err != nil || e.Event.Subject != fmt.Sprint(i) || e.Offset == "" {
			t.Fatalf("line %d = %s (%v), want the event with subject %d and its offset", i, l, err, i)
		}
	}
	cursor, ok := strings.CutPrefix(strings.TrimSpace(stderr.String()), "cursor: ")
	if !ok {
		t.Fatalf("stderr = %q, want the cursor", stderr.String())
	}
	// Going on from the cursor finds nothing new.
	again := exec.Command(filepath.Join(bin, "eventbus"), "history", "--api", "http://"+apiHTTP, "--since", cursor, "e2ehist:*")
	if out, err := again.Output(); err != nil || len(out) != 0 {
		t.Fatalf("eventbus history --since the cursor = %q, %v; want nothing", out, err)
	}
}
