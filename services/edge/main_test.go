package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	neturl "net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/eventbus-suite/eventbus/pkg/bus/redisbus"
	"github.com/eventbus-suite/eventbus/pkg/envelope"
	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
	"github.com/eventbus-suite/eventbus/pkg/token"
)

func TestMain(m *testing.M) { redistest.Main(m) }

const secret = "edge-test-secret-0123456789"

type edge struct {
	prefix string // the edge's channel prefix in Redis
	base   string // http://host:port
	ws     string // ws://host:port/ws
	mqtt   string // host:port of MQTT over TCP, when EDGE_MQTT_ADDR is on
	bus    *redisbus.Bus
	redis  *redistest.Server
	svc    *servicetest.Service
}

func startEdge(t *testing.T, srv *redistest.Server, env map[string]string) *edge {
	t.Helper()
	return startEdgeWithPrefix(t, srv, strings.TrimSuffix(redistest.Prefix(t), ":"), env)
}

// startEdgeWithPrefix starts an edge on the Redis keys of prefix: a second
// edge of the same deployment, say.
func startEdgeWithPrefix(t *testing.T, srv *redistest.Server, prefix string, env map[string]string) *edge {
	t.Helper()
	vars := map[string]string{
		"EDGE_HTTP_ADDR": "127.0.0.1:0", "EDGE_MQTT_ADDR": "127.0.0.1:0", "EDGE_JWT_SECRET": secret,
		"REDIS_URL": srv.URL, "REDIS_PREFIX": prefix, "LOG_LEVEL": "debug",
	}
	maps.Copy(vars, env)
	svc := servicetest.Start(t, run, vars)
	b, err := redisbus.New(srv.Client(t), redisbus.Options{Prefix: prefix + ":"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	addr := svc.Addrs["http_addr"]
	return &edge{prefix: prefix + ":", base: "http://" + addr, ws: "ws://" + addr + "/ws", mqtt: svc.Addrs["mqtt_addr"], bus: b, redis: srv, svc: svc}
}

func mint(t *testing.T, sub string, channels ...string) string {
	t.Helper()
	tok, err := token.Issue([]byte(secret), sub, channels, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// client is a test WebSocket client.
type client struct {
	t       *testing.T
	conn    *websocket.Conn
	pending [][]byte // frames of a message not handed out yet
}

func (e *edge) dial(t *testing.T, tok string) *client {
	t.Helper()
	u := e.ws
	if tok != "" {
		u += "?token=" + tok
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, u, nil)
	if err != nil {
		t.Fatalf("dial %s: %v (response %v)", u, err, resp)
	}
	conn.SetReadLimit(1 << 20)
	t.Cleanup(func() { conn.CloseNow() })
	return &client{t: t, conn: conn}
}

func (c *client) send(frame string) {
	c.t.Helper()
	if err := c.conn.Write(c.t.Context(), websocket.MessageText, []byte(frame)); err != nil {
		c.t.Fatalf("write %s: %v", frame, err)
	}
}

type frame struct {
	ID            string `json:"id"`
	OK            bool   `json:"ok"`
	Action        string `json:"action"`
	Error         *struct{ Code, Message string }
	Channel       string          `json:"channel"`
	Subscriptions []string        `json:"subscriptions"`
	Event         json.RawMessage `json:"event"`
	Unsubscribed  string          `json:"unsubscribed"`
	Reason        string          `json:"reason"`
	Offset        string          `json:"offset"`
	Epoch         string          `json:"epoch"`
	Recovered     *bool           `json:"recovered"`
	Missed        *int            `json:"missed"`
	Positions     map[string]struct{ Offset, Epoch string }
}

func (f frame) subject() string {
	var e struct{ Subject string }
	_ = json.Unmarshal(f.Event, &e)
	return e.Subject
}

// next reads one frame; a missing frame fails the test after 10 s. One
// WebSocket message may carry several frames, one per line.
func (c *client) next() frame {
	c.t.Helper()
	if len(c.pending) == 0 {
		ctx, cancel := context.WithTimeout(c.t.Context(), 10*time.Second)
		defer cancel()
		_, msg, err := c.conn.Read(ctx)
		if err != nil {
			c.t.Fatalf("read: %v", err)
		}
		c.pending = bytes.Split(msg, []byte("\n"))
	}
	b := c.pending[0]
	c.pending = c.pending[1:]
	var f frame
	if err := json.Unmarshal(b, &f); err != nil {
		c.t.Fatalf("frame %s: %v", b, err)
	}
	return f
}

// do sends a request and returns its reply.
func (c *client) do(frame string) frame {
	c.t.Helper()
	c.send(frame)
	return c.next()
}

func (c *client) subscribe(id, pattern string) {
	c.t.Helper()
	if r := c.do(fmt.Sprintf(`{"action":"subscribe","channel":%q,"id":%q}`, pattern, id)); !r.OK || r.ID != id {
		c.t.Fatalf("subscribe %s = %+v, want ok with id %s", pattern, r, id)
	}
}

// closeStatus reads until the connection ends and returns its close code.
func (c *client) closeStatus() websocket.StatusCode {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(c.t.Context(), 10*time.Second)
	defer cancel()
	for {
		if _, _, err := c.conn.Read(ctx); err != nil {
			return websocket.CloseStatus(err)
		}
	}
}

// event is the payload of a test event on ch.
func event(t *testing.T, ch, subject string) []byte {
	t.Helper()
	env := &envelope.Envelope{Type: "test.event", Channel: ch, Subject: subject}
	if err := envelope.Fill(env, "test", time.Now()); err != nil {
		t.Fatal(err)
	}
	b, err := envelope.Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (e *edge) publish(t *testing.T, ch, subject string, wantReceivers int64) {
	t.Helper()
	if r, err := e.bus.Publish(t.Context(), ch, event(t, ch, subject)); err != nil || (wantReceivers >= 0 && r.Receivers != wantReceivers) {
		t.Fatalf("Publish(%s) = %d, %v; want %d receivers", ch, r.Receivers, err, wantReceivers)
	}
}

func (e *edge) metric(t *testing.T, name string) float64 {
	t.Helper()
	return servicetest.Metric(t, e.base, name)
}

func TestPatternsAndChannels(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), nil)
	c := e.dial(t, mint(t, "42", "order:*"))
	c.subscribe("1", "order:*")
	c.subscribe("2", "notify:user:42") // always allowed: the user's own channel
	e.publish(t, "order:placed", "o1", 1)
	if f := c.next(); f.Channel != "order:placed" || !equal(f.Subscriptions, "order:*") || f.subject() != "o1" {
		t.Fatalf("event frame = %+v, want order:placed via order:* with subject o1", f)
	}
	e.publish(t, "notify:user:42", "n1", 1)
	if f := c.next(); f.Channel != "notify:user:42" || !equal(f.Subscriptions, "notify:user:42") {
		t.Fatalf("event frame = %+v, want notify:user:42", f)
	}
	if r := c.do(`{"action":"unsubscribe","channel":"order:*","id":"3"}`); !r.OK {
		t.Fatalf("unsubscribe = %+v", r)
	}
	// Redis forgets the pattern in the background: whether it still
	// counts a receiver is no matter; the client must get nothing.
	e.publish(t, "order:placed", "gone", -1)
	if r := c.do(`{"action":"ping","id":"4"}`); !r.OK || r.Action != "pong" || r.ID != "4" {
		t.Fatalf("ping = %+v, want pong with id 4 (and no event before it)", r)
	}
}

func equal(got []string, want ...string) bool {
	return strings.Join(got, ",") == strings.Join(want, ",")
}

func TestOverlappingSubscriptionsDeliverOnce(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), nil)
	c := e.dial(t, mint(t, "7", "*"))
	c.subscribe("1", "order:*")
	c.subscribe("2", "order:placed")
	c.subscribe("3", "*:placed")
	other := e.dial(t, mint(t, "8", "*"))
	other.subscribe("1", "order:placed")
	e.publish(t, "order:placed", "once", 3) // Redis delivers it once per pattern
	if f := c.next(); f.subject() != "once" || !equal(f.Subscriptions, "*:placed", "order:*", "order:placed") {
		t.Fatalf("frame = %+v, want one frame listing all three subscriptions", f)
	}
	if f := other.next(); f.subject() != "once" || !equal(f.Subscriptions, "order:placed") {
		t.Fatalf("other client's frame = %+v", f)
	}
	e.publish(t, "order:shipped", "next", 1)
	if f := c.next(); f.subject() != "next" {
		t.Fatalf("frame after the overlapping event = %+v, want the next event: a duplicate came through", f)
	}
}

// Events queued for a busy connection share messages, and none is lost or
// reordered. A write rate of 1 per second makes the writer pause 50 ms
// after each write, so the pacing path runs too.
func TestBusyConnectionPacksEventsIntoFewerMessages(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), map[string]string{"EDGE_WRITE_RATE": "1"})
	c := e.dial(t, mint(t, "7", "*"))
	c.subscribe("1", "order:placed")
	const n = 20
	for i := range n {
		e.publish(t, "order:placed", strconv.Itoa(i), 1)
	}
	messages := 0
	for i := range n {
		if len(c.pending) == 0 {
			messages++
		}
		if f := c.next(); f.subject() != strconv.Itoa(i) {
			t.Fatalf("event %d: got %+v, want subject %d", i, f, i)
		}
	}
	if messages >= n {
		t.Errorf("%d events came in %d messages, want fewer", n, messages)
	}
}

