// Package config reads the notification service's settings from the
// environment.
package config

import (
	"errors"
	"fmt"
	"net/mail"
	"time"

	"github.com/eventbus-suite/eventbus/pkg/envconfig"
)

// Config is every setting of bin/notification.
type Config struct {
	envconfig.Common // REDIS_URL, REDIS_PREFIX, PPROF, LOG_LEVEL

	HTTPAddr       string        // NOTIFICATION_HTTP_ADDR
	APIKeys        []string      // API_KEYS: comma-separated keys /v1/dead-letters wants; empty means open
	SendGridAPIKey string        // SENDGRID_API_KEY: empty means dry-run
	SendGridURL    string        // SENDGRID_API_URL: base URL of the SendGrid API
	FromEmail      string        // NOTIFY_FROM_EMAIL
	FromName       string        // NOTIFY_FROM_NAME
	MaxAttempts    int           // NOTIFICATION_MAX_ATTEMPTS: tries per email on 429 and 5xx
	RetryBase      time.Duration // NOTIFICATION_RETRY_BASE: first backoff, doubled each try
	RetryMax       time.Duration // NOTIFICATION_RETRY_MAX: longest wait between tries
	ClaimTTL       time.Duration // NOTIFICATION_CLAIM_TTL: how long a sent notification is remembered
	Workers        int           // NOTIFICATION_WORKERS: events handled at once (per user in order)
	Member         string        // NOTIFICATION_MEMBER: name in the consumer group "notification"; the host name by default
	Visibility     time.Duration // NOTIFICATION_VISIBILITY: an event not acknowledged (nor extended) this long goes to another replica
	SendTimeout    time.Duration // NOTIFICATION_SEND_TIMEOUT: bounds one email's send, retries included
}

// Load reads the configuration through getenv and reports every bad
// variable at once.
func Load(getenv func(string) string) (Config, error) {
	r := envconfig.New(getenv)
	c := Config{
		Common:         r.Common(),
		HTTPAddr:       r.Addr("NOTIFICATION_HTTP_ADDR", ":8083"),
		APIKeys:        r.List("API_KEYS", nil),
		SendGridAPIKey: r.String("SENDGRID_API_KEY", ""),
		SendGridURL:    r.String("SENDGRID_API_URL", "https://api.sendgrid.com"),
		FromEmail:      r.String("NOTIFY_FROM_EMAIL", "eventbus@example.com"),
		FromName:       r.String("NOTIFY_FROM_NAME", "eventbus"),
		MaxAttempts:    int(r.Int("NOTIFICATION_MAX_ATTEMPTS", 5, 1)),
		RetryBase:      r.Duration("NOTIFICATION_RETRY_BASE", 500*time.Millisecond),
		RetryMax:       r.Duration("NOTIFICATION_RETRY_MAX", 30*time.Second),
		ClaimTTL:       r.Duration("NOTIFICATION_CLAIM_TTL", 24*time.Hour),
		Workers:        int(r.Int("NOTIFICATION_WORKERS", 8, 1)),
		Member:         r.Member("NOTIFICATION_MEMBER"),
		Visibility:     r.Duration("NOTIFICATION_VISIBILITY", 30*time.Second),
		// Generous: a send cut short may have been accepted, and then its
		// redelivery sends it twice; a send that takes long costs only one
		// worker, its event being kept by the heartbeat meanwhile.
		SendTimeout: r.Duration("NOTIFICATION_SEND_TIMEOUT", 2*time.Minute),
	}
	r.Check("SENDGRID_API_URL", c.SendGridURL, envconfig.CheckHTTPURL(c.SendGridURL, "https://api.sendgrid.com"))
	if a, err := mail.ParseAddress(c.FromEmail); err != nil || a.Address != c.FromEmail {
		r.Check("NOTIFY_FROM_EMAIL", c.FromEmail, errors.New("want a bare address such as noreply@example.com"))
	}
	if err := r.Err(); err != nil {
		return Config{}, fmt.Errorf("configuration: %w", err)
	}
	return c, nil
}
