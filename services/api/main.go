// Command api turns HTTP and gRPC calls into events on the bus.
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
	"github.com/eventbus-suite/eventbus/pkg/bus/redisbus"
	"github.com/eventbus-suite/eventbus/pkg/logging"
	"github.com/eventbus-suite/eventbus/pkg/presence"
	"github.com/eventbus-suite/eventbus/pkg/revocation"
	"github.com/eventbus-suite/eventbus/pkg/server"
	"github.com/eventbus-suite/eventbus/services/api/internal/config"
	"github.com/eventbus-suite/eventbus/services/api/internal/grpcapi"
	"github.com/eventbus-suite/eventbus/services/api/internal/httpapi"
	"github.com/eventbus-suite/eventbus/services/api/internal/inflight"
	"github.com/eventbus-suite/eventbus/services/api/internal/ingest"
)

func main() {
	server.TuneGC(os.Getenv) // docs/operations.md, "Memory: the api's garbage collector"
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Getenv, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "api: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, getenv func(string) string, stderr io.Writer) error {
	cfg, err := config.Load(getenv)
	if err != nil {
		return err
	}
	log := logging.New(stderr, cfg.LogFormat, cfg.LogLevel, "api")
	keys := apikey.New(cfg.APIKeys)
	if keys.Open() {
		log.Warn("API_KEYS is not set: every /v1 route and gRPC call is open to anyone who can reach it, " +
			"among them GET /v1/stats (every channel with subscribers, and how many) and publishing user.created, " +
			"which overwrites the email address a user's notifications go to")
	}

	reg := server.NewRegistry()
	b, rdb, err := redisbus.Open(ctx, cfg.RedisURL, 5*time.Second, cfg.BusOptions(log, reg, "eventbus_api"))
	if err != nil {
		return err
	}
	defer b.Close() // and its client

	svc := ingest.New(b, "eventbus/api", cfg.PublishTimeout, reg)
	idem := ingest.NewIdempotency(rdb, cfg.RedisPrefix, 24*time.Hour, cfg.PublishTimeout)
	budget := inflight.New(cfg.MaxInflightBytes, reg)
	mux := http.NewServeMux()
	httpapi.Register(mux, httpapi.Options{
		Ingest: svc, Idempotency: idem, Stats: b.Stats, History: b, Keys: keys, Logger: log,
		Presence:     presence.New(rdb, b.KeyOf, 0), // read only
		Revocations:  revocation.Store{Redis: rdb, Prefix: cfg.RedisPrefix, MaxAge: cfg.MaxTokenAge},
		MaxBodyBytes: cfg.MaxBodyBytes, MaxBatchBytes: cfg.MaxBatchBytes, Budget: budget,
	})
	if cfg.Pprof {
		server.Pprof(mux)
	}
	server.Ops(mux, reg, b.Ready)
	gs := grpcapi.New(svc, idem, b, keys, budget, log)

	hl, err := server.Listen(ctx, cfg.HTTPAddr)
	if err != nil {
		return err
	}
	gl, err := server.Listen(ctx, cfg.GRPCAddr)
	if err != nil {
		hl.Close()
		return err
	}
	log.Info("listening", "http_addr", hl.Addr().String(), "grpc_addr", gl.Addr().String())

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		return server.ServeHTTP(ctx, server.NewHTTPServer(mux, server.HTTPOptions{}), hl)
	})
	g.Go(func() error { return server.ServeGRPC(ctx, gs, gl) })
	err = g.Wait()
	log.Info("stopped")
	return err
}