func TestReferenceCountedRedisSubscriptions(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t) // NUMPAT is server-wide: this test needs its own server
	redistest.RequireReal(t, srv)
	e := startEdge(t, srv, nil)
	rdb := srv.Client(t)
	numpat := func() int64 { n, _ := rdb.PubSubNumPat(t.Context()).Result(); return n }
	numsub := func(ch string) int64 {
		m, _ := rdb.PubSubNumSub(t.Context(), ch).Result()
		return m[ch]
	}
	basePat := numpat()
	var clients []*client
	for i := range 3 {
		c := e.dial(t, mint(t, strconv.Itoa(i), "*"))
		c.subscribe("1", "ref:*")
		c.subscribe("2", "ref:exact")
		clients = append(clients, c)
	}
	if got := numpat(); got != basePat+1 {
		t.Fatalf("NUMPAT with 3 clients on ref:* = %d, want %d: one Redis pattern shared by all", got, basePat+1)
	}
	if got := e.metric(t, "eventbus_edge_redis_subscriptions"); got != 2 {
		t.Fatalf("eventbus_edge_redis_subscriptions = %v, want 2", got)
	}
	clients[0].conn.Close(websocket.StatusNormalClosure, "")
	clients[1].conn.Close(websocket.StatusNormalClosure, "")
	servicetest.WaitFor(t, "two clients to leave", func() bool { return e.metric(t, "eventbus_edge_connections") == 1 })
	if got := numpat(); got != basePat+1 {
		t.Fatalf("NUMPAT with 1 client left = %d, want %d", got, basePat+1)
	}
	e.publish(t, "ref:x", "still", 1)
	if f := clients[2].next(); f.subject() != "still" {
		t.Fatalf("remaining client got %+v", f)
	}
	clients[2].conn.Close(websocket.StatusNormalClosure, "")
	servicetest.WaitFor(t, "NUMPAT back to its start", func() bool { return numpat() == basePat })
	if got := e.metric(t, "eventbus_edge_redis_subscriptions"); got != 0 {
		t.Errorf("eventbus_edge_redis_subscriptions = %v after every client left, want 0", got)
	}
	if n := numsub(e.prefix + "ref:exact"); n != 0 {
		t.Errorf("NUMSUB ref:exact = %d after every client left, want 0", n)
	}
}

