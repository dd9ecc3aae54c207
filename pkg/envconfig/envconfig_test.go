package envconfig_test

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/eventbus-suite/eventbus/pkg/envconfig"
	"github.com/eventbus-suite/eventbus/pkg/logging"
)

func TestReaderDefaultsAndValues(t *testing.T) {
	t.Parallel()
	env := map[string]string{
		"ADDR": "127.0.0.1:9", "LIST": " a, ,b ", "ON": "true", "N": "42", "D": "25s",
		"URL": "redis://example:6380/2",
	}
	r := envconfig.New(func(k string) string { return env[k] })
	got := []any{
		r.Addr("ADDR", ":1"), r.Addr("UNSET_ADDR", ":8080"), r.List("LIST", nil), r.Bool("ON", false),
		r.Int("N", 0, 1), r.Int("UNSET_N", 7, 1), r.Duration("D", time.Second), r.RedisURL("URL", ""),
	}
	want := []any{"127.0.0.1:9", ":8080", []string{"a", "b"}, true, int64(42), int64(7), 25 * time.Second, "redis://example:6380/2"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("values (-want +got):\n%s", diff)
	}
	if err := r.Err(); err != nil {
		t.Errorf("Err() = %v, want nil", err)
	}
}

func TestReaderNamesEveryBadVariable(t *testing.T) {
	t.Parallel()
	env := map[string]string{
		"ADDR": "8080", "ON": "maybe", "N": "-1", "D": "soon", "URL": "http://x", "LEVEL": "loud", "FORMAT": "xml",
	}
	r := envconfig.New(func(k string) string { return env[k] })
	r.Addr("ADDR", "")
	r.Bool("ON", false)
	r.Int("N", 0, 1)
	r.Duration("D", 0)
	r.RedisURL("URL", "")
	r.LogLevel("LEVEL", 0)
	r.LogFormat("FORMAT", logging.Auto)
	err := r.Err()
	if err == nil {
		t.Fatal("Err() = nil, want every bad variable named")
	}
	for name := range env {
		if !strings.Contains(err.Error(), name+"=") {
			t.Errorf("Err() = %q, does not name %s", err, name)
		}
	}
}

func TestCommonLogFormat(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name, value string
		want        logging.Format
	}{
		{name: "unset", value: "", want: logging.Auto},
		{name: "json", value: "json", want: logging.JSON},
		{name: "text", value: "text", want: logging.Text},
		{name: "auto", value: "auto", want: logging.Auto},
		{name: "any case", value: " Text ", want: logging.Text},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := envconfig.New(func(k string) string { return map[string]string{"LOG_FORMAT": tt.value}[k] })
			if got := r.Common().LogFormat; got != tt.want || r.Err() != nil {
				t.Errorf("LOG_FORMAT=%q: Common().LogFormat = %q, Err() = %v; want %q", tt.value, got, r.Err(), tt.want)
			}
		})
	}
	r := envconfig.New(func(k string) string { return map[string]string{"LOG_FORMAT": "pretty"}[k] })
	r.Common()
	if err := r.Err(); err == nil || !strings.Contains(err.Error(), `LOG_FORMAT="pretty": want json, text or auto`) {
		t.Errorf("LOG_FORMAT=pretty: Err() = %v, want it named with the formats", err)
	}
}

