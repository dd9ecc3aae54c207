package e2e

import (
	"encoding/json"
	"fmt"
	"hash/crc32"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
)

// TestConsumerExamples runs the consumers of examples/ (docs/consumers.md)
// as a reader would, against Redis and the api binary. Subscribed, each
// must print the events published through the API, decoded, and survive a
// message that is no envelope: once on a server of its own with no prefix
// and the default pattern, once on the shared server under a REDIS_PREFIX.
// Reading a namespace's stream with a consumer group, each must also get
// what was published while it was stopped. Both again on a Redis Cluster,
// where the bus spreads each namespace over partitions with hash tags of
// their own that each consumer computes itself: subscribed, each must
// follow the shard channels of every namespace, known or announced new;
// reading the streams, each must read every partition, whose tags must be
// the ones the api gave the keys it wrote.
//
// Without node (or examples/node/node_modules: make examples installs it)
// the Node consumer is skipped, and without a python3 that has redis-py and
// protobuf (Debian: python3-redis, python3-protobuf) the Python one, unless
// EVENTBUS_REQUIRE_NODE=1 or EVENTBUS_REQUIRE_PYTHON=1 (as in CI) make that
// a failure.
func TestConsumerExamples(t *testing.T) {
	examples, err := filepath.Abs(filepath.Join("..", "examples"))
	if err != nil {
		t.Fatal(err)
	}
	for _, lang := range []struct {
		name    string
		command func(t *testing.T) *exec.Cmd
	}{
		{"node", func(t *testing.T) *exec.Cmd { return nodeConsumer(t, examples) }},
		{"python", func(t *testing.T) *exec.Cmd { return pythonConsumer(t, examples) }},
	} {
		t.Run(lang.name, func(t *testing.T) {
			t.Run("no prefix", func(t *testing.T) {
				// The default pattern, *, sees every channel of the server.
				testSubscribingConsumer(t, redistest.Start(t), "", lang.command)
			})
			t.Run("prefix", func(t *testing.T) {
				testSubscribingConsumer(t, redistest.Shared(t), strings.TrimSuffix(redistest.Prefix(t), ":"), lang.command)
			})
			t.Run("stream", func(t *testing.T) {
				testStreamConsumer(t, redistest.Shared(t), strings.TrimSuffix(redistest.Prefix(t), ":"), lang.command)
			})
			t.Run("cluster", func(t *testing.T) {
				testClusterSubscribingConsumer(t, redistest.SharedCluster(t), lang.command)
			})
			t.Run("cluster stream", func(t *testing.T) {
				testClusterStreamConsumer(t, redistest.SharedCluster(t), lang.command)
			})
			if lang.name == "python" {
				t.Run("cluster remove group", func(t *testing.T) {
					testClusterRemoveGroup(t, redistest.SharedCluster(t), lang.command)
				})
			}
		})
	}
}

// An order.placed event, whose int64 fields JSON renders as strings (these
// are past 2^53, where a JavaScript number would round them), and the line
// a consumer prints for it, at a position.
const (
	consumerOrder = `{"type":"order.placed","id":"consumer-order-1","subject":"o1",
		"time":"2025-01-02T03:04:05.5Z","data":{"order_id":"o1","user_id":"42","currency":"EUR",
		"items":[{"sku":"sku-1","name":"Big","quantity":1,"unit_price":9007199254740993}],"total":9007199254740993}}`
	consumerOrderLine = `{"id":"consumer-order-1","type":"order.placed","channel":"order:placed","subject":"o1",
		"time":"2025-01-02T03:04:05.500Z",%s
		"data":{"order_id":"o1","user_id":"42","currency":"EUR",
		"items":[{"sku":"sku-1","name":"Big","quantity":1,"unit_price":"9007199254740993"}],"total":"9007199254740993"}}`
)

