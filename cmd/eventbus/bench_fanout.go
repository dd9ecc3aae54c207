package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/sync/errgroup"
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
	if pos, err := parse(fs, args); err != nil {
		return err
	} else if len(pos) != 0 || *subs < 1 || *rate < 1 {
		fs.Usage()
		return errUsage
	}
	if !*ramp {
		r, err := fanoutTrial(ctx, e, &b, *subs, *rate, *duration, *pattern)
		if r != nil {
			if perr := r.print(e.stdout, b.json, "fanout"); perr != nil {
				return perr
			}
		}
		return err
	}
	var best result
	for r := *rate; ; r *= 2 {
		res, err := fanoutTrial(ctx, e, &b, *subs, r, *duration, *pattern)
		if err != nil && res == nil {
			return err
		}
		p99 := res.get("p99_ms").(float64)
		fmt.Fprintf(e.stderr, "rate %d/s: p99 %.1f ms, lost %d, duplicated %d\n", r, p99, res.get("lost"), res.get("duplicated"))
		if err != nil || p99 > 50 {
			break
		}
		best = append(result{{"max_rate", r}}, res...)
	}
	if best == nil {
		return fmt.Errorf("even %d events/s missed the bar (p99 ≤ 50 ms, nothing lost)", *rate)
	}
	return best.print(e.stdout, b.json, "fanout --ramp")
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
	seen      []bool // by sequence number
	unique    int
	dups      int
	latencies []time.Duration
}

// read counts deliveries until the connection closes. Reads take no
// context: a context shared by 1,000 readers is a lock they all take twice
// per message, and closing the connection ends the read anyway.
func (s *subscriber) read(delivered *atomic.Int64) {
	var buf bytes.Buffer
	key := []byte(`"subject":"`)
	for {
		_, r, err := s.conn.Reader(context.Background())
		if err != nil {
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

func fanoutTrial(ctx context.Context, e env, b *benchFlags, nsubs, rate int, duration time.Duration, pattern bool) (result, error) {
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
			conn, err := b.dialEdge(gctx, &src, i, tok, sub)
			if err != nil {
				return err
			}
			conn.SetReadLimit(1 << 20)
			n := rate*int(duration/time.Second) + 1024
			subscribers[i] = &subscriber{conn: conn, seen: make([]bool, n), latencies: make([]time.Duration, 0, n)}
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

	var unique, dups int64
	var all []time.Duration
	for _, s := range subscribers {
		unique += int64(s.unique)
		dups += int64(s.dups)
		all = append(all, s.latencies...)
	}
	lost := want - unique
	p := percentiles(all, 50, 90, 99, 100)
	res := result{
		{"subscribers", nsubs}, {"rate", rate}, {"pattern", pattern},
		{"duration_s", round(published.Seconds(), 2)},
		{"deliveries_per_sec", round(float64(unique+dups)/elapsed.Seconds(), 0)},
		{"p50_ms", p[0]}, {"p90_ms", p[1]}, {"p99_ms", p[2]}, {"max_ms", p[3]},
		{"sent", sent.Load()}, {"publish_errors", failed.Load()},
		{"delivered", unique + dups}, {"lost", lost}, {"duplicated", dups},
	}
	if lost != 0 || dups != 0 || failed.Load() != 0 {
		fmt.Fprintf(e.stderr, "\n*** fanout: %d lost, %d duplicated, %d publish errors ***\n\n", lost, dups, failed.Load())
		return res, errLoss
	}
	return res, nil
}
