package main

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	eventbusv1 "github.com/eventbus-suite/eventbus/proto/gen/eventbus/v1"

	"github.com/eventbus-suite/eventbus/pkg/servicetest"
	"github.com/eventbus-suite/eventbus/services/notification/internal/push"
)

var b64 = base64.RawURLEncoding

// fakePush is a push service of our own (RFC 8030): it records every
// request and answers as scripted, per subscription.
type fakePush struct {
	srv *httptest.Server

	mu       sync.Mutex
	requests []pushRequest
	script   map[string][]int // by path: statuses of the next requests; 201 once empty
	hang     bool             // while set, a request waits until its client gives up
}

type pushRequest struct {
	Path   string
	Header http.Header
	Body   []byte
	Status int
	Hung   bool // never answered: the client gave up, or died
}

func newFakePush(t *testing.T) *fakePush {
	f := &fakePush{script: map[string][]int{}}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakePush) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	f.mu.Lock()
	status := http.StatusCreated
	if s := f.script[r.URL.Path]; len(s) > 0 {
		status, f.script[r.URL.Path] = s[0], s[1:]
	}
	hang := f.hang
	f.requests = append(f.requests, pushRequest{Path: r.URL.Path, Header: r.Header.Clone(), Body: body, Status: status, Hung: hang})
	f.mu.Unlock()
	if hang {
		<-r.Context().Done()
		return
	}
	if status == http.StatusTooManyRequests {
		w.Header().Set("Retry-After", "0")
	}
	w.WriteHeader(status)
}

func (f *fakePush) setHang(on bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hang = on
}

// to returns the requests made to subscriber s's endpoint.
func (f *fakePush) to(s *subscriber) []pushRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []pushRequest
	for _, r := range f.requests {
		if r.Path == s.path {
			out = append(out, r)
		}
	}
	return out
}

// subscriber is a browser's push subscription at the fake push service,
// with its private key.
type subscriber struct {
	path, endpoint string
	key            *ecdh.PrivateKey
	auth           []byte
}

func (f *fakePush) subscriber(t *testing.T, name string) *subscriber {
	t.Helper()
	k, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	auth := make([]byte, 16)
	_, _ = rand.Read(auth)
	return &subscriber{path: "/push/" + name, endpoint: f.srv.URL + "/push/" + name, key: k, auth: auth}
}

// json is the subscription as the browser's PushSubscription.toJSON() gives it.
func (s *subscriber) json() string {
	return fmt.Sprintf(`{"endpoint":%q,"expirationTime":null,"keys":{"p256dh":%q,"auth":%q}}`,
		s.endpoint, b64.EncodeToString(s.key.PublicKey().Bytes()), b64.EncodeToString(s.auth))
}

// decrypt decrypts a message sent to s with Mozilla's http_ece, in node:
// the test trusts the encryption of neither webpush-go nor its own.
func (s *subscriber) decrypt(t *testing.T, body []byte) push.Message {
	t.Helper()
	dir := filepath.Join("testdata", "pushdecrypt")
	node, err := exec.LookPath("node")
	if err == nil {
		_, err = os.Stat(filepath.Join(dir, "node_modules", "http_ece"))
		if err != nil {
			err = fmt.Errorf("%s has no node_modules: run make push-decrypt (%w)", dir, err)
		}
	}
	if err != nil {
		servicetest.Needs(t, "EVENTBUS_REQUIRE_NODE", err.Error())
	}
	in, _ := json.Marshal(map[string]string{
		"private_key": b64.EncodeToString(s.key.Bytes()), "auth": b64.EncodeToString(s.auth),
		"body": base64.StdEncoding.EncodeToString(body),
	})
	cmd := exec.CommandContext(t.Context(), node, filepath.Join(dir, "decrypt.js"))
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("decrypt the push: %v\n%s", err, stderr.String())
	}
	var m push.Message
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatalf("the decrypted push %q is not a JSON message: %v", out, err)
	}
	return m
}

