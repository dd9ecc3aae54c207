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
	apiHTTP, loggerHTTP, logDir := servicetest.FreeAddr(t), servicetest.FreeAddr(t), t.TempDir()
	common := map[string]string{"REDIS_URL": srv.URL, "REDIS_PREFIX": prefix, "LOG_LEVEL": "warn"}
	logger := start(t, "logger", merge(common, map[string]string{
		"LOGGER_HTTP_ADDR": loggerHTTP, "LOGGER_DIR": logDir, "LOGGER_STDOUT": "false", "LOGGER_MEMBER": "only"}))
	api := start(t, "api", merge(common, map[string]string{"API_HTTP_ADDR": apiHTTP, "API_GRPC_ADDR": servicetest.FreeAddr(t)}))
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
	apiHTTP, loggerHTTP, logDir := servicetest.FreeAddr(t), servicetest.FreeAddr(t), t.TempDir()
	common := map[string]string{"REDIS_URL": srv.URL, "REDIS_PREFIX": prefix, "LOG_LEVEL": "warn"}
	loggerEnv := merge(common, map[string]string{
		"LOGGER_HTTP_ADDR": loggerHTTP, "LOGGER_DIR": logDir, "LOGGER_STDOUT": "false", "LOGGER_MEMBER": "only"})
	logger := start(t, "logger", loggerEnv)
	api := start(t, "api", merge(common, map[string]string{"API_HTTP_ADDR": apiHTTP, "API_GRPC_ADDR": servicetest.FreeAddr(t)}))
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

// suite is the four services on one Redis or a cluster, with a fake
// SendGrid, as the fault tests run them.
type suite struct {
	api, logger, notification, edge string // HTTP addresses
	logDir                          string
	procs                           []*process // api, logger, notification, edge
	sg                              *fakeSendGrid
}

// startSuite starts the api, logger, notification and edge on the Redis
// at url under prefix, each ready.
func startSuite(t *testing.T, url, prefix string) *suite {
	t.Helper()
	s := &suite{api: servicetest.FreeAddr(t), logger: servicetest.FreeAddr(t), notification: servicetest.FreeAddr(t), edge: servicetest.FreeAddr(t), logDir: t.TempDir(), sg: newFakeSendGrid(t)}
	common := map[string]string{"REDIS_URL": url, "REDIS_PREFIX": prefix, "LOG_LEVEL": "warn"}
	s.procs = []*process{
		start(t, "api", merge(common, map[string]string{"API_HTTP_ADDR": s.api, "API_GRPC_ADDR": servicetest.FreeAddr(t)})),
		start(t, "logger", merge(common, map[string]string{
			"LOGGER_HTTP_ADDR": s.logger, "LOGGER_DIR": s.logDir, "LOGGER_STDOUT": "false", "LOGGER_MEMBER": "only"})),
		start(t, "notification", merge(common, map[string]string{
			"NOTIFICATION_HTTP_ADDR": s.notification, "NOTIFICATION_MEMBER": "only",
			"SENDGRID_API_KEY": "SG.test", "SENDGRID_API_URL": s.sg.srv.URL})),
		start(t, "edge", merge(common, map[string]string{"EDGE_HTTP_ADDR": s.edge, "EDGE_JWT_SECRET": mqttSecret})),
	}
	for i, addr := range []string{s.api, s.logger, s.notification, s.edge} {
		waitReady(t, s.procs[i], "http://"+addr+"/readyz")
	}
	return s
}

// running fails the test if any of the suite's services has exited.
func (s *suite) running(t *testing.T) {
	t.Helper()
	for _, p := range s.procs {
		running(t, p)
	}
}

// signups posts sign-ups to the API, one at a time, until ended: user
// <prefix><i> with the address <prefix><i>@example.com.
type signups struct {
	prefix string
	stop   context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	acked  []int // answered 202
	tried  int
}