// consumerCustom is an event of a type the bus does not know, whose data is
// a Struct, numbered n, and consumerCustomLine the line a consumer prints
// for it, at a position.
func consumerCustom(n int) (event, line string) {
	data := `{"name":"Ada","count":3,"ratio":1.5,"ok":true,"none":null,"tags":["a",1],"nested":{"list":[]}}`
	event = fmt.Sprintf(`{"type":"e2e.custom","id":"consumer-custom-%d","time":"2025-01-02T03:04:05.123456789Z","data":%s}`, n, data)
	line = fmt.Sprintf(`{"id":"consumer-custom-%d","type":"e2e.custom","channel":"e2e:custom",
		"time":"2025-01-02T03:04:05.123456789Z",%%s"data":%s}`, n, data)
	return event, line
}

// testSubscribingConsumer checks a consumer that subscribes to the default
// pattern on srv under prefix.
func testSubscribingConsumer(t *testing.T, srv *redistest.Server, prefix string, command func(*testing.T) *exec.Cmd) {
	cmd := command(t)
	apiHTTP := startConsumerAPI(t, srv, prefix)
	busPrefix := ""
	if prefix != "" {
		busPrefix = prefix + ":"
	}
	consumer, lines := startConsumer(t, srv, prefix, cmd, "subscribed "+busPrefix+"*\n")

	// What someone publishes by hand on a bus channel is no envelope: the
	// consumer says so and goes on to the events after it.
	if err := srv.Client(t).Publish(t.Context(), busPrefix+"e2e:raw", `{"plain":"json"}`).Err(); err != nil {
		t.Fatal(err)
	}
	waitOutput(t, consumer, "not an envelope on "+busPrefix+"e2e:raw: ")

	order := publishEvent(t, apiHTTP, consumerOrder)
	expectLine(t, lines, fmt.Sprintf(consumerOrderLine, fmt.Sprintf(`"epoch":%q,"offset":%q,`, order.Epoch, order.Offset)))
	event, line := consumerCustom(1)
	custom := publishEvent(t, apiHTTP, event)
	expectLine(t, lines, fmt.Sprintf(line, fmt.Sprintf(`"epoch":%q,"offset":%q,`, custom.Epoch, custom.Offset)))
}

// testStreamConsumer checks a consumer that reads the stream of the
// namespace e2e on srv under prefix with a consumer group, and is
// restarted.
func testStreamConsumer(t *testing.T, srv *redistest.Server, prefix string, command func(*testing.T) *exec.Cmd) {
	cmd := command(t)
	apiHTTP := startConsumerAPI(t, srv, prefix)
	args := []string{"--stream", "e2e", "--group", "g", "--consumer", "c1"}
	key := prefix + ":stream:{e2e}"
	ready := "reading " + key + " as g/c1\n"
	cmd.Args = append(cmd.Args, args...)
	consumer, lines := startConsumer(t, srv, prefix, cmd, ready)

	// An entry added by hand that holds no envelope is reported and
	// acknowledged like the others.
	rdb := srv.Client(t)
	if err := rdb.Do(t.Context(), "XADD", key, "*", "c", prefix+":e2e:raw", "p", `{"plain":"json"}`).Err(); err != nil {
		t.Fatal(err)
	}
	waitOutput(t, consumer, "not an envelope on "+prefix+":e2e:raw: ")
	event, line := consumerCustom(1)
	first := publishEvent(t, apiHTTP, event)
	expectLine(t, lines, fmt.Sprintf(line, fmt.Sprintf(`"offset":%q,`, first.Offset)))
	// Acknowledged: a consumer stopped between printing and acknowledging
	// would get the event again (at least once).
	acknowledged := func() {
		t.Helper()
		servicetest.WaitFor(t, "the group to have acknowledged everything", func() bool {
			pending, err := rdb.Do(t.Context(), "XPENDING", key, "g").Slice()
			return err == nil && len(pending) > 0 && pending[0] == int64(0)
		})
	}
	acknowledged()

	// Published while no consumer of the group runs: the next one gets it.
	consumer.stop(t)
	event, line = consumerCustom(2)
	second := publishEvent(t, apiHTTP, event)
	cmd = command(t)
	cmd.Args = append(cmd.Args, args...)
	_, lines = startConsumer(t, srv, prefix, cmd, ready)
	expectLine(t, lines, fmt.Sprintf(line, fmt.Sprintf(`"offset":%q,`, second.Offset)))
	acknowledged()
}

