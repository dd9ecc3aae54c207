package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/mochi-mqtt/server/v2/packets"
	"golang.org/x/sync/errgroup"

	"github.com/eventbus-suite/eventbus/pkg/mqttwire"
)

func benchFanout(ctx context.Context, e env, args []string) error {
	fs := flags(e, "bench fanout", "",
		"Opens S WebSocket subscribers on one channel (or a pattern) and posts events to it over HTTP\n"+
			"at R per second. Latency is publish → delivery, from a timestamp each event carries.")
	var b benchFlags
	b.register(fs, e)
	subs := fs.Int("subscribers", 100, "WebSocket subscribers")
	rate := fs.Int("rate", 1000, "events per second")
	duration := fs.Duration("duration", 10*time.Second, "how long to publish")
	pattern := fs.Bool("pattern", false, "subscribe with a pattern rather than the exact channel")
	ramp := fs.Bool("ramp", false, "double the rate from --rate until p99 passes 50 ms or a message is lost; report the highest rate that passed")
	withMQTT := fs.Bool("mqtt", false, "run the trial again with MQTT subscribers (QoS 0 over /mqtt), and compare them with the WebSocket ones")
	if pos, err := parse(fs, args); err != nil {
		return err
	} else if len(pos) != 0 || *subs < 1 || *rate < 1 {
		fs.Usage()
		return errUsage
	}
	if *withMQTT {
		return fanoutCompare(ctx, e, &b, *subs, *rate, *duration, *pattern, *ramp)
	}
	if !*ramp {
		r, err := fanoutTrial(ctx, e, &b, *subs, *rate, *duration, *pattern, false)
		if r != nil {
			if perr := r.print(e.stdout, b.json, "fanout"); perr != nil {
				return perr
			}
		}
		return err
	}
	best, err := fanoutRamp(ctx, e, &b, *subs, *rate, *duration, *pattern, false)
	if err != nil {
		return err
	}
	return best.print(e.stdout, b.json, "fanout --ramp")
}

// fanoutRamp doubles the rate from rate until a trial's p99 passes 50 ms
// or it loses a message, and returns the last trial that passed.
func fanoutRamp(ctx context.Context, e env, b *benchFlags, subs, rate int, duration time.Duration, pattern, mqtt bool) (result, error) {
	var best result
	for r := rate; ; r *= 2 {
		res, err := fanoutTrial(ctx, e, b, subs, r, duration, pattern, mqtt)
		if err != nil && res == nil {
			return nil, err
		}
		p99 := res.get("p99_ms").(float64)
		fmt.Fprintf(e.stderr, "rate %d/s: p99 %.1f ms, lost %d, duplicated %d\n", r, p99, res.get("lost"), res.get("duplicated"))
		if err != nil || p99 > 50 {
			break
		}
		best = append(result{{"max_rate", r}}, res...)
	}
	if best == nil {
		return nil, fmt.Errorf("even %d events/s missed the bar (p99 ≤ 50 ms, nothing lost)", rate)
	}
	return best, nil
}

// fanoutCompare runs the trial (or the ramp) with WebSocket subscribers,
// then with MQTT ones, and says how MQTT's figure compares: its delivery
// rate (max_rate with --ramp) as a fraction of the WebSocket one's.
func fanoutCompare(ctx context.Context, e env, b *benchFlags, subs, rate int, duration time.Duration, pattern, ramp bool) error {
	figure, name := "deliveries_per_sec", "fanout"
	if ramp {
		figure, name = "max_rate", "fanout --ramp"
	}
	var results [2]result
	for i, mqtt := range []bool{false, true} {
		var err error
		if ramp {
			results[i], err = fanoutRamp(ctx, e, b, subs, rate, duration, pattern, mqtt)
		} else {
			results[i], err = fanoutTrial(ctx, e, b, subs, rate, duration, pattern, mqtt)
		}
		if results[i] != nil {
			label := name + map[bool]string{false: " (WebSocket)", true: " --mqtt"}[mqtt]
			if perr := results[i].print(e.stdout, b.json, label); perr != nil {
				return perr
			}
		}
		if err != nil {
			return err
		}
	}
	ws, mq := toFloat(results[0].get(figure)), toFloat(results[1].get(figure))
	cmp := result{{"figure", figure}, {"websocket", ws}, {"mqtt", mq}, {"mqtt_vs_websocket", round(mq/ws, 3)}}
	return cmp.print(e.stdout, b.json, "fanout --mqtt vs WebSocket")
}

func toFloat(v any) float64 {
	switch n := v.(type) {
	case int:
		return float64(n)
	case float64:
		return n
	}
	return 0
}

func (r result) get(key string) any {
	for _, f := range r {
		if f.key == key {
			return f.value
		}
	}
	return nil
}

// subscriber is one WebSocket of a fanout trial.
type subscriber struct {
	conn      *websocket.Conn
	mqtt      net.Conn // the MQTT stream over conn, for --mqtt
	seen      []bool   // by sequence number
	unique    int
	dups      int
	latencies []time.Duration
	slow      bool // the edge closed it as too slow (4008)
}

