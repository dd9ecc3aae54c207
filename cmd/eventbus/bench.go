package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/coder/websocket"

	"github.com/eventbus-suite/eventbus/pkg/token"
)

const benchUsage = `Usage: eventbus bench SCENARIO [flags]

Measures a running eventbus (start one with make run) and prints a table,
or JSON with --json. Scenarios:

  fanout       WebSocket subscribers on one channel, events posted over HTTP
  ingest       events posted over HTTP (or a gRPC stream) as fast as possible
  connections  idle WebSocket connections and what each costs the edge
  recovery     a client away while events flow, then the time it takes to catch up
  baseline     serves an empty HTTP handler, the yardstick for ingest (see docs/benchmarks.md)
  mqtt         any MQTT broker (the edge, Mosquitto) over MQTT alone: fan-out, latency, losses, memory

Run 'eventbus bench SCENARIO --help' for its flags.
`

// errLoss marks a run that lost or duplicated messages: it still prints
// its figures, and the command exits non-zero.
var errLoss = errors.New("messages were lost or duplicated")

func runBench(ctx context.Context, e env, args []string) error {
	if len(args) == 0 {
		fmt.Fprint(e.stderr, benchUsage)
		return errUsage
	}
	switch args[0] {
	case "fanout":
		return benchFanout(ctx, e, args[1:])
	case "ingest":
		return benchIngest(ctx, e, args[1:])
	case "connections":
		return benchConnections(ctx, e, args[1:])
	case "recovery":
		return benchRecovery(ctx, e, args[1:])
	case "baseline":
		return benchBaseline(ctx, e, args[1:])
	case "mqtt":
		return benchMQTT(ctx, e, args[1:])
	case "-h", "--help", "help":
		fmt.Fprint(e.stdout, benchUsage)
		return nil
	}
	fmt.Fprintf(e.stderr, "eventbus: unknown bench scenario %q\n\n%s", args[0], benchUsage)
	return errUsage
}

// benchFlags are the addresses every scenario takes.
type benchFlags struct {
	common
	grpc              grpcFlag
	edge, tokenSecret string
	json              bool

	mu     sync.Mutex
	tokens map[string]string // user → token, for connectionToken
}

// grpcFlag is --grpc, which the issue asks to be both the gRPC address and
// ingest's switch: bare (--grpc) it selects gRPC; with a value
// (--grpc=host:port) it sets the address and selects gRPC too.
type grpcFlag struct {
	addr string
	on   bool
}

func (g *grpcFlag) String() string {
	if g == nil {
		return ""
	}
	return g.addr
}

func (g *grpcFlag) Set(v string) error {
	switch v {
	case "true":
		g.on = true
	case "false":
		g.on = false
	default:
		g.addr, g.on = v, true
	}
	return nil
}

func (g *grpcFlag) IsBoolFlag() bool { return true }

func (b *benchFlags) register(fs *flag.FlagSet, e env) {
	b.common.register(fs, e)
	b.grpc.addr = serviceAddr(e.getenv, "EVENTBUS_GRPC", "API_GRPC_ADDR", ":9090")
	fs.Var(&b.grpc, "grpc", "API gRPC address as --grpc=host:port (env EVENTBUS_GRPC, else that of API_GRPC_ADDR); for ingest, --grpc alone publishes over gRPC")
	fs.StringVar(&b.edge, "edge", serviceURL(e.getenv, "EVENTBUS_EDGE", "EDGE_HTTP_ADDR", ":8081"),
		"edge base URL (env EVENTBUS_EDGE, else that of EDGE_HTTP_ADDR)")
	fs.StringVar(&b.tokenSecret, "token-secret", e.getenv("EDGE_JWT_SECRET"),
		"secret to mint edge tokens with (env EDGE_JWT_SECRET); without it, the edge's demo tokens are used")
	fs.BoolVar(&b.json, "json", false, "print the result as JSON")
}

// token returns a token for user that may subscribe to everything.
func (b *benchFlags) token(ctx context.Context, user string) (string, error) {
	if b.tokenSecret != "" {
		return token.Issue([]byte(b.tokenSecret), user, []string{"*"}, 6*time.Hour, time.Now())
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(b.edge, "/")+"/demo/token?user="+user, nil)
	if err != nil {
		return "", err
	}
	resp, err := httpClient(30*time.Second, b.connectTimeout, true).Do(req)
	if err != nil {
		return "", fmt.Errorf("get a demo token: %w", describe(err, b.connectTimeout))
	}
	defer resp.Body.Close()
	var v struct{ Token string }
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&v) != nil || v.Token == "" {
		return "", fmt.Errorf("get a demo token: %s: pass --token-secret or run the edge with EDGE_DEMO=true", resp.Status)
	}
	return v.Token, nil
}

// connsPerUser is how many of a benchmark's connections share a user,
// below the edge's EDGE_MAX_USER_CONNECTIONS (50).
const connsPerUser = 40