// testClusterSubscribingConsumer checks two consumers on the cluster c
// under a prefix of the test's own: one of the default pattern, *, which
// must hear the namespaces known when it starts (order and e2e, each in a
// partition whose events it then hears from the others too) and one
// announced new afterwards; and one of the channel order:placed, which
// must hear it alone. Both must subscribe again when their connections
// are killed.
func testClusterSubscribingConsumer(t *testing.T, c *redistest.Cluster, command func(*testing.T) *exec.Cmd) {
	cmd, exactCmd := command(t), command(t)
	exactCmd.Args = append(exactCmd.Args, "order:placed")
	prefix := strings.TrimSuffix(redistest.Prefix(t), ":")
	apiHTTP := startConsumerAPIAt(t, c.URL, prefix)
	publishEvent(t, apiHTTP, `{"type":"order.warmup","id":"warmup-1","data":{}}`)
	publishEvent(t, apiHTTP, `{"type":"e2e.warmup","id":"warmup-2","data":{}}`)
	others := shardSubscribers(t, c)
	consumer, lines := startConsumerAt(t, c.URL, prefix, cmd, "subscribed "+prefix+":*\n")
	_, exactLines := startConsumerAt(t, c.URL, prefix, exactCmd, "subscribed "+prefix+":order:placed\n")

	// By hand on the shard channel of e2e's partition that the api wrote
	// to: a message naming its channel whose body is no envelope.
	tag := tagOf(t, the(t, clusterKeys(t, c, prefix+":stream:{*}:e2e")))
	msg := "\x00ebc " + prefix + ":e2e:raw\n" + `{"plain":"json"}`
	if err := c.Client(t).SPublish(t.Context(), prefix+":live:{"+tag+"}:e2e", msg).Err(); err != nil {
		t.Fatal(err)
	}
	waitOutput(t, consumer, "not an envelope on "+prefix+":e2e:raw: ")

	order := publishEvent(t, apiHTTP, consumerOrder)
	orderLine := fmt.Sprintf(consumerOrderLine, fmt.Sprintf(`"epoch":%q,"offset":%q,`, order.Epoch, order.Offset))
	expectLine(t, lines, orderLine)
	expectLine(t, exactLines, orderLine)
	event, line := consumerCustom(1)
	custom := publishEvent(t, apiHTTP, event)
	expectLine(t, lines, fmt.Sprintf(line, fmt.Sprintf(`"epoch":%q,"offset":%q,`, custom.Epoch, custom.Offset)))

	// A namespace new to the bus: its first event comes with its
	// announcement and goes by; the consumer then subscribes its shard
	// channels and hears the events after it.
	publishUntilPrinted(t, apiHTTP, lines, "late.custom", "the namespace late, announced after the consumer started")

	// Their connections to the masters lost, the consumers subscribe
	// again: they hear what is published after that.
	killed := 0
	for conn := range shardSubscribers(t, c) {
		if !others[conn] {
			cl := redis.NewClient(&redis.Options{Addr: conn.addr})
			err := cl.ClientKillByFilter(t.Context(), "ID", conn.id).Err()
			cl.Close()
			if err != nil {
				t.Fatal(err)
			}
			killed++
		}
	}
	if killed == 0 {
		t.Fatal("the consumers have no shard subscriptions to kill")
	}
	publishUntilPrinted(t, apiHTTP, lines, "e2e.again", "e2e:again, published after the consumer's connections were killed")
	// The next order:placed the other consumer prints is one published
	// now: it printed nothing of the other channels meanwhile.
	publishUntilPrinted(t, apiHTTP, exactLines, "order.placed", "order:placed, published after the consumer's connections were killed",
		strings.Replace(consumerOrder, "consumer-order-1", "consumer-order-again-%d", 1))
}