func TestAuthentication(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), map[string]string{"EDGE_AUTH_TIMEOUT": "300ms"})
	expired, err := token.Issue([]byte(secret), "42", nil, -time.Minute, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	forged, err := token.Issue([]byte("another-secret-0123456789"), "42", []string{"*"}, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ name, tok, reason string }{
		{"expired", expired, "expired"},
		{"wrong signature", forged, "signature"},
		{"malformed", "not-a-token", "malformed"},
	} {
		_, resp, err := websocket.Dial(t.Context(), e.ws+"?token="+tt.tok, nil)
		if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s token: dial = %v, %v; want 401 before the upgrade", tt.name, resp, err)
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		if !strings.Contains(string(body), tt.reason) || !strings.Contains(string(body), `"unauthorized"`) {
			t.Errorf("%s token: body %s, want code unauthorized and reason %q", tt.name, body, tt.reason)
		}
	}

	// No token: the first frame must authenticate within the timeout.
	late := e.dial(t, "")
	if code := late.closeStatus(); code != 4001 {
		t.Errorf("no auth within the timeout closed with %d, want 4001", code)
	}
	early := e.dial(t, "")
	if r := early.do(`{"action":"subscribe","channel":"order:*","id":"1"}`); r.Error == nil || r.Error.Code != "unauthorized" {
		t.Errorf("subscribe before auth = %+v, want unauthorized", r)
	}
	if r := early.do(fmt.Sprintf(`{"action":"auth","token":%q,"id":"2"}`, mint(t, "9", "order:*"))); !r.OK {
		t.Fatalf("auth frame = %+v, want ok", r)
	}
	early.subscribe("3", "order:*")
	bad := e.dial(t, "")
	if r := bad.do(`{"action":"auth","token":"nope","id":"1"}`); r.Error == nil || r.Error.Code != "unauthorized" {
		t.Errorf("auth with a bad token = %+v, want unauthorized", r)
	}
	if code := bad.closeStatus(); code != 4001 {
		t.Errorf("bad auth frame closed with %d, want 4001", code)
	}

	// Authorisation: a pattern is allowed only if a granted one covers it.
	c := e.dial(t, mint(t, "42", "order:*", "user:created"))
	for _, tt := range []struct{ pattern, code string }{
		{"order:placed", ""},
		{"order:*:eu", ""},
		{"notify:user:42", ""},
		{"notify:user:43", "forbidden"},
		{"notify:user:*", "forbidden"},
		{"user:*", "forbidden"},
		{"*", "forbidden"},
		{"orders*", "forbidden"},
		{"Order:Placed", "invalid_channel"},
		{"order:[ab]", "invalid_channel"},
	} {
		r := c.do(fmt.Sprintf(`{"action":"subscribe","channel":%q,"id":"x"}`, tt.pattern))
		switch {
		case tt.code == "" && !r.OK:
			t.Errorf("subscribe %s = %+v, want ok", tt.pattern, r)
		case tt.code != "" && (r.Error == nil || r.Error.Code != tt.code || r.ID != "x"):
			t.Errorf("subscribe %s = %+v, want %s with id x", tt.pattern, r, tt.code)
		}
	}
}

