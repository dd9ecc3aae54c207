package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	pahopackets "github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"

	"github.com/eventbus-suite/eventbus/pkg/browsertest"
)

// mqttMessage is what one end of a PUBLISH saw: its topic, QoS, payload
// and MQTT 5 properties. Its JSON is that of the test page's messages.
type mqttMessage struct {
	Topic           string         `json:"topic"`
	QoS             byte           `json:"qos"`
	Retain          bool           `json:"retain"`
	Payload         []byte         `json:"payload"`
	ContentType     string         `json:"contentType"`
	ResponseTopic   string         `json:"responseTopic"`
	CorrelationData []byte         `json:"correlationData"`
	PayloadFormat   *byte          `json:"payloadFormat"` // nil: the property was not sent
	User            []userProperty `json:"user"`
}

type userProperty struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

// fromPaho is p in the terms of mqttMessage.
func fromPaho(p *paho.Publish) mqttMessage {
	m := mqttMessage{Topic: p.Topic, QoS: p.QoS, Retain: p.Retain, Payload: p.Payload}
	if pr := p.Properties; pr != nil {
		m.ContentType, m.ResponseTopic, m.CorrelationData, m.PayloadFormat = pr.ContentType, pr.ResponseTopic, pr.CorrelationData, pr.PayloadFormat
		for _, u := range pr.User {
			m.User = append(m.User, userProperty{u.Key, u.Value})
		}
	}
	return m
}

// differences names each field in which got and want differ, with both
// values.
func (got mqttMessage) differences(want mqttMessage) []string {
	var d []string
	g, w := reflect.ValueOf(got), reflect.ValueOf(want)
	for i := range g.NumField() {
		if !reflect.DeepEqual(g.Field(i).Interface(), w.Field(i).Interface()) {
			d = append(d, fmt.Sprintf("%s = %s, want %s", g.Type().Field(i).Name, show(g.Field(i).Interface()), show(w.Field(i).Interface())))
		}
	}
	return d
}

// show is v as a failure message says it: bytes in hex.
func show(v any) string {
	switch v := v.(type) {
	case []byte:
		return fmt.Sprintf("[% x]", v)
	case *byte:
		if v == nil {
			return "none"
		}
		return fmt.Sprint(*v)
	case string:
		return fmt.Sprintf("%q", v)
	}
	return fmt.Sprintf("%+v", v)
}

// grouped is user as MQTT.js holds it, an object: every value of a key at
// the key's first place, in their order. MQTT.js cannot see or send a
// repeated key's values with another key between them.
func grouped(user []userProperty) []userProperty {
	var keys []string
	values := map[string][]string{}
	for _, u := range user {
		if _, ok := values[u.Key]; !ok {
			keys = append(keys, u.Key)
		}
		values[u.Key] = append(values[u.Key], u.Value)
	}
	var g []userProperty
	for _, k := range keys {
		for _, v := range values[k] {
			g = append(g, userProperty{k, v})
		}
	}
	return g
}

