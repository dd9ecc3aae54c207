package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/structpb"

	eventbusv1 "github.com/eventbus-suite/eventbus/proto/gen/eventbus/v1"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/bus/bustest"
	"github.com/eventbus-suite/eventbus/pkg/bus/redisbus"
	"github.com/eventbus-suite/eventbus/pkg/envelope"
	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
)

func TestMain(m *testing.M) { redistest.Main(m) }

// api is a running API service of one test.
type api struct {
	http   string // base URL
	grpc   string // host:port
	prefix string // REDIS_PREFIX, without the colon
	redis  *redistest.Server
	svc    *servicetest.Service
}

// startAPI runs the service with env on top of test defaults.
func startAPI(t *testing.T, srv *redistest.Server, env map[string]string) *api {
	t.Helper()
	prefix := strings.TrimSuffix(redistest.Prefix(t), ":")
	vars := map[string]string{
		"API_HTTP_ADDR": "127.0.0.1:0", "API_GRPC_ADDR": "127.0.0.1:0",
		"REDIS_URL": srv.URL, "REDIS_PREFIX": prefix, "LOG_LEVEL": "debug",
	}
	maps.Copy(vars, env)
	s := servicetest.Start(t, run, vars)
	return &api{http: "http://" + s.Addrs["http_addr"], grpc: s.Addrs["grpc_addr"], prefix: prefix, redis: srv, svc: s}
}

// subscribe listens on the service's prefix, as another service would.
func (a *api) subscribe(t *testing.T, patterns ...string) bus.Subscription {
	t.Helper()
	b, err := redisbus.New(a.redis.Client(t), redisbus.Options{Prefix: a.prefix + ":"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	sub, err := b.Subscribe(t.Context(), patterns...)
	if err != nil {
		t.Fatal(err)
	}
	return sub
}

func receive(t *testing.T, sub bus.Subscription) *envelope.Envelope {
	t.Helper()
	m := bustest.Receive(t, sub)
	env, err := envelope.Unmarshal(m.Payload)
	if err != nil {
		t.Fatal(err)
	}
	if env.GetChannel() != m.Channel {
		t.Errorf("envelope channel %q, published on %q", env.GetChannel(), m.Channel)
	}
	return env
}

type reply struct {
	status int
	header http.Header
	body   map[string]any
	raw    string
}

func (a *api) post(t *testing.T, path, contentType, body string, header ...string) reply {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, a.http+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", contentType)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	return do(t, req)
}

func (a *api) get(t *testing.T, path string) reply {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, a.http+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	return do(t, req)
}

func do(t *testing.T, req *http.Request) reply {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	r := reply{status: resp.StatusCode, header: resp.Header, raw: string(raw)}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(raw, &r.body); err != nil {
			t.Fatalf("%s %s: reply %q is not a JSON object: %v", req.Method, req.URL.Path, raw, err)
		}
	}
	return r
}

// errorCode is the error.code of a JSON error reply, or "".
func (r reply) errorCode() string {
	e, _ := r.body["error"].(map[string]any)
	c, _ := e["code"].(string)
	return c
}

func (r reply) errorMessage() string {
	e, _ := r.body["error"].(map[string]any)
	m, _ := e["message"].(string)
	return m
}

func TestPublishSimpleEvent(t *testing.T) {
	t.Parallel()
	a := startAPI(t, redistest.Shared(t), nil)
	sub := a.subscribe(t, "order:*")
	r := a.post(t, "/v1/events", "application/json",
		`{"type":"order.placed","subject":"o1","data":{"order_id":"o1","user_id":"u1","total":1299,"currency":"EUR"}}`)
	if r.status != http.StatusAccepted || r.body["channel"] != "order:placed" || r.body["receivers"] != 1.0 || r.body["id"] == "" {
		t.Fatalf("POST /v1/events = %d %s, want 202 with id, channel order:placed, receivers 1", r.status, r.raw)
	}
	env := receive(t, sub)
	if env.GetId() != r.body["id"] || env.GetType() != "order.placed" || env.GetSubject() != "o1" || env.GetSource() != "eventbus/api" {
		t.Errorf("received %v, want the reply's id, type order.placed, subject o1, source eventbus/api", env)
	}
	got, err := env.GetData().UnmarshalNew()
	if err != nil {
		t.Fatal(err)
	}
	want := &eventbusv1.OrderPlaced{OrderId: "o1", UserId: "u1", Total: 1299, Currency: "EUR"}
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Errorf("data (-want +got):\n%s", diff)
	}
}

func TestPublishCloudEvent(t *testing.T) {
	t.Parallel()
	a := startAPI(t, redistest.Shared(t), nil)
	sub := a.subscribe(t, "com:example:*")
	r := a.post(t, "/v1/events", "application/cloudevents+json; charset=utf-8", `{
		"specversion":"1.0","id":"ce-1","source":"https://shop.example","type":"com.example.thing.done",
		"subject":"t1","time":"2026-11-22T05:00:00Z","datacontenttype":"application/json",
		"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","retries":2,
		"data":{"free":"form","n":[1,2]}}`)
	if r.status != http.StatusAccepted || r.body["id"] != "ce-1" || r.body["channel"] != "com:example:thing:done" {
		t.Fatalf("POST cloudevent = %d %s, want 202 keeping id ce-1", r.status, r.raw)
	}
	env := receive(t, sub)
	wantAttrs := map[string]string{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "retries": "2"}
	if diff := cmp.Diff(wantAttrs, env.GetAttributes()); diff != "" {
		t.Errorf("attributes (-want +got):\n%s", diff)
	}
	if env.GetSource() != "https://shop.example" || env.GetTime().AsTime() != time.Date(2026, 11, 22, 5, 0, 0, 0, time.UTC) {
		t.Errorf("received %v, want the CloudEvent's source and time", env)
	}
	js, _ := envelope.MarshalJSON(env)
	if !strings.Contains(string(js), `"free":"form"`) {
		t.Errorf("data = %s, want the free-form JSON kept", js)
	}
}