func signUpSteadily(t *testing.T, api, prefix string) *signups {
	ctx, stop := context.WithCancel(t.Context())
	s := &signups{prefix: prefix, stop: stop}
	s.wg.Go(func() {
		client := &http.Client{Timeout: 10 * time.Second}
		for i := 0; ctx.Err() == nil; i++ {
			s.mu.Lock()
			s.tried = i + 1
			s.mu.Unlock()
			body := fmt.Sprintf(`{"user_id":"%s%d","email":"%s%d@example.com","name":"R"}`, prefix, i, prefix, i)
			resp, err := client.Post("http://"+api+"/v1/users", "application/json", strings.NewReader(body))
			if err != nil {
				continue
			}
			resp.Body.Close()
			if resp.StatusCode == http.StatusAccepted {
				s.mu.Lock()
				s.acked = append(s.acked, i)
				s.mu.Unlock()
			}
		}
	})
	t.Cleanup(s.end)
	return s
}

func (s *signups) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.acked)
}

// waitFor waits until n more sign-ups than now are acknowledged.
func (s *signups) waitFor(t *testing.T, n int, what string) {
	t.Helper()
	from := s.count()
	servicetest.WaitFor(t, what, func() bool { return s.count() >= from+n })
}

func (s *signups) end() {
	s.stop()
	s.wg.Wait()
}

func (s *signups) user(i int) string { return s.prefix + strconv.Itoa(i) }

// Redis killed (SIGKILL, with its append-only file) under a steady stream
// of sign-ups and brought back once the logger and notification report
// themselves unready: every service is still running afterwards, each
// says once that Redis went and once that it is back, and every sign-up
// the API acknowledged is logged once and gets one welcome email. A
// sign-up whose answer was lost with Redis may have been recorded all the
// same: it is logged and emailed at most once.
func TestServicesRideOutARedisKill(t *testing.T) {
	srv := redistest.StartPersistent(t)
	s := startSuite(t, srv.URL, strings.TrimSuffix(redistest.Prefix(t), ":"))
	users := signUpSteadily(t, s.api, "r")
	users.waitFor(t, 50, "sign-ups before the kill")

	// Down until the logger and notification have each seen it, reported
	// themselves unready and said so.
	consumers := map[*process]string{s.procs[1]: s.logger, s.procs[2]: s.notification}
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
	before := users.count()
	users.waitFor(t, 50, "sign-ups after Redis came back")
	users.end()

	servicetest.WaitFor(t, "every acknowledged sign-up logged", func() bool {
		logged := onceInOrder(t, readLog(t, s.logDir))
		return !slices.ContainsFunc(users.acked, func(i int) bool { return !logged[users.user(i)] })
	})
	if logged := onceInOrder(t, readLog(t, s.logDir)); len(logged) > users.tried {
		t.Fatalf("logged %d sign-ups of %d tried", len(logged), users.tried)
	}
	s.sg.waitFor(t, users.user, users.acked)
	s.sg.mu.Lock()
	for i := range users.tried {
		got, ack := s.sg.to[users.user(i)+"@example.com"], slices.Contains(users.acked, i)
		if got > 1 || ack && got != 1 {
			t.Errorf("user %s (acknowledged %v) got %d welcome emails, want 1 (at most 1 unacknowledged)", users.user(i), ack, got)
		}
	}
	s.sg.mu.Unlock()
	s.running(t)
	for p := range consumers {
		if logs := p.out.String(); strings.Count(logs, "failed; retrying until it works") != 1 || strings.Count(logs, "works again") != 1 {
			t.Errorf("%s said %d times that Redis went and %d times that it came back, want once each:\n%s", p.name,
				strings.Count(logs, "failed; retrying until it works"), strings.Count(logs, "works again"), logs)
		}
	}
	t.Logf("%d sign-ups tried, %d acknowledged, %d of them after Redis came back", users.tried, len(users.acked), len(users.acked)-before)
}

// waitFor waits until each of users' sign-ups numbered in which got a
// welcome email.
func (f *fakeSendGrid) waitFor(t *testing.T, user func(int) string, which []int) {
	t.Helper()
	servicetest.WaitFor(t, "a welcome email for each acknowledged sign-up", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return !slices.ContainsFunc(which, func(i int) bool { return f.to[user(i)+"@example.com"] == 0 })
	})
}