// publishUntilPrinted publishes events of type typ through the API at addr,
// one every 200 ms, until the consumer prints one, and fails the test if
// it prints another event, or none within 10 s. What it prints after that
// is of typ, if anything. The events are {"type":typ,"data":{}}, or
// format with a number for %d when given.
func publishUntilPrinted(t *testing.T, addr string, lines <-chan string, typ, what string, format ...string) {
	t.Helper()
	for i := 0; ; i++ {
		event := fmt.Sprintf(`{"type":%q,"id":"%s-%d","data":{}}`, typ, typ, i)
		if len(format) > 0 {
			event = fmt.Sprintf(format[0], i)
		}
		publishEvent(t, addr, event)
		select {
		case l := <-lines:
			var got struct{ Type string }
			if err := json.Unmarshal([]byte(l), &got); err != nil || got.Type != typ {
				t.Fatalf("consumer printed %s, want an event of type %s", l, typ)
			}
			return
		case <-time.After(200 * time.Millisecond):
			if i == 50 {
				t.Fatalf("the consumer printed no event of %s", what)
			}
		}
	}
}

// testClusterStreamConsumer checks a consumer that reads the streams of the
// namespace e2e on the cluster c, one per partition, with a consumer group,
// and is restarted.
func testClusterStreamConsumer(t *testing.T, c *redistest.Cluster, command func(*testing.T) *exec.Cmd) {
	cmd := command(t)
	prefix := strings.TrimSuffix(redistest.Prefix(t), ":")
	apiHTTP := startConsumerAPIAt(t, c.URL, prefix)
	args := []string{"--stream", "e2e", "--group", "g", "--consumer", "c1"}
	cmd.Args = append(cmd.Args, args...)
	consumer, lines := startConsumerAt(t, c.URL, prefix, cmd, " as g/c1\n")
	m := regexp.MustCompile(`reading (.*) as g/c1\n`).FindStringSubmatch(consumer.out.String())
	if m == nil {
		t.Fatalf("the consumer said no stream keys:\n%s", consumer.out)
	}
	keys := strings.Split(m[1], ", ")
	ready := m[0]

	// Every partition: one channel of e2e in each (a channel's partition
	// is the CRC-32 of the channel modulo the partitions, 8 by default).
	var channels []string
	for i, seen := 0, map[uint32]bool{}; len(seen) < 8; i++ {
		ch := fmt.Sprintf("e2e:p%d", i)
		if p := crc32.ChecksumIEEE([]byte(ch)) % 8; !seen[p] {
			seen[p] = true
			channels = append(channels, ch)
		}
	}
	var want []string
	for i, ch := range channels {
		typ := strings.ReplaceAll(ch, ":", ".")
		r := publishEvent(t, apiHTTP, fmt.Sprintf(`{"type":%q,"id":"part-%d","time":"2025-01-02T03:04:05Z","data":{"n":%d}}`, typ, i, i))
		want = append(want, fmt.Sprintf(`{"id":"part-%d","type":%q,"channel":%q,"time":"2025-01-02T03:04:05Z","offset":%q,"data":{"n":%d}}`,
			i, typ, ch, r.Offset, i))
	}
	// The tags the consumer computed are the api's: the keys of the
	// partitions' namespace sets it wrote.
	var apiTags, consumerTags []string
	for _, k := range clusterKeys(t, c, prefix+":namespaces:{*}") {
		apiTags = append(apiTags, tagOf(t, k))
	}
	for _, k := range keys {
		if !strings.HasPrefix(k, prefix+":stream:{") || !strings.HasSuffix(k, "}:e2e") {
			t.Fatalf("consumer reads %q, want %s:stream:{<tag>}:e2e", k, prefix)
		}
		consumerTags = append(consumerTags, tagOf(t, k))
	}
	slices.Sort(apiTags)
	slices.Sort(consumerTags)
	if !slices.Equal(apiTags, consumerTags) {
		t.Fatalf("the consumer's partition tags = %v, want the api's %v", consumerTags, apiTags)
	}

	expectLinesInAnyOrder(t, lines, want)

	// An entry added by hand that holds no envelope is reported and
	// acknowledged like the others.
	rdb := c.Client(t)
	if err := rdb.Do(t.Context(), "XADD", keys[0], "*", "c", prefix+":e2e:raw", "p", `{"plain":"json"}`).Err(); err != nil {
		t.Fatal(err)
	}
	waitOutput(t, consumer, "not an envelope on "+prefix+":e2e:raw: ")
	acknowledged := func() {
		t.Helper()
		servicetest.WaitFor(t, "the group to have acknowledged everything", func() bool {
			for _, key := range keys {
				pending, err := rdb.Do(t.Context(), "XPENDING", key, "g").Slice()
				if err != nil || len(pending) == 0 || pending[0] != int64(0) {
					return false
				}
			}
			return true
		})
	}
	acknowledged()

	// Published while no consumer of the group runs: the next one gets it.
	consumer.stop(t)
	event, line := consumerCustom(2)
	second := publishEvent(t, apiHTTP, event)
	cmd = command(t)
	cmd.Args = append(cmd.Args, args...)
	_, lines = startConsumerAt(t, c.URL, prefix, cmd, ready)
	expectLine(t, lines, fmt.Sprintf(line, fmt.Sprintf(`"offset":%q,`, second.Offset)))
	acknowledged()
}