func TestBadRequests(t *testing.T) {
	t.Parallel()
	a := startAPI(t, redistest.Shared(t), map[string]string{"API_MAX_BODY_BYTES": "512"})
	sub := a.subscribe(t, "*")
	tests := []struct {
		name, path, ctype, body string
		status                  int
		code, mention           string
	}{
		{"malformed json", "/v1/events", "application/json", `{"type":`, 400, "invalid_json", "truncated"},
		{"syntax error", "/v1/events", "application/json", `{"type" "x"}`, 400, "invalid_json", "malformed JSON"},
		{"unknown top-level field", "/v1/events", "application/json", `{"type":"a.b","colour":"red"}`, 400, "invalid_argument", "colour"},
		{"wrong field type", "/v1/events", "application/json", `{"type":5}`, 400, "invalid_argument", "type"},
		{"no type", "/v1/events", "application/json", `{"data":{}}`, 400, "invalid_argument", "type: required"},
		{"bad type", "/v1/events", "application/json", `{"type":"Order Placed"}`, 400, "invalid_argument", "type"},
		{"unknown data field", "/v1/events", "application/json", `{"type":"user.created","data":{"user_id":"1","email":"a@b.co","emial":"x"}}`, 400, "invalid_argument", "emial"},
		{"wrong data type", "/v1/events", "application/json", `{"type":"payment.completed","data":{"payment_id":"p","order_id":"o","user_id":"u","amount":"ten","currency":"EUR"}}`, 400, "invalid_argument", "amount"},
		{"cloudevent sent as plain json", "/v1/events", "application/json", `{"specversion":"1.0","type":"a.b"}`, 400, "invalid_argument", "application/cloudevents+json"},
		{"cloudevent missing id and source", "/v1/events", "application/cloudevents+json", `{"specversion":"1.0","type":"a.b"}`, 400, "invalid_argument", "id: required"},
		{"cloudevent wrong version", "/v1/events", "application/cloudevents+json", `{"specversion":"0.3","id":"1","source":"s","type":"a.b"}`, 400, "invalid_argument", "specversion"},
		{"oversize body", "/v1/events", "application/json", `{"type":"a.b","data":{"x":"` + strings.Repeat("x", 600) + `"}}`, 413, "payload_too_large", "512"},
		{"user without email", "/v1/users", "application/json", `{"name":"Ada"}`, 400, "invalid_argument", "email"},
		{"user with bad email", "/v1/users", "application/json", `{"email":"ada at example","name":"Ada"}`, 400, "invalid_argument", "email"},
		{"order total mismatch", "/v1/orders", "application/json", `{"user_id":"u","items":[{"sku":"a","quantity":2,"unit_price":500}],"total":999}`, 400, "invalid_argument", "total"},
		{"ship without carrier", "/v1/orders/o1/ship", "application/json", `{"user_id":"u","tracking_number":"t"}`, 400, "invalid_argument", "carrier"},
		{"ship with another order id", "/v1/orders/o1/ship", "application/json", `{"order_id":"o2","user_id":"u","carrier":"c","tracking_number":"t"}`, 400, "invalid_argument", "order_id"},
		{"payment unknown field", "/v1/payments", "application/json", `{"order_id":"o","user_id":"u","amount":1,"currency":"EUR","tip":1}`, 400, "invalid_argument", "tip"},
		{"empty batch", "/v1/events:batch", "application/json", `[]`, 400, "invalid_argument", "no events"},
		{"id with a newline", "/v1/events", "application/json", `{"type":"a.b","id":"x\nevent: lagged\ndata: {}"}`, 400, "invalid_argument", "id: control character U+000A"},
		{"id with a nul", "/v1/events", "application/json", `{"type":"a.b","id":"x\u0000y"}`, 400, "invalid_argument", "id: control character U+0000"},
		{"id too long", "/v1/events", "application/json", `{"type":"a.b","id":"` + strings.Repeat("i", 256) + `"}`, 400, "invalid_argument", "id: 256 characters"},
		{"cloudevent id with a carriage return", "/v1/events", "application/cloudevents+json", `{"specversion":"1.0","id":"a\rb","source":"s","type":"a.b"}`, 400, "invalid_argument", "id: control character U+000D"},
		{"cloudevent id with a c1 control", "/v1/events", "application/cloudevents+json", `{"specversion":"1.0","id":"a\u0085b","source":"s","type":"a.b"}`, 400, "invalid_argument", "id: control character U+0085"},
		{"known type without data", "/v1/events", "application/json", `{"type":"user.created"}`, 400, "invalid_argument", "data: required"},
		{"known type with null data", "/v1/events", "application/json", `{"type":"order.placed","data":null}`, 400, "invalid_argument", "data: required"},
		{"cloudevent of a known type without data", "/v1/events", "application/cloudevents+json", `{"specversion":"1.0","id":"1","source":"s","type":"order.shipped"}`, 400, "invalid_argument", "data: required"},
		{"order whose items overflow", "/v1/orders", "application/json", `{"user_id":"u","items":[{"sku":"a","quantity":4,"unit_price":4611686018427387904}],"total":0}`, 400, "invalid_argument", "items[0]: quantity × unit_price"},
		{"order event whose items overflow", "/v1/events", "application/json", `{"type":"order.placed","data":{"order_id":"o","user_id":"u","currency":"EUR","items":[{"sku":"a","quantity":4,"unit_price":4611686018427387904}],"total":0}}`, 400, "invalid_argument", "items[0]: quantity × unit_price"},
		{"data 65 levels deep", "/v1/events", "application/json", `{"type":"a.b","data":` + nested(64) + `}`, 400, "invalid_argument", "data of a.b: nested more than 64 levels deep"},
		{"unknown route", "/v1/nothing", "application/json", `{}`, 404, "not_found", "/v1/nothing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := a.post(t, tt.path, tt.ctype, tt.body)
			if r.status != tt.status || r.errorCode() != tt.code || !strings.Contains(r.errorMessage(), tt.mention) {
				t.Errorf("POST %s %s = %d %s, want %d %s mentioning %q", tt.path, tt.body, r.status, r.raw, tt.status, tt.code, tt.mention)
			}
		})
	}
	if r := a.get(t, "/v1/events"); r.status != http.StatusMethodNotAllowed || r.errorCode() != "method_not_allowed" {
		t.Errorf("GET /v1/events = %d %s, want 405 method_not_allowed in JSON", r.status, r.raw)
	}
	// Nothing above was published: the next message is the sentinel.
	if r := a.post(t, "/v1/events", "application/json", `{"type":"sentinel"}`); r.status != http.StatusAccepted {
		t.Fatalf("sentinel = %d %s", r.status, r.raw)
	}
	if env := receive(t, sub); env.GetType() != "sentinel" {
		t.Errorf("first event received = %s, want the sentinel: a bad request was published", env.GetType())
	}
}