// vapidPair returns a VAPID key pair, base64url.
func vapidPair(t *testing.T) (public, private string) {
	t.Helper()
	k, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return b64.EncodeToString(k.PublicKey().Bytes()), b64.EncodeToString(k.Bytes())
}

// newPushWorld is newWorld with Web Push on, to fp.
func newPushWorld(t *testing.T, env map[string]string) (w *world, vapidPublic string) {
	t.Helper()
	pub, priv := vapidPair(t)
	vars := map[string]string{"NOTIFY_VAPID_PUBLIC_KEY": pub, "NOTIFY_VAPID_PRIVATE_KEY": priv, "NOTIFY_PUSH_ALLOW_HTTP": "true"}
	for k, v := range env {
		vars[k] = v
	}
	return newWorld(t, newFakeSendGrid(t), vars), pub
}

// subscribe records s as a push subscription of user through s's route.
func subscribe(t *testing.T, svc *servicetest.Service, user string, s *subscriber) {
	t.Helper()
	var got struct{ ID, Endpoint string }
	if status := call(t, svc, "POST", "/v1/users/"+user+"/push-subscriptions", "", s.json(), &got); status != http.StatusCreated ||
		got.ID != push.EndpointID(s.endpoint) || got.Endpoint != s.endpoint {
		t.Fatalf("POST push subscription = %d %+v, want 201 with its id and endpoint", status, got)
	}
}

func pushMetric(t *testing.T, svc *servicetest.Service, outcome string) float64 {
	t.Helper()
	return metric(t, svc, `eventbus_notification_push_sent_total{outcome="`+outcome+`"}`)
}

func TestPushIsEncryptedAndSigned(t *testing.T) {
	t.Parallel()
	fp := newFakePush(t)
	w, vapidPublic := newPushWorld(t, nil)
	svc := w.replica()
	notes := w.notifications()
	sub := fp.subscriber(t, "ada")
	subscribe(t, svc, "u1", sub)

	placed := w.publish("order.placed", &eventbusv1.OrderPlaced{OrderId: "o1", UserId: "u1", Total: 1299, Currency: "EUR"})
	_, note := nextNotification(t, notes)
	servicetest.WaitFor(t, "the push", func() bool { return pushMetric(t, svc, "sent") == 1 })
	reqs := fp.to(sub)
	if len(reqs) != 1 {
		t.Fatalf("the push service got %d requests, want 1", len(reqs))
	}
	r := reqs[0]
	for h, want := range map[string]string{
		"Content-Encoding": "aes128gcm", "Content-Type": "application/octet-stream", "Ttl": "86400", "Urgency": "normal",
		"Topic": strings.TrimPrefix(note.GetNotificationId(), "n-"),
	} {
		if got := r.Header.Get(h); got != want {
			t.Errorf("header %s = %q, want %q", h, got, want)
		}
	}

	// Authorization: vapid t=<JWT>, k=<our public key>; the JWT signed with
	// ES256 by the key pair, for the endpoint's origin, for at most 24 h.
	auth, ok := strings.CutPrefix(r.Header.Get("Authorization"), "vapid ")
	if !ok {
		t.Fatalf("Authorization = %q, want vapid t=…, k=…", r.Header.Get("Authorization"))
	}
	params := map[string]string{}
	for _, p := range strings.Split(auth, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(p), "=")
		params[k] = v
	}
	if params["k"] != vapidPublic {
		t.Errorf("vapid k = %q, want NOTIFY_VAPID_PUBLIC_KEY %q", params["k"], vapidPublic)
	}
	raw, err := b64.DecodeString(vapidPublic)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), raw)
	if err != nil {
		t.Fatal(err)
	}
	claims := jwt.MapClaims{}
	_, err = jwt.ParseWithClaims(params["t"], claims, func(*jwt.Token) (any, error) { return pub, nil },
		jwt.WithValidMethods([]string{"ES256"}), jwt.WithAudience(fp.srv.URL), jwt.WithExpirationRequired())
	if err != nil {
		t.Fatalf("VAPID JWT %q: %v", params["t"], err)
	}
	exp, _ := claims.GetExpirationTime()
	if time.Until(exp.Time) > 24*time.Hour {
		t.Errorf("VAPID JWT exp = %v, want within 24 h (RFC 8292)", exp.Time)
	}
	if claims["sub"] != "mailto:shop@example.com" {
		t.Errorf("VAPID JWT sub = %v, want mailto:NOTIFY_FROM_EMAIL", claims["sub"])
	}

	claim := w.prefix + ":notification:claim:" + placed + ":order_received_browser:push:" + push.EndpointID(sub.endpoint)
	if state, err := w.rdb.Get(t.Context(), claim).Result(); state != "sent" {
		t.Errorf("claim %s = %q, %v; want sent", claim, state, err)
	}

	// Last, as it needs Node: the payload, decrypted with the
	// subscription's keys by http_ece, is the in-page notification.
	want := push.Message{
		Type: "notification.created", NotificationID: note.GetNotificationId(), UserID: "u1",
		Title: note.GetTitle(), Body: note.GetBody(), Link: "/orders/o1", CauseEventID: placed,
	}
	if got := sub.decrypt(t, r.Body); got != want || !strings.Contains(got.Body, "12.99 EUR") {
		t.Errorf("decrypted push = %+v, want %+v", got, want)
	}
}

