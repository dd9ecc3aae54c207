package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/eventbus-suite/eventbus/pkg/token"
)

func TestParseTakesFlagsAnywhere(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		want []string
		n    int
		js   bool
	}{
		{name: "flags first", args: []string{"-n", "5", "--json", "order:*"}, want: []string{"order:*"}, n: 5, js: true},
		{name: "flags last", args: []string{"order:*", "-n", "5", "--json"}, want: []string{"order:*"}, n: 5, js: true},
		{name: "mixed", args: []string{"a", "-n=3", "b"}, want: []string{"a", "b"}, n: 3},
		{name: "double dash", args: []string{"--", "-n"}, want: []string{"-n"}, n: 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fs := flags(env{stderr: io.Discard}, "x", "", "")
			n := fs.Int("n", 10, "")
			js := fs.Bool("json", false, "")
			got, err := parse(fs, tt.args)
			if err != nil || !cmp.Equal(got, tt.want) || *n != tt.n || *js != tt.js {
				t.Errorf("parse(%q) = %q, %v, n=%d json=%v; want %q, n=%d json=%v", tt.args, got, err, *n, *js, tt.want, tt.n, tt.js)
			}
		})
	}
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{nil, {"nope"}, {"publish"}, {"publish", "a.b", "{}", "extra"}, {"tail", "a", "b"}, {"stats", "--bogus"}} {
		var stdout, stderr bytes.Buffer
		err := run(t.Context(), args, func(string) string { return "" }, &stdout, &stderr)
		if !errors.Is(err, errUsage) {
			t.Errorf("run(%q) = %v, want errUsage", args, err)
		}
		if stdout.Len()+stderr.Len() == 0 {
			t.Errorf("run(%q) printed nothing, want the usage", args)
		}
	}
}

// publish TYPE alone publishes an event without data.
func TestPublishWithoutData(t *testing.T) {
	t.Parallel()
	var body map[string]any
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewDecoder(r.Body).Decode(&body)
		w.WriteHeader(http.StatusAccepted)
		_, _ = io.WriteString(w, `{"id":"1","channel":"user:ping","receivers":0}`)
	}))
	defer srv.Close()
	getenv := func(k string) string { return map[string]string{"EVENTBUS_API": srv.URL}[k] }
	if err := run(t.Context(), []string{"publish", "user.ping"}, getenv, io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	if body["type"] != "user.ping" || body["data"] != nil {
		t.Fatalf("the API got %v, want type user.ping and no data", body)
	}
}

func TestPublishRejectsBadJSONLocally(t *testing.T) {
	t.Parallel()
	err := run(t.Context(), []string{"publish", "a.b", "{nope", "--api", "http://127.0.0.1:1"}, func(string) string { return "" }, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "not valid JSON") {
		t.Errorf("publish with bad JSON = %v, want a local JSON error", err)
	}
}

func TestReadable(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, line, want string }{
		{
			name: "typed",
			line: `{"channel":"order:placed","pattern":"*","event":{"id":"1","type":"order.placed","subject":"o1","time":"2026-11-22T05:00:00Z","data":{"@type":"type.googleapis.com/eventbus.v1.OrderPlaced","order_id":"o1","total":"5"}}}`,
			want: `2026-11-22T05:00:00Z  order:placed  order.placed  subject=o1  {"order_id":"o1","total":"5"}`,
		},
		{
			name: "free form",
			line: `{"channel":"a:b","event":{"type":"a.b","time":"T","data":{"@type":"type.googleapis.com/google.protobuf.Struct","value":{"x":1}}}}`,
			want: `T  a:b  a.b  {"x":1}`,
		},
		{name: "not an envelope", line: `{"channel":"a:b","error":"bad","payload_base64":"AA=="}`, want: "a:b  (not an envelope: bad)"},
		{name: "not json", line: `garbage`, want: "garbage"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := readable(tt.line); got != tt.want {
				t.Errorf("readable() = %q, want %q", got, tt.want)
			}
		})
	}
}

