package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/coder/websocket"
	paho3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/golang-jwt/jwt/v5"

	"github.com/eventbus-suite/eventbus/pkg/browsertest"
	"github.com/eventbus-suite/eventbus/pkg/bus/redisbus"
	"github.com/eventbus-suite/eventbus/pkg/envelope"
	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
	"github.com/eventbus-suite/eventbus/pkg/token"
)

// MQTT.js from npm, over ws://…/mqtt, shares the bus with everything else,
// in 3.1.1 and in 5.0: it receives what the API publishes under order/#
// and user/+, and the telemetry it publishes on sensor/temp reaches the
// logger's tail and a JSON WebSocket client subscribed to sensor:*.
func TestMQTTJSSharesTheBus(t *testing.T) {
	needJSClient(t, "node_modules/mqtt")
	apiHTTP, edgeHTTP, logged := startTelemetryBus(t, nil)

	for _, version := range []string{"4", "5"} {
		t.Run("v"+version, func(t *testing.T) {
			user := "mqtt" + version
			tok, err := token.IssueClaims([]byte(mqttSecret), token.Claims{Channels: []string{"order:*", "order", "user:*"}, Publish: []string{"sensor:*"},
				RegisteredClaims: jwt.RegisteredClaims{Subject: user}}, time.Hour, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			browser := dialJSON(t, edgeHTTP, "sensor:*")
			device := servicetest.StartNode(t, "../clients/js/integration/mqtt.mjs", "URL=ws://"+edgeHTTP+"/mqtt",
				"TOKEN="+tok, "CLIENT_ID=device-"+version, "VERSION="+version, "FILTERS=order/#:1,user/+:0")
			var granted []struct {
				Topic string
				QoS   int
			}
			if err := json.Unmarshal(device.Until("subscribed"), &granted); err != nil || len(granted) != 2 || granted[0].QoS != 1 || granted[1].QoS != 0 {
				t.Fatalf("MQTT.js subscribed %+v (%v), want order/# at QoS 1 and user/+ at QoS 0", granted, err)
			}

			postAccepted(t, apiHTTP, "/v1/users", fmt.Sprintf(`{"user_id":%q,"email":"ada@example.com","name":"Ada"}`, user))
			postAccepted(t, apiHTTP, "/v1/orders", fmt.Sprintf(`{"user_id":%q,"total":1299,"currency":"EUR"}`, user))
			var got []string
			for range 2 {
				var m struct {
					Topic   string
					QoS     int
					Payload struct{ Type, Subject string }
				}
				if err := json.Unmarshal(device.Until("message"), &m); err != nil {
					t.Fatal(err)
				}
				got = append(got, fmt.Sprintf("%s %d %s", m.Topic, m.QoS, m.Payload.Type))
			}
			slices.Sort(got)
			if want := []string{"order/placed 1 order.placed", "user/created 0 user.created"}; !slices.Equal(got, want) {
				t.Errorf("MQTT.js received %q, want %q", got, want)
			}

			device.Send(`publish sensor/temp {"celsius":21.5,"device":"` + user + `"}`)
			if topic := device.Until("published"); string(topic) != `"sensor/temp"` {
				t.Fatalf("published %s", topic)
			}
			var f struct {
				Channel string
				Event   struct {
					Type, Source string
					Data         struct{ Device string }
				}
			}
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			_, b, err := browser.Read(ctx)
			if err != nil || json.Unmarshal(b, &f) != nil {
				t.Fatalf("the JSON client read %s, %v", b, err)
			}
			if f.Channel != "sensor:temp" || f.Event.Type != "sensor.temp" || f.Event.Source != "mqtt:device-"+version || f.Event.Data.Device != user {
				t.Errorf("the JSON client got %s, want the telemetry of %s", b, user)
			}
			waitTailed(t, logged, `"type":"sensor.temp"`, `"device":"`+user+`"`)
		})
	}
}

// mqttSecret signs the tokens of the MQTT tests' edges.
const mqttSecret = "e2e-mqtt-secret-0123456789"

// startTelemetryBus starts the api, an edge (with edgeEnv, tokens signed by
// mqttSecret) and the logger, and follows the logger's tail of sensor:*;
// it returns the api's and the edge's addresses and the tail's lines.
func startTelemetryBus(t *testing.T, edgeEnv map[string]string) (apiHTTP, edgeHTTP string, logged <-chan string) {
	t.Helper()
	srv := redistest.Shared(t)
	prefix := strings.TrimSuffix(redistest.Prefix(t), ":")
	apiHTTP, apiGRPC, edgeHTTP, loggerHTTP := servicetest.FreeAddr(t), servicetest.FreeAddr(t), servicetest.FreeAddr(t), servicetest.FreeAddr(t)
	common := map[string]string{"REDIS_URL": srv.URL, "REDIS_PREFIX": prefix}
	api := start(t, "api", merge(common, map[string]string{"API_HTTP_ADDR": apiHTTP, "API_GRPC_ADDR": apiGRPC}))
	edge := start(t, "edge", merge(common, map[string]string{"EDGE_HTTP_ADDR": edgeHTTP, "EDGE_JWT_SECRET": mqttSecret}, edgeEnv))
	logger := start(t, "logger", merge(common, map[string]string{"LOGGER_HTTP_ADDR": loggerHTTP, "LOGGER_DIR": t.TempDir(), "LOGGER_STDOUT": "false"}))
	for p, addr := range map[*process]string{api: apiHTTP, edge: edgeHTTP, logger: loggerHTTP} {
		waitReady(t, p, "http://"+addr+"/readyz")
	}
	tail := exec.Command(filepath.Join(bin, "eventbus"), "tail", "--json", "-n", "10", "--logger", "http://"+loggerHTTP, "sensor:*")
	logged = linesOf(t, tail)
	if err := tail.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tail.Process.Kill(); _ = tail.Wait() })
	return apiHTTP, edgeHTTP, logged
}