// A push service answers 404 or 410 for a subscription that no longer
// exists (RFC 8030 §7.3): either removes it, and only it.
func TestPushGoneRemovesTheSubscription(t *testing.T) {
	t.Parallel()
	for _, status := range []int{http.StatusGone, http.StatusNotFound} {
		t.Run(strconv.Itoa(status), func(t *testing.T) {
			t.Parallel()
			fp := newFakePush(t)
			w, _ := newPushWorld(t, nil)
			svc := w.replica()
			gone, kept := fp.subscriber(t, "gone"), fp.subscriber(t, "kept")
			fp.script[gone.path] = []int{status}
			subscribe(t, svc, "u2", gone)
			subscribe(t, svc, "u2", kept)

			w.publish("order.placed", &eventbusv1.OrderPlaced{OrderId: "o1", UserId: "u2", Total: 100, Currency: "EUR"})
			servicetest.WaitFor(t, "one push sent, one gone", func() bool {
				return pushMetric(t, svc, "sent") == 1 && pushMetric(t, svc, "gone") == 1
			})
			key := w.prefix + ":push:u2"
			if ok, _ := w.rdb.HExists(t.Context(), key, gone.endpoint).Result(); ok {
				t.Errorf("%s still holds the subscription the push service said is gone", key)
			}
			if ok, _ := w.rdb.HExists(t.Context(), key, kept.endpoint).Result(); !ok {
				t.Errorf("%s lost the subscription that works", key)
			}
			w.publish("order.placed", &eventbusv1.OrderPlaced{OrderId: "o2", UserId: "u2", Total: 100, Currency: "EUR"})
			servicetest.WaitFor(t, "the second push", func() bool { return pushMetric(t, svc, "sent") == 2 })
			if n := len(fp.to(gone)); n != 1 {
				t.Errorf("the gone subscription got %d requests, want 1: none after its %d", n, status)
			}
		})
	}
}