func TestAnonymousPublicChannels(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), map[string]string{
		"EDGE_JWT_SECRET": "", "EDGE_ALLOW_ANONYMOUS": "true", "EDGE_PUBLIC_CHANNELS": "news:*"})
	c := e.dial(t, "")
	c.subscribe("1", "news:*")
	if r := c.do(`{"action":"subscribe","channel":"order:*","id":"2"}`); r.Error == nil || r.Error.Code != "forbidden" {
		t.Errorf("anonymous subscribe order:* = %+v, want forbidden", r)
	}
	e.publish(t, "news:today", "n", 1)
	if f := c.next(); f.subject() != "n" {
		t.Errorf("anonymous client got %+v", f)
	}
	_, resp, err := websocket.Dial(t.Context(), e.ws+"?token=x.y.z", nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("a token on an edge without secret: %v, %v; want 401", resp, err)
	}
}

func TestOriginCheck(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), map[string]string{"EDGE_ALLOWED_ORIGINS": "app.example.com"})
	dial := func(origin string) (*http.Response, error) {
		h := http.Header{}
		h.Set("Origin", origin)
		conn, resp, err := websocket.Dial(t.Context(), e.ws+"?token="+mint(t, "1"), &websocket.DialOptions{HTTPHeader: h})
		if err == nil {
			conn.CloseNow()
		}
		return resp, err
	}
	if resp, err := dial("https://evil.example"); err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("foreign origin: %v, %v; want 403 before the upgrade", resp, err)
	}
	if _, err := dial("https://app.example.com"); err != nil {
		t.Errorf("allowed origin: %v", err)
	}
	if _, err := dial(e.base); err != nil {
		t.Errorf("the edge's own origin: %v", err)
	}
	// Refusals are JSON: the foreign origin names the variable that allows
	// more, and a request that is no WebSocket handshake gets 426.
	for _, tt := range []struct {
		origin string
		status int
		want   string
	}{
		{"https://evil.example", http.StatusForbidden, "EDGE_ALLOWED_ORIGINS"},
		{"", http.StatusUpgradeRequired, "WebSocket"},
	} {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, e.base+"/ws", nil)
		if tt.origin != "" {
			req.Header.Set("Origin", tt.origin)
			req.Header.Set("Upgrade", "websocket")
			req.Header.Set("Connection", "Upgrade")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, message, err := servicetest.ErrorReply(resp)
		if resp.StatusCode != tt.status || err != nil || !strings.Contains(message, tt.want) {
			t.Errorf("origin %q: %d %q (%v), want %d JSON naming %s", tt.origin, resp.StatusCode, message, err, tt.status, tt.want)
		}
	}
}