func TestDomainEndpoints(t *testing.T) {
	t.Parallel()
	a := startAPI(t, redistest.Shared(t), nil)
	sub := a.subscribe(t, "user:*", "order:*", "payment:*")

	u := a.post(t, "/v1/users", "application/json", `{"email":"ada@example.com","name":"Ada"}`)
	userID, _ := u.body["user_id"].(string)
	if u.status != http.StatusAccepted || userID == "" || u.body["event_id"] == "" {
		t.Fatalf("POST /v1/users = %d %s, want 202 with user_id and event_id", u.status, u.raw)
	}
	o := a.post(t, "/v1/orders", "application/json", fmt.Sprintf(
		`{"user_id":%q,"items":[{"sku":"book","name":"Go","quantity":2,"unit_price":1500}],"total":3000}`, userID))
	orderID, _ := o.body["order_id"].(string)
	if o.status != http.StatusAccepted || orderID == "" {
		t.Fatalf("POST /v1/orders = %d %s, want 202 with order_id", o.status, o.raw)
	}
	s := a.post(t, "/v1/orders/"+orderID+"/ship", "application/json",
		fmt.Sprintf(`{"user_id":%q,"carrier":"DHL","tracking_number":"JD0001"}`, userID))
	if s.status != http.StatusAccepted || s.body["order_id"] != orderID {
		t.Fatalf("POST ship = %d %s, want 202 with order_id %s", s.status, s.raw, orderID)
	}
	p := a.post(t, "/v1/payments", "application/json",
		fmt.Sprintf(`{"order_id":%q,"user_id":%q,"amount":3000,"currency":"EUR"}`, orderID, userID))
	if p.status != http.StatusAccepted || p.body["payment_id"] == "" {
		t.Fatalf("POST /v1/payments = %d %s, want 202 with payment_id", p.status, p.raw)
	}

	want := []proto.Message{
		&eventbusv1.UserCreated{UserId: userID, Email: "ada@example.com", Name: "Ada"},
		&eventbusv1.OrderPlaced{OrderId: orderID, UserId: userID, Total: 3000, Currency: "USD",
			Items: []*eventbusv1.OrderItem{{Sku: "book", Name: "Go", Quantity: 2, UnitPrice: 1500}}},
		&eventbusv1.OrderShipped{OrderId: orderID, UserId: userID, Carrier: "DHL", TrackingNumber: "JD0001"},
		&eventbusv1.PaymentCompleted{PaymentId: p.body["payment_id"].(string), OrderId: orderID, UserId: userID, Amount: 3000, Currency: "EUR"},
	}
	eventIDs := []any{u.body["event_id"], o.body["event_id"], s.body["event_id"], p.body["event_id"]}
	for i, w := range want {
		env := receive(t, sub)
		got, err := env.GetData().UnmarshalNew()
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(w, got, protocmp.Transform()); diff != "" {
			t.Errorf("event %d data (-want +got):\n%s", i, diff)
		}
		if env.GetId() != eventIDs[i] {
			t.Errorf("event %d id = %s, want the reply's event_id %v", i, env.GetId(), eventIDs[i])
		}
	}
}

func TestIdempotencyKey(t *testing.T) {
	t.Parallel()
	a := startAPI(t, redistest.Shared(t), nil)
	sub := a.subscribe(t, "*")
	body := `{"type":"order.placed","data":{"order_id":"o9","user_id":"u","total":5,"currency":"EUR"}}`
	first := a.post(t, "/v1/events", "application/json", body, "Idempotency-Key", "key-1")
	again := a.post(t, "/v1/events", "application/json", body, "Idempotency-Key", "key-1")
	if first.status != http.StatusAccepted || again.status != http.StatusAccepted || first.raw != again.raw {
		t.Fatalf("repeat = %d %s, first = %d %s; want the same 202 reply", again.status, again.raw, first.status, first.raw)
	}
	if again.header.Get("Idempotent-Replayed") != "true" || first.header.Get("Idempotent-Replayed") != "" {
		t.Errorf("Idempotent-Replayed: first %q, repeat %q; want \"\" and \"true\"",
			first.header.Get("Idempotent-Replayed"), again.header.Get("Idempotent-Replayed"))
	}
	other := a.post(t, "/v1/events", "application/json", `{"type":"other.thing"}`, "Idempotency-Key", "key-1")
	if other.status != http.StatusUnprocessableEntity || other.errorCode() != "idempotency_key_reused" {
		t.Errorf("same key, other body = %d %s, want 422 idempotency_key_reused", other.status, other.raw)
	}
	// A failed request releases its key: the corrected retry runs.
	bad := a.post(t, "/v1/users", "application/json", `{"name":"no email"}`, "Idempotency-Key", "key-2")
	fixed := a.post(t, "/v1/users", "application/json", `{"email":"x@example.com"}`, "Idempotency-Key", "key-2")
	if bad.status != http.StatusBadRequest || fixed.status != http.StatusAccepted || fixed.header.Get("Idempotent-Replayed") != "" {
		t.Errorf("failed then corrected = %d, %d %s; want 400, then 202 not replayed", bad.status, fixed.status, fixed.raw)
	}

	if env := receive(t, sub); env.GetId() != first.body["id"] {
		t.Fatalf("first event %s, want %v", env.GetId(), first.body["id"])
	}
	if env := receive(t, sub); env.GetId() != fixed.body["event_id"] {
		t.Fatalf("second event %s, want the corrected retry's %v", env.GetId(), fixed.body["event_id"])
	}
	a.post(t, "/v1/events", "application/json", `{"type":"sentinel"}`)
	if env := receive(t, sub); env.GetType() != "sentinel" {
		t.Errorf("next event = %s, want the sentinel: a repeat was published", env.GetType())
	}
}