func TestPushRetriedAfter429(t *testing.T) {
	t.Parallel()
	fp := newFakePush(t)
	w, _ := newPushWorld(t, nil)
	svc := w.replica()
	sub := fp.subscriber(t, "busy")
	fp.script[sub.path] = []int{http.StatusTooManyRequests, http.StatusServiceUnavailable}
	subscribe(t, svc, "u3", sub)
	w.publish("order.placed", &eventbusv1.OrderPlaced{OrderId: "o1", UserId: "u3", Total: 100, Currency: "EUR"})
	servicetest.WaitFor(t, "the push after retries", func() bool { return pushMetric(t, svc, "sent") == 1 })
	reqs := fp.to(sub)
	if len(reqs) != 3 || reqs[2].Status != http.StatusCreated {
		t.Errorf("the push service got %d requests, want 3 (429, 503, then 201)", len(reqs))
	}
	if got := metric(t, svc, "eventbus_notification_push_retried_total"); got != 2 {
		t.Errorf("push_retried_total = %v, want 2", got)
	}
	// Accepted once: the retries carry the same message.
	if a, b := sub.decrypt(t, reqs[0].Body), sub.decrypt(t, reqs[2].Body); a != b {
		t.Errorf("retry carried %+v, first try %+v; want the same", b, a)
	}
}

func TestPushToAHangingServiceIsBounded(t *testing.T) {
	t.Parallel()
	fp := newFakePush(t)
	fp.setHang(true)
	w, _ := newPushWorld(t, map[string]string{"NOTIFY_PUSH_TIMEOUT": "200ms", "NOTIFICATION_MAX_ATTEMPTS": "2"})
	svc := w.replica()
	sub := fp.subscriber(t, "slow")
	subscribe(t, svc, "u4", sub)
	w.publish("order.placed", &eventbusv1.OrderPlaced{OrderId: "o1", UserId: "u4", Total: 100, Currency: "EUR"})
	servicetest.WaitFor(t, "the push to be given up", func() bool { return pushMetric(t, svc, "failed") == 1 })
	if n := len(fp.to(sub)); n != 2 {
		t.Errorf("the push service got %d requests, want 2 (NOTIFICATION_MAX_ATTEMPTS)", n)
	}
	// The worker is free again, and pushes once the service answers.
	fp.setHang(false)
	w.publish("order.placed", &eventbusv1.OrderPlaced{OrderId: "o2", UserId: "u4", Total: 100, Currency: "EUR"})
	servicetest.WaitFor(t, "the next push", func() bool { return pushMetric(t, svc, "sent") == 1 })
	if !strings.Contains(svc.Logs(), "push not sent; given up") {
		t.Errorf("the log does not say the push was given up")
	}
}

func TestPushOncePerNotificationWithTwoReplicas(t *testing.T) {
	t.Parallel()
	fp := newFakePush(t)
	w, _ := newPushWorld(t, nil)
	replicas := []*servicetest.Service{w.replica(), w.replica()}
	const n = 10
	subs := make([]*subscriber, n)
	for i := range subs {
		subs[i] = fp.subscriber(t, "r"+strconv.Itoa(i))
		subscribe(t, replicas[i%2], "r"+strconv.Itoa(i), subs[i])
		w.publish("order.placed", &eventbusv1.OrderPlaced{OrderId: "o", UserId: "r" + strconv.Itoa(i), Total: 100, Currency: "EUR"})
	}
	// order.shipped for a user whose contact is not recorded: the event
	// comes again (to either replica) until the email is given up, and its
	// push, sent the first time, is not sent again.
	late := fp.subscriber(t, "late")
	subscribe(t, replicas[0], "late", late)
	w.publish("order.shipped", &eventbusv1.OrderShipped{OrderId: "o", UserId: "late", Carrier: "DHL", TrackingNumber: "1"})
	servicetest.WaitFor(t, "every push, and the shipping email given up", func() bool {
		return sum(t, replicas, `eventbus_notification_push_sent_total{outcome="sent"}`) == n+1 &&
			sum(t, replicas, "eventbus_notification_unknown_users_total") == 1
	})
	// Each redelivery found the browser notification and its push sent.
	if got := sum(t, replicas, "eventbus_notification_claim_conflicts_total"); got < 2 {
		t.Errorf("claim_conflicts_total = %v, want at least 2 (a redelivery skipping the browser notification and its push)", got)
	}
	for _, s := range append(subs, late) {
		if got := len(fp.to(s)); got != 1 {
			t.Errorf("%s got %d pushes, want 1", s.path, got)
		}
	}
}

