package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
)

// loggedLine is what these tests read of a line of the logger's files.
type loggedLine struct {
	Channel string `json:"channel"`
	Offset  string `json:"offset"`
	Event   struct {
		ID      string `json:"id"`
		Subject string `json:"subject"`
	} `json:"event"`
}

// readLog returns the lines of the logger's events.log in dir, in order.
func readLog(t *testing.T, dir string) []loggedLine {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, "events.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []loggedLine
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l loggedLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("log line %q: %v", sc.Text(), err)
		}
		lines = append(lines, l)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return lines
}

// checkOnceInOrder fails the test unless lines hold want distinct events,
// each once, and each namespace's events in offset order.
func checkOnceInOrder(t *testing.T, lines []loggedLine, want int) {
	t.Helper()
	if got := onceInOrder(t, lines); len(got) != want {
		t.Fatalf("logged %d events, want %d", len(got), want)
	}
}

// onceInOrder fails the test unless lines hold each event once, and each
// namespace's events in offset order; it returns the subjects logged.
func onceInOrder(t *testing.T, lines []loggedLine) map[string]bool {
	t.Helper()
	seen, subjects := map[string]bool{}, map[string]bool{}
	last := map[string]string{}
	for i, l := range lines {
		if seen[l.Event.ID] {
			t.Fatalf("line %d: event %s logged twice", i+1, l.Event.ID)
		}
		seen[l.Event.ID], subjects[l.Event.Subject] = true, true
		ns, _, _ := strings.Cut(l.Channel, ":")
		if bus.CompareOffsets(last[ns], l.Offset) >= 0 {
			t.Fatalf("line %d: %s at offset %s after %s: out of order in namespace %s", i+1, l.Channel, l.Offset, last[ns], ns)
		}
		last[ns] = l.Offset
	}
	return subjects
}

// batchOf returns an NDJSON batch of n events of types spread over
// namespaces in turn ("rel1.made", "rel2.made", …), their subjects
// starting at from.
func batchOf(n, from int, namespaces ...string) *bytes.Buffer {
	var b bytes.Buffer
	for i := range n {
		fmt.Fprintf(&b, `{"type":"%s.made","subject":"s%d"}`+"\n", namespaces[i%len(namespaces)], from+i)
	}
	return &b
}

// running fails the test if p has exited.
func running(t *testing.T, p *process) {
	t.Helper()
	select {
	case err := <-p.done:
		p.done <- err
		t.Fatalf("%s exited (%v), want it running:\n%s", p.name, err, p.out)
	default:
	}
}

// One POST /v1/events:batch of 1,000 events over two namespaces used to
// kill the logger for good: Fetch returned up to 512 events per namespace
// into a recorder made for 512, and every restart read them again.
func TestABatchOverTwoNamespacesCannotStopTheLogger(t *testing.T) {
	srv := redistest.Shared(t)
	redistest.RequireReal(t, srv)
	prefix := strings.TrimSuffix(redistest.Prefix(t), ":")
	apiHTTP, loggerHTTP, logDir := freeAddr(t), freeAddr(t), t.TempDir()
	common := map[string]string{"REDIS_URL": srv.URL, "REDIS_PREFIX": prefix, "LOG_LEVEL": "warn"}
	logger := start(t, "logger", merge(common, map[string]string{
		"LOGGER_HTTP_ADDR": loggerHTTP, "LOGGER_DIR": logDir, "LOGGER_STDOUT": "false", "LOGGER_MEMBER": "only"}))
	api := start(t, "api", merge(common, map[string]string{"API_HTTP_ADDR": apiHTTP, "API_GRPC_ADDR": freeAddr(t)}))
	waitReady(t, logger, "http://"+loggerHTTP+"/readyz")
	waitReady(t, api, "http://"+apiHTTP+"/readyz")

	postBatch(t, apiHTTP, batchOf(1000, 0, "relone", "reltwo"))
	waitLogged(t, logDir, 1000)
	running(t, logger)
	checkOnceInOrder(t, readLog(t, logDir), 1000)
}