func TestCommonHistory(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		env    map[string]string
		maxLen int64
		ttl    time.Duration
		bad    string
	}{
		{env: nil, maxLen: 100_000, ttl: 24 * time.Hour},
		{env: map[string]string{"BUS_HISTORY_MAXLEN": "500", "BUS_HISTORY_TTL": "1h"}, maxLen: 500, ttl: time.Hour},
		{env: map[string]string{"BUS_HISTORY": "off"}, maxLen: 0, ttl: 24 * time.Hour},
		{env: map[string]string{"BUS_HISTORY": "sometimes"}, bad: "BUS_HISTORY="},
		{env: map[string]string{"BUS_HISTORY_MAXLEN": "0"}, bad: "BUS_HISTORY_MAXLEN="},
	} {
		r := envconfig.New(func(k string) string { return tt.env[k] })
		c := r.Common()
		if tt.bad != "" {
			if err := r.Err(); err == nil || !strings.Contains(err.Error(), tt.bad) {
				t.Errorf("%v: Err() = %v, want it to name %s", tt.env, err, tt.bad)
			}
			continue
		}
		if c.HistoryMaxLen != tt.maxLen || c.HistoryTTL != tt.ttl || r.Err() != nil {
			t.Errorf("%v: history %d, %v, error %v; want %d, %v", tt.env, c.HistoryMaxLen, c.HistoryTTL, r.Err(), tt.maxLen, tt.ttl)
		}
	}
}

// BUS_WIRE chooses how events travel: protobuf (the default) or their
// canonical protobuf JSON, which the bus's options then encode to.
func TestCommonWire(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		value string
		json  bool
		bad   bool
	}{
		{"", false, false}, {"protobuf", false, false}, {"json", true, false}, {"JSON", true, false},
		{"xml", false, true}, {"proto", false, true},
	} {
		r := envconfig.New(func(k string) string {
			if k == "BUS_WIRE" {
				return tt.value
			}
			return ""
		})
		c := r.Common()
		if tt.bad {
			if err := r.Err(); err == nil || !strings.Contains(err.Error(), `BUS_WIRE="`+tt.value+`": want protobuf or json`) {
				t.Errorf("BUS_WIRE=%s: Err() = %v, want it named with the choices", tt.value, err)
			}
			continue
		}
		if r.Err() != nil || c.WireJSON != tt.json || (c.BusOptions(nil, nil, "x").Encode != nil) != tt.json {
			t.Errorf("BUS_WIRE=%s: WireJSON %v, Encode set %v, error %v; want %v", tt.value, c.WireJSON, c.BusOptions(nil, nil, "x").Encode != nil, r.Err(), tt.json)
		}
	}
}

func TestCommonRedisCluster(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		env  map[string]string
		url  string // "" when the configuration is refused
	}{
		{"default", nil, "redis://localhost:6379/0"},
		{"cluster URL", map[string]string{"REDIS_URL": "redis+cluster://a:7000,b:7001"}, "redis+cluster://a:7000,b:7001"},
		{"cluster addresses", map[string]string{"REDIS_CLUSTER_ADDRS": "a:7000,b:7001"}, "redis+cluster://a:7000,b:7001"},
		{"both", map[string]string{"REDIS_URL": "redis://x:1/0", "REDIS_CLUSTER_ADDRS": "a:7000"}, ""},
		{"bad addresses", map[string]string{"REDIS_CLUSTER_ADDRS": "a,b"}, ""},
		{"bad cluster URL", map[string]string{"REDIS_URL": "redis+cluster://a"}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := envconfig.New(func(k string) string { return tt.env[k] })
			c := r.Common()
			if err := r.Err(); (err != nil) != (tt.url == "") || tt.url != "" && c.RedisURL != tt.url {
				t.Errorf("Common() = %q, %v; want %q", c.RedisURL, err, tt.url)
			}
		})
	}
}

func TestCommonPartitions(t *testing.T) {
	t.Parallel()
	for v, want := range map[string]int{"": 0, "1": 1, "12": 12, "1024": 1024, "0": -1, "1025": -1, "x": -1} {
		r := envconfig.New(func(k string) string { return map[string]string{"BUS_PARTITIONS": v}[k] })
		c := r.Common()
		if err := r.Err(); (err != nil) != (want < 0) || want >= 0 && c.Partitions != want {
			t.Errorf("BUS_PARTITIONS=%q: Common().Partitions = %d, %v; want %d (-1: refused)", v, c.Partitions, err, want)
		}
	}
}