func TestPushSubscriptionRoutes(t *testing.T) {
	t.Parallel()
	fp := newFakePush(t)
	w, _ := newPushWorld(t, map[string]string{"API_KEYS": "k1"})
	svc := w.replica()
	sub := fp.subscriber(t, "routes")
	good := sub.json()
	p256dh, auth := b64.EncodeToString(sub.key.PublicKey().Bytes()), b64.EncodeToString(sub.auth)
	with := func(endpoint, p, a string) string {
		return fmt.Sprintf(`{"endpoint":%q,"keys":{"p256dh":%q,"auth":%q}}`, endpoint, p, a)
	}
	const path = "/v1/users/u5/push-subscriptions"
	for _, tt := range []struct {
		name, method, path, key, body string
		status                        int
		code                          string
	}{
		{"no key", "POST", path, "", good, 401, "unauthorized"},
		{"a wrong key", "DELETE", path, "k2", `{"endpoint":"https://p.example/x"}`, 401, "unauthorized"},
		{"not JSON", "POST", path, "k1", "{", 400, "invalid_argument"},
		{"unknown field", "POST", path, "k1", `{"endpoint":"https://p.example/x","keys":{},"extra":1}`, 400, "invalid_argument"},
		{"not https", "POST", path, "k1", with("http://push.example/x", p256dh, auth), 400, "invalid_argument"},
		{"http, not loopback", "POST", path, "k1", with("http://10.1.2.3/x", p256dh, auth), 400, "invalid_argument"},
		{"p256dh not base64url", "POST", path, "k1", with("https://p.example/x", "***", auth), 400, "invalid_argument"},
		{"p256dh short", "POST", path, "k1", with("https://p.example/x", p256dh[:40], auth), 400, "invalid_argument"},
		{"auth long", "POST", path, "k1", with("https://p.example/x", p256dh, auth+"AAAA"), 400, "invalid_argument"},
		{"bad user id", "POST", "/v1/users/Ada:1/push-subscriptions", "k1", good, 400, "invalid_argument"},
		{"too large a body", "POST", path, "k1", strings.Repeat(" ", push.MaxBodyBytes+1), 413, "payload_too_large"},
		{"remove none", "DELETE", path, "k1", `{"endpoint":"https://p.example/none"}`, 404, "not_found"},
		{"remove, not JSON", "DELETE", path, "k1", `{"endpoint":`, 400, "invalid_argument"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var e struct {
				Error struct{ Code, Message string }
			}
			status := call(t, svc, tt.method, tt.path, tt.key, tt.body, &e)
			if status != tt.status || e.Error.Code != tt.code || e.Error.Message == "" {
				t.Errorf("%s %s = %d %+v, want %d %s with a message", tt.method, tt.path, status, e.Error, tt.status, tt.code)
			}
		})
	}

	// Up to push.MaxPerUser subscriptions, then 409; the same endpoint
	// again replaces its subscription.
	key := w.prefix + ":push:u6"
	for i := range push.MaxPerUser {
		if status := call(t, svc, "POST", "/v1/users/u6/push-subscriptions", "k1", with("https://p.example/"+strconv.Itoa(i), p256dh, auth), nil); status != 201 {
			t.Fatalf("POST subscription %d = %d, want 201", i, status)
		}
	}
	var e struct{ Error struct{ Code string } }
	if status := call(t, svc, "POST", "/v1/users/u6/push-subscriptions", "k1", with("https://p.example/more", p256dh, auth), &e); status != 409 || e.Error.Code != "too_many_subscriptions" {
		t.Errorf("POST subscription %d = %d %s, want 409 too_many_subscriptions", push.MaxPerUser+1, status, e.Error.Code)
	}
	if status := call(t, svc, "POST", "/v1/users/u6/push-subscriptions", "k1", with("https://p.example/0", p256dh, auth), nil); status != 201 {
		t.Errorf("POST an endpoint again = %d, want 201", status)
	}
	if status := call(t, svc, "DELETE", "/v1/users/u6/push-subscriptions", "k1", `{"endpoint":"https://p.example/3"}`, nil); status != 204 {
		t.Errorf("DELETE = %d, want 204", status)
	}
	if n, _ := w.rdb.HLen(t.Context(), key).Result(); n != push.MaxPerUser-1 {
		t.Errorf("%s holds %d subscriptions, want %d", key, n, push.MaxPerUser-1)
	}
	var stored push.Subscription
	raw, _ := w.rdb.HGet(t.Context(), key, "https://p.example/0").Result()
	if err := json.Unmarshal([]byte(raw), &stored); err != nil || stored.Keys.P256dh != p256dh || stored.Keys.Auth != auth {
		t.Errorf("stored subscription = %q, %v; want its keys", raw, err)
	}
}