// testClusterRemoveGroup checks that a consumer run with --remove-group
// destroys the group it created in every partition of the namespace when
// it stops.
func testClusterRemoveGroup(t *testing.T, c *redistest.Cluster, command func(*testing.T) *exec.Cmd) {
	prefix := strings.TrimSuffix(redistest.Prefix(t), ":")
	cmd := command(t)
	cmd.Args = append(cmd.Args, "--stream", "rg", "--group", "mine", "--consumer", "c1", "--remove-group")
	p, _ := startConsumerAt(t, c.URL, prefix, cmd, " as mine/c1\n")
	m := regexp.MustCompile(`reading (.*) as mine/c1\n`).FindStringSubmatch(p.out.String())
	if m == nil {
		t.Fatalf("the consumer said no stream keys:\n%s", p.out)
	}
	keys := strings.Split(m[1], ", ")
	rdb := c.Client(t)
	groups := func(key string) []string {
		t.Helper()
		infos, err := rdb.XInfoGroups(t.Context(), key).Result()
		if err != nil {
			t.Fatalf("XINFO GROUPS %s: %v", key, err)
		}
		var names []string
		for _, g := range infos {
			names = append(names, g.Name)
		}
		return names
	}
	for _, key := range keys {
		if got := groups(key); !slices.Equal(got, []string{"mine"}) {
			t.Fatalf("groups of %s while the consumer runs = %v, want [mine]", key, got)
		}
	}
	p.stop(t)
	for _, key := range keys {
		if got := groups(key); len(got) > 0 {
			t.Errorf("groups of %s after SIGTERM = %v, want none:\n%s", key, got, p.out)
		}
	}
}

// shardConn is a client connection of a cluster node: the node's address
// and the client's id there.
type shardConn struct{ addr, id string }

// shardSubscribers returns the connections of every master of c that
// hold shard channels (SSUBSCRIBE).
func shardSubscribers(t *testing.T, c *redistest.Cluster) map[shardConn]bool {
	t.Helper()
	out := map[shardConn]bool{}
	for _, addr := range c.Masters(t) {
		cl := redis.NewClient(&redis.Options{Addr: addr})
		list, err := cl.ClientList(t.Context()).Result()
		cl.Close()
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(list, "\n") {
			fields := map[string]string{}
			for _, f := range strings.Fields(line) {
				k, v, _ := strings.Cut(f, "=")
				fields[k] = v
			}
			if n := fields["ssub"]; n != "" && n != "0" {
				out[shardConn{addr, fields["id"]}] = true
			}
		}
	}
	return out
}