func TestLimits(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), map[string]string{
		"EDGE_MAX_MESSAGE_BYTES": "1024", "EDGE_MAX_SUBSCRIPTIONS": "2", "EDGE_RATE_LIMIT": "1", "EDGE_RATE_BURST": "5"})
	c := e.dial(t, mint(t, "1", "*"))
	c.subscribe("1", "a")
	c.subscribe("2", "b")
	if r := c.do(`{"action":"subscribe","channel":"c","id":"3"}`); r.Error == nil || r.Error.Code != "too_many_subscriptions" {
		t.Errorf("third subscription = %+v, want too_many_subscriptions", r)
	}
	if r := c.do(`{"action":"subscribe","chanel":"c","id":"4"}`); r.Error == nil || r.Error.Code != "bad_request" || !strings.Contains(r.Error.Message, "chanel") || r.ID != "4" {
		t.Errorf("misspelt field = %+v, want bad_request naming it, with id 4", r)
	}
	// The burst of 5 is spent: the next frames are refused, each with an answer.
	limited := 0
	for range 5 {
		if r := c.do(`{"action":"ping","id":"p"}`); r.Error != nil && r.Error.Code == "rate_limited" {
			limited++
		}
	}
	if limited == 0 {
		t.Error("no rate_limited reply after the burst was spent")
	}
	big := e.dial(t, mint(t, "2", "*"))
	big.send(`{"action":"ping","id":"` + strings.Repeat("x", 2000) + `"}`)
	if code := big.closeStatus(); code != websocket.StatusMessageTooBig {
		t.Errorf("oversize frame closed with %d, want 1009", code)
	}
}