func TestPushConfig(t *testing.T) {
	t.Parallel()
	pub, priv := vapidPair(t)
	_, other := vapidPair(t)
	for _, tt := range []struct {
		name string
		env  map[string]string
		says []string
	}{
		{"public only", map[string]string{"NOTIFY_VAPID_PUBLIC_KEY": pub}, []string{"NOTIFY_VAPID_PRIVATE_KEY"}},
		{"private only", map[string]string{"NOTIFY_VAPID_PRIVATE_KEY": priv}, []string{"NOTIFY_VAPID_PUBLIC_KEY"}},
		{"not a pair", map[string]string{"NOTIFY_VAPID_PUBLIC_KEY": pub, "NOTIFY_VAPID_PRIVATE_KEY": other}, []string{"NOTIFY_VAPID_PRIVATE_KEY", "not the private key"}},
		{"bad keys", map[string]string{"NOTIFY_VAPID_PUBLIC_KEY": "x", "NOTIFY_VAPID_PRIVATE_KEY": "y"}, []string{"NOTIFY_VAPID_PUBLIC_KEY", "NOTIFY_VAPID_PRIVATE_KEY"}},
		{"bad subject", map[string]string{"NOTIFY_VAPID_SUBJECT": "ops@example.com"}, []string{"NOTIFY_VAPID_SUBJECT"}},
		{"bad ttl", map[string]string{"NOTIFY_PUSH_TTL": "900h"}, []string{"NOTIFY_PUSH_TTL"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := run(t.Context(), func(k string) string { return tt.env[k] }, io.Discard)
			for _, want := range tt.says {
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("run = %v, want an error naming %s", err, want)
				}
			}
			if err != nil && strings.Contains(err.Error(), other) {
				t.Errorf("run = %v: the error shows a private key", err)
			}
		})
	}
}

func TestPushOffWithoutKeys(t *testing.T) {
	t.Parallel()
	fp := newFakePush(t)
	w := newWorld(t, newFakeSendGrid(t), map[string]string{"NOTIFY_PUSH_ALLOW_HTTP": "true"})
	svc := w.replica()
	if got := strings.Count(svc.Logs(), "Web Push is off"); got != 1 {
		t.Errorf("the log says %d times that Web Push is off, want once", got)
	}
	sub := fp.subscriber(t, "off")
	subscribe(t, svc, "u7", sub)
	notes := w.notifications()
	// A user's events are handled in order, each with its pushes: once the
	// second's notification is out, the first's push would have gone.
	w.publish("order.placed", &eventbusv1.OrderPlaced{OrderId: "o1", UserId: "u7", Total: 100, Currency: "EUR"})
	w.publish("order.placed", &eventbusv1.OrderPlaced{OrderId: "o2", UserId: "u7", Total: 100, Currency: "EUR"})
	nextNotification(t, notes)
	nextNotification(t, notes)
	if n := len(fp.to(sub)); n != 0 {
		t.Errorf("the push service got %d requests with Web Push off, want 0", n)
	}
}
