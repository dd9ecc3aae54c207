package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	eventbusv1 "github.com/eventbus-suite/eventbus/proto/gen/eventbus/v1"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
)

// memory reads the resident set of this process (the api runs in it) and
// its peak, from /proc/self/status.
func memory(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatalf("read /proc/self/status: %v", err)
	}
	var rss, hwm string
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			rss = strings.TrimSpace(v)
		}
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			hwm = strings.TrimSpace(v)
		}
	}
	return fmt.Sprintf("RSS %s (peak %s)", rss, hwm)
}

// fullBatch returns a batch of 1,000 events that is exactly size bytes.
func fullBatch(t *testing.T, size int) []byte {
	t.Helper()
	var b bytes.Buffer
	blob := strings.Repeat("x", size/1000-64)
	b.WriteString("[")
	for i := range 1000 {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `{"type":"budget.blob","data":{"blob":%q}}`, blob)
	}
	b.WriteString("]")
	if b.Len() > size {
		t.Fatalf("batch of %d bytes, want at most %d", b.Len(), size)
	}
	b.WriteString(strings.Repeat(" ", size-b.Len()))
	return b.Bytes()
}

// heldBatch is a POST /v1/events:batch whose body is sent in two parts,
// so that the api holds it in flight between them.
type heldBatch struct {
	c    net.Conn
	br   *bufio.Reader
	rest []byte
}

// holdBatch sends the headers of a batch of body and its first sent bytes.
func holdBatch(t *testing.T, addr string, body []byte, sent int) *heldBatch {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(30 * time.Second)) // a bound on a hang
	head := fmt.Sprintf("POST /v1/events:batch HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", len(body))
	if _, err := io.WriteString(c, head); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(body[:sent]); err != nil {
		t.Fatal(err)
	}
	return &heldBatch{c: c, br: bufio.NewReader(c), rest: body[sent:]}
}

// finish sends the rest of the body and returns the reply.
func (h *heldBatch) finish(t *testing.T) (int, map[string]any) {
	t.Helper()
	if _, err := h.c.Write(h.rest); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(h.br, &http.Request{Method: http.MethodPost})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, body
}

// Ten concurrent batches of the largest size: the two the default budget
// (API_MAX_INFLIGHT_BYTES, 32 MiB) has room for are published, the other
// eight, and a body of unknown length, are refused with 503 unavailable
// and Retry-After without being read; once the two are done their bytes
// are given back and the next batch is taken.
func TestInflightBudgetRefusesWhatDoesNotFit(t *testing.T) {
	t.Parallel()
	a := startAPI(t, redistest.Shared(t), nil)
	t.Logf("api before: %s", memory(t))
	const size = 16 << 20 // API_MAX_BATCH_BYTES
	body := fullBatch(t, size)
	inflight := func() float64 { return servicetest.Metric(t, a.http, "eventbus_api_inflight_bytes") }

	held := []*heldBatch{holdBatch(t, a.svc.Addrs["http_addr"], body, 1<<20), holdBatch(t, a.svc.Addrs["http_addr"], body, 1<<20)}
	servicetest.WaitFor(t, "the two held batches to take the whole budget", func() bool { return inflight() == 2*size })

	refused := func(name string, newBody func() io.Reader) {
		t.Helper()
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, a.http+"/v1/events:batch", newBody())
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Errorf("%s: %v, want 503", name, err)
			return
		}
		code, msg, err := servicetest.ErrorReply(resp)
		if resp.StatusCode != http.StatusServiceUnavailable || code != "unavailable" || resp.Header.Get("Retry-After") != "1" || err != nil {
			t.Errorf("%s = %d %s %q Retry-After %q (%v), want 503 unavailable with Retry-After 1",
				name, resp.StatusCode, code, msg, resp.Header.Get("Retry-After"), err)
		}
	}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			refused(fmt.Sprintf("batch %d of 10", i+3), func() io.Reader { return bytes.NewReader(body) })
		})
	}
	wg.Go(func() {
		// No Content-Length: the bytes are counted as they are read.
		refused("a chunked batch", func() io.Reader { return io.MultiReader(bytes.NewReader(body)) })
	})
	wg.Wait()
	t.Logf("api with the budget full and 9 requests refused: %s", memory(t))

	for i, h := range held {
		if status, reply := h.finish(t); status != http.StatusOK || reply["accepted"] != 1000.0 {
			t.Errorf("held batch %d = %d accepted %v, want 200 with 1000 accepted", i, status, reply["accepted"])
		}
	}
	servicetest.WaitFor(t, "the held batches to give their bytes back", func() bool { return inflight() == 0 })
	if r := a.post(t, "/v1/events:batch", "application/json", string(body)); r.status != http.StatusOK || r.body["accepted"] != 1000.0 {
		t.Errorf("a batch after the budget emptied = %d accepted %v, want 200 with 1000 accepted", r.status, r.body["accepted"])
	}
	if n := servicetest.Metric(t, a.http, "eventbus_api_inflight_refused_total"); n != 9 {
		t.Errorf("eventbus_api_inflight_refused_total = %v, want 9", n)
	}
	t.Logf("api after: %s", memory(t))
}

