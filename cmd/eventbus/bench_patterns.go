package main

import (
	"context"
	"fmt"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/sync/errgroup"
)

// Client patterns as the attack that pattern amplification names made
// them: each user holds 200 distinct patterns over two connections of 100.
const (
	patternsPerConn     = 100
	patternConnsPerUser = 2
)

// holdPatterns opens edge connections subscribing n distinct wildcard
// patterns in namespace ns, none matching anything published, and keeps
// them open until the returned function is called, which returns once the
// edge has seen them close (so the next scenario starts from a quiet edge).
func (b *benchFlags) holdPatterns(ctx context.Context, n int, ns string) (release func(), err error) {
	before, err := scrape(ctx, b.edge, "eventbus_edge_connections")
	if err != nil {
		return nil, err
	}
	conns := (n + patternsPerConn - 1) / patternsPerConn
	held := make([]*websocket.Conn, conns)
	release = func() {
		for _, c := range held {
			if c != nil {
				c.CloseNow()
			}
		}
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
			if now, err := scrape(ctx, b.edge, "eventbus_edge_connections"); err != nil || now <= before {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	var src sourceClients
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(64)
	for i := range conns {
		g.Go(func() error {
			user := fmt.Sprintf("pattern-holder-%d", i/patternConnsPerUser)
			tok, err := b.token(gctx, user)
			if err != nil {
				return err
			}
			conn, err := b.dialEdge(gctx, &src, i, tok, "")
			if err != nil {
				return err
			}
			held[i] = conn
			for p := i * patternsPerConn; p < min(n, (i+1)*patternsPerConn); p++ {
				if err := subscribe(gctx, conn, fmt.Sprintf("%s:u%dp%d*", ns, i/patternConnsPerUser, p)); err != nil {
					return fmt.Errorf("connection %d: %w", i, err)
				}
			}
			// Read on, so pings are answered, until the connection is closed.
			go func() {
				for {
					if _, _, err := conn.Read(context.Background()); err != nil {
						return
					}
				}
			}()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		release()
		return nil, fmt.Errorf("hold %d patterns: %w", n, err)
	}
	return release, nil
}
