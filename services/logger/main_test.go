package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/eventbus-suite/eventbus/pkg/bus/redisbus"
	"github.com/eventbus-suite/eventbus/pkg/envelope"
	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
	"github.com/eventbus-suite/eventbus/pkg/sse"
	"github.com/eventbus-suite/eventbus/services/logger/internal/eventlog"
)

func TestMain(m *testing.M) { redistest.Main(m) }

type logger struct {
	url    string
	dir    string
	stdout *servicetest.Buffer
	bus    *redisbus.Bus
	svc    *servicetest.Service
}

func startLogger(t *testing.T, srv *redistest.Server, prefix, dir string, env map[string]string) *logger {
	t.Helper()
	stdout := &servicetest.Buffer{}
	l := startLoggerWith(t, srv, prefix, dir, env, stdout, nil)
	l.stdout = stdout
	return l
}

// startLoggerWith is startLogger writing event lines to stdout and its log
// through wrap (when not nil), which takes the log the test keeps.
func startLoggerWith(t *testing.T, srv *redistest.Server, prefix, dir string, env map[string]string, stdout io.Writer,
	wrap func(stderr io.Writer) io.Writer) *logger {
	t.Helper()
	vars := map[string]string{
		"LOGGER_HTTP_ADDR": "127.0.0.1:0", "LOGGER_DIR": dir,
		"REDIS_URL": srv.URL, "REDIS_PREFIX": prefix,
	}
	maps.Copy(vars, env)
	svc := servicetest.Start(t, func(ctx context.Context, getenv func(string) string, stderr io.Writer) error {
		if wrap != nil {
			stderr = wrap(stderr)
		}
		return run(ctx, getenv, stdout, stderr)
	}, vars)
	parts, _ := strconv.Atoi(vars["BUS_PARTITIONS"])
	b, err := redisbus.New(srv.Client(t), redisbus.Options{Prefix: prefix + ":", HistoryMaxLen: 100_000, Partitions: parts})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return &logger{url: "http://" + svc.Addrs["http_addr"], dir: dir, bus: b, svc: svc}
}

func (l *logger) publish(t *testing.T, typ, subject string) string {
	t.Helper()
	return l.publishID(t, "", typ, subject)
}

// publishID publishes on the bus, recorded as the API records, with an id
// of the test's choosing; "" gives a fresh one.
func (l *logger) publishID(t *testing.T, id, typ, subject string) string {
	t.Helper()
	env := &envelope.Envelope{Id: id, Type: typ, Subject: subject}
	if err := envelope.Fill(env, "test", time.Now()); err != nil {
		t.Fatal(err)
	}
	b, err := envelope.Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := l.bus.Publish(t.Context(), env.GetChannel(), b); err != nil || r.Offset == "" && r.Receivers == 0 {
		t.Fatalf("Publish = %+v, %v; want it recorded, where the logger reads, or heard live", r, err)
	}
	return env.GetId()
}

