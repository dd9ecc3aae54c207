package config

import (
	"strings"
	"testing"
	"time"
)

func TestSendQueueMaxDelay(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name    string
		value   string
		want    time.Duration
		refused bool
	}{
		{name: "unset", value: "", want: DefaultSendQueueMaxDelay},
		{name: "no bound", value: "0", want: 0},
		{name: "a duration", value: "250ms", want: 250 * time.Millisecond},
		{name: "the least", value: "10ms", want: 10 * time.Millisecond},
		{name: "below the least", value: "5ms", refused: true},
		{name: "negative", value: "-1s", refused: true},
		{name: "no unit", value: "100", refused: true},
		{name: "not a duration", value: "soon", refused: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			env := map[string]string{"EDGE_JWT_SECRET": strings.Repeat("k", 32), "EDGE_SEND_QUEUE_MAX_DELAY": tt.value}
			c, err := Load(func(k string) string { return env[k] })
			if tt.refused {
				if err == nil || !strings.Contains(err.Error(), "EDGE_SEND_QUEUE_MAX_DELAY") || !strings.Contains(err.Error(), "at least 10ms") {
					t.Fatalf("Load(EDGE_SEND_QUEUE_MAX_DELAY=%q) = %v, want an error naming the variable and its least value", tt.value, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Load(EDGE_SEND_QUEUE_MAX_DELAY=%q) = %v", tt.value, err)
			}
			if c.SendQueueMaxDelay != tt.want {
				t.Errorf("Load(EDGE_SEND_QUEUE_MAX_DELAY=%q).SendQueueMaxDelay = %v, want %v", tt.value, c.SendQueueMaxDelay, tt.want)
			}
		})
	}
}

func TestMQTTAddr(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name, value, want string
	}{
		{name: "unset", value: "", want: ":1883"},
		{name: "off", value: "off", want: ""},
		{name: "off in any case", value: "Off", want: ""},
		{name: "an address", value: "127.0.0.1:11883", want: "127.0.0.1:11883"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			env := map[string]string{"EDGE_JWT_SECRET": strings.Repeat("k", 32), "EDGE_MQTT_ADDR": tt.value}
			c, err := Load(func(k string) string { return env[k] })
			if err != nil {
				t.Fatalf("Load(EDGE_MQTT_ADDR=%q) = %v", tt.value, err)
			}
			if c.MQTTAddr != tt.want || c.MQTTSAddr != "" {
				t.Errorf("Load(EDGE_MQTT_ADDR=%q) = MQTTAddr %q, MQTTSAddr %q; want %q and no TLS", tt.value, c.MQTTAddr, c.MQTTSAddr, tt.want)
			}
		})
	}
}

// EDGE_MQTT_IDLE_AFTER is a positive duration, 1 s unset, or off.
func TestMQTTIdleAfter(t *testing.T) {
	t.Parallel()
	for value, want := range map[string]time.Duration{"": time.Second, "250ms": 250 * time.Millisecond, "off": 0, "OFF": 0, "0s": -1, "-1s": -1, "soon": -1} {
		env := map[string]string{"EDGE_JWT_SECRET": strings.Repeat("k", 32), "EDGE_MQTT_IDLE_AFTER": value}
		c, err := Load(func(k string) string { return env[k] })
		switch {
		case want < 0 && (err == nil || !strings.Contains(err.Error(), "EDGE_MQTT_IDLE_AFTER")):
			t.Errorf("Load(EDGE_MQTT_IDLE_AFTER=%q) = %v, want an error naming it", value, err)
		case want >= 0 && err != nil:
			t.Errorf("Load(EDGE_MQTT_IDLE_AFTER=%q) = %v, want %v", value, err, want)
		case want >= 0 && c.MQTTIdleAfter != want:
			t.Errorf("Load(EDGE_MQTT_IDLE_AFTER=%q) = %v, want %v", value, c.MQTTIdleAfter, want)
		}
	}
}