// read counts deliveries until the connection closes. Reads take no
// context: a context shared by 1,000 readers is a lock they all take twice
// per message, and closing the connection ends the read anyway.
func (s *subscriber) read(delivered *atomic.Int64) {
	if s.mqtt != nil {
		s.readMQTT(delivered)
		return
	}
	var buf bytes.Buffer
	key := []byte(`"subject":"`)
	for {
		_, r, err := s.conn.Reader(context.Background())
		if err != nil {
			s.slow = websocket.CloseStatus(err) == 4008
			return
		}
		buf.Reset()
		if _, err := buf.ReadFrom(r); err != nil {
			return
		}
		now := time.Now().UnixNano()
		n := int64(0)
		for frame := range bytes.SplitSeq(buf.Bytes(), []byte("\n")) {
			if s.count(frame, key, now) {
				n++
			}
		}
		delivered.Add(n)
	}
}

// count records one frame and reports whether it was an event.
func (s *subscriber) count(frame, key []byte, now int64) bool {
	i := bytes.Index(frame, key)
	if i < 0 {
		return false // a reply, not an event
	}
	subject := frame[i+len(key):]
	subject = subject[:bytes.IndexByte(subject, '"')]
	dot := bytes.IndexByte(subject, '.')
	if dot < 0 {
		return false
	}
	seq, err1 := strconv.Atoi(string(subject[:dot]))
	sent, err2 := strconv.ParseInt(string(subject[dot+1:]), 10, 64)
	if err1 != nil || err2 != nil {
		return false
	}
	for seq >= len(s.seen) {
		s.seen = append(s.seen, make([]bool, len(s.seen)+1024)...)
	}
	if s.seen[seq] {
		s.dups++
	} else {
		s.seen[seq] = true
		s.unique++
	}
	s.latencies = append(s.latencies, time.Duration(now-sent))
	return true
}

// readMQTT counts the events of the PUBLISH packets an MQTT subscriber
// reads, until the connection closes.
func (s *subscriber) readMQTT(delivered *atomic.Int64) {
	br := bufio.NewReaderSize(s.mqtt, 64<<10)
	key := []byte(`"subject":"`)
	for {
		pk, err := mqttwire.Read(br, 4, math.MaxInt32)
		if err != nil {
			return
		}
		if pk.FixedHeader.Type == packets.Publish && s.count(pk.Payload, key, time.Now().UnixNano()) {
			delivered.Add(1)
		}
	}
}

// dialMQTT opens an MQTT 3.1.1 connection to the edge's /mqtt with tok as
// its password, subscribed to filter at QoS 0.
func (b *benchFlags) dialMQTT(ctx context.Context, src *sourceClients, i int, tok, filter string) (*websocket.Conn, net.Conn, error) {
	u := strings.TrimSuffix(b.edge, "/")
	u = strings.Replace(strings.Replace(u, "https://", "wss://", 1), "http://", "ws://", 1) + "/mqtt"
	conn, _, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPClient: src.get(i), Subprotocols: []string{"mqtt"}})
	if err != nil {
		return nil, nil, fmt.Errorf("connection %d: %w", i, err)
	}
	nc := websocket.NetConn(context.Background(), conn, websocket.MessageBinary)
	fail := func(err error) (*websocket.Conn, net.Conn, error) {
		conn.CloseNow()
		return nil, nil, fmt.Errorf("connection %d: %w", i, err)
	}
	var buf bytes.Buffer
	connect := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 4, Connect: packets.ConnectParams{
		ProtocolName: []byte("MQTT"), ClientIdentifier: fmt.Sprintf("bench-%d", i), Clean: true,
		UsernameFlag: true, Username: []byte("bench"), PasswordFlag: true, Password: []byte(tok)}}
	sub := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, ProtocolVersion: 4, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: filter}}}
	for _, pk := range []*packets.Packet{&connect, &sub} {
		if err := mqttwire.Append(&buf, pk); err != nil {
			return fail(err)
		}
	}
	if _, err := nc.Write(buf.Bytes()); err != nil {
		return fail(err)
	}
	br := bufio.NewReader(nc)
	for _, want := range []byte{packets.Connack, packets.Suback} {
		pk, err := mqttwire.Read(br, 4, math.MaxInt32)
		switch {
		case err != nil:
			return fail(err)
		case pk.FixedHeader.Type != want:
			return fail(fmt.Errorf("read packet type %d, want %d", pk.FixedHeader.Type, want))
		case want == packets.Connack && pk.ReasonCode != 0:
			return fail(fmt.Errorf("CONNACK return code %d", pk.ReasonCode))
		case want == packets.Suback && (len(pk.ReasonCodes) != 1 || pk.ReasonCodes[0] >= 0x80):
			return fail(fmt.Errorf("SUBACK %v: %s refused", pk.ReasonCodes, filter))
		}
	}
	if br.Buffered() > 0 {
		return fail(errors.New("an event came before the trial began"))
	}
	return conn, nc, nil
}