// A client may send its first frame in the same packet as its handshake:
// the edge must read it from what net/http buffered before the upgrade.
func TestFrameRightBehindTheHandshake(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), nil)
	conn, err := net.Dial("tcp", strings.TrimPrefix(e.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	payload := []byte(`{"action":"ping","id":"early"}`)
	mask := [4]byte{1, 2, 3, 4}
	msg := append([]byte{0x81, 0x80 | byte(len(payload))}, mask[:]...) // FIN text, masked, length < 126
	for i, b := range payload {
		msg = append(msg, b^mask[i%4])
	}
	handshake := "GET /ws?token=" + mint(t, "1") + " HTTP/1.1\r\nHost: edge\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
	if _, err := conn.Write(append([]byte(handshake), msg...)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %v, %v; want 101", resp, err)
	}
	head := make([]byte, 2)
	if _, err := io.ReadFull(br, head); err != nil {
		t.Fatal(err)
	}
	if head[0] != 0x81 || head[1] >= 126 {
		t.Fatalf("frame header % x, want a short unmasked text frame", head)
	}
	body := make([]byte, head[1])
	if _, err := io.ReadFull(br, body); err != nil {
		t.Fatal(err)
	}
	var f frame
	if err := json.Unmarshal(body, &f); err != nil || f.ID != "early" || f.Action != "pong" {
		t.Errorf("reply %s (%v), want the pong to id early", body, err)
	}
}

func TestSlowClientIsDroppedOthersKeepUp(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), nil)
	slow := e.dial(t, mint(t, "slow", "*"))
	slow.subscribe("1", "flood:*")
	fast := e.dial(t, mint(t, "fast", "*"))
	fast.subscribe("1", "flood:*")

	// The fast client reads each event before the next is published, so it
	// never has more than one waiting; the slow one never reads, and 24 MB
	// is more than its socket buffers and send queue hold.
	const n = 3000
	pad := strings.Repeat("s", 8192)
	for i := range n {
		subject := strconv.Itoa(i) + pad
		e.publish(t, "flood:x", subject, -1)
		if f := fast.next(); f.subject() != subject {
			t.Fatalf("fast client: event %d has subject %.10s…, want %d", i, f.subject(), i)
		}
	}
	servicetest.WaitFor(t, "the slow client to be dropped", func() bool {
		return e.metric(t, "eventbus_edge_slow_consumer_closes_total") == 1 && e.metric(t, "eventbus_edge_connections") == 1
	})
	if r := fast.do(`{"action":"ping","id":"after"}`); !r.OK {
		t.Errorf("fast client after the drop: %+v", r)
	}
}

func TestHeartbeatClosesASilentClient(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), map[string]string{"EDGE_PING_INTERVAL": "50ms", "EDGE_PONG_TIMEOUT": "100ms"})
	// A client that reads but never answers pings.
	if code := silentClose(t, e.ws+"?token="+mint(t, "1")); code != 4002 {
		t.Errorf("silent client closed with %d, want 4002", code)
	}
	// A client that reads answers them and stays.
	live := e.dial(t, mint(t, "2", "*"))
	live.subscribe("1", "hb:*")
	for range 5 {
		if r := live.do(`{"action":"ping","id":"p"}`); !r.OK {
			t.Fatalf("ping = %+v", r)
		}
	}
}

