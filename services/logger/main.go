// Command logger records every event on the bus and lets people tail them.
package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/eventbus-suite/eventbus/pkg/apikey"
	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/bus/redisbus"
	"github.com/eventbus-suite/eventbus/pkg/logging"
	"github.com/eventbus-suite/eventbus/pkg/server"
	"github.com/eventbus-suite/eventbus/services/logger/internal/config"
	"github.com/eventbus-suite/eventbus/services/logger/internal/eventlog"
	"github.com/eventbus-suite/eventbus/services/logger/internal/recorder"
	"github.com/eventbus-suite/eventbus/services/logger/internal/tailapi"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "logger: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := config.Load(getenv)
	if err != nil {
		return err
	}
	log := logging.New(stderr, cfg.LogFormat, cfg.LogLevel, "logger")

	reg := server.NewRegistry()
	b, _, err := redisbus.Open(ctx, cfg.RedisURL, 5*time.Second, cfg.BusOptions(log, reg, "eventbus_logger"))
	if err != nil {
		return err
	}
	defer b.Close() // and its client

	// The positions of the records are keyed by stream, as the bus names
	// them.
	recent, err := eventlog.LoadRecent(cfg.Dir, cfg.TailBuffer, b.StreamOf)
	if err != nil {
		return err
	}
	files, err := eventlog.OpenFiles(cfg.Dir, cfg.MaxFileBytes, cfg.MaxFiles)
	if err != nil {
		return err
	}
	defer files.Close()
	window := eventlog.NewWindow(cfg.TailBuffer, recent)
	// Every replica of the logger is a member of the group "logger", so
	// a restarted replica gets back what it had not acknowledged.
	con, err := b.ConsumeOrLive(ctx, "logger", cfg.Member, cfg.Patterns, bus.ConsumerOptions{})
	if err != nil {
		return err
	}
	defer con.Close()
	if !cfg.Stdout {
		stdout = nil
	}
	var name string // the member's, for /readyz; none when reading live
	var history bus.History
	if cfg.HistoryMaxLen > 0 {
		name, history = "logger/"+cfg.Member, b
	}
	rec := recorder.New(con, name, cfg.Patterns, b.StreamOf, files, stdout, window, log, reg)

	mux := http.NewServeMux()
	keys := apikey.New(cfg.APIKeys)
	if keys.Open() {
		log.Warn("API_KEYS is not set: anyone who can reach the logger may tail every event")
	}
	tailapi.Register(ctx, mux, reg, tailapi.Options{
		Window: window, MaxN: cfg.TailBuffer, MaxTails: cfg.MaxTails, WriteTimeout: cfg.TailWriteTimeout, Keys: keys,
		History: history, Patterns: cfg.Patterns,
	})
	if cfg.Pprof {
		server.Pprof(mux)
	}
	// Ready when Redis answers (and, reading live, the subscription is):
	// the lag is reported, but a lag that cannot be read does not make the
	// logger unready.
	server.OpsDetail(mux, reg, func(ctx context.Context) (map[string]any, error) { return rec.Detail(), b.Ready(ctx) })
	l, err := server.Listen(ctx, cfg.HTTPAddr)
	if err != nil {
		return err
	}
	log.Info("listening", "http_addr", l.Addr().String(), "patterns", cfg.Patterns, "dir", cfg.Dir, "recent", len(recent.Records))

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return rec.Run(ctx) })
	g.Go(func() error {
		srv := server.NewHTTPServer(mux, server.HTTPOptions{})
		srv.ConnContext = tailapi.ConnContext
		return server.ServeHTTP(ctx, srv, l)
	})
	err = g.Wait()
	log.Info("stopped")
	return err
}