// connectionToken returns the token of connection i of a benchmark: users
// "bench-0", "bench-1", … each hold connsPerUser connections.
func (b *benchFlags) connectionToken(ctx context.Context, i int) (string, error) {
	user := fmt.Sprintf("bench-%d", i/connsPerUser)
	b.mu.Lock()
	defer b.mu.Unlock()
	if tok, ok := b.tokens[user]; ok {
		return tok, nil
	}
	tok, err := b.token(ctx, user)
	if err != nil {
		return "", err
	}
	if b.tokens == nil {
		b.tokens = make(map[string]string)
	}
	b.tokens[user] = tok
	return tok, nil
}

func (b *benchFlags) wsURL(tok string) string {
	u := strings.TrimSuffix(b.edge, "/")
	u = strings.Replace(strings.Replace(u, "https://", "wss://", 1), "http://", "ws://", 1)
	return u + "/ws?token=" + tok
}

// sourceClients spread connections over 127.0.0.1–127.0.0.250, so that more
// connections fit than the ~28k ports of one address pair allow.
type sourceClients struct {
	mu      sync.Mutex
	clients map[int]*http.Client
}

func (s *sourceClients) get(i int) *http.Client {
	n := i%250 + 1
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.clients == nil {
		s.clients = map[int]*http.Client{}
	}
	if c, ok := s.clients[n]; ok {
		return c
	}
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(n))}, Timeout: 10 * time.Second}
	c := &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
	s.clients[n] = c
	return c
}

// dialEdge opens a WebSocket to the edge and subscribes to pattern, when
// one is given.
func (b *benchFlags) dialEdge(ctx context.Context, src *sourceClients, i int, tok, pattern string) (*websocket.Conn, error) {
	conn, _, err := websocket.Dial(ctx, b.wsURL(tok), &websocket.DialOptions{HTTPClient: src.get(i)})
	if err != nil {
		return nil, fmt.Errorf("connection %d: %w", i, err)
	}
	if pattern == "" {
		return conn, nil
	}
	if err := subscribe(ctx, conn, pattern); err != nil {
		conn.CloseNow()
		return nil, fmt.Errorf("connection %d: %w", i, err)
	}
	return conn, nil
}

// subscribe subscribes conn to pattern and reads the reply. A subscription
// refused as rate limited is tried again when the limit allows.
func subscribe(ctx context.Context, conn *websocket.Conn, pattern string) error {
	req := fmt.Appendf(nil, `{"action":"subscribe","channel":%q,"id":"s"}`, pattern)
	for {
		if err := conn.Write(ctx, websocket.MessageText, req); err != nil {
			return err
		}
		_, reply, err := conn.Read(ctx)
		switch {
		case err != nil:
			return err
		case bytes.Contains(reply, []byte(`"ok":true`)):
			return nil
		case !bytes.Contains(reply, []byte(`"rate_limited"`)):
			return fmt.Errorf("subscribe %s: %s", pattern, reply)
		}
		select {
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// field is one figure of a result, in the order it is printed.
type field struct {
	key   string
	value any
}

type result []field

func (r result) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, f := range r {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(f.key)
		v, err := json.Marshal(f.value)
		if err != nil {
			return nil, err
		}
		b.Write(k)
		b.WriteByte(':')
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

func (r result) print(w io.Writer, asJSON bool, scenario string) error {
	if asJSON {
		return json.NewEncoder(w).Encode(r)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "%s\n", scenario)
	for _, f := range r {
		switch v := f.value.(type) {
		case float64:
			fmt.Fprintf(tw, "  %s\t%s\n", f.key, strconv.FormatFloat(v, 'f', -1, 64))
		default:
			fmt.Fprintf(tw, "  %s\t%v\n", f.key, v)
		}
	}
	return tw.Flush()
}

// round keeps d decimals.
func round(v float64, d int) float64 {
	p := math.Pow(10, float64(d))
	return math.Round(v*p) / p
}

// percentiles returns the p-th percentiles of samples in milliseconds.
func percentiles(samples []time.Duration, ps ...float64) []float64 {
	out := make([]float64, len(ps))
	if len(samples) == 0 {
		return out
	}
	slices.Sort(samples)
	for i, p := range ps {
		idx := int(math.Ceil(p/100*float64(len(samples)))) - 1
		idx = min(max(idx, 0), len(samples)-1)
		out[i] = round(float64(samples[idx])/float64(time.Millisecond), 3)
	}
	return out
}

// progress prints line() on stderr every second until stop is called.
func progress(e env, line func() string) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				fmt.Fprintf(e.stderr, "\r\033[K%s", line())
			case <-done:
				fmt.Fprintf(e.stderr, "\r\033[K")
				return
			}
		}
	})
	return func() {
		close(done)
		wg.Wait()
	}
}

// scrape reads one gauge or counter from a Prometheus endpoint.
func scrape(ctx context.Context, base, name string) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(base, "/")+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("read metrics of %s: %w", base, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("%s does not export %s", base, name)
}