// clusterKeys returns the keys of every master of c that match pattern.
func clusterKeys(t *testing.T, c *redistest.Cluster, pattern string) []string {
	t.Helper()
	var all []string
	for _, addr := range c.Masters(t) {
		cl := redis.NewClient(&redis.Options{Addr: addr})
		keys, err := cl.Keys(t.Context(), pattern).Result()
		cl.Close()
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, keys...)
	}
	return all
}

// the returns the one key of keys, failing the test unless there is one.
func the(t *testing.T, keys []string) string {
	t.Helper()
	if len(keys) != 1 {
		t.Fatalf("keys = %v, want one", keys)
	}
	return keys[0]
}

// tagOf returns the hash tag of key, the text between its first { and }.
func tagOf(t *testing.T, key string) string {
	t.Helper()
	_, rest, _ := strings.Cut(key, "{")
	tag, _, ok := strings.Cut(rest, "}")
	if !ok || tag == "" {
		t.Fatalf("key %q has no hash tag", key)
	}
	return tag
}

// expectLinesInAnyOrder fails the test unless the next len(want) lines are
// the JSON of want, in any order.
func expectLinesInAnyOrder(t *testing.T, lines <-chan string, want []string) {
	t.Helper()
	var left []any
	for _, w := range want {
		var v any
		if err := json.Unmarshal([]byte(w), &v); err != nil {
			t.Fatalf("bad want %s: %v", w, err)
		}
		left = append(left, v)
	}
	for len(left) > 0 {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("the consumer's output ended with %d lines to come", len(left))
			}
			var got any
			if err := json.Unmarshal([]byte(l), &got); err != nil {
				t.Fatalf("consumer printed %q: %v", l, err)
			}
			i := slices.IndexFunc(left, func(w any) bool { return reflect.DeepEqual(got, w) })
			if i < 0 {
				t.Fatalf("consumer printed\n%s\nwant one of\n%s", l, strings.Join(want, "\n"))
			}
			left = slices.Delete(left, i, i+1)
		case <-time.After(15 * time.Second):
			t.Fatalf("the consumer printed nothing within 15s, %d lines to come", len(left))
		}
	}
}

// startConsumerAPI starts the api on srv under prefix and returns its
// HTTP address once it is ready.
func startConsumerAPI(t *testing.T, srv *redistest.Server, prefix string) string {
	t.Helper()
	return startConsumerAPIAt(t, srv.URL, prefix)
}

// startConsumerAPIAt is startConsumerAPI on the Redis at url.
func startConsumerAPIAt(t *testing.T, url, prefix string) string {
	t.Helper()
	addr := servicetest.FreeAddr(t)
	api := start(t, "api", map[string]string{"REDIS_URL": url, "REDIS_PREFIX": prefix,
		"API_HTTP_ADDR": addr, "API_GRPC_ADDR": servicetest.FreeAddr(t)})
	waitReady(t, api, "http://"+addr+"/readyz")
	return addr
}

// startConsumer starts cmd, a consumer of examples/, on srv under prefix,
// and returns it and the lines it prints once it has written ready on
// stderr.
func startConsumer(t *testing.T, srv *redistest.Server, prefix string, cmd *exec.Cmd, ready string) (*process, <-chan string) {
	t.Helper()
	return startConsumerAt(t, srv.URL, prefix, cmd, ready)
}

