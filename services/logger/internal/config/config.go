// Package config reads the logger service's settings from the environment.
package config

import (
	"fmt"
	"time"

	"github.com/eventbus-suite/eventbus/pkg/channel"
	"github.com/eventbus-suite/eventbus/pkg/envconfig"
)

// Config is every setting of bin/logger.
type Config struct {
	envconfig.Common // REDIS_URL, REDIS_PREFIX, PPROF, LOG_LEVEL

	HTTPAddr     string   // LOGGER_HTTP_ADDR
	Patterns     []string // LOGGER_PATTERNS: comma-separated
	Dir          string   // LOGGER_DIR
	MaxFileBytes int64    // LOGGER_MAX_FILE_BYTES: rotate past this size
	MaxFiles     int      // LOGGER_MAX_FILES: rotated files kept
	TailBuffer   int      // LOGGER_TAIL_BUFFER: recent events kept in memory for tails
	Stdout       bool     // LOGGER_STDOUT: also copy each event line to stdout, as far as it keeps up
	// Member is this replica's name in the consumer group "logger"
	// (LOGGER_MEMBER, else the host name as a token): a replica restarted
	// under its name gets back what it had not acknowledged.
	Member string

	APIKeys          []string      // API_KEYS: comma-separated keys a tail must send; empty means open
	MaxTails         int           // LOGGER_MAX_TAILS: tails open at once
	TailWriteTimeout time.Duration // LOGGER_TAIL_WRITE_TIMEOUT: cut off a tail whose client takes no write for this long
}

// Load reads the configuration through getenv and reports every bad
// variable at once.
func Load(getenv func(string) string) (Config, error) {
	r := envconfig.New(getenv)
	c := Config{
		Common:       r.Common(),
		HTTPAddr:     r.Addr("LOGGER_HTTP_ADDR", ":8082"),
		Patterns:     r.List("LOGGER_PATTERNS", []string{"*"}),
		Dir:          r.String("LOGGER_DIR", "./data/logger"),
		MaxFileBytes: r.Int("LOGGER_MAX_FILE_BYTES", 64<<20, 4096),
		MaxFiles:     int(r.Int("LOGGER_MAX_FILES", 10, 1)),
		TailBuffer:   int(r.Int("LOGGER_TAIL_BUFFER", 10000, 1)),
		Stdout:       r.Bool("LOGGER_STDOUT", true),
		Member:       r.Member("LOGGER_MEMBER"),

		APIKeys:          r.List("API_KEYS", nil),
		MaxTails:         int(r.Int("LOGGER_MAX_TAILS", 100, 1)),
		TailWriteTimeout: r.Duration("LOGGER_TAIL_WRITE_TIMEOUT", 10*time.Second),
	}
	for _, p := range c.Patterns {
		r.Check("LOGGER_PATTERNS", p, channel.ValidatePattern(p))
	}
	if err := r.Err(); err != nil {
		return Config{}, fmt.Errorf("configuration: %w", err)
	}
	return c, nil
}
