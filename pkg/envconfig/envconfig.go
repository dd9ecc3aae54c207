// Package envconfig reads typed settings through a getenv function and
// collects every bad one, so a service can name all its bad variables at
// once. It never touches the environment itself: callers pass os.Getenv,
// tests pass a map.
package envconfig

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/eventbus-suite/eventbus/pkg/bus/redisbus"
	"github.com/eventbus-suite/eventbus/pkg/channel"
	"github.com/eventbus-suite/eventbus/pkg/envelope"
	"github.com/eventbus-suite/eventbus/pkg/logging"
)

// Reader reads variables and remembers what was wrong with them.
type Reader struct {
	getenv func(string) string
	errs   []error
}

// New returns a Reader over getenv.
func New(getenv func(string) string) *Reader { return &Reader{getenv: getenv} }

// Err returns every problem met so far, or nil.
func (r *Reader) Err() error { return errors.Join(r.errs...) }

func (r *Reader) fail(name, v, want string) {
	r.errs = append(r.errs, fmt.Errorf("%s=%q: want %s", name, v, want))
}

// String returns the variable, or def when it is unset or empty.
func (r *Reader) String(name, def string) string {
	if v := strings.TrimSpace(r.getenv(name)); v != "" {
		return v
	}
	return def
}

// List returns the comma-separated items of the variable, trimmed, empty
// ones dropped; def when it is unset.
func (r *Reader) List(name string, def []string) []string {
	v := r.getenv(name)
	if strings.TrimSpace(v) == "" {
		return def
	}
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// Addr returns a listen address of the form host:port.
func (r *Reader) Addr(name, def string) string {
	v := r.String(name, def)
	if _, port, err := net.SplitHostPort(v); err != nil || port == "" {
		r.fail(name, v, "a listen address such as :8080 or 127.0.0.1:8080")
	}
	return v
}

// Bool returns the variable parsed by strconv.ParseBool.
func (r *Reader) Bool(name string, def bool) bool {
	v := r.String(name, "")
	if v == "" {
		return def
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		r.fail(name, v, "true or false")
	}
	return b
}

// Int returns a whole number of at least min.
func (r *Reader) Int(name string, def, min int64) int64 {
	v := r.String(name, "")
	if v == "" {
		return def
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < min {
		r.fail(name, v, fmt.Sprintf("a whole number ≥ %d", min))
	}
	return n
}

// Duration returns a positive time.ParseDuration value.
func (r *Reader) Duration(name string, def time.Duration) time.Duration {
	v := r.String(name, "")
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		r.fail(name, v, "a positive duration such as 25s")
	}
	return d
}

// LogLevel returns debug, info, warn or error.
func (r *Reader) LogLevel(name string, def slog.Level) slog.Level {
	v := r.String(name, "")
	if v == "" {
		return def
	}
	var l slog.Level
	if err := l.UnmarshalText([]byte(v)); err != nil {
		r.fail(name, v, "debug, info, warn or error")
	}
	return l
}

// LogFormat returns json, text or auto (see logging.Format).
func (r *Reader) LogFormat(name string, def logging.Format) logging.Format {
	v := r.String(name, "")
	if v == "" {
		return def
	}
	f, err := logging.ParseFormat(strings.ToLower(v))
	if err != nil {
		r.fail(name, v, "json, text or auto")
	}
	return f
}

// RedisURL returns a URL that go-redis parses, such as
// redis://localhost:6379/0.
func (r *Reader) RedisURL(name, def string) string {
	v := r.String(name, def)
	if err := redisbus.CheckURL(v); err != nil {
		r.fail(name, v, "a URL such as redis://localhost:6379/0, or redis+cluster://host:port,host:port for a Redis Cluster")
	}
	return v
}

// CheckHTTPURL reports whether s is an absolute http or https URL with a
// host, naming example in its error.
func CheckHTTPURL(s, example string) error {
	if u, err := url.Parse(s); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("want an absolute http(s) URL such as %s", example)
	}
	return nil
}

// Check records a problem found by the caller's own validation.
func (r *Reader) Check(name, v string, err error) {
	if err != nil {
		r.errs = append(r.errs, fmt.Errorf("%s=%q: %w", name, v, err))
	}
}

// ChannelPrefix reads a channel prefix such as "staging" (a trailing ':' is
// allowed) and returns it as "staging:", or "" when unset.
func (r *Reader) ChannelPrefix(name string) string {
	v := strings.TrimSuffix(r.String(name, ""), ":")
	if v == "" {
		return ""
	}
	r.Check(name, v, channel.Validate(v))
	return v + ":"
}