// gRPC calls share the budget: with HTTP requests holding all of it, a
// Publish and a PublishStream are refused with Unavailable; once it is
// free, a stream larger than the whole budget goes through, sending its
// events on early to make room.
func TestInflightBudgetCoversGRPC(t *testing.T) {
	t.Parallel()
	a := startAPI(t, redistest.Shared(t), map[string]string{
		"API_MAX_BODY_BYTES": "1024", "API_MAX_BATCH_BYTES": "1024", "API_MAX_INFLIGHT_BYTES": "4096",
	})
	inflight := func() float64 { return servicetest.Metric(t, a.http, "eventbus_api_inflight_bytes") }
	body := []byte(`[{"type":"budget.small"}]` + strings.Repeat(" ", 1024-25))
	var held []*heldBatch
	for range 4 {
		held = append(held, holdBatch(t, a.svc.Addrs["http_addr"], body, 10))
	}
	servicetest.WaitFor(t, "four held batches to take the whole budget", func() bool { return inflight() == 4096 })

	client := eventbusv1.NewEventServiceClient(dial(t, a.grpc))
	event := func(i int) *eventbusv1.Envelope {
		return &eventbusv1.Envelope{Type: "budget.grpc", Subject: fmt.Sprintf("%03d%s", i, strings.Repeat("s", 150))}
	}
	if _, err := client.Publish(t.Context(), &eventbusv1.PublishRequest{Event: event(0)}); status.Code(err) != codes.Unavailable {
		t.Errorf("Publish with the budget held = %v, want Unavailable", err)
	}
	stream := func(n int) (*eventbusv1.PublishStreamResponse, error) {
		s, err := client.PublishStream(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			if err := s.Send(&eventbusv1.PublishStreamRequest{Event: event(i)}); err != nil {
				break // the server has answered; CloseAndRecv says what
			}
		}
		return s.CloseAndRecv()
	}
	if resp, err := stream(3); status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "from index 0") {
		t.Errorf("PublishStream with the budget held = %v, %v; want Unavailable from index 0", resp, err)
	}

	for _, h := range held {
		h.c.Close()
	}
	servicetest.WaitFor(t, "the cut batches to give their bytes back", func() bool { return inflight() == 0 })
	if _, err := client.Publish(t.Context(), &eventbusv1.PublishRequest{Event: event(0)}); err != nil {
		t.Errorf("Publish with the budget free = %v, want nil", err)
	}
	// 100 events of about 170 bytes: four times the budget.
	if resp, err := stream(100); err != nil || resp.GetAccepted() != 100 {
		t.Errorf("PublishStream of 100 = %v, %v; want 100 accepted", resp, err)
	}
	servicetest.WaitFor(t, "the calls to give their bytes back", func() bool { return inflight() == 0 })
}

// A budget smaller than the largest batch could never take one.
func TestInflightBudgetBelowTheLargestBatchIsRefused(t *testing.T) {
	t.Parallel()
	env := map[string]string{"API_MAX_INFLIGHT_BYTES": "1000", "API_MAX_BATCH_BYTES": "2000"}
	err := run(t.Context(), func(k string) string { return env[k] }, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "API_MAX_INFLIGHT_BYTES") {
		t.Fatalf("run with API_MAX_INFLIGHT_BYTES below API_MAX_BATCH_BYTES = %v, want an error naming it", err)
	}
}