// Device to browser and back, byte for byte: paho's MQTT 5 client over
// TCP and over TLS publishes a binary payload (0x00, 0xff, bytes that are
// no UTF-8) with content type, response topic, correlation data and user
// properties (one key repeated, one value empty, one not ASCII), and
// MQTT.js in Chromium, over the edge's /mqtt, receives the same bytes and
// properties; what MQTT.js publishes so reaches a device over TCP and one
// over TLS. The page comes from a server of its own, as an application's
// would, allowed by EDGE_ALLOWED_ORIGINS, and runs the MQTT.js the edge
// serves as /mqtt.js.
func TestMQTTBrowserBytesAndProperties(t *testing.T) {
	t.Parallel()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		http.ServeFile(w, r, "testdata/mqtt_browser.html")
	})
	mux.HandleFunc("GET /mqtt.js", func(w http.ResponseWriter, r *http.Request) {
		http.ServeFile(w, r, "internal/web/static/mqtt.js")
	})
	site := httptest.NewServer(mux)
	t.Cleanup(site.Close)
	siteURL, err := url.Parse(site.URL)
	if err != nil {
		t.Fatal(err)
	}
	e := startTLSEdge(t, map[string]string{"EDGE_ALLOWED_ORIGINS": siteURL.Host})

	// The devices, subscribed to what the browser publishes.
	type device struct {
		name string
		c    *paho.Client
		got  chan *paho.Publish
	}
	var devices []device
	for _, name := range []string{"tcp", "tls"} {
		var nc net.Conn
		if name == "tls" {
			nc, err = tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", e.mqtts, &tls.Config{RootCAs: e.pool})
		} else {
			nc, err = net.DialTimeout("tcp", e.mqtt, 10*time.Second)
		}
		if err != nil {
			t.Fatalf("dial the %s listener: %v", name, err)
		}
		got := make(chan *paho.Publish, 4)
		c, _ := e.pahoV5On(t, pahoConn(nc), paho.ClientConfig{OnPublishReceived: []func(paho.PublishReceived) (bool, error){
			func(r paho.PublishReceived) (bool, error) { got <- r.Packet; return true, nil },
		}}, mintMQTT(t, "dev-"+name, []string{"dev:down"}, []string{"dev:up:*"}), paho.Connect{ClientID: "device-" + name, KeepAlive: 30, CleanStart: true})
		if _, err := c.Subscribe(t.Context(), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "dev/down", QoS: 1}}}); err != nil {
			t.Fatalf("device %s: subscribe: %v", name, err)
		}
		devices = append(devices, device{name, c, got})
	}

	browser := browsertest.Open(t, site.URL)
	ctx, cancel := context.WithTimeout(browser, 60*time.Second)
	defer cancel()
	run := func(what, js string) {
		t.Helper()
		if _, err := chromedp.Run(ctx, chromedp.Evaluate[chromedp.Void](js, chromedp.EvalAwaitPromise)); err != nil {
			t.Fatalf("%s: %v; %s", what, err, browsertest.PageState(t, browser, "#status"))
		}
	}
	wire := browserWire(t, ctx)
	if err := chromedp.Do(ctx, chromedp.Poll[chromedp.Void](`window.page !== undefined`)); err != nil {
		t.Fatalf("wait for MQTT.js to load: %v; %s", err, browsertest.PageState(t, browser, "#status"))
	}
	wsURL := strings.Replace(e.base, "http", "ws", 1) + "/mqtt"
	tok := mintMQTT(t, "browser", []string{"dev:up:*"}, []string{"dev:down"})
	run("connect MQTT.js and subscribe", fmt.Sprintf(`page.connect(%q, %q, ["dev/up/+"]).then((qos) => {
		if (qos.length !== 1 || qos[0] !== 1) throw new Error("granted QoS " + JSON.stringify(qos) + ", want [1]");
	})`, wsURL, tok))

	// Every byte value, after bytes that are no UTF-8 (a lone continuation,
	// an overlong form, a surrogate, a 5-byte form, 0xfe and 0xff).
	payload := []byte{0x00, 0xff, 0x80, 0xc0, 0xaf, 0xed, 0xa0, 0x80, 0xf8, 0x88, 0x80, 0x80, 0x80, 0xfe}
	for b := range 256 {
		payload = append(payload, byte(b))
	}
	user := []userProperty{{"unit", "celsius"}, {"site", "Zürich ☃"}, {"unit", "kelvin"}, {"empty", ""}}
	sent := func(topic, responseTopic string) mqttMessage {
		return mqttMessage{Topic: topic, QoS: 1, Payload: payload, ContentType: "application/x-reading; v=2",
			ResponseTopic: responseTopic, CorrelationData: []byte{0x00, 'r', 0xff, 0x01}, User: user}
	}

	// Device to browser.
	for _, d := range devices {
		m := sent("dev/up/"+d.name, "dev/down")
		pp := &paho.Publish{Topic: m.Topic, QoS: m.QoS, Payload: m.Payload, Properties: &paho.PublishProperties{
			ContentType: m.ContentType, ResponseTopic: m.ResponseTopic, CorrelationData: m.CorrelationData}}
		for _, u := range m.User {
			pp.Properties.User = append(pp.Properties.User, paho.UserProperty{Key: u.Key, Value: u.Value})
		}
		if _, err := d.c.Publish(t.Context(), pp); err != nil {
			t.Fatalf("device %s: publish: %v", d.name, err)
		}
	}
	// What reached the browser on the wire, user properties in the order the
	// devices sent them.
	for _, p := range wire(2) {
		for _, diff := range fromPaho(p).differences(sent(p.Topic, "dev/down")) {
			t.Errorf("the browser's socket got on %s: %s", p.Topic, diff)
		}
	}
	// What MQTT.js made of it.
	got, err := chromedp.Run(ctx, chromedp.Poll[[]mqttMessage](`page.received.length >= 2 && page.received`))
	if err != nil {
		t.Fatalf("wait for the browser to receive both messages: %v; %s", err, browsertest.PageState(t, browser, "#status"))
	}
	if len(got) != 2 {
		t.Errorf("the browser received %d messages, want 2", len(got))
	}
	for _, d := range devices {
		want := sent("dev/up/"+d.name, "dev/down")
		want.User = grouped(want.User)
		i := slices.IndexFunc(got, func(m mqttMessage) bool { return m.Topic == want.Topic })
		if i < 0 {
			t.Errorf("the browser received nothing on %s", want.Topic)
			continue
		}
		for _, diff := range got[i].differences(want) {
			t.Errorf("device over %s to MQTT.js: %s", strings.ToUpper(d.name), diff)
		}
	}

	// Browser to device.
	fromBrowser := sent("dev/down", "dev/up/browser")
	arg, err := json.Marshal(fromBrowser)
	if err != nil {
		t.Fatal(err)
	}
	run("publish from MQTT.js", fmt.Sprintf(`page.publish(%s)`, arg))
	want := fromBrowser
	want.User = grouped(want.User)
	for _, d := range devices {
		var p *paho.Publish
		select {
		case p = <-d.got:
		case <-ctx.Done():
			t.Fatalf("device %s received nothing from the browser", d.name)
		}
		for _, diff := range fromPaho(p).differences(want) {
			t.Errorf("MQTT.js to device over %s: %s", strings.ToUpper(d.name), diff)
		}
	}
}