// The demo's two upstreams are checked alike, each error naming its
// variable; only with EDGE_DEMO on.
func TestDemoURLs(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name, api, notify   string
		wantAPI, wantNotify string
		refused             []string
	}{
		{name: "unset", wantAPI: "http://localhost:8080", wantNotify: "http://localhost:8083"},
		{name: "set", api: "http://api:8080", notify: "https://notification.internal:8443/base",
			wantAPI: "http://api:8080", wantNotify: "https://notification.internal:8443/base"},
		{name: "notify not absolute", notify: "notification:8083", refused: []string{"EDGE_DEMO_NOTIFY_URL"}},
		{name: "notify with a query", notify: "http://notification:8083/?x=1", refused: []string{"EDGE_DEMO_NOTIFY_URL"}},
		{name: "both bad", api: "ftp://api", notify: "http://n:8083/#f", refused: []string{"EDGE_DEMO_API_URL", "EDGE_DEMO_NOTIFY_URL"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			env := map[string]string{"EDGE_DEMO": "true", "EDGE_DEMO_API_URL": tt.api, "EDGE_DEMO_NOTIFY_URL": tt.notify}
			c, err := Load(func(k string) string { return env[k] })
			if len(tt.refused) > 0 {
				for _, name := range tt.refused {
					if err == nil || !strings.Contains(err.Error(), name) {
						t.Errorf("Load(%v) = %v, want an error naming %s", env, err, name)
					}
				}
				if err != nil && strings.Contains(err.Error(), "EDGE_DEMO_API_URL") && tt.api == "" {
					t.Errorf("Load(%v) = %v, want EDGE_DEMO_API_URL's default accepted", env, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Load(%v) = %v", env, err)
			}
			if c.DemoAPIURL != tt.wantAPI || c.DemoNotifyURL != tt.wantNotify {
				t.Errorf("Load(%v) = API %q, notify %q; want %q, %q", env, c.DemoAPIURL, c.DemoNotifyURL, tt.wantAPI, tt.wantNotify)
			}
		})
	}
}

// EDGE_MQTT_TRUSTED_PROXIES is EDGE_TRUSTED_PROXIES unless set: "none"
// trusts no PROXY header on the MQTT listeners, a list trusts its own.
func TestMQTTTrustedProxies(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name, http, mqtt string
		want             string // the prefixes, joined by spaces
		refused          bool
	}{
		{name: "neither", want: ""},
		{name: "as HTTP's", http: "10.0.0.0/8", want: "10.0.0.0/8"},
		{name: "none", http: "10.0.0.0/8", mqtt: "none", want: ""},
		{name: "none in any case", http: "10.0.0.0/8", mqtt: "None", want: ""},
		{name: "its own", http: "10.0.0.0/8", mqtt: "192.0.2.7, 198.51.100.0/24", want: "192.0.2.7/32 198.51.100.0/24"},
		{name: "not an address", mqtt: "proxy.local", refused: true},
		{name: "nothing but commas", mqtt: ",", refused: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			env := map[string]string{"EDGE_JWT_SECRET": strings.Repeat("k", 32), "EDGE_TRUSTED_PROXIES": tt.http, "EDGE_MQTT_TRUSTED_PROXIES": tt.mqtt}
			c, err := Load(func(k string) string { return env[k] })
			if tt.refused {
				if err == nil || !strings.Contains(err.Error(), "EDGE_MQTT_TRUSTED_PROXIES") {
					t.Fatalf("Load(EDGE_MQTT_TRUSTED_PROXIES=%q) = %v, want an error naming the variable", tt.mqtt, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, p := range c.MQTTTrustedProxies {
				got = append(got, p.String())
			}
			if strings.Join(got, " ") != tt.want {
				t.Errorf("MQTTTrustedProxies = %v, want %q", got, tt.want)
			}
		})
	}
}

func TestMQTTRetainedMax(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		value   string
		want    int
		refused bool
	}{
		{value: "", want: 100000},
		{value: "0", want: 0}, // no bound
		{value: "5000", want: 5000},
		{value: "-1", refused: true},
		{value: "many", refused: true},
	} {
		env := map[string]string{"EDGE_JWT_SECRET": strings.Repeat("k", 32), "EDGE_MQTT_RETAINED_MAX": tt.value}
		c, err := Load(func(k string) string { return env[k] })
		switch {
		case tt.refused && (err == nil || !strings.Contains(err.Error(), "EDGE_MQTT_RETAINED_MAX")):
			t.Errorf("Load(EDGE_MQTT_RETAINED_MAX=%q) = %v, want an error naming the variable", tt.value, err)
		case !tt.refused && err != nil:
			t.Errorf("Load(EDGE_MQTT_RETAINED_MAX=%q) = %v", tt.value, err)
		case !tt.refused && c.MQTTRetainedMax != tt.want:
			t.Errorf("Load(EDGE_MQTT_RETAINED_MAX=%q).MQTTRetainedMax = %d, want %d", tt.value, c.MQTTRetainedMax, tt.want)
		}
	}
}