// tail opens /v1/tail and returns a reader of its events. The stream is
// cut after 30 s, so that a missing event fails the test instead of
// hanging it.
func (l *logger) tail(t *testing.T, query string, header ...string) *sse.Reader {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, l.url+"/v1/tail?"+query, nil)
	if len(header) == 2 {
		req.Header.Set(header[0], header[1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET /v1/tail?%s = %d %s", query, resp.StatusCode, b)
	}
	return sse.NewReader(resp.Body)
}

type line struct {
	Channel string `json:"channel"`
	Pattern string `json:"pattern"`
	Event   struct {
		ID      string `json:"id"`
		Type    string `json:"type"`
		Subject string `json:"subject"`
	} `json:"event"`
}

func next(t *testing.T, rd *sse.Reader) line {
	t.Helper()
	ev, err := rd.Next()
	if err != nil {
		t.Fatalf("tail ended: %v", err)
	}
	var l line
	if err := json.Unmarshal([]byte(ev.Data), &l); err != nil {
		t.Fatalf("tail event %q: %v", ev.Data, err)
	}
	if _, err := eventlog.ParseMark(ev.ID); err != nil && ev.ID != l.Event.ID {
		t.Errorf("SSE id %q, want a position (%v), or the envelope id %q for an event without one", ev.ID, err, l.Event.ID)
	}
	return l
}

func TestTailBacklogThenLive(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	prefix := strings.TrimSuffix(redistest.Prefix(t), ":")
	l := startLogger(t, srv, prefix, t.TempDir(), nil)
	for i := range 5 {
		l.publish(t, "order.placed", "o"+strconv.Itoa(i))
		l.publish(t, "user.created", "u"+strconv.Itoa(i))
	}
	// Wait until the logger has all ten, through the tail itself.
	all := l.tail(t, "pattern=*&n=0")
	id := l.publish(t, "sync.point", "s")
	for next(t, all).Event.ID != id {
	}

	rd := l.tail(t, "pattern=order:*&n=2")
	for _, want := range []string{"o3", "o4"} {
		if got := next(t, rd); got.Event.Subject != want || got.Channel != "order:placed" || got.Pattern != "*" {
			t.Fatalf("backlog event = %+v, want subject %s on order:placed via *", got, want)
		}
	}
	l.publish(t, "user.created", "ignored")
	l.publish(t, "order.shipped", "live")
	if got := next(t, rd); got.Event.Subject != "live" || got.Event.Type != "order.shipped" {
		t.Fatalf("live event = %+v, want order.shipped live", got)
	}
	// stdout is written by a goroutine of its own, from a bounded buffer
	// (a stuck terminal must not stop the recording): the line comes
	// after the tail's, not with it.
	servicetest.WaitFor(t, "the live event on stdout", func() bool { return strings.Contains(l.stdout.String(), `"subject":"live"`) })
}

func TestTailSurvivesRestartAndResumes(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	prefix := strings.TrimSuffix(redistest.Prefix(t), ":")
	dir := t.TempDir()
	l := startLogger(t, srv, prefix, dir, map[string]string{"LOGGER_STDOUT": "false"})
	rd := l.tail(t, "n=0")
	var ids []string
	for i := range 3 {
		ids = append(ids, l.publish(t, "thing.done", strconv.Itoa(i)))
	}
	ev, err := rd.Next() // the first: its SSE id is where the tail stood after it
	if err != nil {
		t.Fatal(err)
	}
	afterFirst := ev.ID
	for next(t, rd).Event.ID != ids[2] {
	}
	if err := l.svc.Stop(); err != nil {
		t.Fatalf("stop = %v", err)
	}
	if l.stdout.String() != "" {
		t.Errorf("LOGGER_STDOUT=false but stdout has %q", l.stdout)
	}
	// The file holds every line.
	f, err := os.Open(filepath.Join(dir, "events.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []line
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var ln line
		if err := json.Unmarshal(sc.Bytes(), &ln); err != nil {
			t.Fatalf("log line %q: %v", sc.Text(), err)
		}
		lines = append(lines, ln)
	}
	if len(lines) != 3 || lines[0].Event.ID != ids[0] || lines[2].Event.ID != ids[2] {
		t.Fatalf("events.log has %d lines %+v, want the 3 events in order", len(lines), lines)
	}

	// A new logger on the same directory serves the old events, and a
	// client resuming after the first gets the rest.
	l2 := startLogger(t, srv, prefix, dir, nil)
	for _, last := range []string{ids[0], afterFirst} { // an envelope id, as before positions, and a position
		rd = l2.tail(t, "n=5", "Last-Event-ID", last)
		for _, want := range ids[1:] {
			if got := next(t, rd).Event.ID; got != want {
				t.Fatalf("resumed after %.20s…: event %s, want %s", last, got, want)
			}
		}
	}
}

func TestTailCannotBeForgedThroughAnEventID(t *testing.T) {
	t.Parallel()
	forged := []string{
		"x\nevent: lagged\ndata: {\"forged\":\"FORGED LINE\"}\n\nid: y",
		"x\revent: lagged\rdata: {\"forged\":1}\r\r",
		"x\x00y",
	}
	// With history, every SSE id is a position the logger made; without,
	// the envelope id, left out when SSE cannot carry it.
	for _, history := range []bool{true, false} {
		t.Run(fmt.Sprintf("history=%v", history), func(t *testing.T) {
			t.Parallel()
			srv := redistest.Shared(t)
			prefix := strings.TrimSuffix(redistest.Prefix(t), ":")
			env := map[string]string{}
			if !history {
				env["BUS_HISTORY"] = "off"
			}
			l := startLogger(t, srv, prefix, t.TempDir(), env)
			if !history {
				live, err := redisbus.New(srv.Client(t), redisbus.Options{Prefix: prefix + ":"})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = live.Close() })
				l.bus = live
			}
			rd := l.tail(t, "n=0")
			first := l.publishID(t, "", "a.b", "first")
			for _, id := range forged {
				l.publishID(t, id, "a.b", "forged")
			}
			last := l.publishID(t, "", "a.b", "last")

			want := append(append([]string{first}, forged...), last)
			seen := map[string]bool{}
			for i, id := range want {
				ev, err := rd.Next()
				if err != nil {
					t.Fatalf("event %d: tail ended: %v", i, err)
				}
				var ln line
				if err := json.Unmarshal([]byte(ev.Data), &ln); err != nil || ln.Event.ID != id || ev.Type != "message" {
					t.Fatalf("event %d = %+v (%v), want a message whose line has id %q", i, ev, err, id)
				}
				if history {
					if _, err := eventlog.ParseMark(ev.ID); err != nil || seen[ev.ID] {
						t.Errorf("event %d has SSE id %q (%v), want a position of its own", i, ev.ID, err)
					}
					seen[ev.ID] = true
					continue
				}
				// An id SSE cannot carry is left out: the reader keeps the one before.
				wantID := first
				if i == len(want)-1 {
					wantID = last
				}
				if ev.ID != wantID {
					t.Errorf("event %d has SSE id %q, want %q", i, ev.ID, wantID)
				}
			}
		})
	}
}