// waitTailed reads the tail's lines until one holds every one of want,
// failing the test if none does within 10 s.
func waitTailed(t *testing.T, logged <-chan string, want ...string) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case l := <-logged:
			if !slices.ContainsFunc(want, func(w string) bool { return !strings.Contains(l, w) }) {
				return
			}
		case <-timeout:
			t.Fatalf("the logger's tail did not show %q", want)
		}
	}
}

// dialJSON connects a JSON WebSocket client to the edge at addr,
// subscribed to pattern with a token signed by mqttSecret.
func dialJSON(t *testing.T, addr, pattern string) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	conn, err := dialWS(ctx, t, addr, mintToken(t, mqttSecret, "browser", []string{pattern}))
	if err != nil {
		t.Fatal(err)
	}
	subscribeOK(ctx, t, conn, pattern)
	return conn
}

// A persistent session survives its edge being killed (SIGKILL): paho's
// 3.1.1 client, reconnected to a new edge, is sent everything from the
// last position the killed edge saved (at most a second's worth again,
// never a gap), then what was published while no edge ran.
func TestMQTTSessionSurvivesAKilledEdge(t *testing.T) {
	srv := redistest.Shared(t)
	prefix := strings.TrimSuffix(redistest.Prefix(t), ":")
	env := map[string]string{"REDIS_URL": srv.URL, "REDIS_PREFIX": prefix, "EDGE_JWT_SECRET": mqttSecret}
	addrs, edges := startEdges(t, 1, env)
	tok, err := token.Issue([]byte(mqttSecret), "13", []string{"meter:*"}, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 100)
	connect := func(addr string) paho3.Client {
		t.Helper()
		opts := paho3.NewClientOptions().AddBroker("ws://" + addr + "/mqtt").SetClientID("meter-k").SetUsername("device").SetPassword(tok).
			SetProtocolVersion(4).SetCleanSession(false).SetAutoReconnect(false).SetConnectRetry(false).
			SetDefaultPublishHandler(func(_ paho3.Client, m paho3.Message) {
				var ev struct{ Subject string }
				_ = json.Unmarshal(m.Payload(), &ev)
				got <- ev.Subject
			})
		c := paho3.NewClient(opts)
		if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("connect: %v", tok.Error())
		}
		t.Cleanup(func() { c.Disconnect(0) })
		return c
	}
	c := connect(addrs[0])
	if tok := c.Subscribe("meter/+", 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	b, err := redisbus.New(srv.Client(t), redisbus.Options{Prefix: prefix + ":", HistoryMaxLen: 10_000})
	if err != nil {
		t.Fatal(err)
	}
	publish := func(from, to int) {
		t.Helper()
		for i := from; i < to; i++ {
			env := &envelope.Envelope{Type: "meter.reading", Subject: fmt.Sprint(i)}
			if err := envelope.Fill(env, "e2e", time.Now()); err != nil {
				t.Fatal(err)
			}
			payload, _ := envelope.Marshal(env)
			if _, err := b.Publish(t.Context(), env.GetChannel(), payload); err != nil {
				t.Fatal(err)
			}
		}
	}
	publish(0, 20)
	for i := range 20 {
		if s := servicetest.Receive(t, got); s != fmt.Sprint(i) {
			t.Fatalf("live: %s, want %d", s, i)
		}
	}
	victim := edges[addrs[0]]
	if err := victim.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-victim.done
	publish(20, 30) // while no edge runs
	addrs, _ = startEdges(t, 1, env)
	connect(addrs[0])
	// Again from wherever the killed edge last saved, then on to 29 in order.
	first := servicetest.Receive(t, got)
	n, err := strconv.Atoi(first)
	if err != nil || n > 20 {
		t.Fatalf("the resumed session began at %s, want at most 20: nothing published while it was away may be missed", first)
	}
	for want := n + 1; want < 30; want++ {
		if s := servicetest.Receive(t, got); s != fmt.Sprint(want) {
			t.Fatalf("after %d the resumed session got %s, want %d", want-1, s, want)
		}
	}
}

