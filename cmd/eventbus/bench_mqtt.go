package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/sync/errgroup"

	"github.com/eventbus-suite/eventbus/pkg/token"
)

const benchMQTTAbout = `Measures any MQTT broker over MQTT alone: S subscribers on one topic, and publishers
publishing to it at R messages per second on a fixed schedule (open loop). Each payload
carries its sequence number and the time it was due, so latency runs from when a publish
was due to its receipt (a broker that falls behind shows in the latencies, not in a slower
schedule), and every subscriber's losses and duplicates are counted. Several --url run one
after the other, with the same load, and are printed side by side.

Memory per idle connection is the broker's resident memory after the subscribers
connected and subscribed, less that before, over S: read from the edge's /metrics when the
connections show there (ws:// URLs at their own host, tcp:// ones at --edge), else as
VmRSS of the local process listening on the URL's port (/proc), else not measured.

Our edge takes a token as the password: with --token-secret (env EDGE_JWT_SECRET) each
connection gets one minted to subscribe and publish on the run's topic, 40 connections
a user. A broker that ignores passwords (Mosquitto with allow_anonymous) takes it too.`

// benchMQTT runs the mqtt scenario against every --url in turn.
func benchMQTT(ctx context.Context, e env, args []string) error {
	fs := flags(e, "bench mqtt", "", benchMQTTAbout)
	var o mqttOptions
	o.register(fs, e)
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if err := o.check(); len(pos) != 0 || err != nil {
		if err != nil {
			fmt.Fprintf(e.stderr, "eventbus bench mqtt: %v\n\n", err)
		}
		fs.Usage()
		return errUsage
	}
	var results []result
	var errs []error
	for _, u := range o.urls.list {
		res, err := o.trial(ctx, e, u)
		if res != nil {
			results = append(results, res)
			if perr := res.print(e.stdout, o.json, "mqtt "+u.String()); perr != nil {
				return perr
			}
		}
		if err != nil && !errors.Is(err, errLoss) {
			if o.password == "" && o.tokenSecret == "" {
				err = fmt.Errorf("%w (no password was sent: our edge wants a token, see --token-secret and --password)", err)
			}
			err = fmt.Errorf("%s: %w", u, err)
		}
		if err != nil {
			errs = append(errs, err)
		}
		if ctx.Err() != nil {
			break
		}
	}
	if len(results) > 1 && !o.json {
		if err := sideBySide(e.stdout, results); err != nil {
			return err
		}
	}
	return errors.Join(errs...)
}

// mqttOptions are the flags of bench mqtt.
type mqttOptions struct {
	urls               urlList
	subscribers        int
	publishers         int
	qos                int
	rate               float64
	duration, settle   time.Duration
	size               int
	topic              string
	username, password string
	tokenSecret        string
	version            string
	edge               string
	connectTimeout     time.Duration
	json               bool
}

