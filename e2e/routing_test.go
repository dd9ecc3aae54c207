package e2e

import (
	"context"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"
	"github.com/redis/go-redis/v9"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
)

const (
	routingSecret = "routing-e2e-secret-0123456789abcdef"
	routingAPIKey = "routing-e2e-key"
	// routingAckTimeout is the notification's NOTIFY_ACK_TIMEOUT: short,
	// for the fallback's sake, yet far longer than a page's
	// acknowledgement takes to be recorded (milliseconds here).
	routingAckTimeout = "2s"
)

// pushService is a Web Push service of ours (RFC 8030) over TLS, as the
// browsers' are: it accepts every push (201) and records it.
type pushService struct {
	srv *httptest.Server
	// certFile is its certificate, PEM, for the notification's
	// SSL_CERT_FILE: the real sender trusts it as it trusts a browser
	// vendor's, with no test hook.
	certFile string

	mu     sync.Mutex
	pushes []webPush
}

// webPush is one request the push service got.
type webPush struct {
	path, topic, authorization, encoding string
	body                                 int
}

func newPushService(t *testing.T) *pushService {
	t.Helper()
	p := &pushService{}
	p.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return
		}
		p.mu.Lock()
		p.pushes = append(p.pushes, webPush{
			path: r.URL.Path, topic: r.Header.Get("Topic"), authorization: r.Header.Get("Authorization"),
			encoding: r.Header.Get("Content-Encoding"), body: len(body),
		})
		p.mu.Unlock()
		w.WriteHeader(http.StatusCreated)
	}))
	t.Cleanup(p.srv.Close)
	p.certFile = filepath.Join(t.TempDir(), "push-service.pem")
	cert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.srv.Certificate().Raw})
	if err := os.WriteFile(p.certFile, cert, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// to returns the pushes to user's endpoint (subscribe's).
func (p *pushService) to(user string) []webPush {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []webPush
	for _, w := range p.pushes {
		if w.path == "/push/"+user {
			out = append(out, w)
		}
	}
	return out
}

// withTopic counts the pushes, to any endpoint, of the notification whose
// id is id: the sender's Topic is the id without its "n-".
func (p *pushService) withTopic(id string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, w := range p.pushes {
		if w.topic == strings.TrimPrefix(id, "n-") {
			n++
		}
	}
	return n
}

// subscribe records a push subscription of user at the push service
// through the notification service's POST /v1/users/{id}/push-subscriptions,
// as a page does with its browser's PushSubscription.
func (p *pushService) subscribe(t *testing.T, notification, user string) {
	t.Helper()
	k, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	auth := make([]byte, 16)
	_, _ = rand.Read(auth)
	b64 := base64.RawURLEncoding
	body := fmt.Sprintf(`{"endpoint":%q,"expirationTime":null,"keys":{"p256dh":%q,"auth":%q}}`,
		p.srv.URL+"/push/"+user, b64.EncodeToString(k.PublicKey().Bytes()), b64.EncodeToString(auth))
	req, err := http.NewRequest(http.MethodPost, "http://"+notification+"/v1/users/"+user+"/push-subscriptions", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+routingAPIKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	reply, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST /v1/users/%s/push-subscriptions = %s %s, want 201", user, resp.Status, reply)
	}
}

// checkSigned checks that push w was sent as Web Push asks: its payload
// encrypted (aes128gcm, RFC 8291) and signed for this push service by the
// VAPID key (RFC 8292).
func (p *pushService) checkSigned(t *testing.T, w webPush, vapid *ecdsa.PublicKey) {
	t.Helper()
	if w.encoding != "aes128gcm" || w.body == 0 {
		t.Errorf("push to %s: Content-Encoding %q with %d bytes, want an aes128gcm payload", w.path, w.encoding, w.body)
	}
	tok, _, ok := strings.Cut(strings.TrimPrefix(w.authorization, "vapid t="), ",")
	if !ok || !strings.HasPrefix(w.authorization, "vapid t=") {
		t.Errorf("push to %s: Authorization %q, want vapid t=…, k=…", w.path, w.authorization)
		return
	}
	_, err := jwt.Parse(tok, func(*jwt.Token) (any, error) { return vapid, nil },
		jwt.WithValidMethods([]string{"ES256"}), jwt.WithAudience(p.srv.URL), jwt.WithExpirationRequired())
	if err != nil {
		t.Errorf("push to %s: the VAPID JWT: %v", w.path, err)
	}
}

// vapidKeys returns a VAPID key pair: the key, and the public and private
// keys base64url, as NOTIFY_VAPID_PUBLIC_KEY and NOTIFY_VAPID_PRIVATE_KEY
// take them.
func vapidKeys(t *testing.T) (key *ecdsa.PrivateKey, public, private string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := key.ECDH()
	if err != nil {
		t.Fatal(err)
	}
	b64 := base64.RawURLEncoding
	return key, b64.EncodeToString(k.PublicKey().Bytes()), b64.EncodeToString(k.Bytes())
}

// edgeFrame is a frame of the edge's JSON protocol: a reply, or an event
// (a notification.created or a notification.delivered).
type edgeFrame struct {
	ID      string `json:"id"`
	OK      bool   `json:"ok"`
	Error   *struct{ Code, Message string }
	Channel string `json:"channel"`
	Event   *struct {
		ID   string `json:"id"`
		Type string `json:"type"`
		Data struct {
			// of a notification.created
			NotificationID string `json:"notification_id"`
			UserID         string `json:"user_id"`
			CauseEventID   string `json:"cause_event_id"`
			Route          string `json:"route"`
			RouteReason    string `json:"route_reason"`
			// of a notification.delivered
			Transport string `json:"transport"`
		} `json:"data"`
	} `json:"event"`
}

// edgeClient is a JSON WebSocket client of the edge.
type edgeClient struct {
	conn    *websocket.Conn
	events  chan edgeFrame
	replies chan edgeFrame
}

// dialEdge connects to the edge at addr as user, with grants (none: the
// user's own notify:user:<user> only), subscribes to each of subs, and
// then reads the frames, handing out the events and the replies apart.
func dialEdge(t *testing.T, addr, user string, grants []string, subs ...string) *edgeClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	conn, err := dialWS(ctx, t, addr, mintToken(t, routingSecret, user, grants))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range subs {
		subscribeOK(ctx, t, conn, s)
	}
	c := &edgeClient{conn: conn, events: make(chan edgeFrame, 64), replies: make(chan edgeFrame, 64)}
	go func() {
		defer close(c.events)
		for {
			_, b, err := conn.Read(context.Background())
			if err != nil {
				return
			}
			// The edge packs frames waiting together, one a line.
			for line := range strings.SplitSeq(string(b), "\n") {
				var f edgeFrame
				switch {
				case json.Unmarshal([]byte(line), &f) != nil:
					// Not ours to judge here: what the test waits for never comes.
				case f.Event != nil:
					c.events <- f
				default:
					c.replies <- f
				}
			}
		}
	}()
	return c
}

