// Package config reads the logger service's settings from the environment.
package config

import (
	"fmt"
	"log/slog"

	"github.com/eventbus-suite/eventbus/pkg/channel"
	"github.com/eventbus-suite/eventbus/pkg/envconfig"
)

// Config is every setting of bin/logger.
type Config struct {
	HTTPAddr     string     // LOGGER_HTTP_ADDR
	Patterns     []string   // LOGGER_PATTERNS: comma-separated
	Dir          string     // LOGGER_DIR
	MaxFileBytes int64      // LOGGER_MAX_FILE_BYTES: rotate past this size
	MaxFiles     int        // LOGGER_MAX_FILES: rotated files kept
	TailBuffer   int        // LOGGER_TAIL_BUFFER: recent events kept in memory for tails
	Stdout       bool       // LOGGER_STDOUT: also write each event line to stdout
	RedisURL     string     // REDIS_URL
	RedisPrefix  string     // REDIS_PREFIX
	Pprof        bool       // PPROF: serve /debug/pprof on the HTTP port, for profiling only
	LogLevel     slog.Level // LOG_LEVEL
}

// Load reads the configuration through getenv and reports every bad
// variable at once.
func Load(getenv func(string) string) (Config, error) {
	r := envconfig.New(getenv)
	c := Config{
		HTTPAddr:     r.Addr("LOGGER_HTTP_ADDR", ":8082"),
		Patterns:     r.List("LOGGER_PATTERNS", []string{"*"}),
		Dir:          r.String("LOGGER_DIR", "./data/logger"),
		MaxFileBytes: r.Int("LOGGER_MAX_FILE_BYTES", 64<<20, 4096),
		MaxFiles:     int(r.Int("LOGGER_MAX_FILES", 10, 1)),
		TailBuffer:   int(r.Int("LOGGER_TAIL_BUFFER", 10000, 1)),
		Stdout:       r.Bool("LOGGER_STDOUT", true),
		RedisURL:     r.RedisURL("REDIS_URL", "redis://localhost:6379/0"),
		RedisPrefix:  r.ChannelPrefix("REDIS_PREFIX"),
		Pprof:        r.Bool("PPROF", false),
		LogLevel:     r.LogLevel("LOG_LEVEL", slog.LevelInfo),
	}
	for _, p := range c.Patterns {
		r.Check("LOGGER_PATTERNS", p, channel.ValidatePattern(p))
	}
	if err := r.Err(); err != nil {
		return Config{}, fmt.Errorf("configuration: %w", err)
	}
	return c, nil
}