// browserWire watches, through the DevTools protocol, the binary frames
// the browser of ctx receives on its WebSocket (the page opens one, to
// /mqtt) from now on. The func it returns waits until they hold n
// PUBLISH packets, then returns the first n, decoded as they came on the
// wire: a frame may hold several packets, or part of one.
func browserWire(t *testing.T, ctx context.Context) func(n int) []*paho.Publish {
	t.Helper()
	var (
		mu     sync.Mutex
		stream []byte
		more   = make(chan struct{}, 1)
	)
	err := chromedp.Listen(ctx, func(ev any) {
		if f, ok := ev.(*network.EventWebSocketFrameReceived); ok && f.Response.Opcode == 2 {
			mu.Lock()
			stream = append(stream, f.Response.PayloadData...)
			mu.Unlock()
			select {
			case more <- struct{}{}:
			default:
			}
		}
	})
	if err != nil {
		t.Fatalf("watch the browser's WebSocket: %v", err)
	}
	return func(n int) []*paho.Publish {
		t.Helper()
		var kinds []string
		for {
			mu.Lock()
			r := bytes.NewReader(bytes.Clone(stream))
			mu.Unlock()
			var pubs []*paho.Publish
			kinds = kinds[:0]
			// A packet cut short by the end of what came so far ends the
			// loop: its rest is still on its way.
			for cp, err := pahopackets.ReadPacket(r); err == nil && len(pubs) < n; cp, err = pahopackets.ReadPacket(r) {
				kinds = append(kinds, cp.PacketType())
				if p, ok := cp.Content.(*pahopackets.Publish); ok {
					pubs = append(pubs, paho.PublishFromPacketPublish(p))
				}
			}
			if len(pubs) == n {
				return pubs
			}
			select {
			case <-more:
			case <-ctx.Done():
				t.Fatalf("the browser's WebSocket brought %v, want %d PUBLISH packets", kinds, n)
			}
		}
	}
}