// next returns the next event the client gets, failing the test if none
// comes within 15 s.
func (c *edgeClient) next(t *testing.T) edgeFrame {
	t.Helper()
	select {
	case f, ok := <-c.events:
		if !ok {
			t.Fatal("the connection ended before the next event")
		}
		return f
	case <-time.After(15 * time.Second):
		t.Fatal("no event within 15 s")
		return edgeFrame{}
	}
}

// ack acknowledges notification id, as a page does, and waits for the
// edge's reply.
func (c *edgeClient) ack(t *testing.T, id string) {
	t.Helper()
	if err := c.conn.Write(t.Context(), websocket.MessageText, []byte(`{"action":"ack","id":"`+id+`"}`)); err != nil {
		t.Fatal(err)
	}
	if r := servicetest.Receive(t, c.replies); r.ID != id || !r.OK {
		t.Fatalf("ack %s: reply %+v, want ok", id, r)
	}
}

// notificationLog is every notification.created and notification.delivered
// on the bus, as a client subscribed to their patterns sees them: a
// pattern keeps no presence, so its client makes no user online.
type notificationLog struct {
	mu     sync.Mutex
	frames []edgeFrame
}

func watchNotifications(t *testing.T, edge string) *notificationLog {
	t.Helper()
	pats := []string{"notify:user:*", "notification:delivered"}
	c := dialEdge(t, edge, "watcher", pats, pats...)
	l := &notificationLog{}
	go func() {
		for f := range c.events {
			l.mu.Lock()
			l.frames = append(l.frames, f)
			l.mu.Unlock()
		}
	}()
	return l
}

