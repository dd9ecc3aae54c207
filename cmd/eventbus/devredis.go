package main

import (
	"context"
	"fmt"

	"github.com/alicebob/miniredis/v2"
)

func runDevRedis(ctx context.Context, e env, args []string) error {
	fs := flags(e, "devredis", "",
		"Runs an embedded Redis-compatible server (miniredis) until interrupted. It is a\n"+
			"fallback for 'make run' on a machine without redis-server, for development only:\n"+
			"it keeps nothing on disk and delivers a message once per connection even when\n"+
			"several of its patterns match.")
	addr := fs.String("addr", "127.0.0.1:6379", "address to listen on")
	if pos, err := parse(fs, args); err != nil {
		return err
	} else if len(pos) != 0 {
		fs.Usage()
		return errUsage
	}
	m := miniredis.NewMiniRedis()
	if err := m.StartAddr(*addr); err != nil {
		return fmt.Errorf("start embedded redis on %s: %w", *addr, err)
	}
	defer m.Close()
	fmt.Fprintf(e.stderr, "embedded Redis-compatible server (miniredis) listening on %s; development only\n", m.Addr())
	<-ctx.Done()
	return nil
}