func TestTailRejectsBadQueries(t *testing.T) {
	t.Parallel()
	l := startLogger(t, redistest.Shared(t), strings.TrimSuffix(redistest.Prefix(t), ":"), t.TempDir(), nil)
	for _, q := range []string{"pattern=Order:*", "pattern=a:[b]", "n=-1", "n=many", "n=10001"} {
		resp, err := http.Get(l.url + "/v1/tail?" + q)
		if err != nil {
			t.Fatal(err)
		}
		code, _, err := servicetest.ErrorReply(resp)
		if resp.StatusCode != http.StatusBadRequest || err != nil || code != "invalid_argument" {
			t.Errorf("GET /v1/tail?%s = %d %s (%v), want 400 invalid_argument", q, resp.StatusCode, code, err)
		}
	}
}

func TestReadyAndMetrics(t *testing.T) {
	t.Parallel()
	l := startLogger(t, redistest.Shared(t), strings.TrimSuffix(redistest.Prefix(t), ":"), t.TempDir(), nil)
	rd := l.tail(t, "n=0")
	id := l.publish(t, "m.x", "1")
	for next(t, rd).Event.ID != id {
	}
	resp, err := http.Get(l.url + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/readyz = %d, want 200", resp.StatusCode)
	}
	resp, err = http.Get(l.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"eventbus_logger_events_logged_total 1", "eventbus_logger_lag_seconds", "eventbus_logger_lag_events"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

func TestConfigErrorsNameEveryVariable(t *testing.T) {
	t.Parallel()
	env := map[string]string{"LOGGER_PATTERNS": "ok:*,Not Valid", "LOGGER_MAX_FILES": "0", "LOGGER_HTTP_ADDR": "x", "LOG_FORMAT": "xml"}
	err := run(t.Context(), func(k string) string { return env[k] }, io.Discard, io.Discard)
	if err == nil {
		t.Fatal("run with bad configuration = nil, want an error")
	}
	for k := range env {
		if !strings.Contains(err.Error(), k) {
			t.Errorf("run error %q does not name %s", err, k)
		}
	}
}

// With BUS_HISTORY=off there is no record to read: the logger reads live,
// and still logs what it hears.
func TestHistoryOffLogsLive(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	prefix := strings.TrimSuffix(redistest.Prefix(t), ":")
	l := startLogger(t, srv, prefix, t.TempDir(), map[string]string{"BUS_HISTORY": "off"})
	rd := l.tail(t, "n=0")
	b, err := redisbus.New(srv.Client(t), redisbus.Options{Prefix: prefix + ":"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	env := &envelope.Envelope{Type: "live.only"}
	if err := envelope.Fill(env, "test", time.Now()); err != nil {
		t.Fatal(err)
	}
	payload, err := envelope.Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := b.Publish(t.Context(), env.GetChannel(), payload); err != nil || r.Receivers != 1 {
		t.Fatalf("Publish = %+v, %v; want the logger as the 1 live receiver", r, err)
	}
	if got := next(t, rd); got.Event.ID != env.GetId() {
		t.Fatalf("tail got %+v, want the live event", got)
	}
}