// find waits for the first event of type typ that ok accepts.
func (l *notificationLog) find(t *testing.T, what, typ string, ok func(edgeFrame) bool) edgeFrame {
	t.Helper()
	var got edgeFrame
	servicetest.WaitFor(t, what, func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		i := slices.IndexFunc(l.frames, func(f edgeFrame) bool { return f.Event.Type == typ && ok(f) })
		if i >= 0 {
			got = l.frames[i]
		}
		return i >= 0
	})
	return got
}

// notification waits for the notification.created caused by event eventID.
func (l *notificationLog) notification(t *testing.T, eventID string) edgeFrame {
	t.Helper()
	return l.find(t, "the notification of event "+eventID, "notification.created", func(f edgeFrame) bool {
		return f.Event.Data.CauseEventID == eventID
	})
}

// Routing by presence and receipts, with every part real: the api takes
// the sign-ups and orders, the edge keeps the presence of the pages
// connected to notify:user:<id> and turns their acks into
// notification.delivered events, and the notification service routes
// each order's browser notification, pushing to a push service over TLS
// (signed with its VAPID key) and emailing through a fake SendGrid.
//
//   - ada, online and acknowledging: the page, no push, no email, even
//     once the fallback went past her deadline;
//   - cy, online and never acknowledging: the page, then a push after
//     NOTIFY_ACK_TIMEOUT, no email;
//   - bob, offline and subscribed to pushes: a push, no email;
//   - dee, offline and not subscribed: an email.
func TestRoutingThroughRealPresenceAndReceipts(t *testing.T) {
	srv := redistest.Shared(t)
	prefix := strings.TrimSuffix(redistest.Prefix(t), ":")
	rdb := srv.Client(t)
	sg := newFakeSendGrid(t)
	ps := newPushService(t)
	vapid, vapidPublic, vapidPrivate := vapidKeys(t)
	common := map[string]string{"REDIS_URL": srv.URL, "REDIS_PREFIX": prefix}
	apiHTTP, edgeHTTP, notifyHTTP := servicetest.FreeAddr(t), servicetest.FreeAddr(t), servicetest.FreeAddr(t)
	api := start(t, "api", merge(common, map[string]string{"API_HTTP_ADDR": apiHTTP, "API_GRPC_ADDR": servicetest.FreeAddr(t)}))
	edge := start(t, "edge", merge(common, map[string]string{
		"EDGE_HTTP_ADDR": edgeHTTP, "EDGE_JWT_SECRET": routingSecret, "EDGE_PRESENCE_NAMESPACES": "notify",
	}))
	notification := start(t, "notification", merge(common, map[string]string{
		"NOTIFICATION_HTTP_ADDR": notifyHTTP, "API_KEYS": routingAPIKey,
		"SENDGRID_API_KEY": "SG.test", "SENDGRID_API_URL": sg.srv.URL,
		"NOTIFY_VAPID_PUBLIC_KEY": vapidPublic, "NOTIFY_VAPID_PRIVATE_KEY": vapidPrivate,
		"NOTIFY_ACK_TIMEOUT": routingAckTimeout, "SSL_CERT_FILE": ps.certFile,
	}))
	for p, addr := range map[*process]string{api: apiHTTP, edge: edgeHTTP, notification: notifyHTTP} {
		waitReady(t, p, "http://"+addr+"/readyz")
	}
	watch := watchNotifications(t, edgeHTTP)

	emails := func(user string) int {
		sg.mu.Lock()
		defer sg.mu.Unlock()
		return sg.to[user+"@example.com"]
	}
	// emailed reports whether the browser notification of order event
	// eventID went as an email (its eventbus_key).
	emailed := func(eventID string) bool {
		sg.mu.Lock()
		defer sg.mu.Unlock()
		return sg.keys[eventID+"/order_received_browser:email"]
	}
	placeOrder := func(user, order string) (eventID string) {
		t.Helper()
		body := fmt.Sprintf(`{"order_id":%q,"user_id":%q,"total":1299,"currency":"EUR"}`, order, user)
		resp, err := http.Post("http://"+apiHTTP+"/v1/orders", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var reply struct {
			EventID string `json:"event_id"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&reply); err != nil || resp.StatusCode != http.StatusAccepted || reply.EventID == "" {
			t.Fatalf("POST /v1/orders = %s, %v; want 202 with the event id", resp.Status, err)
		}
		return reply.EventID
	}
	// routeState is the notification's route as the service recorded it.
	routeState := func(id string) map[string]string {
		t.Helper()
		m, err := rdb.HGetAll(t.Context(), prefix+":notification:route:"+id).Result()
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	awaited := func(id string) bool {
		t.Helper()
		err := rdb.ZScore(t.Context(), prefix+":notification:acks", id).Err()
		if err != nil && !errors.Is(err, redis.Nil) {
			t.Fatal(err)
		}
		return err == nil
	}
	routes := func(route, reason string) float64 {
		t.Helper()
		return servicetest.Count(t, "http://"+notifyHTTP, `eventbus_notification_routes_total{reason="`+reason+`",route="`+route+`"}`)
	}
	checkRoute := func(n edgeFrame, user, route, reason string) {
		t.Helper()
		if d := n.Event.Data; d.UserID != user || d.Route != route || d.RouteReason != reason || n.Channel != "notify:user:"+user {
			t.Fatalf("%s's notification = %+v on %s, want route %s (%s) on notify:user:%s", user, d, n.Channel, route, reason, user)
		}
	}

	// Every user signs up (the contact their emails go to) and gets the
	// welcome email; all but dee subscribe to pushes.
	users := []string{"ada", "cy", "bob", "dee"}
	for _, u := range users {
		postAccepted(t, apiHTTP, "/v1/users", fmt.Sprintf(`{"user_id":%q,"email":"%s@example.com","name":%q}`, u, u, u))
	}
	servicetest.WaitFor(t, "every welcome email", func() bool {
		for _, u := range users {
			if emails(u) != 1 {
				return false
			}
		}
		return true
	})
	for _, u := range []string{"ada", "cy", "bob"} {
		ps.subscribe(t, notifyHTTP, u)
	}
	// ada and cy are online: a page each on their notify:user:<id>, in
	// the presence the notification service reads once the api shows it.
	ada := dialEdge(t, edgeHTTP, "ada", nil, "notify:user:ada")
	cy := dialEdge(t, edgeHTTP, "cy", nil, "notify:user:cy")
	servicetest.WaitFor(t, "ada and cy online", func() bool {
		return slices.Equal(presenceOf(t, apiHTTP, "notify:user:ada"), []string{"ada/ws"}) &&
			slices.Equal(presenceOf(t, apiHTTP, "notify:user:cy"), []string{"cy/ws"})
	})
	for _, u := range []string{"bob", "dee"} {
		if got := presenceOf(t, apiHTTP, "notify:user:"+u); len(got) != 0 {
			t.Fatalf("presence of notify:user:%s = %v, want none: the watcher's patterns count for no one", u, got)
		}
	}

	// bob, offline and subscribed: a push, no email.
	bobOrder := placeOrder("bob", "o-bob")
	bobNote := watch.notification(t, bobOrder)
	checkRoute(bobNote, "bob", "push", "offline_push_subscribed")
	servicetest.WaitFor(t, "bob's push", func() bool { return ps.withTopic(bobNote.Event.ID) == 1 })
	// A user's events are handled in order, each with all its sends: once
	// the next one's notification is out, the first's sends are done.
	watch.notification(t, placeOrder("bob", "o-bob-barrier"))
	if got := ps.withTopic(bobNote.Event.ID); got != 1 {
		t.Errorf("bob's notification was pushed %d times, want once", got)
	}
	if pushes := ps.to("bob"); len(pushes) == 0 || pushes[0].topic != strings.TrimPrefix(bobNote.Event.ID, "n-") {
		t.Errorf("pushes to bob's endpoint = %+v, want his notification's first", pushes)
	} else {
		ps.checkSigned(t, pushes[0], &vapid.PublicKey)
	}
	if emailed(bobOrder) || emails("bob") != 1 {
		t.Errorf("bob got %d emails, want the welcome only: pushed, not emailed", emails("bob"))
	}

	// dee, offline and not subscribed: an email.
	deeOrder := placeOrder("dee", "o-dee")
	deeNote := watch.notification(t, deeOrder)
	checkRoute(deeNote, "dee", "email", "offline_no_push_subscription")
	servicetest.WaitFor(t, "dee's email", func() bool { return emailed(deeOrder) })
	if got := emails("dee"); got != 2 {
		t.Errorf("dee got %d emails, want 2: the welcome and her notification", got)
	}
	if got := ps.withTopic(deeNote.Event.ID); got != 0 {
		t.Errorf("dee's notification was pushed %d times, want none", got)
	}

	// ada, online: the page, which she acknowledges.
	adaOrder := placeOrder("ada", "o-ada")
	adaNote := ada.next(t)
	checkRoute(adaNote, "ada", "realtime", "online")
	if adaNote.Event.Type != "notification.created" || adaNote.Event.Data.CauseEventID != adaOrder || adaNote.Event.ID != adaNote.Event.Data.NotificationID {
		t.Fatalf("ada's page got %+v, want the notification of her order", adaNote.Event)
	}
	ada.ack(t, adaNote.Event.ID)
	receipt := watch.find(t, "ada's receipt", "notification.delivered", func(f edgeFrame) bool {
		return f.Event.Data.NotificationID == adaNote.Event.ID
	})
	if d := receipt.Event.Data; d.UserID != "ada" || d.Transport != "ws" {
		t.Errorf("ada's receipt = %+v, want user ada over ws", d)
	}
	servicetest.WaitFor(t, "ada's receipt recorded, her notification no longer awaited", func() bool {
		return routeState(adaNote.Event.ID)["delivered"] != "" && !awaited(adaNote.Event.ID)
	})

	// cy, online but never acknowledging: the page, then a push after the
	// ack timeout. Her notification is awaited from after ada's was
	// acknowledged, with the same timeout: its fallback shows that the
	// fallback poller went past ada's deadline too.
	cyOrder := placeOrder("cy", "o-cy")
	cyNote := cy.next(t)
	checkRoute(cyNote, "cy", "realtime", "online")
	if cyNote.Event.Data.CauseEventID != cyOrder {
		t.Fatalf("cy's page got %+v, want the notification of her order", cyNote.Event)
	}
	servicetest.WaitFor(t, "cy's fallback done with", func() bool {
		st := routeState(cyNote.Event.ID)
		return st["fallback"] != "" && !awaited(cyNote.Event.ID)
	})
	if st := routeState(cyNote.Event.ID); st["fallback"] != "push" || st["fallback_reason"] != "ack_timeout_push_subscribed" || st["delivered"] != "" {
		t.Errorf("cy's route state = %v, want a fallback to push (ack_timeout_push_subscribed), never delivered", st)
	}
	if pushes := ps.to("cy"); len(pushes) != 1 || pushes[0].topic != strings.TrimPrefix(cyNote.Event.ID, "n-") {
		t.Errorf("pushes to cy = %+v, want her notification once", pushes)
	} else {
		ps.checkSigned(t, pushes[0], &vapid.PublicKey)
	}
	if emailed(cyOrder) || emails("cy") != 1 {
		t.Errorf("cy got %d emails, want the welcome only: pushed, not emailed", emails("cy"))
	}

	// ada: neither push nor email, and no fallback chosen.
	if st := routeState(adaNote.Event.ID); st["route"] != "realtime" || st["fallback"] != "" {
		t.Errorf("ada's route state = %v, want realtime, delivered, no fallback", st)
	}
	if got := len(ps.to("ada")); got != 0 {
		t.Errorf("ada got %d pushes, want none: she acknowledged the page", got)
	}
	if emailed(adaOrder) || emails("ada") != 1 {
		t.Errorf("ada got %d emails, want the welcome only", emails("ada"))
	}

	for _, c := range []struct {
		route, reason string
		want          float64
	}{
		{"realtime", "online", 2},
		{"push", "offline_push_subscribed", 2}, // bob's notification and his barrier
		{"email", "offline_no_push_subscription", 1},
		{"push", "ack_timeout_push_subscribed", 1}, // cy only
		{"email", "ack_timeout_no_push_subscription", 0},
	} {
		if got := routes(c.route, c.reason); got != c.want {
			t.Errorf("routes_total{%s,%s} = %v, want %v", c.route, c.reason, got, c.want)
		}
	}
	if got := servicetest.Count(t, "http://"+notifyHTTP, `eventbus_notification_receipts_total{result="delivered"}`); got != 1 {
		t.Errorf("receipts_total{delivered} = %v, want 1 (ada's)", got)
	}
}