func (o *mqttOptions) register(fs *flag.FlagSet, e env) {
	o.urls.list = []*url.URL{{Scheme: "tcp", Host: dialAddr(or(e.getenv("EDGE_MQTT_ADDR"), ":1883"))}}
	fs.Var(&o.urls, "url", "broker to measure: tcp://host:port or ws://host:port/path; repeat it, or give a comma list,\nto compare brokers in one run (default tcp:// at EDGE_MQTT_ADDR, else localhost:1883)")
	fs.IntVar(&o.subscribers, "subscribers", 1000, "subscribers, each a connection of its own")
	fs.IntVar(&o.publishers, "publishers", 0, "publishing connections; 0: one per 10 messages/s (the edge allows 20 packets/s a connection)")
	fs.IntVar(&o.qos, "qos", 0, "QoS of the publications and of the subscriptions: 0 or 1")
	fs.Float64Var(&o.rate, "rate", 100, "publications per second, in all, on a fixed schedule")
	fs.DurationVar(&o.duration, "duration", 5*time.Second, "how long to publish")
	fs.IntVar(&o.size, "size", 64, "payload bytes (at least what the sequence number and timestamp take, about 45)")
	fs.StringVar(&o.topic, "topic", "bench/mqtt", "topic prefix: each run publishes on PREFIX/<run id>, so runs and brokers never mix")
	fs.StringVar(&o.username, "username", "bench", "username of every connection")
	fs.StringVar(&o.password, "password", "", "password of every connection (an edge token), instead of minting tokens; the edge allows 50 connections a user")
	fs.StringVar(&o.tokenSecret, "token-secret", e.getenv("EDGE_JWT_SECRET"), "secret to mint edge tokens with, used as passwords (env EDGE_JWT_SECRET)")
	fs.StringVar(&o.version, "version", "3.1.1", "MQTT version: 3.1.1 (paho.mqtt.golang) or 5 (paho.golang)")
	fs.StringVar(&o.edge, "edge", serviceURL(e.getenv, "EVENTBUS_EDGE", "EDGE_HTTP_ADDR", ":8081"),
		"edge base URL whose /metrics tells the memory of a tcp:// URL it serves (env EVENTBUS_EDGE, else that of EDGE_HTTP_ADDR)")
	fs.DurationVar(&o.settle, "settle", 2*time.Second, "how long the subscribers stay idle before the broker's memory is read")
	fs.BoolVar(&o.json, "json", false, "print each broker's result as a JSON line")
	registerConnectTimeout(fs, &o.connectTimeout)
}

func (o *mqttOptions) check() error {
	var errs []error
	if o.subscribers < 1 || o.publishers < 0 {
		errs = append(errs, errors.New("--subscribers must be positive, --publishers not negative"))
	}
	if o.qos != 0 && o.qos != 1 {
		errs = append(errs, fmt.Errorf("--qos %d: want 0 or 1", o.qos))
	}
	if o.rate <= 0 || o.duration <= 0 || o.size < 0 {
		errs = append(errs, errors.New("--rate and --duration must be positive, --size not negative"))
	}
	if o.version != "3.1.1" && o.version != "5" {
		errs = append(errs, fmt.Errorf("--version %s: want 3.1.1 or 5", o.version))
	}
	if o.topic == "" || strings.ContainsAny(o.topic, "+#") {
		errs = append(errs, fmt.Errorf("--topic %q: want a topic name, without wildcards", o.topic))
	}
	return errors.Join(errs...)
}

// urlList is --url: repeated or a comma list; given, it replaces the
// default.
type urlList struct {
	list []*url.URL
	set  bool
}

func (l *urlList) String() string {
	if l == nil {
		return ""
	}
	s := make([]string, len(l.list))
	for i, u := range l.list {
		s[i] = u.String()
	}
	return strings.Join(s, ",")
}

func (l *urlList) Set(v string) error {
	if !l.set {
		l.list, l.set = nil, true
	}
	for raw := range strings.SplitSeq(v, ",") {
		raw = strings.TrimSpace(raw)
		u, err := url.Parse(raw)
		switch {
		case err != nil:
			return err
		case u.Scheme != "tcp" && u.Scheme != "mqtt" && u.Scheme != "ws" && u.Scheme != "wss":
			return fmt.Errorf("%s: want tcp://host:port or ws://host:port/path", raw)
		case u.Port() == "":
			return fmt.Errorf("%s: no port", raw)
		}
		if u.Scheme == "mqtt" {
			u.Scheme = "tcp"
		}
		l.list = append(l.list, u)
	}
	return nil
}

// mqttClient is one MQTT connection of a trial, whichever library makes
// it. Methods may be called from several goroutines.
type mqttClient interface {
	// subscribe subscribes to topic and returns once the SUBACK came;
	// onMessage is then called with each payload received, from one
	// goroutine at a time.
	subscribe(ctx context.Context, topic string, qos byte, onMessage func(payload []byte)) error
	// publish sends payload, blocking no longer than the library does for
	// the packet to be written, and calls done once with the outcome:
	// QoS 0 when written, QoS 1 when the PUBACK came; an error when
	// mqttPublishTimeout passes first.
	publish(ctx context.Context, topic string, qos byte, payload []byte, done func(error))
	// lost reports the error the connection ended with, nil while it is up.
	lost() error
	close()
}

