// Package config reads the API service's settings from the environment.
package config

import (
	"fmt"
	"time"

	"github.com/eventbus-suite/eventbus/pkg/envconfig"
)

// Config is every setting of bin/api.
type Config struct {
	envconfig.Common // REDIS_URL, REDIS_PREFIX, PPROF, LOG_LEVEL

	HTTPAddr       string        // API_HTTP_ADDR
	GRPCAddr       string        // API_GRPC_ADDR
	APIKeys        []string      // API_KEYS: comma-separated; empty means open
	MaxBodyBytes   int64         // API_MAX_BODY_BYTES
	MaxBatchBytes  int64         // API_MAX_BATCH_BYTES
	PublishTimeout time.Duration // API_PUBLISH_TIMEOUT: bounds each Redis step of a request
	MaxTokenAge    time.Duration // EDGE_MAX_TOKEN_AGE, shared with the edge: how long a revocation is kept
}

// Load reads the configuration through getenv and reports every bad
// variable at once.
func Load(getenv func(string) string) (Config, error) {
	r := envconfig.New(getenv)
	c := Config{
		Common:         r.Common(),
		HTTPAddr:       r.Addr("API_HTTP_ADDR", ":8080"),
		GRPCAddr:       r.Addr("API_GRPC_ADDR", ":9090"),
		APIKeys:        r.List("API_KEYS", nil),
		MaxBodyBytes:   r.Int("API_MAX_BODY_BYTES", 1<<20, 1),
		MaxBatchBytes:  r.Int("API_MAX_BATCH_BYTES", 16<<20, 1),
		PublishTimeout: r.Duration("API_PUBLISH_TIMEOUT", time.Second),
		MaxTokenAge:    r.Duration("EDGE_MAX_TOKEN_AGE", 24*time.Hour),
	}
	if err := r.Err(); err != nil {
		return Config{}, fmt.Errorf("configuration: %w", err)
	}
	return c, nil
}
