package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
	eventbusv1 "github.com/eventbus-suite/eventbus/proto/gen/eventbus/v1"
)

// The logger reads the record through its consumer group: stopped
// (SIGSTOP) while events of 2 KB are ingested, then stopped (SIGTERM) in
// the middle of its backlog and started again, it logs every accepted
// event, none lost.
func TestLoggerLosesNothingWhenStoppedAndRestarted(t *testing.T) {
	srv := redistest.Shared(t)
	redistest.RequireReal(t, srv)
	prefix := strings.TrimSuffix(redistest.Prefix(t), ":")
	apiHTTP, apiGRPC, loggerHTTP := servicetest.FreeAddr(t), servicetest.FreeAddr(t), servicetest.FreeAddr(t)
	common := map[string]string{"REDIS_URL": srv.URL, "REDIS_PREFIX": prefix, "LOG_LEVEL": "warn"}
	logDir := t.TempDir()
	loggerEnv := merge(common, map[string]string{
		"LOGGER_HTTP_ADDR": loggerHTTP, "LOGGER_DIR": logDir, "LOGGER_STDOUT": "false",
		"LOGGER_PATTERNS": "durable:*", "LOGGER_MEMBER": "only"})
	logger := start(t, "logger", loggerEnv)
	api := start(t, "api", merge(common, map[string]string{"API_HTTP_ADDR": apiHTTP, "API_GRPC_ADDR": apiGRPC}))
	waitReady(t, logger, "http://"+loggerHTTP+"/readyz")
	waitReady(t, api, "http://"+apiHTTP+"/readyz")
	// The logger has joined its group once it has logged a first event.
	postAccepted(t, apiHTTP, "/v1/events", `{"type":"durable.first"}`)
	waitLogged(t, logDir, 1)

	if err := logger.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(apiGRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := eventbusv1.NewEventServiceClient(conn)
	pad := strings.Repeat("x", 2000)
	const streams, each = 4, 2500
	accepted := int64(1)
	for s := range streams {
		stream, err := client.PublishStream(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		for i := range each {
			ev := &eventbusv1.Envelope{Type: "durable.big", Subject: fmt.Sprintf("%d-%d", s, i), Attributes: map[string]string{"pad": pad}}
			if err := stream.Send(&eventbusv1.PublishStreamRequest{Event: ev}); err != nil {
				t.Fatal(err)
			}
		}
		resp, err := stream.CloseAndRecv()
		if err != nil {
			t.Fatal(err)
		}
		accepted += resp.GetAccepted()
	}
	if err := logger.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	// Stop it in the middle of its backlog, then start it again.
	waitLogged(t, logDir, 2)
	logger.stop(t)
	logger = start(t, "logger", loggerEnv)
	waitReady(t, logger, "http://"+loggerHTTP+"/readyz")
	got := waitLogged(t, logDir, int(accepted))
	if len(got) < int(accepted) {
		t.Fatalf("logged %d distinct events, want all %d accepted", len(got), accepted)
	}
}

// waitLogged waits until the log files in dir hold at least n distinct
// event ids, and returns them; it fails after 60 s.
func waitLogged(t *testing.T, dir string, n int) map[string]bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	for {
		ids := map[string]bool{}
		files, _ := filepath.Glob(filepath.Join(dir, "*"))
		for _, f := range files {
			fh, err := os.Open(f)
			if err != nil {
				continue
			}
			sc := bufio.NewScanner(fh)
			sc.Buffer(make([]byte, 1<<20), 1<<20)
			for sc.Scan() {
				var line struct{ Event struct{ ID string } }
				if json.Unmarshal(sc.Bytes(), &line) == nil && line.Event.ID != "" {
					ids[line.Event.ID] = true
				}
			}
			fh.Close()
		}
		if len(ids) >= n {
			return ids
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the log holds %d distinct events after 60s, want %d", len(ids), n)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