// startConsumerAt is startConsumer on the Redis at url.
func startConsumerAt(t *testing.T, url, prefix string, cmd *exec.Cmd, ready string) (*process, <-chan string) {
	t.Helper()
	cmd.Env = append(os.Environ(), "REDIS_URL="+url, "REDIS_PREFIX="+prefix,
		"PYTHONDONTWRITEBYTECODE=1") // no __pycache__ in the work tree
	lines := linesOf(t, cmd)
	p := startCmd(t, filepath.Base(cmd.Path), cmd)
	waitOutput(t, p, ready)
	return p, lines
}

// expectLine fails the test unless the next line is the JSON of want,
// whatever the order of keys and the spelling of numbers.
func expectLine(t *testing.T, lines <-chan string, want string) {
	t.Helper()
	var wantV any
	if err := json.Unmarshal([]byte(want), &wantV); err != nil {
		t.Fatalf("bad want %s: %v", want, err)
	}
	want = strings.Join(strings.Fields(want), "")
	select {
	case l, ok := <-lines:
		if !ok {
			t.Fatalf("the consumer's output ended before %s", want)
		}
		var got any
		if err := json.Unmarshal([]byte(l), &got); err != nil {
			t.Fatalf("consumer printed %q: %v", l, err)
		}
		if !reflect.DeepEqual(got, wantV) {
			t.Errorf("consumer printed\n%s\nwant\n%s", l, want)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("the consumer printed nothing within 15s, want %s", want)
	}
}

// published is the API's reply to POST /v1/events.
type published struct {
	Offset, Epoch string
}

// publishEvent posts an event to the API at addr and returns its
// position, failing the test unless the API answers 202.
func publishEvent(t *testing.T, addr, body string) published {
	t.Helper()
	resp, err := http.Post("http://"+addr+"/v1/events", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var p published
	if err := json.NewDecoder(resp.Body).Decode(&p); err != nil || resp.StatusCode != http.StatusAccepted || p.Offset == "" {
		t.Fatalf("POST /v1/events = %s, %+v, %v; want 202 with a position", resp.Status, p, err)
	}
	return p
}

// waitOutput waits until what p wrote on stderr contains s, failing the
// test if p exits first or after 15 s.
func waitOutput(t *testing.T, p *process, s string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(p.out.String(), s) {
		select {
		case err := <-p.done:
			t.Fatalf("%s exited (%v) before writing %q:\n%s", p.name, err, s, p.out)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not write %q within 15s:\n%s", p.name, s, p.out)
		}
	}
}

// nodeConsumer returns the command of the Node consumer.
func nodeConsumer(t *testing.T, examples string) *exec.Cmd {
	t.Helper()
	node, err := exec.LookPath("node")
	if err == nil {
		_, err = os.Stat(filepath.Join(examples, "node", "node_modules", "redis"))
		if err != nil {
			err = fmt.Errorf("examples/node has no node_modules: run make examples (%w)", err)
		}
	}
	if err != nil {
		servicetest.Needs(t, "EVENTBUS_REQUIRE_NODE", err.Error())
	}
	return exec.Command(node, filepath.Join(examples, "node", "consumer.js"))
}

// pythonConsumer returns the command of the Python consumer, run by the
// first python3 that has redis-py and protobuf: Debian's /usr/bin/python3,
// which Debian's python3-redis and python3-protobuf install for, before a
// python3 found first on PATH (pyenv's, a virtualenv's).
func pythonConsumer(t *testing.T, examples string) *exec.Cmd {
	t.Helper()
	candidates := []string{"/usr/bin/python3"}
	if p, err := exec.LookPath("python3"); err == nil {
		candidates = append(candidates, p)
	}
	for _, python := range candidates {
		if exec.Command(python, "-c", "import redis, google.protobuf").Run() == nil {
			return exec.Command(python, filepath.Join(examples, "python", "consumer.py"))
		}
	}
	servicetest.Needs(t, "EVENTBUS_REQUIRE_PYTHON", fmt.Sprintf("no python3 among %v imports redis and google.protobuf (apt-get install python3-redis python3-protobuf)", candidates))
	return nil
}