// Without a secret in the environment, eventbus token signs with the
// development secret make run keeps in data/dev-secret, which the edge it
// starts checks tokens with; a secret the edge would refuse signs nothing.
func TestTokenUsesTheDevelopmentSecret(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	noEnv := func(string) string { return "" }
	if err := run(t.Context(), []string{"token", "--sub", "42"}, noEnv, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "make run") {
		t.Fatalf("token without any secret = %v, want an error naming make run", err)
	}
	secret := "0123456789abcdef0123456789abcdef"
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "data", "dev-secret"), []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := run(t.Context(), []string{"token", "--sub", "42", "--channels", "order:*"}, noEnv, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	if c, err := token.NewVerifier([]byte(secret)).Verify(strings.TrimSpace(out.String())); err != nil || c.Subject != "42" {
		t.Fatalf("token verifies as %+v, %v; want one signed with data/dev-secret", c, err)
	}
	if err := run(t.Context(), []string{"token", "--sub", "42", "--secret", "too-short"}, noEnv, io.Discard, io.Discard); err == nil {
		t.Fatal("token with a 9-byte secret succeeded, want a refusal as the edge would refuse it")
	}
}

func TestTokenVerifies(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	secret := "a-development-secret"
	err := run(t.Context(), []string{"token", "--sub", "42", "--channels", "order:*, user:*"}, func(k string) string {
		if k == "EDGE_JWT_SECRET" {
			return secret
		}
		return ""
	}, &out, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	c, err := token.NewVerifier([]byte(secret)).Verify(strings.TrimSpace(out.String()))
	if err != nil || c.Subject != "42" || !cmp.Equal(c.Channels, []string{"order:*", "user:*"}) {
		t.Errorf("token verifies as %+v, %v; want sub 42 with order:* and user:*", c, err)
	}
}

// eventbus version and --version print the build's version, commit and Go
// version.
func TestVersion(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"version"}, {"--version"}} {
		var out bytes.Buffer
		if err := run(t.Context(), args, func(string) string { return "" }, &out, io.Discard); err != nil {
			t.Fatal(err)
		}
		if got := out.String(); !strings.HasPrefix(got, "eventbus ") || !strings.Contains(got, "commit ") || !strings.Contains(got, runtime.Version()) {
			t.Errorf("%v printed %q, want the version, the commit and %s", args, got, runtime.Version())
		}
	}
}

// stats shows the consumer groups of each recorded namespace.
func TestStatsShowsConsumerGroups(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `{"channels":[],"numsub":{},"numpat":3,"namespaces":[{"namespace":"order","events":12,"groups":[{"name":"logger","consumers":1,"pending":2,"lag":5}]},{"namespace":"user","events":1,"groups":[]}]}`)
	}))
	defer srv.Close()
	var out bytes.Buffer
	getenv := func(k string) string { return map[string]string{"EVENTBUS_API": srv.URL}[k] }
	if err := run(t.Context(), []string{"stats"}, getenv, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"3 pattern subscription(s)", "CONSUMER GROUP", "order      12           logger", "user       1            -"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("stats printed\n%s\nwant %q", out.String(), want)
		}
	}
}

// Without flags or EVENTBUS_* variables, the commands talk to the
// addresses the services listen on, read from the variables the services
// and make run read (API_HTTP_ADDR=:18080 make run); EVENTBUS_* come
// before those, and flags before everything.
func TestDefaultAddressesFromTheEnvironment(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		env  map[string]string
		args []string          // of a command with the common, edge and gRPC flags (bench)
		want map[string]string // flag name → value
	}{
		{
			name: "defaults",
			want: map[string]string{"api": "http://localhost:8080", "logger": "http://localhost:8082", "edge": "http://localhost:8081",
				"notification": "http://localhost:8083", "grpc": "localhost:9090", "connect-timeout": "5s"},
		},
		{
			name: "service addresses",
			env: map[string]string{"API_HTTP_ADDR": ":18080", "LOGGER_HTTP_ADDR": "127.0.0.1:18082", "EDGE_HTTP_ADDR": "0.0.0.0:18081",
				"NOTIFICATION_HTTP_ADDR": "[::]:18083", "API_GRPC_ADDR": ":19090"},
			want: map[string]string{"api": "http://localhost:18080", "logger": "http://127.0.0.1:18082", "edge": "http://localhost:18081",
				"notification": "http://localhost:18083", "grpc": "localhost:19090"},
		},
		{
			name: "EVENTBUS variables first",
			env: map[string]string{"API_HTTP_ADDR": ":18080", "EVENTBUS_API": "http://api.internal", "EDGE_HTTP_ADDR": ":18081",
				"EVENTBUS_EDGE": "https://edge.example", "API_GRPC_ADDR": ":19090", "EVENTBUS_GRPC": "grpc.internal:443",
				"NOTIFICATION_HTTP_ADDR": ":18083", "EVENTBUS_NOTIFICATION": "http://notification.internal"},
			want: map[string]string{"api": "http://api.internal", "edge": "https://edge.example", "grpc": "grpc.internal:443",
				"notification": "http://notification.internal"},
		},
		{
			name: "flags win",
			env:  map[string]string{"API_HTTP_ADDR": ":18080", "EVENTBUS_LOGGER": "http://logger.internal", "EDGE_HTTP_ADDR": ":18081"},
			args: []string{"--api", "http://a:1", "--logger", "http://l:2", "--edge", "http://e:3", "--grpc=g:4", "--connect-timeout", "2s"},
			want: map[string]string{"api": "http://a:1", "logger": "http://l:2", "edge": "http://e:3", "grpc": "g:4", "connect-timeout": "2s"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := env{getenv: func(k string) string { return tt.env[k] }, stderr: io.Discard}
			fs := flags(e, "bench", "", "")
			var b benchFlags
			b.register(fs, e)
			if _, err := parse(fs, tt.args); err != nil {
				t.Fatal(err)
			}
			nfs := flags(e, "dead-letters list", "", "")
			var n notificationFlags
			n.register(nfs, e)
			got := map[string]string{}
			for name := range tt.want {
				f := fs.Lookup(name)
				if name == "notification" {
					f = nfs.Lookup(name)
				}
				got[name] = f.Value.String()
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("addresses with %v and %q (-want +got):\n%s", tt.env, tt.args, diff)
			}
		})
	}
}