// A logger stopped while 2,000 events arrive over three namespaces logs
// them all when it comes back, each once, in order in each namespace
// (fetches of at most 512 over a backlog of several namespaces); and a
// restart under the same member name changes nothing.
func TestAStoppedLoggerLogsItsBacklogOnceInOrder(t *testing.T) {
	srv := redistest.Shared(t)
	redistest.RequireReal(t, srv)
	prefix := strings.TrimSuffix(redistest.Prefix(t), ":")
	apiHTTP, loggerHTTP, logDir := freeAddr(t), freeAddr(t), t.TempDir()
	common := map[string]string{"REDIS_URL": srv.URL, "REDIS_PREFIX": prefix, "LOG_LEVEL": "warn"}
	loggerEnv := merge(common, map[string]string{
		"LOGGER_HTTP_ADDR": loggerHTTP, "LOGGER_DIR": logDir, "LOGGER_STDOUT": "false", "LOGGER_MEMBER": "only"})
	logger := start(t, "logger", loggerEnv)
	api := start(t, "api", merge(common, map[string]string{"API_HTTP_ADDR": apiHTTP, "API_GRPC_ADDR": freeAddr(t)}))
	waitReady(t, logger, "http://"+loggerHTTP+"/readyz")
	waitReady(t, api, "http://"+apiHTTP+"/readyz")
	// The group stands on each namespace once the logger logged its event.
	postBatch(t, apiHTTP, batchOf(3, 0, "rela", "relb", "relc"))
	waitLogged(t, logDir, 3)
	logger.stop(t)

	for i := range 20 {
		postBatch(t, apiHTTP, batchOf(100, 3+100*i, "rela", "relb", "relc"))
	}
	logger = start(t, "logger", loggerEnv)
	waitReady(t, logger, "http://"+loggerHTTP+"/readyz")
	waitLogged(t, logDir, 2003)
	checkOnceInOrder(t, readLog(t, logDir), 2003)

	logger.stop(t)
	logger = start(t, "logger", loggerEnv)
	waitReady(t, logger, "http://"+loggerHTTP+"/readyz")
	postAccepted(t, apiHTTP, "/v1/events", `{"type":"rela.last"}`)
	waitLogged(t, logDir, 2004)
	checkOnceInOrder(t, readLog(t, logDir), 2004)
	running(t, logger)
}