func TestRedisRestart(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	redistest.RequireReal(t, srv)
	e := startEdge(t, srv, nil)
	c := e.dial(t, mint(t, "1", "*"))
	c.subscribe("1", "rs:*")
	srv.Stop(t)
	srv.Restart(t)
	// Right after a restart /readyz can still report the old connection as
	// live for a moment, so wait for what matters: the pattern back in Redis.
	rdb := srv.Client(t)
	servicetest.WaitFor(t, "the edge to resubscribe", func() bool {
		n, err := rdb.PubSubNumPat(t.Context()).Result()
		return err == nil && n == 1
	})
	servicetest.WaitFor(t, "the edge to be ready again", func() bool {
		resp, err := http.Get(e.base + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	e.publish(t, "rs:after", "back", 1)
	if f := c.next(); f.subject() != "back" {
		t.Fatalf("after the restart the client got %+v, want the new event", f)
	}
}

func TestShutdownClosesWithGoingAway(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), nil)
	c := e.dial(t, mint(t, "1", "*"))
	c.subscribe("1", "x:*")
	stopped := make(chan error, 1)
	go func() { stopped <- e.svc.Stop() }()
	if code := c.closeStatus(); code != websocket.StatusGoingAway {
		t.Errorf("close code on shutdown = %d, want 1001", code)
	}
	if err := <-stopped; err != nil {
		t.Errorf("run = %v, want nil", err)
	}
}

func TestDemoToken(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), map[string]string{"EDGE_DEMO": "true", "EDGE_JWT_SECRET": ""})
	resp, err := http.Get(e.base + "/demo/token?user=42")
	if err != nil {
		t.Fatal(err)
	}
	var body struct{ Token string }
	err = json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	if err != nil || body.Token == "" {
		t.Fatalf("demo token = %v, %v", body, err)
	}
	c := e.dial(t, body.Token)
	c.subscribe("1", "notify:user:42")
	for _, path := range []string{"/", "/eventbus.js"} {
		resp, err := http.Get(e.base + path)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s = %v, %v", path, resp, err)
		}
		if resp != nil {
			resp.Body.Close()
		}
	}
	plain := startEdge(t, redistest.Shared(t), nil)
	resp, err = http.Get(plain.base + "/demo/token?user=42")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("demo token without EDGE_DEMO = %d, want 404", resp.StatusCode)
	}
}

func TestConfigErrorsNameEveryVariable(t *testing.T) {
	t.Parallel()
	env := map[string]string{"EDGE_PING_INTERVAL": "often", "EDGE_PUBLIC_CHANNELS": "Bad", "EDGE_JWT_SECRET": "short",
		"EDGE_TRUSTED_PROXIES": "10.0.0.0/33", "EDGE_MAX_REDIS_PATTERNS": "0", "EDGE_SEND_QUEUE_BYTES": "10",
		"EDGE_SEND_QUEUE_MAX_DELAY": "1ms"}
	err := run(t.Context(), func(k string) string { return env[k] }, io.Discard)
	if err == nil {
		t.Fatal("run with bad configuration = nil")
	}
	for k := range env {
		if !strings.Contains(err.Error(), k) {
			t.Errorf("error %q does not name %s", err, k)
		}
	}
	err = run(t.Context(), func(string) string { return "" }, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "EDGE_JWT_SECRET") {
		t.Errorf("run with no way to authenticate = %v, want EDGE_JWT_SECRET named", err)
	}
}

// silentClose opens a WebSocket at url with a bare client that never
// writes after its handshake, so never answers a ping, and returns the
// code of the close frame the edge sends it (-1 for none). A library
// client would answer pings, or race the edge's close with a pong.
func silentClose(t *testing.T, url string) int {
	t.Helper()
	u, err := neturl.Parse(url)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.DialTimeout("tcp", u.Host, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", u.RequestURI(), u.Host)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %v %v", resp, err)
	}
	for {
		var h [2]byte
		if _, err := io.ReadFull(br, h[:]); err != nil {
			return -1
		}
		n := int(h[1] & 0x7f)
		switch n {
		case 126:
			var l [2]byte
			if _, err := io.ReadFull(br, l[:]); err != nil {
				return -1
			}
			n = int(binary.BigEndian.Uint16(l[:]))
		case 127:
			t.Fatal("the edge sent a frame of 64 KiB or more")
		}
		payload := make([]byte, n)
		if _, err := io.ReadFull(br, payload); err != nil {
			return -1
		}
		if h[0]&0x0f == 0x8 { // close
			if n < 2 {
				return 1005
			}
			return int(binary.BigEndian.Uint16(payload))
		}
	}
}