// silentListener accepts connections and never answers, as a service that
// hangs would; it closes them when the test ends.
func silentListener(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return // closed by the cleanup
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		wg.Wait()
		for _, c := range conns {
			c.Close()
		}
	})
	return l.Addr().String()
}

// A service that accepts the connection and never answers is an error
// after --connect-timeout (5 s unless set), a timeout error, not a wait as
// long as the request's own limit. The test's own deadline only bounds a
// regression; nothing here is timed.
func TestConnectTimeout(t *testing.T) {
	t.Parallel()
	addr := silentListener(t)
	for _, args := range [][]string{
		{"publish", "order.placed", "--api", "http://" + addr},
		{"stats", "--api", "http://" + addr},
		{"dead-letters", "list", "--notification", "http://" + addr},
	} {
		t.Run(args[0], func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			err := run(ctx, append(args, "--connect-timeout", "100ms"), func(string) string { return "" }, io.Discard, io.Discard)
			var ne net.Error
			if err == nil || !errors.As(err, &ne) || !ne.Timeout() || ctx.Err() != nil {
				t.Fatalf("%q against a silent listener = %v (context: %v), want a timeout error of its own", args, err, ctx.Err())
			}
			if !strings.Contains(err.Error(), "connect-timeout") {
				t.Errorf("%q = %v, want it to name --connect-timeout", args, err)
			}
		})
	}
}

// publish says where the event went: recorded at its offset, where
// consumer groups and history read it, whether or not anyone listens
// live, not "live to 0 subscriber(s)" alone.
func TestPublishSaysTheEventIsRecorded(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusAccepted)
		_, _ = io.WriteString(w, `{"id":"e1","channel":"order:placed","offset":"1732290000000-0","epoch":"9f3c","receivers":0}`)
	}))
	defer srv.Close()
	var out bytes.Buffer
	if err := run(t.Context(), []string{"publish", "order.placed", "--api", srv.URL}, func(string) string { return "" }, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"on order:placed at offset 1732290000000-0", "recorded, for consumer groups", "0 subscriber connection(s)"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("publish printed %q, want %q", out.String(), want)
		}
	}
}

// A TTL that is zero or negative would mint a token every edge refuses:
// eventbus token says so instead.
func TestTokenRefusesANonPositiveTTL(t *testing.T) {
	t.Parallel()
	getenv := func(k string) string { return map[string]string{"EDGE_JWT_SECRET": "a-development-secret"}[k] }
	for _, ttl := range []string{"-1m", "0s"} {
		var out bytes.Buffer
		err := run(t.Context(), []string{"token", "--sub", "42", "--ttl", ttl}, getenv, &out, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "positive") || out.Len() != 0 {
			t.Errorf("token --ttl %s = %v, printed %q; want an error asking for a positive TTL and no token", ttl, err, out.String())
		}
	}
}