// Common is the settings every service reads alike.
type Common struct {
	RedisURL    string     // REDIS_URL
	RedisPrefix string     // REDIS_PREFIX: channel and key prefix, for sharing one Redis
	Pprof       bool       // PPROF: serve /debug/pprof on the HTTP port, for profiling only
	LogLevel    slog.Level // LOG_LEVEL
	// LogFormat is LOG_FORMAT: json, text, or auto (the default), which
	// is text on a terminal and JSON anywhere else.
	LogFormat logging.Format
	// HistoryMaxLen is about how many events each namespace's stream
	// keeps (BUS_HISTORY_MAXLEN); zero when BUS_HISTORY is off, when the
	// bus publishes live only.
	HistoryMaxLen int64
	HistoryTTL    time.Duration // BUS_HISTORY_TTL: the oldest event a stream keeps
	// Partitions is how many streams each namespace is spread over
	// (BUS_PARTITIONS); 0, the default, leaves it to the bus: 1 on one
	// Redis, 8 on a cluster. Every service of a deployment must agree.
	Partitions int
	// WireJSON is BUS_WIRE=json: events go on the bus, live and in the
	// record, as their canonical protobuf JSON instead of protobuf
	// (BUS_WIRE=protobuf, the default). Every service reads both.
	WireJSON bool
}

// Common reads REDIS_URL (or REDIS_CLUSTER_ADDRS), REDIS_PREFIX, PPROF,
// LOG_LEVEL, LOG_FORMAT and the bus's: BUS_WIRE, BUS_HISTORY,
// BUS_HISTORY_MAXLEN, BUS_HISTORY_TTL and BUS_PARTITIONS.
func (r *Reader) Common() Common {
	c := Common{
		RedisURL:      r.redis(),
		RedisPrefix:   r.ChannelPrefix("REDIS_PREFIX"),
		Pprof:         r.Bool("PPROF", false),
		LogLevel:      r.LogLevel("LOG_LEVEL", slog.LevelInfo),
		LogFormat:     r.LogFormat("LOG_FORMAT", logging.Auto),
		HistoryMaxLen: r.Int("BUS_HISTORY_MAXLEN", 100_000, 1),
		HistoryTTL:    r.Duration("BUS_HISTORY_TTL", 24*time.Hour),
		Partitions:    int(r.Int("BUS_PARTITIONS", 0, 1)),
	}
	if c.Partitions > redisbus.MaxPartitions {
		r.fail("BUS_PARTITIONS", strconv.Itoa(c.Partitions), fmt.Sprintf("at most %d", redisbus.MaxPartitions))
	}
	switch v := r.String("BUS_WIRE", "protobuf"); strings.ToLower(v) {
	case "protobuf":
	case "json":
		c.WireJSON = true
	default:
		r.fail("BUS_WIRE", v, "protobuf or json")
	}
	switch v := r.String("BUS_HISTORY", "on"); strings.ToLower(v) {
	case "on", "true":
	case "off", "false":
		c.HistoryMaxLen = 0
	default:
		r.fail("BUS_HISTORY", v, "on or off")
	}
	return c
}

// BusOptions returns the bus's options these settings make (REDIS_PREFIX,
// the record's BUS_ variables), with a service's logger, metrics registry
// and metric namespace ("eventbus_api").
func (c Common) BusOptions(log *slog.Logger, reg prometheus.Registerer, namespace string) redisbus.Options {
	o := redisbus.Options{
		Prefix: c.RedisPrefix, HistoryMaxLen: c.HistoryMaxLen, HistoryTTL: c.HistoryTTL, Partitions: c.Partitions,
		Logger: log, Registerer: reg, Namespace: namespace,
	}
	if c.WireJSON {
		o.Encode = envelope.ToJSON
	}
	return o
}

// redis reads REDIS_URL, or REDIS_CLUSTER_ADDRS (host:port,host:port),
// which stands for REDIS_URL=redis+cluster://host:port,host:port.
func (r *Reader) redis() string {
	addrs := r.String("REDIS_CLUSTER_ADDRS", "")
	if addrs == "" {
		return r.RedisURL("REDIS_URL", "redis://localhost:6379/0")
	}
	if u := r.getenv("REDIS_URL"); u != "" {
		r.fail("REDIS_CLUSTER_ADDRS", addrs, "either REDIS_URL or REDIS_CLUSTER_ADDRS, not both")
	}
	if err := redisbus.CheckURL("redis+cluster://" + addrs); err != nil {
		r.fail("REDIS_CLUSTER_ADDRS", addrs, "the cluster's nodes as host:port,host:port")
	}
	return "redis+cluster://" + addrs
}

// Member returns a consumer-group member name: the variable name, else the
// host name (a pod's name in Kubernetes, a container's id in compose), as
// one token of [a-z0-9_-]. A replica that restarts under its name gets
// back what it had not acknowledged.
func (r *Reader) Member(name string) string {
	v := r.String(name, "")
	if v != "" {
		if channel.Validate(v) != nil || strings.Contains(v, ":") {
			r.fail(name, v, "one token of [a-z0-9_-]")
		}
		return v
	}
	host, _ := os.Hostname()
	host = strings.Map(func(c rune) rune {
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_':
			return c
		case c >= 'A' && c <= 'Z':
			return c + 'a' - 'A'
		}
		return '-'
	}, host)
	return cmp.Or(host, "member")
}