func TestBatch(t *testing.T) {
	t.Parallel()
	a := startAPI(t, redistest.Shared(t), nil)
	sub := a.subscribe(t, "batch:*")
	check := func(name, ctype, body string) {
		t.Helper()
		r := a.post(t, "/v1/events:batch", ctype, body)
		if r.status != http.StatusOK || r.body["accepted"] != 2.0 || r.body["rejected"] != 1.0 {
			t.Fatalf("%s batch = %d %s, want 200 with 2 accepted, 1 rejected", name, r.status, r.raw)
		}
		results := r.body["results"].([]any)
		bad := results[1].(map[string]any)["error"].(map[string]any)
		if bad["code"] != "invalid_argument" || !strings.Contains(bad["message"].(string), "type") {
			t.Errorf("%s result 1 = %v, want invalid_argument about type", name, results[1])
		}
		for _, i := range []int{0, 2} {
			res := results[i].(map[string]any)
			env := receive(t, sub)
			if env.GetId() != res["id"] || res["receivers"] != 1.0 {
				t.Errorf("%s result %d = %v, received %s; want them to match, 1 receiver", name, i, res, env.GetId())
			}
		}
	}
	check("array", "application/json", `[{"type":"batch.one"},{"type":"Bad"},{"type":"batch.two"}]`)
	check("ndjson", "application/x-ndjson", "{\"type\":\"batch.one\"}\n\n{\"type\":\"\"}\n{\"type\":\"batch.two\"}\n")
	check("cloudevents", "application/cloudevents-batch+json",
		`[{"specversion":"1.0","id":"1","source":"s","type":"batch.one"},{"specversion":"1.0","id":"2","source":"s"},{"specversion":"1.0","id":"3","source":"s","type":"batch.two"}]`)

	many := "[" + strings.TrimSuffix(strings.Repeat(`{"type":"batch.x"},`, 1001), ",") + "]"
	if r := a.post(t, "/v1/events:batch", "application/json", many); r.status != http.StatusBadRequest || r.errorCode() != "too_many_events" {
		t.Errorf("1001 events = %d %s, want 400 too_many_events", r.status, r.raw)
	}
}

func TestAPIKeys(t *testing.T) {
	t.Parallel()
	a := startAPI(t, redistest.Shared(t), map[string]string{"API_KEYS": "k1, k2"})
	for _, auth := range []string{"", "Bearer nope", "k1", "Basic k1"} {
		r := a.post(t, "/v1/events", "application/json", `{"type":"a.b"}`, "Authorization", auth)
		if r.status != http.StatusUnauthorized || r.errorCode() != "unauthorized" {
			t.Errorf("Authorization %q = %d %s, want 401 unauthorized", auth, r.status, r.raw)
		}
	}
	for _, key := range []string{"k1", "k2"} {
		if r := a.post(t, "/v1/events", "application/json", `{"type":"a.b"}`, "Authorization", "Bearer "+key); r.status != http.StatusAccepted {
			t.Errorf("key %s = %d %s, want 202", key, r.status, r.raw)
		}
	}
	if r := a.get(t, "/v1/stats"); r.status != http.StatusUnauthorized {
		t.Errorf("GET /v1/stats without key = %d, want 401", r.status)
	}
	if r := a.get(t, "/healthz"); r.status != http.StatusOK {
		t.Errorf("GET /healthz without key = %d, want 200", r.status)
	}

	conn := dial(t, a.grpc)
	client := eventbusv1.NewEventServiceClient(conn)
	req := &eventbusv1.PublishRequest{Event: &eventbusv1.Envelope{Type: "a.b"}}
	if _, err := client.Publish(t.Context(), req); status.Code(err) != codes.Unauthenticated {
		t.Errorf("gRPC Publish without key = %v, want Unauthenticated", err)
	}
	ctx := metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer k2")
	if _, err := client.Publish(ctx, req); err != nil {
		t.Errorf("gRPC Publish with key = %v", err)
	}
	h, err := healthpb.NewHealthClient(conn).Check(t.Context(), &healthpb.HealthCheckRequest{})
	if err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("gRPC health without key = %v, %v; want SERVING", h, err)
	}
}