// readyz returns the status of GET url, 0 when nothing answers.
func readyz(url string) int {
	resp, err := http.Get(url)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// Redis killed (SIGKILL, with its append-only file) under a steady stream
// of sign-ups and brought back once the logger and notification report
// themselves unready: every service is still running afterwards, each
// says once that Redis went and once that it is back, and every sign-up
// the API acknowledged is logged once and gets one welcome email. A
// sign-up whose answer was lost with Redis may have been recorded all the
// same: it is logged and emailed at most once.
func TestServicesRideOutARedisKill(t *testing.T) {
	srv := redistest.StartPersistent(t)
	prefix := strings.TrimSuffix(redistest.Prefix(t), ":")
	sg := newFakeSendGrid(t)
	apiHTTP, loggerHTTP, notifyHTTP, edgeHTTP, logDir := freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t), t.TempDir()
	common := map[string]string{"REDIS_URL": srv.URL, "REDIS_PREFIX": prefix, "LOG_LEVEL": "warn"}
	procs := []*process{
		start(t, "api", merge(common, map[string]string{"API_HTTP_ADDR": apiHTTP, "API_GRPC_ADDR": freeAddr(t)})),
		start(t, "logger", merge(common, map[string]string{
			"LOGGER_HTTP_ADDR": loggerHTTP, "LOGGER_DIR": logDir, "LOGGER_STDOUT": "false", "LOGGER_MEMBER": "only"})),
		start(t, "notification", merge(common, map[string]string{
			"NOTIFICATION_HTTP_ADDR": notifyHTTP, "NOTIFICATION_MEMBER": "only",
			"SENDGRID_API_KEY": "SG.test", "SENDGRID_API_URL": sg.srv.URL})),
		start(t, "edge", merge(common, map[string]string{"EDGE_HTTP_ADDR": edgeHTTP, "EDGE_JWT_SECRET": "e2e-secret-0123456789abcdef0123"})),
	}
	for i, addr := range []string{apiHTTP, loggerHTTP, notifyHTTP, edgeHTTP} {
		waitReady(t, procs[i], "http://"+addr+"/readyz")
	}

	// Sign-ups, one at a time, until stopped; those answered 202 count.
	var mu sync.Mutex
	var acked []int
	tried := 0
	ctx, stop := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	wg.Go(func() {
		client := &http.Client{Timeout: 10 * time.Second}
		for i := 0; ctx.Err() == nil; i++ {
			mu.Lock()
			tried = i + 1
			mu.Unlock()
			body := fmt.Sprintf(`{"user_id":"r%d","email":"r%d@example.com","name":"R"}`, i, i)
			resp, err := client.Post("http://"+apiHTTP+"/v1/users", "application/json", strings.NewReader(body))
			if err != nil {
				continue
			}
			resp.Body.Close()
			if resp.StatusCode == http.StatusAccepted {
				mu.Lock()
				acked = append(acked, i)
				mu.Unlock()
			}
		}
	})
	defer wg.Wait()
	defer stop()
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }
	servicetest.WaitFor(t, "sign-ups before the kill", func() bool { return count() >= 50 })

	// Down until the logger and notification have each seen it, reported
	// themselves unready and said so.
	consumers := map[*process]string{procs[1]: loggerHTTP, procs[2]: notifyHTTP}
	srv.Stop(t)
	for p, addr := range consumers {
		servicetest.WaitFor(t, p.name+" unready while Redis is gone", func() bool { return readyz("http://"+addr+"/readyz") == http.StatusServiceUnavailable })
		servicetest.WaitFor(t, p.name+" saying Redis is gone", func() bool { return strings.Contains(p.out.String(), "failed; retrying until it works") })
	}
	srv.Restart(t)
	for p, addr := range consumers {
		servicetest.WaitFor(t, p.name+" ready again", func() bool { return readyz("http://"+addr+"/readyz") == http.StatusOK })
		servicetest.WaitFor(t, p.name+" saying Redis is back", func() bool { return strings.Contains(p.out.String(), "works again") })
	}
	before := count()
	servicetest.WaitFor(t, "sign-ups after Redis came back", func() bool { return count() >= before+50 })
	stop()
	wg.Wait()

	n := count()
	servicetest.WaitFor(t, "every acknowledged sign-up logged", func() bool {
		logged := onceInOrder(t, readLog(t, logDir))
		return !slices.ContainsFunc(acked, func(i int) bool { return !logged["r"+strconv.Itoa(i)] })
	})
	if logged := onceInOrder(t, readLog(t, logDir)); len(logged) > tried {
		t.Fatalf("logged %d sign-ups of %d tried", len(logged), tried)
	}
	servicetest.WaitFor(t, "a welcome email for each acknowledged sign-up", func() bool {
		sg.mu.Lock()
		defer sg.mu.Unlock()
		return !slices.ContainsFunc(acked, func(i int) bool { return sg.to[fmt.Sprintf("r%d@example.com", i)] == 0 })
	})
	sg.mu.Lock()
	for i := range tried {
		got, ack := sg.to[fmt.Sprintf("r%d@example.com", i)], slices.Contains(acked, i)
		if got > 1 || ack && got != 1 {
			t.Errorf("user r%d (acknowledged %v) got %d welcome emails, want 1 (at most 1 unacknowledged)", i, ack, got)
		}
	}
	sg.mu.Unlock()
	for _, p := range procs {
		running(t, p)
	}
	for p := range consumers {
		if logs := p.out.String(); strings.Count(logs, "failed; retrying until it works") != 1 || strings.Count(logs, "works again") != 1 {
			t.Errorf("%s said %d times that Redis went and %d times that it came back, want once each:\n%s", p.name,
				strings.Count(logs, "failed; retrying until it works"), strings.Count(logs, "works again"), logs)
		}
	}
	t.Logf("%d sign-ups tried, %d acknowledged, %d of them after Redis came back", tried, n, n-before)
}
