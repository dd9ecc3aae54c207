// Package config reads the API service's settings from the environment.
package config

import (
	"fmt"
	"log/slog"

	"github.com/eventbus-suite/eventbus/pkg/envconfig"
)

// Config is every setting of bin/api.
type Config struct {
	HTTPAddr      string     // API_HTTP_ADDR
	GRPCAddr      string     // API_GRPC_ADDR
	RedisURL      string     // REDIS_URL
	RedisPrefix   string     // REDIS_PREFIX: channel and key prefix, for sharing one Redis
	APIKeys       []string   // API_KEYS: comma-separated; empty means open
	MaxBodyBytes  int64      // API_MAX_BODY_BYTES
	MaxBatchBytes int64      // API_MAX_BATCH_BYTES
	Pprof         bool       // PPROF: serve /debug/pprof on the HTTP port, for profiling only
	LogLevel      slog.Level // LOG_LEVEL
}

// Load reads the configuration through getenv and reports every bad
// variable at once.
func Load(getenv func(string) string) (Config, error) {
	r := envconfig.New(getenv)
	c := Config{
		HTTPAddr:      r.Addr("API_HTTP_ADDR", ":8080"),
		GRPCAddr:      r.Addr("API_GRPC_ADDR", ":9090"),
		RedisURL:      r.RedisURL("REDIS_URL", "redis://localhost:6379/0"),
		RedisPrefix:   r.ChannelPrefix("REDIS_PREFIX"),
		APIKeys:       r.List("API_KEYS", nil),
		MaxBodyBytes:  r.Int("API_MAX_BODY_BYTES", 1<<20, 1),
		MaxBatchBytes: r.Int("API_MAX_BATCH_BYTES", 16<<20, 1),
		Pprof:         r.Bool("PPROF", false),
		LogLevel:      r.LogLevel("LOG_LEVEL", slog.LevelInfo),
	}
	if err := r.Err(); err != nil {
		return Config{}, fmt.Errorf("configuration: %w", err)
	}
	return c, nil
}
