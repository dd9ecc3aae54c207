package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/sync/errgroup"
)

func benchConnections(ctx context.Context, e env, args []string) error {
	fs := flags(e, "bench connections", "",
		"Opens N idle WebSocket connections to the edge, from source addresses spread over\n"+
			"127.0.0.0/8, and reports how long that took and the edge's resident memory and Go heap\n"+
			"per connection, read from its own metrics. With --subscribe, once all are open, every\n"+
			"connection subscribes at once to a channel of its own (a subscribe storm), timed.")
	var b benchFlags
	b.register(fs, e)
	count := fs.Int("count", 10000, "connections to open")
	settle := fs.Duration("settle", 3*time.Second, "how long to let the edge settle before reading its memory")
	storm := fs.Bool("subscribe", false, "then have every connection subscribe at once to a distinct channel")
	if pos, err := parse(fs, args); err != nil {
		return err
	} else if len(pos) != 0 || *count < 1 {
		fs.Usage()
		return errUsage
	}
	readMem := func() (rss, heap float64, err error) {
		if rss, err = scrape(ctx, b.edge, "process_resident_memory_bytes"); err != nil {
			return
		}
		heap, err = scrape(ctx, b.edge, "go_memstats_heap_inuse_bytes")
		return
	}
	rss0, heap0, err := readMem()
	if err != nil {
		return err
	}
	conns0, err := scrape(ctx, b.edge, "eventbus_edge_connections")
	if err != nil {
		return err
	}
	var src sourceClients
	conns := make([]*websocket.Conn, *count)
	var readers sync.WaitGroup
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.CloseNow()
			}
		}
		readers.Wait()
	}()
	var opened atomic.Int64
	stop := progress(e, func() string { return fmt.Sprintf("connections: %d of %d open", opened.Load(), *count) })
	start := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(128)
	for i := range conns {
		g.Go(func() error {
			tok, err := b.connectionToken(gctx, i)
			if err != nil {
				return err
			}
			c, err := b.dialEdge(gctx, &src, i, tok, "")
			if err != nil {
				return err
			}
			conns[i] = c
			opened.Add(1)
			return nil
		})
	}
	err = g.Wait()
	connectTime := time.Since(start)
	stop()
	if err != nil {
		return fmt.Errorf("opened %d of %d connections: %w", opened.Load(), *count, err)
	}
	var stormTime time.Duration
	var stormLat []time.Duration
	if *storm {
		stormTime, stormLat, err = subscribeStorm(ctx, conns)
		if err != nil {
			return err
		}
	}
	for _, c := range conns {
		// Read, so the edge's pings are answered; nothing else arrives.
		// The read ends when the deferred close above closes c.
		readers.Go(func() { _, _, _ = c.Read(ctx) })
	}
	select {
	case <-time.After(*settle):
	case <-ctx.Done():
		return ctx.Err()
	}
	conns1, err := scrape(ctx, b.edge, "eventbus_edge_connections")
	if err != nil {
		return err
	}
	if got := int(conns1 - conns0); got != *count {
		return fmt.Errorf("the edge reports %d new connections, want %d", got, *count)
	}
	rss1, heap1, err := readMem()
	if err != nil {
		return err
	}
	n := float64(*count)
	res := result{
		{"count", *count}, {"connect_seconds", round(connectTime.Seconds(), 2)},
		{"rss_bytes_per_conn", round((rss1-rss0)/n, 0)}, {"heap_bytes_per_conn", round((heap1-heap0)/n, 0)},
		{"edge_rss_bytes", rss1}, {"edge_heap_inuse_bytes", heap1},
	}
	if *storm {
		p := percentiles(stormLat, 50, 99)
		res = append(res, field{"storm_seconds", round(stormTime.Seconds(), 2)},
			field{"subscribes_per_sec", round(n/stormTime.Seconds(), 0)}, field{"subscribe_p50_ms", p[0]}, field{"subscribe_p99_ms", p[1]})
	}
	return res.print(e.stdout, b.json, "connections")
}

// subscribeStorm has every connection subscribe at once to a channel of
// its own, and returns how long until all were answered and each one's
// latency.
func subscribeStorm(ctx context.Context, conns []*websocket.Conn) (time.Duration, []time.Duration, error) {
	lat := make([]time.Duration, len(conns))
	release := make(chan struct{})
	var g errgroup.Group
	var ready sync.WaitGroup
	for i, c := range conns {
		ready.Add(1)
		g.Go(func() error {
			ready.Done()
			<-release
			t0 := time.Now()
			if err := subscribe(ctx, c, fmt.Sprintf("storm:c%d", i)); err != nil {
				return fmt.Errorf("storm: connection %d: %w", i, err)
			}
			lat[i] = time.Since(t0)
			return nil
		})
	}
	ready.Wait()
	start := time.Now()
	close(release)
	err := g.Wait()
	return time.Since(start), lat, err
}
