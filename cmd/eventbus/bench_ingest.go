package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	eventbusv1 "github.com/eventbus-suite/eventbus/proto/gen/eventbus/v1"
)

const loggedMetric = "eventbus_logger_events_logged_total"

func benchIngest(ctx context.Context, e env, args []string) error {
	fs := flags(e, "bench ingest", "",
		"Publishes as fast as C clients can: HTTP POST /v1/events from keep-alive clients, or with\n"+
			"--grpc, PublishStream streams of --batch events (latencies are then per stream). Then it\n"+
			"checks that the logger recorded every accepted event.")
	var b benchFlags
	b.register(fs, e)
	concurrency := fs.Int("concurrency", 32, "concurrent clients (or streams)")
	duration := fs.Duration("duration", 10*time.Second, "how long to publish")
	batch := fs.Int("batch", 1000, "events per gRPC stream")
	rate := fs.Float64("rate", 0, "HTTP only: post at this many events/s in all, on a fixed schedule, and time each from when it was due\n(0: as fast as the clients can)")
	patterns := fs.Int("patterns", 0, "first subscribe this many distinct patterns at the edge, 200 per user, as an attacker would")
	patternsNS := fs.String("patterns-namespace", "amp", "namespace of those patterns; with bench, the ingest's own, every event reaches the edge through their cover")
	if pos, err := parse(fs, args); err != nil {
		return err
	} else if len(pos) != 0 || *concurrency < 1 || *batch < 1 || *patterns < 0 || *rate < 0 || (*rate > 0 && b.grpc.on) {
		fs.Usage()
		return errUsage
	}
	redisPatterns := "n/a"
	if *patterns > 0 {
		release, err := b.holdPatterns(ctx, *patterns, *patternsNS)
		if err != nil {
			return err
		}
		defer release()
		if n, err := scrape(ctx, b.edge, "eventbus_edge_redis_patterns"); err == nil {
			redisPatterns = strconv.FormatFloat(n, 'f', 0, 64)
		}
	}
	before, loggerErr := scrape(ctx, b.logger, loggedMetric)

	var accepted, failed atomic.Int64
	lat := make([][]time.Duration, *concurrency)
	deadline := time.Now().Add(*duration)
	var work func(i int) error
	useGRPC := b.grpc.on
	if useGRPC {
		conn, err := grpc.NewClient(b.grpc.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		defer conn.Close()
		client := eventbusv1.NewEventServiceClient(conn)
		if b.apiKey != "" {
			ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+b.apiKey)
		}
		req := &eventbusv1.PublishStreamRequest{Event: &eventbusv1.Envelope{Type: "bench.ingest", Subject: "grpc"}}
		work = func(i int) error {
			for time.Now().Before(deadline) && ctx.Err() == nil {
				t0 := time.Now()
				stream, err := client.PublishStream(ctx)
				if err != nil {
					return err
				}
				for range *batch {
					if err := stream.Send(req); err != nil {
						return err
					}
				}
				resp, err := stream.CloseAndRecv()
				if err != nil {
					return err
				}
				lat[i] = append(lat[i], time.Since(t0))
				accepted.Add(resp.GetAccepted())
				failed.Add(resp.GetRejected())
			}
			return nil
		}
	} else {
		cfg, err := newPoster(b.api, b.apiKey)
		if err != nil {
			return err
		}
		body := []byte(`{"type":"bench.ingest","subject":"http"}`)
		// With --rate, client i posts every interval from its own offset,
		// and a post is timed from when it was due, not from when it went
		// out: a server that falls behind shows in the latencies instead
		// of slowing the schedule (coordinated omission).
		var interval time.Duration
		if *rate > 0 {
			interval = time.Duration(float64(*concurrency) / *rate * float64(time.Second))
		}
		first := time.Now()
		work = func(i int) error {
			p := posts{cfg: cfg}
			defer p.close()
			due := first.Add(interval * time.Duration(i) / time.Duration(*concurrency))
			for time.Now().Before(deadline) && ctx.Err() == nil {
				t0 := time.Now()
				if interval > 0 {
					if wait := time.Until(due); wait > 0 {
						time.Sleep(wait)
					}
					t0, due = due, due.Add(interval)
				}
				status, err := p.post(ctx, body)
				if err != nil && ctx.Err() != nil {
					return nil
				}
				if err == nil {
					lat[i] = append(lat[i], time.Since(t0))
				}
				if err == nil && status == http.StatusAccepted {
					accepted.Add(1)
				} else {
					failed.Add(1)
				}
			}
			return nil
		}
	}
	stop := progress(e, func() string { return fmt.Sprintf("ingest: accepted %d, errors %d", accepted.Load(), failed.Load()) })
	start := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, *concurrency)
	for i := range *concurrency {
		wg.Go(func() { errs[i] = work(i) })
	}
	wg.Wait()
	elapsed := time.Since(start)
	stop()
	for _, err := range errs {
		if err != nil {
			return fmt.Errorf("ingest: %w", err)
		}
	}
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	p := percentiles(all, 50, 99)
	transport := "http"
	if useGRPC {
		transport = "grpc"
	}
	res := result{
		{"transport", transport}, {"concurrency", *concurrency}, {"duration_s", round(elapsed.Seconds(), 2)},
		{"offered_per_sec", offered(*rate)},
		{"events_per_sec", round(float64(accepted.Load())/elapsed.Seconds(), 0)},
		{"p50_ms", p[0]}, {"p99_ms", p[1]}, {"accepted", accepted.Load()}, {"errors", failed.Load()},
	}
	if *patterns > 0 {
		res = append(res, field{"client_patterns", *patterns}, field{"edge_redis_patterns", redisPatterns})
	}
	if loggerErr != nil {
		fmt.Fprintf(e.stderr, "ingest: not counting what the logger recorded: %v\n", loggerErr)
		return res.print(e.stdout, b.json, "ingest")
	}
	// The logger may trail: wait until it has everything or stops moving.
	logged, err := waitLogged(ctx, b.logger, before, accepted.Load())
	if err != nil {
		return err
	}
	res = append(res, field{"logged", logged})
	if err := res.print(e.stdout, b.json, "ingest"); err != nil {
		return err
	}
	if logged != accepted.Load() {
		fmt.Fprintf(e.stderr, "\n*** ingest: the logger recorded %d of %d accepted events ***\n\n", logged, accepted.Load())
		return errLoss
	}
	return nil
}

