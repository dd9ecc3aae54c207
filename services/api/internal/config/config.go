// Package config reads the API service's settings from the environment.
package config

import (
	"fmt"
	"strconv"
	"time"

	"github.com/eventbus-suite/eventbus/pkg/envconfig"
)

// Config is every setting of bin/api.
type Config struct {
	envconfig.Common // REDIS_URL, REDIS_PREFIX, PPROF, LOG_LEVEL

	HTTPAddr      string   // API_HTTP_ADDR
	GRPCAddr      string   // API_GRPC_ADDR
	APIKeys       []string // API_KEYS: comma-separated; empty means open
	MaxBodyBytes  int64    // API_MAX_BODY_BYTES
	MaxBatchBytes int64    // API_MAX_BATCH_BYTES
	// MaxInflightBytes (API_MAX_INFLIGHT_BYTES) bounds the request bytes
	// held at once over every HTTP request and gRPC call; past it a
	// request is refused with 503 (gRPC: Unavailable). At least
	// MaxBatchBytes, so that the largest batch can be taken.
	MaxInflightBytes int64
	PublishTimeout   time.Duration // API_PUBLISH_TIMEOUT: bounds each Redis step of a request
	MaxTokenAge      time.Duration // EDGE_MAX_TOKEN_AGE, shared with the edge: how long a revocation is kept
}

// Load reads the configuration through getenv and reports every bad
// variable at once.
func Load(getenv func(string) string) (Config, error) {
	r := envconfig.New(getenv)
	c := Config{
		Common:        r.Common(),
		HTTPAddr:      r.Addr("API_HTTP_ADDR", ":8080"),
		GRPCAddr:      r.Addr("API_GRPC_ADDR", ":9090"),
		APIKeys:       r.List("API_KEYS", nil),
		MaxBodyBytes:  r.Int("API_MAX_BODY_BYTES", 1<<20, 1),
		MaxBatchBytes: r.Int("API_MAX_BATCH_BYTES", 16<<20, 1),
		// Two batches of the largest size; the api holds about four
		// times the bytes of the bodies it is publishing.
		MaxInflightBytes: r.Int("API_MAX_INFLIGHT_BYTES", 32<<20, 1),
		PublishTimeout:   r.Duration("API_PUBLISH_TIMEOUT", time.Second),
		MaxTokenAge:      r.Duration("EDGE_MAX_TOKEN_AGE", 24*time.Hour),
	}
	if c.MaxInflightBytes < max(c.MaxBatchBytes, c.MaxBodyBytes) {
		r.Check("API_MAX_INFLIGHT_BYTES", strconv.FormatInt(c.MaxInflightBytes, 10),
			fmt.Errorf("want at least API_MAX_BATCH_BYTES and API_MAX_BODY_BYTES (%d), or the largest request is never taken",
				max(c.MaxBatchBytes, c.MaxBodyBytes)))
	}
	if err := r.Err(); err != nil {
		return Config{}, fmt.Errorf("configuration: %w", err)
	}
	return c, nil
}