// The same from headless Chromium: the demo page's MQTT tab (MQTT.js)
// subscribes to order/# and user/+, receives what the API publishes, and
// the telemetry it publishes reaches the logger's tail and a JSON
// WebSocket client subscribed to sensor:*.
func TestMQTTJSInChromiumSharesTheBus(t *testing.T) {
	apiHTTP, edgeHTTP, logged := startTelemetryBus(t, map[string]string{"EDGE_DEMO": "true"})
	listener := dialJSON(t, edgeHTTP, "sensor:*")

	browser := browsertest.Open(t, "http://"+edgeHTTP+"/?user=77&tab=mqtt&filters="+url.QueryEscape("order/#,user/+"))
	ctx, cancel := context.WithTimeout(browser, 60*time.Second)
	defer cancel()
	step := func(what string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, actions...); err != nil {
			t.Fatalf("%s: %v; %s", what, err, browsertest.PageState(t, browser, "#mqtt-status"))
		}
	}
	step("MQTT.js subscribing", chromedp.Poll[chromedp.Void](
		`document.querySelector("#mqtt-subscribed").textContent === "subscribed to order/# at QoS 1; subscribed to user/+ at QoS 1"`))
	postAccepted(t, apiHTTP, "/v1/users", `{"user_id":"77","email":"grace@example.com","name":"Grace"}`)
	postAccepted(t, apiHTTP, "/v1/orders", `{"user_id":"77","total":500,"currency":"EUR"}`)
	step("the API's events in the MQTT feed",
		chromedp.WaitVisible(chromedp.CSS(`#mqtt-feed li[data-topic="user/created"][data-type="user.created"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#mqtt-feed li[data-topic="order/placed"][data-type="order.placed"]`)))

	step("publishing telemetry", chromedp.Click(chromedp.CSS(`#mqtt-publish`)),
		chromedp.Poll[chromedp.Void](`document.querySelector("#mqtt-result").textContent.startsWith("published on sensor/temp")`))
	rctx, rcancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer rcancel()
	_, b, err := listener.Read(rctx)
	if err != nil || !strings.Contains(string(b), `"type":"sensor.temp"`) || !strings.Contains(string(b), `"source":"mqtt:demo-77-`) {
		t.Fatalf("the JSON client read %s, %v; want the page's telemetry", b, err)
	}
	waitTailed(t, logged, `"type":"sensor.temp"`, `"source":"mqtt:demo-77-`)
}