// mqttDialer opens the connections of one trial.
type mqttDialer struct {
	o      *mqttOptions
	u      *url.URL
	grants []string // the channel a minted token may subscribe and publish to

	mu     sync.Mutex
	tokens map[string]string // user → token
}

// password returns the password of connection i: --password, or a token
// minted for user "bench-mqtt-<i/40>", or "" (none).
func (d *mqttDialer) password(i int) (string, error) {
	if d.o.password != "" || d.o.tokenSecret == "" {
		return d.o.password, nil
	}
	user := fmt.Sprintf("bench-mqtt-%d", i/connsPerUser)
	d.mu.Lock()
	defer d.mu.Unlock()
	if tok, ok := d.tokens[user]; ok {
		return tok, nil
	}
	tok, err := token.IssueClaims([]byte(d.o.tokenSecret), token.Claims{Channels: d.grants, Publish: d.grants,
		RegisteredClaims: jwt.RegisteredClaims{Subject: user}}, 6*time.Hour, time.Now())
	if err != nil {
		return "", err
	}
	if d.tokens == nil {
		d.tokens = map[string]string{}
	}
	d.tokens[user] = tok
	return tok, nil
}

func (d *mqttDialer) dial(ctx context.Context, i int, clientID string) (mqttClient, error) {
	pw, err := d.password(i)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, max(d.o.connectTimeout, 10*time.Second))
	defer cancel()
	if d.o.version == "5" {
		return dialPaho5(ctx, d.u, clientID, d.o.username, pw)
	}
	return dialPaho3(ctx, d.u, clientID, d.o.username, pw, d.o.connectTimeout)
}

// mqttSubscriber counts what one subscriber receives.
type mqttSubscriber struct {
	c  mqttClient
	mu sync.Mutex
	// seen, by sequence number; counts, latencies and stray payloads
	// (not of this run) follow.
	seen        []bool
	unique, dup int
	stray       int
	lat         []time.Duration
}

// receive records payload, received at now, and reports whether it was
// one of the run's messages.
func (s *mqttSubscriber) receive(marker, payload []byte, now time.Time) bool {
	seq, due, ok := parseMarker(marker, payload)
	s.mu.Lock()
	defer s.mu.Unlock()
	if !ok || seq >= len(s.seen) {
		s.stray++
		return false
	}
	if s.seen[seq] {
		s.dup++
	} else {
		s.seen[seq] = true
		s.unique++
	}
	s.lat = append(s.lat, now.Sub(time.Unix(0, due)))
	return true
}

// The payload of message seq, due at due, is a JSON object, so that the
// edge, which wraps what it is given in an event, keeps it readable:
// {"bench":"ebm:<run>:<seq>:<due unix ns>:xxxx"}, padded with x to size.
func payloadOf(marker []byte, seq int, due time.Time, size int) []byte {
	p := make([]byte, 0, max(size, 64))
	p = append(p, `{"bench":"`...)
	p = append(p, marker...)
	p = strconv.AppendInt(p, int64(seq), 10)
	p = append(p, ':')
	p = strconv.AppendInt(p, due.UnixNano(), 10)
	p = append(p, ':')
	for len(p)+2 < size {
		p = append(p, 'x')
	}
	return append(p, `"}`...)
}