func dial(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func TestGRPC(t *testing.T) {
	t.Parallel()
	a := startAPI(t, redistest.Shared(t), nil)
	sub := a.subscribe(t, "grpc:*")
	conn := dial(t, a.grpc)
	client := eventbusv1.NewEventServiceClient(conn)

	data, err := envelope.PackData(&eventbusv1.UserCreated{UserId: "7", Email: "g@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.Publish(t.Context(), &eventbusv1.PublishRequest{Event: &eventbusv1.Envelope{Type: "user.created", Channel: "grpc:user", Data: data}}); err != nil {
		t.Fatalf("Publish = %v", err)
	}
	if env := receive(t, sub); env.GetType() != "user.created" || env.GetChannel() != "grpc:user" {
		t.Fatalf("received %v, want user.created on grpc:user", env)
	}
	bad, err := envelope.PackData(&eventbusv1.UserCreated{UserId: "7"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = client.Publish(t.Context(), &eventbusv1.PublishRequest{Event: &eventbusv1.Envelope{Type: "user.created", Data: bad}})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "email") {
		t.Errorf("Publish(no email) = %v, want InvalidArgument naming email", err)
	}

	// Idempotent publish.
	req := &eventbusv1.PublishRequest{Event: &eventbusv1.Envelope{Type: "grpc.once", Channel: "grpc:once"}, IdempotencyKey: "g-1"}
	r1, err1 := client.Publish(t.Context(), req)
	r2, err2 := client.Publish(t.Context(), req)
	if err1 != nil || err2 != nil || r1.GetId() != r2.GetId() {
		t.Fatalf("idempotent Publish = %v %v, %v %v; want the same id twice", r1, err1, r2, err2)
	}
	if env := receive(t, sub); env.GetId() != r1.GetId() {
		t.Fatalf("received %s, want %s", env.GetId(), r1.GetId())
	}

	// A stream of 1000 with one bad event in the middle.
	stream, err := client.PublishStream(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	const n = 1000
	for i := range n {
		typ := "grpc.stream"
		if i == 500 {
			typ = "Not.Valid"
		}
		err := stream.Send(&eventbusv1.PublishStreamRequest{Event: &eventbusv1.Envelope{Type: typ, Subject: strconv.Itoa(i)}})
		if err != nil {
			t.Fatal(err)
		}
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetAccepted() != n-1 || resp.GetRejected() != 1 || len(resp.GetErrors()) != 1 ||
		resp.GetErrors()[0].GetIndex() != 500 || resp.GetErrors()[0].GetCode() != "invalid_argument" {
		t.Fatalf("PublishStream = %v, want 999 accepted and event 500 rejected as invalid", resp)
	}
	for i := range n {
		if i == 500 {
			continue
		}
		if env := receive(t, sub); env.GetSubject() != strconv.Itoa(i) {
			t.Fatalf("stream event %s arrived where %d was due", env.GetSubject(), i)
		}
	}

	// Reflection lists the service, so grpcurl needs no .proto files.
	rs, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := rs.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	list, err := rs.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range list.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	if !strings.Contains(strings.Join(names, ","), "eventbus.v1.EventService") {
		t.Errorf("reflection lists %v, want eventbus.v1.EventService", names)
	}
}

func TestStats(t *testing.T) {
	t.Parallel()
	a := startAPI(t, redistest.Shared(t), nil)
	a.subscribe(t, "stats:exact")
	a.subscribe(t, "stats:exact", "stats:*")
	r := a.get(t, "/v1/stats")
	numsub, _ := r.body["numsub"].(map[string]any)
	if r.status != http.StatusOK || numsub["stats:exact"] != 2.0 || r.body["numpat"].(float64) < 1 {
		t.Fatalf("GET /v1/stats = %d %s, want numsub stats:exact 2 and numpat ≥ 1", r.status, r.raw)
	}
	if chans, _ := r.body["channels"].([]any); len(chans) != 1 || chans[0] != "stats:exact" {
		t.Errorf("channels = %v, want only this test's stats:exact", r.body["channels"])
	}
}

func TestRedisDown(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	redistest.RequireReal(t, srv)
	a := startAPI(t, srv, nil)
	srv.Stop(t)
	r := a.post(t, "/v1/events", "application/json", `{"type":"a.b"}`)
	if r.status != http.StatusServiceUnavailable || r.errorCode() != "unavailable" {
		t.Errorf("publish with Redis down = %d %s, want 503 unavailable", r.status, r.raw)
	}
	if r := a.get(t, "/readyz"); r.status != http.StatusServiceUnavailable {
		t.Errorf("/readyz with Redis down = %d, want 503", r.status)
	}
	srv.Restart(t)
	if r := a.post(t, "/v1/events", "application/json", `{"type":"a.b"}`); r.status != http.StatusAccepted {
		t.Errorf("publish after Redis is back = %d %s, want 202", r.status, r.raw)
	}
	if r := a.get(t, "/readyz"); r.status != http.StatusOK {
		t.Errorf("/readyz after Redis is back = %d, want 200", r.status)
	}
}

func TestConfigErrorsNameEveryVariable(t *testing.T) {
	t.Parallel()
	env := map[string]string{"API_HTTP_ADDR": "8080", "API_MAX_BODY_BYTES": "lots", "REDIS_URL": "localhost", "REDIS_PREFIX": "Bad Prefix",
		"API_PUBLISH_TIMEOUT": "soon"}
	err := run(t.Context(), func(k string) string { return env[k] }, io.Discard)
	if err == nil {
		t.Fatal("run with bad configuration = nil, want an error")
	}
	for k := range env {
		if !strings.Contains(err.Error(), k) {
			t.Errorf("run error %q does not name %s", err, k)
		}
	}
}

func TestMetrics(t *testing.T) {
	t.Parallel()
	a := startAPI(t, redistest.Shared(t), nil)
	a.post(t, "/v1/events", "application/json", `{"type":"user.created","data":{"user_id":"1","email":"m@example.com"}}`)
	a.post(t, "/v1/events", "application/json", `{"type":"bad type"}`)
	r := a.get(t, "/metrics")
	for _, want := range []string{
		`eventbus_api_events_published_total{type="user.created"} 1`,
		`eventbus_api_events_rejected_total{reason="invalid"} 1`,
		"eventbus_api_bus_published_total 1",
		"eventbus_api_publish_duration_seconds_bucket",
	} {
		if !strings.Contains(r.raw, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// nested returns a JSON object with n objects nested inside it: n+1 levels.
func nested(n int) string {
	return strings.Repeat(`{"a":`, n) + "{}" + strings.Repeat("}", n)
}

func TestEventIDsOnEveryPath(t *testing.T) {
	t.Parallel()
	a := startAPI(t, redistest.Shared(t), nil)
	sub := a.subscribe(t, "*")
	const forged = "x\nevent: lagged\ndata: {\"forged\":1}\n\nid: y"
	js, _ := json.Marshal(forged)
	id := string(js)
	for _, tt := range []struct{ name, ctype, body string }{
		{"array", "application/json", `[{"type":"ids.ok","id":"ok-1"},{"type":"ids.bad","id":` + id + `}]`},
		{"ndjson", "application/x-ndjson", `{"type":"ids.ok","id":"ok-2"}` + "\n" + `{"type":"ids.bad","id":` + id + `}` + "\n"},
		{"cloudevents", "application/cloudevents-batch+json",
			`[{"specversion":"1.0","id":"ok-3","source":"s","type":"ids.ok"},{"specversion":"1.0","id":` + id + `,"source":"s","type":"ids.bad"}]`},
	} {
		r := a.post(t, "/v1/events:batch", tt.ctype, tt.body)
		if r.status != http.StatusOK || r.body["accepted"] != 1.0 || r.body["rejected"] != 1.0 {
			t.Fatalf("%s batch = %d %s, want 1 accepted, 1 rejected", tt.name, r.status, r.raw)
		}
		bad := r.body["results"].([]any)[1].(map[string]any)["error"].(map[string]any)
		if bad["code"] != "invalid_argument" || !strings.Contains(bad["message"].(string), "id: control character U+000A") {
			t.Errorf("%s batch: forged id = %v, want invalid_argument naming id", tt.name, bad)
		}
	}

	client := eventbusv1.NewEventServiceClient(dial(t, a.grpc))
	_, err := client.Publish(t.Context(), &eventbusv1.PublishRequest{Event: &eventbusv1.Envelope{Type: "ids.bad", Id: forged}})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), "id: control character U+000A") {
		t.Errorf("gRPC Publish(forged id) = %v, want InvalidArgument naming id", err)
	}
	stream, err := client.PublishStream(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, env := range []*eventbusv1.Envelope{{Type: "ids.ok", Id: "ok-4"}, {Type: "ids.bad", Id: forged}, {Type: "ids.bad", Id: strings.Repeat("日", 256)}} {
		if err := stream.Send(&eventbusv1.PublishStreamRequest{Event: env}); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetAccepted() != 1 || resp.GetRejected() != 2 || len(resp.GetErrors()) != 2 ||
		!strings.Contains(resp.GetErrors()[0].GetMessage(), "id: control character") ||
		!strings.Contains(resp.GetErrors()[1].GetMessage(), "id: 256 characters") {
		t.Errorf("PublishStream = %v, want events 1 and 2 rejected, naming id", resp)
	}

	// Printable ids of any script pass, and nothing else was published.
	if r := a.post(t, "/v1/events", "application/json", `{"type":"ids.ok","id":"ok 5 é 日本"}`); r.status != http.StatusAccepted {
		t.Fatalf("printable id = %d %s, want 202", r.status, r.raw)
	}
	for _, want := range []string{"ok-1", "ok-2", "ok-3", "ok-4", "ok 5 é 日本"} {
		if env := receive(t, sub); env.GetId() != want {
			t.Fatalf("received id %q, want %q: only the valid events are published", env.GetId(), want)
		}
	}
}

func TestDataDepth(t *testing.T) {
	t.Parallel()
	a := startAPI(t, redistest.Shared(t), nil)
	sub := a.subscribe(t, "depth:*")
	for _, levels := range []int{65, 3334, 9999} {
		r := a.post(t, "/v1/events", "application/json", `{"type":"depth.bad","data":`+nested(levels-1)+`}`)
		if r.status != http.StatusBadRequest || r.errorCode() != "invalid_argument" || !strings.Contains(r.errorMessage(), "nested more than 64 levels deep") {
			t.Errorf("data %d levels deep = %d %s, want 400 invalid_argument", levels, r.status, r.raw)
		}
	}
	r := a.post(t, "/v1/events:batch", "application/x-ndjson", `{"type":"depth.bad","data":`+nested(3333)+"}\n")
	if r.status != http.StatusOK || r.body["rejected"] != 1.0 {
		t.Errorf("batch with data 3334 levels deep = %d %s, want it rejected", r.status, r.raw)
	}

	client := eventbusv1.NewEventServiceClient(dial(t, a.grpc))
	deep := new(structpb.Struct)
	if err := protojson.Unmarshal([]byte(nested(3333)), deep); err != nil {
		t.Fatal(err)
	}
	data, err := envelope.PackData(deep)
	if err != nil {
		t.Fatal(err)
	}
	_, err = client.Publish(t.Context(), &eventbusv1.PublishRequest{Event: &eventbusv1.Envelope{Type: "depth.bad", Data: data}})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), "data: nested more than 64 levels deep") {
		t.Errorf("gRPC Publish(data 3334 levels deep) = %v, want InvalidArgument naming data", err)
	}

	// 64 levels pass, and a consumer decodes them.
	if r := a.post(t, "/v1/events", "application/json", `{"type":"depth.ok","data":`+nested(63)+`}`); r.status != http.StatusAccepted {
		t.Fatalf("data 64 levels deep = %d %s, want 202", r.status, r.raw)
	}
	env := receive(t, sub)
	if env.GetType() != "depth.ok" {
		t.Fatalf("received %s, want depth.ok: only it is valid", env.GetType())
	}
	if _, err := envelope.MarshalJSON(env); err != nil {
		t.Errorf("consumer's MarshalJSON of 64 levels = %v", err)
	}
}

func TestOpenAPIWarnsOfWhatIsOpen(t *testing.T) {
	t.Parallel()
	a := startAPI(t, redistest.Shared(t), nil)
	for _, want := range []string{"API_KEYS is not set", "GET /v1/stats", "user.created", "email address"} {
		if !strings.Contains(a.svc.Logs(), want) {
			t.Errorf("startup warning lacks %q:\n%s", want, a.svc.Logs())
		}
	}
}

func TestPublishTimeout(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	redistest.RequireReal(t, srv)
	a := startAPI(t, srv, map[string]string{"API_PUBLISH_TIMEOUT": "100ms"})
	sub := a.subscribe(t, "timeout:*")
	client := eventbusv1.NewEventServiceClient(dial(t, a.grpc))
	if r := a.post(t, "/v1/events", "application/json", `{"type":"timeout.before"}`); r.status != http.StatusAccepted {
		t.Fatalf("publish before = %d %s", r.status, r.raw)
	}
	if env := receive(t, sub); env.GetType() != "timeout.before" {
		t.Fatalf("received %s, want timeout.before", env.GetType())
	}

	srv.Pause(t)
	// Redis takes the connection and the bytes but never answers. Each
	// request must end in 503 after API_PUBLISH_TIMEOUT. The guard below
	// only fails the test sooner than go test's own timeout: go-redis's
	// read timeout is 3 s, which the API used to wait out several times
	// over before answering.
	guard := func() context.Context {
		ctx, cancel := context.WithTimeout(t.Context(), 2500*time.Millisecond)
		t.Cleanup(cancel)
		return ctx
	}
	notPublished := map[string]bool{}
	post := func(name, path, body string, header ...string) reply {
		t.Helper()
		req, err := http.NewRequestWithContext(guard(), http.MethodPost, a.http+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		r := do(t, req)
		if r.status != http.StatusServiceUnavailable || r.errorCode() != "unavailable" {
			t.Errorf("%s with Redis hung = %d %s, want 503 unavailable", name, r.status, r.raw)
		}
		if strings.Contains(r.errorMessage(), "nothing was published") {
			notPublished[name] = true
		}
		return r
	}
	post("event", "/v1/events", `{"type":"timeout.during","subject":"event"}`)
	post("event again", "/v1/events", `{"type":"timeout.during","subject":"event again"}`)
	post("keyed event", "/v1/events", `{"type":"timeout.during","subject":"keyed event"}`, "Idempotency-Key", "hung-1")
	post("user", "/v1/users", `{"email":"hung@example.com"}`)
	req, err := http.NewRequestWithContext(guard(), http.MethodPost, a.http+"/v1/events:batch", strings.NewReader(`[{"type":"timeout.during","subject":"batch"}]`))
	if err != nil {
		t.Fatal(err)
	}
	if r := do(t, req); r.status != http.StatusOK || r.body["accepted"] != 0.0 ||
		r.body["results"].([]any)[0].(map[string]any)["error"].(map[string]any)["code"] != "unavailable" {
		t.Errorf("batch with Redis hung = %d %s, want its event unavailable", r.status, r.raw)
	}
	_, err = client.Publish(guard(), &eventbusv1.PublishRequest{Event: &eventbusv1.Envelope{Type: "timeout.during", Subject: "grpc"}})
	if c := status.Code(err); c != codes.Unavailable && c != codes.DeadlineExceeded {
		t.Errorf("gRPC Publish with Redis hung = %v, want Unavailable, or DeadlineExceeded when it may have gone out", err)
	}
	srv.Resume(t)

	if r := a.post(t, "/v1/events", "application/json", `{"type":"timeout.after"}`); r.status != http.StatusAccepted {
		t.Fatalf("publish after Redis is back = %d %s, want 202", r.status, r.raw)
	}
	// Events written to Redis before it froze may arrive now: their
	// replies said they may have been published. Those said not to have
	// been never arrive.
	for {
		env := receive(t, sub)
		if env.GetType() == "timeout.after" {
			break
		}
		if notPublished[env.GetSubject()] {
			t.Errorf("received %q, whose reply said nothing was published", env.GetSubject())
		}
	}
}

func TestHangUpsPublishEachKeyOnce(t *testing.T) {
	t.Parallel()
	a := startAPI(t, redistest.Shared(t), nil)
	sub := a.subscribe(t, "hangup:*")
	addr := strings.TrimPrefix(a.http, "http://")
	const keys = 100
	for i := range keys {
		key := fmt.Sprintf("hangup-%d", i)
		body := fmt.Sprintf(`{"type":"hangup.test","subject":%q}`, key)
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = fmt.Fprintf(c, "POST /v1/events HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nIdempotency-Key: %s\r\nContent-Length: %d\r\n\r\n%s",
			addr, key, len(body), body)
		// Hang up at a different moment each time, from at once to after
		// the reply, with a reset as a client killed mid-request sends.
		for range i * 200 {
			runtime.Gosched()
		}
		_ = c.(*net.TCPConn).SetLinger(0)
		_ = c.Close()
		// The client retries until it has an answer. 409 means the first
		// request is still running.
		for {
			r := a.post(t, "/v1/events", "application/json", body, "Idempotency-Key", key)
			if r.status == http.StatusAccepted {
				break
			}
			if r.status != http.StatusConflict {
				t.Fatalf("retry of %s = %d %s, want 202 (or 409 while the first runs)", key, r.status, r.raw)
			}
			runtime.Gosched()
		}
	}
	a.post(t, "/v1/events", "application/json", `{"type":"hangup.test","subject":"sentinel"}`)
	got := map[string]int{}
	for {
		env := receive(t, sub)
		if env.GetSubject() == "sentinel" {
			break
		}
		got[env.GetSubject()]++
	}
	for i := range keys {
		if key := fmt.Sprintf("hangup-%d", i); got[key] != 1 {
			t.Errorf("key %s published %d times, want once", key, got[key])
		}
	}
}

// With history (the default) an accepted event's reply names its position
// in its namespace's stream; the stream holds it. With BUS_HISTORY=off
// there is no position and no stream.
func TestPublishReturnsThePosition(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	redistest.RequireReal(t, srv)
	for _, history := range []string{"on", "off"} {
		a := startAPI(t, srv, map[string]string{"BUS_HISTORY": history})
		r := a.post(t, "/v1/events", "application/json", `{"type":"pos.check","subject":"s"}`)
		offset, _ := r.body["offset"].(string)
		epoch, _ := r.body["epoch"].(string)
		if r.status != http.StatusAccepted || (history == "on") != (offset != "" && epoch != "") {
			t.Fatalf("BUS_HISTORY=%s: POST /v1/events = %d %s, want a position exactly with history", history, r.status, r.raw)
		}
		entries, err := srv.Client(t).XRange(t.Context(), a.prefix+":stream:{pos}", "-", "+").Result()
		if err != nil {
			t.Fatal(err)
		}
		if history == "on" && (len(entries) != 1 || entries[0].ID != offset) {
			t.Fatalf("stream holds %v, want the one event at %s", entries, offset)
		}
	}
}

// Each accepted event of a batch has the position POST /v1/events gives
// one event: its offset and epoch, as docs/protocol.md documents them.
func TestBatchReturnsThePositions(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	redistest.RequireReal(t, srv)
	a := startAPI(t, srv, nil)
	r := a.post(t, "/v1/events:batch", "application/json", `[{"type":"bpos.one"},{"type":"Bad"},{"type":"bpos.two"}]`)
	if r.status != http.StatusOK {
		t.Fatalf("POST /v1/events:batch = %d %s, want 200", r.status, r.raw)
	}
	entries, err := srv.Client(t).XRange(t.Context(), a.prefix+":stream:{bpos}", "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	results := r.body["results"].([]any)
	var offsets []string
	for _, i := range []int{0, 2} {
		res := results[i].(map[string]any)
		offset, _ := res["offset"].(string)
		epoch, _ := res["epoch"].(string)
		if offset == "" || epoch == "" {
			t.Errorf("batch result %d = %v, want its offset and epoch", i, res)
		}
		offsets = append(offsets, offset)
	}
	if len(entries) != 2 || entries[0].ID != offsets[0] || entries[1].ID != offsets[1] {
		t.Errorf("stream holds %v, want the two events at %v", entries, offsets)
	}
}

func TestHistory(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	redistest.RequireReal(t, srv)
	a := startAPI(t, srv, nil)
	var offsets []string
	for i := range 5 {
		r := a.post(t, "/v1/events", "application/json", fmt.Sprintf(`{"type":"hist.step","subject":"%d"}`, i))
		offsets = append(offsets, r.body["offset"].(string))
	}
	a.post(t, "/v1/events", "application/json", `{"type":"elsewhere.step","subject":"x"}`)
	epoch := a.post(t, "/v1/events", "application/json", `{"type":"hist.step","subject":"5"}`).body["epoch"].(string)

	type page struct {
		Events []struct {
			Offset, Epoch, Channel string
			Event                  struct{ Subject string }
		}
		Next string
		More bool
	}
	read := func(query string) (page, reply) {
		t.Helper()
		r := a.get(t, "/v1/history?"+query)
		var p page
		if r.status == http.StatusOK {
			if err := json.Unmarshal([]byte(r.raw), &p); err != nil {
				t.Fatal(err)
			}
		}
		return p, r
	}
	var subjects []string
	query := "pattern=hist:*&limit=2"
	for range 10 {
		p, r := read(query)
		if r.status != http.StatusOK || len(p.Events) > 2 {
			t.Fatalf("GET /v1/history?%s = %d %s", query, r.status, r.raw)
		}
		for _, e := range p.Events {
			if e.Channel != "hist:step" || e.Epoch != epoch || e.Offset == "" {
				t.Fatalf("event %+v, want channel hist:step, epoch %s and an offset", e, epoch)
			}
			subjects = append(subjects, e.Event.Subject)
		}
		if !p.More {
			break
		}
		query = "pattern=hist:*&limit=2&since=" + p.Next
	}
	if got := strings.Join(subjects, ","); got != "0,1,2,3,4,5" {
		t.Fatalf("paged through subjects %s, want 0,1,2,3,4,5", got)
	}
	p, r := read("pattern=hist:*&since=" + offsets[2] + "&epoch=" + epoch)
	if r.status != http.StatusOK || len(p.Events) != 3 || p.Events[0].Event.Subject != "3" {
		t.Fatalf("history since the third event = %d %s, want subjects 3, 4, 5", r.status, r.raw)
	}
	for _, tt := range []struct {
		query  string
		status int
		code   string
	}{
		{"pattern=hist:*&since=" + offsets[2] + "&epoch=0badc0de", http.StatusGone, "history_truncated"},
		{"pattern=Hist", http.StatusBadRequest, "invalid_argument"},
		{"", http.StatusBadRequest, "invalid_argument"},
		{"pattern=hist:*&limit=0", http.StatusBadRequest, "invalid_argument"},
		{"pattern=hist:*&since=" + offsets[2], http.StatusBadRequest, "invalid_argument"},
		{"pattern=*&since=" + offsets[2] + "&epoch=" + epoch, http.StatusBadRequest, "invalid_argument"},
		{"pattern=hist:*&since=not-a-cursor", http.StatusBadRequest, "invalid_argument"},
	} {
		if _, r := read(tt.query); r.status != tt.status || r.errorCode() != tt.code {
			t.Errorf("GET /v1/history?%s = %d %s, want %d %s", tt.query, r.status, r.raw, tt.status, tt.code)
		}
	}
}

func TestGRPCHistory(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	redistest.RequireReal(t, srv)
	a := startAPI(t, srv, nil)
	client := eventbusv1.NewEventServiceClient(dial(t, a.grpc))
	var first *eventbusv1.PublishResponse
	for i := range 3 {
		r, err := client.Publish(t.Context(), &eventbusv1.PublishRequest{Event: &eventbusv1.Envelope{Type: "ghist.step", Subject: strconv.Itoa(i)}})
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = r
		}
	}
	page, err := client.History(t.Context(), &eventbusv1.HistoryRequest{Pattern: "ghist:*", Since: first.GetOffset(), Epoch: first.GetEpoch()})
	if err != nil || len(page.GetEvents()) != 2 || page.GetEvents()[0].GetEvent().GetSubject() != "1" || page.GetMore() {
		t.Fatalf("History since the first = %v, %v; want subjects 1 and 2, no more", page, err)
	}
	rest, err := client.History(t.Context(), &eventbusv1.HistoryRequest{Pattern: "ghist:*", Since: page.GetNext()})
	if err != nil || len(rest.GetEvents()) != 0 {
		t.Fatalf("History from next = %v, %v; want nothing", rest, err)
	}
	for _, tt := range []struct {
		req  *eventbusv1.HistoryRequest
		code codes.Code
	}{
		{&eventbusv1.HistoryRequest{Pattern: "ghist:*", Since: first.GetOffset(), Epoch: "0badc0de"}, codes.OutOfRange},
		{&eventbusv1.HistoryRequest{Pattern: "GHIST"}, codes.InvalidArgument},
		{&eventbusv1.HistoryRequest{Pattern: "ghist:*", Limit: 5000}, codes.InvalidArgument},
		{&eventbusv1.HistoryRequest{Pattern: "ghist:*", Since: "garbage"}, codes.InvalidArgument},
	} {
		if _, err := client.History(t.Context(), tt.req); status.Code(err) != tt.code {
			t.Errorf("History(%v) = %v, want %v", tt.req, err, tt.code)
		}
	}
}