// The repository's nginx.conf passes MQTT over WebSocket through to the
// edges at /mqtt, as compose and Kubernetes put it in front of them.
func TestMQTTThroughNginx(t *testing.T) {
	srv := redistest.Shared(t)
	prefix := strings.TrimSuffix(redistest.Prefix(t), ":")
	addrs, _ := startEdges(t, 2, map[string]string{"REDIS_URL": srv.URL, "REDIS_PREFIX": prefix, "EDGE_JWT_SECRET": mqttSecret})
	front, _ := startNginx(t, addrs...)
	tok, err := token.Issue([]byte(mqttSecret), "15", []string{"nx:*"}, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 1)
	opts := paho3.NewClientOptions().AddBroker("ws://" + front + "/mqtt").SetClientID("through-nginx").SetUsername("device").SetPassword(tok).
		SetProtocolVersion(4).SetAutoReconnect(false).SetConnectRetry(false)
	c := paho3.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect through nginx: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(0) })
	if tok := c.Subscribe("nx/+", 0, func(_ paho3.Client, m paho3.Message) { got <- m.Topic() }); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	publishOnBus(t, srv, prefix, "nx.event")
	if topic := servicetest.Receive(t, got); topic != "nx/event" {
		t.Errorf("got %s, want nx/event", topic)
	}
}

// The same over TCP: nginx's stream proxy hands each MQTT connection to an
// edge behind a PROXY protocol header, which the edges, trusting nginx,
// read for the client's address; an edge that did not would read the
// header as a malformed packet and refuse the client.
func TestMQTTOverTCPThroughNginx(t *testing.T) {
	srv := redistest.Shared(t)
	prefix := strings.TrimSuffix(redistest.Prefix(t), ":")
	var httpAddrs, mqttAddrs []string
	for range 2 {
		h, m := servicetest.FreeAddr(t), servicetest.FreeAddr(t)
		p := start(t, "edge", map[string]string{"REDIS_URL": srv.URL, "REDIS_PREFIX": prefix, "EDGE_JWT_SECRET": mqttSecret,
			"EDGE_HTTP_ADDR": h, "EDGE_MQTT_ADDR": m, "EDGE_TRUSTED_PROXIES": "127.0.0.1"})
		waitReady(t, p, "http://"+h+"/readyz")
		httpAddrs, mqttAddrs = append(httpAddrs, h), append(mqttAddrs, m)
	}
	_, front, _ := startNginxFor(t, httpAddrs, mqttAddrs)
	tok, err := token.Issue([]byte(mqttSecret), "16", []string{"nx:*"}, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 2)
	var clients []paho3.Client
	for i := range 2 { // two connections: nginx takes turns between the edges
		opts := paho3.NewClientOptions().AddBroker("tcp://" + front).SetClientID(fmt.Sprint("tcp-through-nginx-", i)).
			SetUsername("device").SetPassword(tok).SetProtocolVersion(4).SetAutoReconnect(false).SetConnectRetry(false)
		c := paho3.NewClient(opts)
		if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("connect over TCP through nginx: %v", tok.Error())
		}
		t.Cleanup(func() { c.Disconnect(0) })
		if tok := c.Subscribe("nx/+", 0, func(_ paho3.Client, m paho3.Message) { got <- m.Topic() }); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("subscribe: %v", tok.Error())
		}
		clients = append(clients, c)
	}
	publishOnBus(t, srv, prefix, "nx.tcp")
	for range len(clients) {
		if topic := servicetest.Receive(t, got); topic != "nx/tcp" {
			t.Errorf("got %s, want nx/tcp", topic)
		}
	}
}

// publishOnBus publishes an event of type typ straight on the bus of
// prefix, as the api would.
func publishOnBus(t *testing.T, srv *redistest.Server, prefix, typ string) {
	t.Helper()
	b, err := redisbus.New(srv.Client(t), redisbus.Options{Prefix: prefix + ":"})
	if err != nil {
		t.Fatal(err)
	}
	env := &envelope.Envelope{Type: typ}
	if err := envelope.Fill(env, "e2e", time.Now()); err != nil {
		t.Fatal(err)
	}
	payload, _ := envelope.Marshal(env)
	if _, err := b.Publish(t.Context(), env.GetChannel(), payload); err != nil {
		t.Fatal(err)
	}
}