// parseMarker finds marker in payload and reads the sequence number and
// due time after it. The payload may come back re-encoded (the edge
// delivers an event whose data holds it): only the marker's own bytes are
// relied on.
func parseMarker(marker, payload []byte) (seq int, due int64, ok bool) {
	i := bytes.Index(payload, marker)
	if i < 0 {
		return 0, 0, false
	}
	rest := payload[i+len(marker):]
	num := func() (int64, bool) {
		j := bytes.IndexByte(rest, ':')
		if j <= 0 {
			return 0, false
		}
		n, err := strconv.ParseInt(string(rest[:j]), 10, 64)
		rest = rest[j+1:]
		return n, err == nil
	}
	s, ok1 := num()
	d, ok2 := num()
	return int(s), d, ok1 && ok2 && s >= 0
}

// trial runs the scenario against u and returns its figures. A result
// comes back with errLoss when messages were lost or duplicated.
func (o *mqttOptions) trial(ctx context.Context, e env, u *url.URL) (result, error) {
	run := strconv.FormatInt(time.Now().UnixNano(), 36)
	topic := strings.TrimSuffix(o.topic, "/") + "/" + run
	marker := []byte("ebm:" + run + ":")
	d := &mqttDialer{o: o, u: u, grants: []string{strings.ReplaceAll(topic, "/", ":")}}
	interval := time.Duration(float64(time.Second) / o.rate)
	total := max(int(o.duration/interval), 1)
	npub := o.publishers
	if npub == 0 {
		npub = int(math.Ceil(o.rate / 10))
	}
	npub = min(npub, total)
	qos := byte(o.qos)

	broker := newBrokerProbe(ctx, o, u)

	// Subscribers connect and subscribe, 32 at a time.
	subs := make([]*mqttSubscriber, o.subscribers)
	var delivered atomic.Int64
	var lastDelivery atomic.Int64 // unix ns
	closeAll := sync.OnceFunc(func() {
		var wg sync.WaitGroup
		sem := make(chan struct{}, 64)
		for _, s := range subs {
			if s != nil && s.c != nil {
				sem <- struct{}{}
				wg.Go(func() { s.c.close(); <-sem })
			}
		}
		wg.Wait()
	})
	defer closeAll()
	var connected atomic.Int64
	stopProgress := progress(e, func() string {
		return fmt.Sprintf("mqtt %s: %d of %d subscribers connected", u, connected.Load(), o.subscribers)
	})
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(32)
	for i := range subs {
		g.Go(func() error {
			s := &mqttSubscriber{seen: make([]bool, total), lat: make([]time.Duration, 0, total)}
			c, err := d.dial(gctx, i, fmt.Sprintf("eb-%s-s%d", run, i))
			if err != nil {
				return fmt.Errorf("subscriber %d: %w", i, err)
			}
			s.c = c
			subs[i] = s
			err = c.subscribe(gctx, topic, qos, func(p []byte) {
				now := time.Now()
				if s.receive(marker, p, now) {
					delivered.Add(1)
					lastDelivery.Store(now.UnixNano())
				}
			})
			if err != nil {
				return fmt.Errorf("subscriber %d: %w", i, err)
			}
			connected.Add(1)
			return nil
		})
	}
	err := g.Wait()
	stopProgress()
	if err != nil {
		return nil, err
	}
	select {
	case <-time.After(o.settle):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	memFields := broker.memory(ctx, o.subscribers)

	pubs := make([]mqttClient, npub)
	defer func() {
		for _, c := range pubs {
			if c != nil {
				c.close()
			}
		}
	}()
	g, gctx = errgroup.WithContext(ctx)
	g.SetLimit(32)
	for i := range pubs {
		g.Go(func() error {
			c, err := d.dial(gctx, o.subscribers+i, fmt.Sprintf("eb-%s-p%d", run, i))
			if err != nil {
				return fmt.Errorf("publisher %d: %w", i, err)
			}
			pubs[i] = c
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}

	// Publisher p publishes the messages whose sequence number is p modulo
	// npub, each when it is due: start + seq × interval.
	confirmed := make([]bool, total) // by sequence number, written by done
	var sent, failed atomic.Int64
	var outcomes sync.WaitGroup
	stopProgress = progress(e, func() string {
		return fmt.Sprintf("mqtt %s: %d subscribers, %g/s: published %d, delivered %d", u, o.subscribers, o.rate, sent.Load(), delivered.Load())
	})
	cpu0, cpuOK := broker.cpu(ctx)
	self0 := selfCPU()
	start := time.Now()
	var publishers sync.WaitGroup
	for p, c := range pubs {
		publishers.Go(func() {
			for seq := p; seq < total && ctx.Err() == nil; seq += npub {
				due := start.Add(time.Duration(seq) * interval)
				if wait := time.Until(due); wait > 0 {
					time.Sleep(wait) // pacing the load, not synchronising anything
				}
				outcomes.Add(1)
				c.publish(ctx, topic, qos, payloadOf(marker, seq, due, o.size), func(err error) {
					defer outcomes.Done()
					if err != nil {
						failed.Add(1)
						return
					}
					confirmed[seq] = true
				})
				sent.Add(1)
			}
		})
	}
	publishers.Wait()
	published := time.Since(start)
	// Outcomes of QoS 1 come with the PUBACKs, each within
	// publishTimeout; one that does not come is a publish error.
	outcomes.Wait()
	var ok int64
	for _, c := range confirmed {
		if c {
			ok++
		}
	}
	// Wait for the last deliveries: until all came, or none for 3 s.
	want := ok * int64(o.subscribers)
	last, lastChange := delivered.Load(), time.Now()
	for delivered.Load() < want && time.Since(lastChange) < 3*time.Second && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
		if n := delivered.Load(); n != last {
			last, lastChange = n, time.Now()
		}
	}
	stopProgress()
	cpu1, cpu1OK := broker.cpu(ctx)
	self1 := selfCPU()
	closeAll()

	var received, dups, stray, dropped int64
	var all []time.Duration
	for _, s := range subs {
		s.mu.Lock()
		for seq, seen := range s.seen {
			if seen && confirmed[seq] {
				received++
			}
		}
		dups += int64(s.dup)
		stray += int64(s.stray)
		all = append(all, s.lat...)
		s.mu.Unlock()
		if s.c.lost() != nil {
			dropped++
		}
	}
	elapsed := time.Duration(lastDelivery.Load() - start.UnixNano())
	if elapsed <= 0 {
		elapsed = published
	}
	lost := want - received
	p := percentiles(all, 50, 90, 99, 100)
	transport := map[string]string{"tcp": "tcp", "ws": "websocket", "wss": "websocket"}[u.Scheme]
	res := result{
		{"url", u.String()}, {"transport", transport}, {"version", o.version}, {"qos", o.qos},
		{"subscribers", o.subscribers}, {"publishers", npub}, {"rate", o.rate}, {"size", len(payloadOf(marker, total, start, o.size))},
		{"duration_s", round(published.Seconds(), 2)},
		{"offered_deliveries_per_sec", round(o.rate*float64(o.subscribers), 0)},
		{"deliveries_per_sec", round(float64(received+dups)/elapsed.Seconds(), 0)},
		{"p50_ms", p[0]}, {"p90_ms", p[1]}, {"p99_ms", p[2]}, {"max_ms", p[3]},
		{"published", sent.Load()}, {"publish_errors", failed.Load()},
		{"expected", want}, {"delivered", received + dups}, {"lost", lost}, {"duplicated", dups},
		{"subscribers_dropped", dropped}, // connections the broker closed during the run
	}
	if stray > 0 {
		res = append(res, field{"stray", stray}) // payloads not of this run's messages
	}
	res = append(res, memFields...)
	// CPU seconds spent while the messages flowed, by the broker and by
	// this load generator: on a machine they share, what a delivery costs
	// the broker, whatever the generator left it.
	if cpuOK && cpu1OK {
		res = append(res, field{"broker_cpu_s", round(cpu1-cpu0, 2)},
			field{"broker_cpu_us_per_delivery", round((cpu1-cpu0)*1e6/float64(max(received+dups, 1)), 2)})
	} else {
		res = append(res, field{"broker_cpu_s", "n/a"})
	}
	res = append(res, field{"bench_cpu_s", round((self1 - self0).Seconds(), 2)})
	if lost != 0 || dups != 0 || failed.Load() != 0 {
		fmt.Fprintf(e.stderr, "\n*** mqtt %s: %d lost, %d duplicated, %d publish errors ***\n\n", u, lost, dups, failed.Load())
		return res, errLoss
	}
	return res, nil
}

// brokerProbe reads a broker's memory before its subscribers connect,
// from every source that answers, and picks one afterwards; and its CPU
// time.
type brokerProbe struct {
	metrics     string  // base URL of an edge's /metrics, "" when none answers
	packets0    float64 // edgeMQTTPackets
	rss0, heap0 float64
	pid         int // the local process listening on the URL's port, 0 when not found
	pidRSS0     float64
	why         string // why no /proc figure
	edge        bool   // the edge of metrics serves the URL, as memory found
}

func newBrokerProbe(ctx context.Context, o *mqttOptions, u *url.URL) *brokerProbe {
	m := &brokerProbe{}
	base := o.edge
	if u.Scheme == "ws" || u.Scheme == "wss" {
		base = strings.Replace(u.Scheme, "ws", "http", 1) + "://" + u.Host
	}
	if c, err := scrape(ctx, base, edgeMQTTPackets); err == nil {
		rss, err1 := scrape(ctx, base, "process_resident_memory_bytes")
		heap, err2 := scrape(ctx, base, "go_memstats_heap_inuse_bytes")
		if err1 == nil && err2 == nil {
			m.metrics, m.packets0, m.rss0, m.heap0 = base, c, rss, heap
		}
	}
	pid, err := listenerPID(u)
	if err != nil {
		m.why = err.Error()
		return m
	}
	if m.pidRSS0, err = vmRSS(pid); err != nil {
		m.why = err.Error()
		return m
	}
	m.pid = pid
	return m
}

// edgeMQTTPackets counts the MQTT packets an edge received after CONNECT:
// a SUBSCRIBE of each subscriber when the edge serves the URL measured.
// (Its connection gauge would not do: the connections of a previous run
// may still be leaving it.)
const edgeMQTTPackets = "eventbus_edge_mqtt_packets_in_total"

// memory returns the memory fields of a result, n subscribers after the
// probe was made: the edge's /metrics when it received their SUBSCRIBE
// packets (so it serves the URL), else the listening process's
// VmRSS.
func (m *brokerProbe) memory(ctx context.Context, n int) result {
	if m.metrics != "" {
		c, err := scrape(ctx, m.metrics, edgeMQTTPackets)
		rss, err1 := scrape(ctx, m.metrics, "process_resident_memory_bytes")
		heap, err2 := scrape(ctx, m.metrics, "go_memstats_heap_inuse_bytes")
		if err == nil && err1 == nil && err2 == nil && c-m.packets0 >= float64(n) {
			m.edge = true
			return result{
				{"memory_source", m.metrics + "/metrics"},
				{"rss_bytes_per_conn", round((rss-m.rss0)/float64(n), 0)},
				{"heap_bytes_per_conn", round((heap-m.heap0)/float64(n), 0)},
				{"broker_rss_bytes", rss},
			}
		}
	}
	if m.pid != 0 {
		rss, err := vmRSS(m.pid)
		if err == nil {
			return result{
				{"memory_source", fmt.Sprintf("/proc/%d/status VmRSS", m.pid)},
				{"rss_bytes_per_conn", round((rss-m.pidRSS0)/float64(n), 0)},
				{"broker_rss_bytes", rss},
			}
		}
		m.why = err.Error()
	}
	return result{{"memory_source", "n/a: " + m.why}, {"rss_bytes_per_conn", "n/a"}}
}

// cpu returns the CPU seconds the broker has used: from /proc when its
// process was found, else from the edge's /metrics when memory found it
// serves the URL.
func (m *brokerProbe) cpu(ctx context.Context) (float64, bool) {
	if m.pid != 0 {
		if s, err := processCPU(m.pid); err == nil {
			return s, true
		}
	}
	if m.edge {
		if s, err := scrape(ctx, m.metrics, "process_cpu_seconds_total"); err == nil {
			return s, true
		}
	}
	return 0, false
}

// processCPU returns the user and system CPU seconds of process pid, from
// /proc/<pid>/stat (in clock ticks of 1/100 s, USER_HZ on Linux).
func processCPU(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name, in parentheses, may hold spaces: count the
	// fields after it. utime and stime are fields 14 and 15 of the line.
	i := bytes.LastIndexByte(b, ')')
	fields := strings.Fields(string(b[i+1:]))
	if i < 0 || len(fields) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	utime, err1 := strconv.ParseFloat(fields[11], 64)
	stime, err2 := strconv.ParseFloat(fields[12], 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return (utime + stime) / 100, nil
}

// selfCPU returns the user and system CPU time this process has used.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// listenerPID returns the pid of the process on this machine listening on
// u's port, through /proc/net/tcp{,6} and the descriptors of /proc/*/fd
// (readable as root or as the broker's user).
func listenerPID(u *url.URL) (int, error) {
	if ips, err := net.LookupIP(u.Hostname()); err != nil || len(ips) == 0 || !isLocal(ips[0]) {
		return 0, fmt.Errorf("%s is not on this machine", u.Hostname())
	}
	port, _ := strconv.Atoi(u.Port())
	var inodes []string
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for line := range strings.SplitSeq(string(b), "\n") {
			fields := strings.Fields(line)
			// sl local_address rem_address st … inode: st 0A is LISTEN.
			if len(fields) < 10 || fields[3] != "0A" {
				continue
			}
			_, hexPort, _ := strings.Cut(fields[1], ":")
			if p, err := strconv.ParseUint(hexPort, 16, 16); err == nil && int(p) == port {
				inodes = append(inodes, "socket:["+fields[9]+"]")
			}
		}
	}
	if len(inodes) == 0 {
		return 0, fmt.Errorf("no listener on port %d in /proc/net/tcp", port)
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/fd")
	for _, dir := range procs {
		fds, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			link, err := os.Readlink(filepath.Join(dir, fd.Name()))
			if err == nil && strings.HasPrefix(link, "socket:[") && containsString(inodes, link) {
				return strconv.Atoi(filepath.Base(filepath.Dir(dir)))
			}
		}
	}
	return 0, fmt.Errorf("the process listening on port %d is not readable in /proc (run as root or as its user)", port)
}

func containsString(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func isLocal(ip net.IP) bool {
	if ip.IsLoopback() || ip.IsUnspecified() {
		return true
	}
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.Equal(ip) {
			return true
		}
	}
	return false
}

// vmRSS returns the resident memory of process pid in bytes.
func vmRSS(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

// sideBySide prints the main figures of several results in columns, one
// per URL.
func sideBySide(w io.Writer, results []result) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "mqtt side by side\n")
	for _, key := range []string{"url", "deliveries_per_sec", "p50_ms", "p99_ms", "max_ms", "lost", "duplicated",
		"subscribers_dropped", "rss_bytes_per_conn", "broker_cpu_us_per_delivery", "bench_cpu_s"} {
		fmt.Fprintf(tw, "  %s", key)
		for _, r := range results {
			v := r.get(key)
			if f, ok := v.(float64); ok {
				v = strconv.FormatFloat(f, 'f', -1, 64)
			}
			fmt.Fprintf(tw, "\t%v", v)
		}
		fmt.Fprintln(tw)
	}
	return tw.Flush()
}
