package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

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
