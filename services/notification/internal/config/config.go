// Package config reads the notification service's settings from the
// environment.
package config

import (
	"errors"
	"fmt"
	"net/mail"
	"net/url"
	"time"

	"github.com/eventbus-suite/eventbus/pkg/envconfig"
	"github.com/eventbus-suite/eventbus/services/notification/internal/push"
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

	VAPIDPublicKey  string        // NOTIFY_VAPID_PUBLIC_KEY: with the private key, turns Web Push on
	VAPIDPrivateKey string        // NOTIFY_VAPID_PRIVATE_KEY
	VAPIDSubject    string        // NOTIFY_VAPID_SUBJECT: mailto: or https: URL; mailto:NOTIFY_FROM_EMAIL by default
	PushTTL         time.Duration // NOTIFY_PUSH_TTL: how long a push service keeps a push for an offline browser
	PushTimeout     time.Duration // NOTIFY_PUSH_TIMEOUT: bounds one attempt at a push
	PushAllowHTTP   bool          // NOTIFY_PUSH_ALLOW_HTTP: accept http endpoints on loopback (tests, development)

	AckTimeout time.Duration // NOTIFY_ACK_TIMEOUT: a notification sent in the page and not acknowledged this long falls back to push or email; 0 turns the fallback off
}

// Push reports whether Web Push is on: the VAPID keys are set.
func (c Config) Push() bool { return c.VAPIDPublicKey != "" }

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
	c.VAPIDPublicKey = r.String("NOTIFY_VAPID_PUBLIC_KEY", "")
	c.VAPIDPrivateKey = r.String("NOTIFY_VAPID_PRIVATE_KEY", "")
	c.VAPIDSubject = r.String("NOTIFY_VAPID_SUBJECT", "mailto:"+c.FromEmail)
	c.PushTTL = r.Duration("NOTIFY_PUSH_TTL", 24*time.Hour)
	c.PushTimeout = r.Duration("NOTIFY_PUSH_TIMEOUT", 10*time.Second)
	c.PushAllowHTTP = r.Bool("NOTIFY_PUSH_ALLOW_HTTP", false)
	checkPush(r, c)
	c.AckTimeout = ackTimeout(r)
	r.Check("SENDGRID_API_URL", c.SendGridURL, envconfig.CheckHTTPURL(c.SendGridURL, "https://api.sendgrid.com"))
	if a, err := mail.ParseAddress(c.FromEmail); err != nil || a.Address != c.FromEmail {
		r.Check("NOTIFY_FROM_EMAIL", c.FromEmail, errors.New("want a bare address such as noreply@example.com"))
	}
	if err := r.Err(); err != nil {
		return Config{}, fmt.Errorf("configuration: %w", err)
	}
	return c, nil
}

// maxPushTTL is the longest TTL the browsers' push services keep a message
// (FCM: 4 weeks).
const maxPushTTL = 28 * 24 * time.Hour

// checkPush checks the Web Push settings: both VAPID keys or neither, a
// pair that matches, a subject the push services accept.
func checkPush(r *envconfig.Reader, c Config) {
	switch {
	case c.VAPIDPublicKey == "" && c.VAPIDPrivateKey == "":
	case c.VAPIDPublicKey == "":
		r.Check("NOTIFY_VAPID_PUBLIC_KEY", "", errors.New("want it with NOTIFY_VAPID_PRIVATE_KEY, or neither (Web Push off)"))
	case c.VAPIDPrivateKey == "":
		r.Check("NOTIFY_VAPID_PRIVATE_KEY", "", errors.New("want it with NOTIFY_VAPID_PUBLIC_KEY, or neither (Web Push off)"))
	default:
		pubErr, privErr := push.CheckVAPID(c.VAPIDPublicKey, c.VAPIDPrivateKey)
		r.Check("NOTIFY_VAPID_PUBLIC_KEY", c.VAPIDPublicKey, pubErr)
		r.Check("NOTIFY_VAPID_PRIVATE_KEY", "(hidden)", privErr) // a secret: never echoed
	}
	if u, err := url.Parse(c.VAPIDSubject); err != nil || !(u.Scheme == "mailto" && u.Opaque != "" || u.Scheme == "https" && u.Host != "") {
		r.Check("NOTIFY_VAPID_SUBJECT", c.VAPIDSubject, errors.New("want a mailto: or https: URL where push services can reach you, such as mailto:ops@example.com"))
	}
	if c.PushTTL < 0 || c.PushTTL > maxPushTTL {
		r.Check("NOTIFY_PUSH_TTL", c.PushTTL.String(), fmt.Errorf("want 0 to %s", maxPushTTL))
	}
	if c.PushTimeout <= 0 {
		r.Check("NOTIFY_PUSH_TIMEOUT", c.PushTimeout.String(), errors.New("want a positive duration"))
	}
}

// ackTimeout reads NOTIFY_ACK_TIMEOUT, 30s when unset: a duration, or 0
// for no fallback (which envconfig's Duration refuses).
func ackTimeout(r *envconfig.Reader) time.Duration {
	const name, def = "NOTIFY_ACK_TIMEOUT", 30 * time.Second
	v := r.String(name, "")
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		r.Check(name, v, errors.New("want a duration such as 30s, or 0 to turn the fallback off"))
		return 0
	}
	return d
}