// offered names the rate asked for: "max" when none was.
func offered(rate float64) any {
	if rate == 0 {
		return "max"
	}
	return rate
}

func waitLogged(ctx context.Context, logger string, before float64, want int64) (int64, error) {
	var last float64 = -1
	lastChange := time.Now()
	for {
		now, err := scrape(ctx, logger, loggedMetric)
		if err != nil {
			return 0, err
		}
		got := int64(now - before)
		if got >= want || time.Since(lastChange) > 5*time.Second {
			return got, nil
		}
		if now != last {
			last, lastChange = now, time.Now()
		}
		select {
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			return got, ctx.Err()
		}
	}
}

// posterConfig posts JSON to /v1/events over keep-alive connections. It
// writes each request's bytes itself and reads the answer with net/http's
// parser: http.Client's transport hands every exchange between goroutines,
// and on a shared machine that costs the services under test a third of
// the CPU they could have.
type posterConfig struct {
	addr string
	tls  *tls.Config
	head []byte // request line and headers but Content-Length
}

func newPoster(api, apiKey string) (*posterConfig, error) {
	u, err := url.Parse(strings.TrimSuffix(api, "/") + "/v1/events")
	if err != nil {
		return nil, err
	}
	p := &posterConfig{addr: u.Host}
	switch u.Scheme {
	case "https":
		p.tls = &tls.Config{ServerName: u.Hostname()}
		if u.Port() == "" {
			p.addr += ":443"
		}
	case "http":
		if u.Port() == "" {
			p.addr += ":80"
		}
	default:
		return nil, fmt.Errorf("--api %s: want an http:// or https:// address", api)
	}
	head := fmt.Sprintf("POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n", u.RequestURI(), u.Host)
	if apiKey != "" {
		head += "Authorization: Bearer " + apiKey + "\r\n"
	}
	p.head = []byte(head)
	return p, nil
}

type poster struct {
	*posterConfig
	conn net.Conn
	br   *bufio.Reader
	req  []byte
}

func (p *posterConfig) dial(ctx context.Context) (*poster, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", p.addr)
	if err != nil {
		return nil, err
	}
	if p.tls != nil {
		conn = tls.Client(conn, p.tls)
	}
	return &poster{posterConfig: p, conn: conn, br: bufio.NewReader(conn)}, nil
}

// post sends body and returns the answer's status. After an error the
// connection is unusable.
func (c *poster) post(body []byte) (int, error) {
	c.req = append(c.req[:0], c.head...)
	c.req = append(c.req, "Content-Length: "...)
	c.req = strconv.AppendInt(c.req, int64(len(body)), 10)
	c.req = append(c.req, "\r\n\r\n"...)
	c.req = append(c.req, body...)
	_ = c.conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.conn.Write(c.req); err != nil {
		return 0, err
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		return 0, err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err == nil && resp.Close {
		err = errors.New("the server closed the connection")
	}
	return resp.StatusCode, err
}

func (c *poster) close() {
	if c != nil {
		c.conn.Close()
	}
}

// posts keeps one poster connected, dialling again after an error.
type posts struct {
	cfg *posterConfig
	c   *poster
}

// post posts body, and reports the status; an error is a failed post
// (counted by the caller), a connection that failed is replaced next time.
func (p *posts) post(ctx context.Context, body []byte) (int, error) {
	if p.c == nil {
		c, err := p.cfg.dial(ctx)
		if err != nil {
			return 0, err
		}
		p.c = c
	}
	status, err := p.c.post(body)
	if err != nil {
		p.c.close()
		p.c = nil
	}
	return status, err
}

func (p *posts) close() { p.c.close() }