func fanoutTrial(ctx context.Context, e env, b *benchFlags, nsubs, rate int, duration time.Duration, pattern, mqtt bool) (result, error) {
	run := strconv.FormatInt(time.Now().UnixNano(), 36)
	ch := "bench:fanout:" + run
	sub := ch
	if pattern {
		sub = "bench:fanout:" + run + ":*"
		ch += ":x"
	}
	var src sourceClients
	subscribers := make([]*subscriber, nsubs)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(64)
	for i := range subscribers {
		g.Go(func() error {
			tok, err := b.connectionToken(gctx, i)
			if err != nil {
				return err
			}
			n := rate*int(duration/time.Second) + 1024
			s := &subscriber{seen: make([]bool, n), latencies: make([]time.Duration, 0, n)}
			if mqtt {
				s.conn, s.mqtt, err = b.dialMQTT(gctx, &src, i, tok, strings.ReplaceAll(strings.ReplaceAll(sub, ":", "/"), "*", "+"))
			} else {
				s.conn, err = b.dialEdge(gctx, &src, i, tok, sub)
			}
			if err != nil {
				return err
			}
			s.conn.SetReadLimit(1 << 20)
			subscribers[i] = s
			return nil
		})
	}
	err := g.Wait()
	defer func() {
		for _, s := range subscribers {
			if s != nil {
				s.conn.CloseNow()
			}
		}
	}()
	if err != nil {
		return nil, err
	}

	var delivered atomic.Int64
	var readers sync.WaitGroup
	for _, s := range subscribers {
		readers.Go(func() { s.read(&delivered) })
	}

	cfg, err := newPoster(b.api, b.apiKey)
	if err != nil {
		return nil, err
	}
	var sent, failed atomic.Int64
	jobs := make(chan int, 1024)
	var publishers sync.WaitGroup
	for range 16 {
		publishers.Go(func() {
			p := posts{cfg: cfg}
			defer p.close()
			var body []byte
			for seq := range jobs {
				body = fmt.Appendf(body[:0], `{"type":"bench.fanout","channel":%q,"subject":"%d.%d"}`, ch, seq, time.Now().UnixNano())
				if status, err := p.post(ctx, body); err != nil || status != http.StatusAccepted {
					failed.Add(1)
					continue
				}
				sent.Add(1)
			}
		})
	}
	stop := progress(e, func() string {
		return fmt.Sprintf("fanout: %d subscribers, %d/s: sent %d, delivered %d", nsubs, rate, sent.Load(), delivered.Load())
	})
	start := time.Now()
	interval := time.Second / time.Duration(rate)
	total := int(duration / interval)
	for seq := range total {
		if d := time.Until(start.Add(time.Duration(seq) * interval)); d > 0 {
			time.Sleep(d) // pacing the load, not synchronising anything
		}
		if ctx.Err() != nil {
			break
		}
		jobs <- seq
	}
	close(jobs)
	publishers.Wait()
	published := time.Since(start)
	// Wait for the last deliveries: until all arrived, or none came for 3 s.
	want := sent.Load() * int64(nsubs)
	last, lastChange := delivered.Load(), time.Now()
	for delivered.Load() < want && time.Since(lastChange) < 3*time.Second && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
		if d := delivered.Load(); d != last {
			last, lastChange = d, time.Now()
		}
	}
	elapsed := time.Since(start)
	stop()
	for _, s := range subscribers {
		s.conn.CloseNow()
	}
	readers.Wait()

	var unique, dups, slow int64
	var all []time.Duration
	for _, s := range subscribers {
		unique += int64(s.unique)
		dups += int64(s.dups)
		all = append(all, s.latencies...)
		if s.slow {
			slow++
		}
	}
	lost := want - unique
	p := percentiles(all, 50, 90, 99, 100)
	res := result{
		{"subscribers", nsubs}, {"rate", rate}, {"pattern", pattern}, {"transport", map[bool]string{false: "websocket", true: "mqtt"}[mqtt]},
		{"duration_s", round(published.Seconds(), 2)},
		{"deliveries_per_sec", round(float64(unique+dups)/elapsed.Seconds(), 0)},
		{"p50_ms", p[0]}, {"p90_ms", p[1]}, {"p99_ms", p[2]}, {"max_ms", p[3]},
		{"sent", sent.Load()}, {"publish_errors", failed.Load()},
		{"delivered", unique + dups}, {"lost", lost}, {"duplicated", dups},
		{"closed_slow", slow}, // WebSocket subscribers the edge closed with 4008; they do not resume here
	}
	if lost != 0 || dups != 0 || failed.Load() != 0 {
		fmt.Fprintf(e.stderr, "\n*** fanout: %d lost, %d duplicated, %d publish errors ***\n\n", lost, dups, failed.Load())
		return res, errLoss
	}
	return res, nil
}
