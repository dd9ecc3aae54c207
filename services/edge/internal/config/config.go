// Package config reads the edge service's settings from the environment.
package config

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/eventbus-suite/eventbus/pkg/channel"
	"github.com/eventbus-suite/eventbus/pkg/envconfig"
	"github.com/eventbus-suite/eventbus/pkg/token"
)

// Config is every setting of bin/edge.
type Config struct {
	envconfig.Common // REDIS_URL, REDIS_PREFIX, PPROF, LOG_LEVEL

	HTTPAddr           string         // EDGE_HTTP_ADDR
	JWTSecret          []byte         // EDGE_JWT_SECRET: HS256 key of client tokens
	JWKSURL            string         // EDGE_JWKS_URL: an identity provider's keys, for RS256, ES256 and EdDSA client tokens
	JWKSMinRefresh     time.Duration  // EDGE_JWKS_MIN_REFRESH: a token of an unknown kid fetches the JWKS at most this often
	JWTIssuer          string         // EDGE_JWT_ISSUER: the iss of the provider's tokens
	JWTAudience        string         // EDGE_JWT_AUDIENCE: an aud the provider's tokens must carry
	JWTChannelsClaim   string         // EDGE_JWT_CHANNELS_CLAIM: the claim of the provider's tokens holding their patterns
	AllowAnonymous     bool           // EDGE_ALLOW_ANONYMOUS: tokenless clients may subscribe to PublicChannels
	PublicChannels     []string       // EDGE_PUBLIC_CHANNELS
	PublicPublish      []string       // EDGE_PUBLIC_PUBLISH: what tokenless MQTT clients may publish on, with EDGE_ALLOW_ANONYMOUS
	AllowedOrigins     []string       // EDGE_ALLOWED_ORIGINS: host patterns besides the edge's own host
	Demo               bool           // EDGE_DEMO: mint demo tokens for the demo page
	DemoAPIURL         string         // EDGE_DEMO_API_URL: the api service the demo page's buttons post to, through the edge
	DemoAPIKey         string         // EDGE_DEMO_API_KEY: the key the edge sends the API (and the notification service) for them, when API_KEYS is set
	DemoNotifyURL      string         // EDGE_DEMO_NOTIFY_URL: the notification service the demo page subscribes to Web Push through, through the edge
	PingInterval       time.Duration  // EDGE_PING_INTERVAL
	SSEKeepAlive       time.Duration  // EDGE_SSE_KEEPALIVE: a comment on idle SSE streams this often
	PongTimeout        time.Duration  // EDGE_PONG_TIMEOUT
	AuthTimeout        time.Duration  // EDGE_AUTH_TIMEOUT
	RefreshBefore      time.Duration  // EDGE_TOKEN_REFRESH_BEFORE: {"expiring":…} goes out this long before a token's exp
	MaxTokenAge        time.Duration  // EDGE_MAX_TOKEN_AGE: the longest a token may live, and so how long a revocation is kept
	MaxMessageBytes    int64          // EDGE_MAX_MESSAGE_BYTES: largest client frame
	MaxSubscriptions   int            // EDGE_MAX_SUBSCRIPTIONS per connection
	RateLimit          float64        // EDGE_RATE_LIMIT: client frames per second per connection
	RateBurst          int            // EDGE_RATE_BURST
	SendQueueBytes     int            // EDGE_SEND_QUEUE_BYTES: bytes of frames waiting per connection before it is dropped as slow
	SendQueueMaxDelay  time.Duration  // EDGE_SEND_QUEUE_MAX_DELAY: how long a connection's oldest waiting frame may wait before it is dropped as slow; 0 for no bound
	MaxUserPatterns    int            // EDGE_MAX_USER_PATTERNS: distinct patterns per user across its connections
	MaxUserConnections int            // EDGE_MAX_USER_CONNECTIONS: connections per user, or per address without one
	MaxAddrConnections int            // EDGE_MAX_ADDRESS_CONNECTIONS: connections without a user (yet), over every address
	MaxRedisPatterns   int            // EDGE_MAX_REDIS_PATTERNS: wildcard patterns in Redis before covering patterns serve the rest
	RecoverMax         int            // EDGE_RECOVER_MAX: missed events one resuming subscription recovers at most
	TrustedProxies     []netip.Prefix // EDGE_TRUSTED_PROXIES: peers whose X-Forwarded-For names the client
	// MQTTTrustedProxies are the peers whose PROXY protocol header names
	// an MQTT client over TCP or TLS (EDGE_MQTT_TRUSTED_PROXIES): by
	// default TrustedProxies; none when it is "none", for MQTT listeners
	// that clients reach directly while HTTP comes through a proxy.
	MQTTTrustedProxies  []netip.Prefix
	WriteRate           int           // EDGE_WRITE_RATE: writes per second to aim at, over every transport, by packing events; 0 for none
	MQTTRetryInterval   time.Duration // EDGE_MQTT_RETRY_INTERVAL: an unacknowledged QoS 1 message is sent again, with DUP, this often
	MQTTSessionExpiry   time.Duration // EDGE_MQTT_SESSION_EXPIRY: how long a kept MQTT session outlives its connection, at most
	MQTTRetained        string        // EDGE_MQTT_RETAINED: "topic" (a topic's last PUBLISH with RETAIN) or "latest" (every channel's latest event)
	MQTTRetainedMax     int           // EDGE_MQTT_RETAINED_MAX: retained messages a namespace keeps at most; 0 for no bound
	MQTTShareVisibility time.Duration // EDGE_MQTT_SHARE_VISIBILITY: how long a shared subscription's member may hold an event unacknowledged
	MQTTIdleAfter       time.Duration // EDGE_MQTT_IDLE_AFTER: an MQTT connection over plain TCP idle this long after its last packet gives back its read buffer and stack; 0 (EDGE_MQTT_IDLE_AFTER=off) never
	MQTTAddr            string        // EDGE_MQTT_ADDR: MQTT over TCP; "" (EDGE_MQTT_ADDR=off) for none
	MQTTSAddr           string        // EDGE_MQTTS_ADDR: MQTT over TLS; "" for none
	TLSCertFile         string        // EDGE_TLS_CERT: PEM certificate chain of the MQTT TLS listener
	TLSKeyFile          string        // EDGE_TLS_KEY: PEM private key of that certificate
	// The pair of EDGE_TLS_CERT and EDGE_TLS_KEY is checked here, so that
	// a bad one is reported with the other settings; the listener loads
	// it (package tlsfiles), and again whenever its files change.

	PresenceNamespaces []string      // EDGE_PRESENCE_NAMESPACES: namespaces whose channels keep presence ("*": all; "": none)
	PresenceTTL        time.Duration // EDGE_PRESENCE_TTL: a lost edge's connections stop counting within it
}

// Load reads the configuration through getenv and reports every bad
// variable at once.
func Load(getenv func(string) string) (Config, error) {
	r := envconfig.New(getenv)
	c := Config{
		Common:              r.Common(),
		HTTPAddr:            r.Addr("EDGE_HTTP_ADDR", ":8081"),
		JWTSecret:           []byte(r.String("EDGE_JWT_SECRET", "")),
		JWKSURL:             r.String("EDGE_JWKS_URL", ""),
		JWKSMinRefresh:      r.Duration("EDGE_JWKS_MIN_REFRESH", token.DefaultJWKSMinRefresh),
		JWTIssuer:           r.String("EDGE_JWT_ISSUER", ""),
		JWTAudience:         r.String("EDGE_JWT_AUDIENCE", ""),
		JWTChannelsClaim:    r.String("EDGE_JWT_CHANNELS_CLAIM", token.DefaultChannelsClaim),
		AllowAnonymous:      r.Bool("EDGE_ALLOW_ANONYMOUS", false),
		PublicChannels:      r.List("EDGE_PUBLIC_CHANNELS", nil),
		PublicPublish:       r.List("EDGE_PUBLIC_PUBLISH", nil),
		AllowedOrigins:      r.List("EDGE_ALLOWED_ORIGINS", nil),
		Demo:                r.Bool("EDGE_DEMO", false),
		DemoAPIURL:          r.String("EDGE_DEMO_API_URL", "http://localhost:8080"),
		DemoAPIKey:          r.String("EDGE_DEMO_API_KEY", ""),
		DemoNotifyURL:       r.String("EDGE_DEMO_NOTIFY_URL", "http://localhost:8083"),
		PingInterval:        r.Duration("EDGE_PING_INTERVAL", 25*time.Second),
		SSEKeepAlive:        r.Duration("EDGE_SSE_KEEPALIVE", 15*time.Second),
		PongTimeout:         r.Duration("EDGE_PONG_TIMEOUT", 10*time.Second),
		AuthTimeout:         r.Duration("EDGE_AUTH_TIMEOUT", 5*time.Second),
		RefreshBefore:       r.Duration("EDGE_TOKEN_REFRESH_BEFORE", 30*time.Second),
		MaxTokenAge:         r.Duration("EDGE_MAX_TOKEN_AGE", 24*time.Hour),
		MaxMessageBytes:     r.Int("EDGE_MAX_MESSAGE_BYTES", 64<<10, 256),
		MaxSubscriptions:    int(r.Int("EDGE_MAX_SUBSCRIPTIONS", 100, 1)),
		RateLimit:           float64(r.Int("EDGE_RATE_LIMIT", 20, 1)),
		RateBurst:           int(r.Int("EDGE_RATE_BURST", 40, 1)),
		SendQueueBytes:      int(r.Int("EDGE_SEND_QUEUE_BYTES", 1<<20, 1024)),
		MaxUserPatterns:     int(r.Int("EDGE_MAX_USER_PATTERNS", 200, 1)),
		MaxUserConnections:  int(r.Int("EDGE_MAX_USER_CONNECTIONS", 50, 1)),
		MaxAddrConnections:  int(r.Int("EDGE_MAX_ADDRESS_CONNECTIONS", 5000, 1)),
		MaxRedisPatterns:    int(r.Int("EDGE_MAX_REDIS_PATTERNS", 64, 1)),
		RecoverMax:          int(r.Int("EDGE_RECOVER_MAX", 10_000, 1)),
		WriteRate:           int(r.Int("EDGE_WRITE_RATE", 30000, 0)),
		MQTTRetryInterval:   r.Duration("EDGE_MQTT_RETRY_INTERVAL", 20*time.Second),
		MQTTSessionExpiry:   r.Duration("EDGE_MQTT_SESSION_EXPIRY", 24*time.Hour),
		MQTTRetained:        r.String("EDGE_MQTT_RETAINED", "topic"),
		MQTTRetainedMax:     int(r.Int("EDGE_MQTT_RETAINED_MAX", 100000, 0)),
		MQTTShareVisibility: r.Duration("EDGE_MQTT_SHARE_VISIBILITY", 30*time.Second),
	}
	c.SendQueueMaxDelay = queueDelay(r)
	c.mqttListeners(r)
	c.presence(r)
	if c.MQTTShareVisibility < 100*time.Millisecond {
		r.Check("EDGE_MQTT_SHARE_VISIBILITY", c.MQTTShareVisibility.String(), errors.New("want at least 100ms"))
	}
	if c.MQTTRetained != "topic" && c.MQTTRetained != "latest" {
		r.Check("EDGE_MQTT_RETAINED", c.MQTTRetained, errors.New(`want "topic" (a topic's last PUBLISH with RETAIN, as MQTT says) or "latest" (every channel's latest recorded event)`))
	}
	c.TrustedProxies = prefixes(r, "EDGE_TRUSTED_PROXIES")
	c.MQTTTrustedProxies = c.TrustedProxies
	switch v := r.String("EDGE_MQTT_TRUSTED_PROXIES", ""); {
	case strings.EqualFold(v, "none"):
		c.MQTTTrustedProxies = nil
	case v != "":
		c.MQTTTrustedProxies = prefixes(r, "EDGE_MQTT_TRUSTED_PROXIES")
		if len(c.MQTTTrustedProxies) == 0 {
			r.Check("EDGE_MQTT_TRUSTED_PROXIES", v, errors.New("want CIDRs or addresses, or none"))
		}
	}
	for _, p := range c.PublicChannels {
		r.Check("EDGE_PUBLIC_CHANNELS", p, channel.ValidatePattern(p))
	}
	for _, p := range c.PublicPublish {
		r.Check("EDGE_PUBLIC_PUBLISH", p, channel.ValidatePattern(p))
	}
	if len(c.JWTSecret) > 0 && len(c.JWTSecret) < token.MinSecretBytes {
		r.Check("EDGE_JWT_SECRET", "…", fmt.Errorf("want at least %d bytes", token.MinSecretBytes))
	}
	if len(c.JWTSecret) == 0 && c.JWKSURL == "" && !c.AllowAnonymous && !c.Demo {
		r.Check("EDGE_JWT_SECRET", "", errors.New("required (or EDGE_JWKS_URL) unless EDGE_ALLOW_ANONYMOUS or EDGE_DEMO is true: no client could subscribe"))
	}
	if c.Demo {
		r.Check("EDGE_DEMO_API_URL", c.DemoAPIURL, checkDemoURL(c.DemoAPIURL, "http://api:8080"))
		r.Check("EDGE_DEMO_NOTIFY_URL", c.DemoNotifyURL, checkDemoURL(c.DemoNotifyURL, "http://notification:8083"))
	}
	if c.JWKSURL != "" {
		r.Check("EDGE_JWKS_URL", c.JWKSURL, token.CheckJWKSURL(c.JWKSURL))
	}
	r.Check("EDGE_JWT_CHANNELS_CLAIM", c.JWTChannelsClaim, token.CheckChannelsClaim(c.JWTChannelsClaim))
	// These describe the identity provider's tokens; HS256 ones are
	// eventbus's own and are not checked against them.
	for _, v := range [][2]string{{"EDGE_JWT_ISSUER", c.JWTIssuer}, {"EDGE_JWT_AUDIENCE", c.JWTAudience}} {
		if v[1] != "" && c.JWKSURL == "" {
			r.Check(v[0], v[1], errors.New("applies to tokens verified with EDGE_JWKS_URL, which is not set"))
		}
	}
	if c.JWTChannelsClaim != token.DefaultChannelsClaim && c.JWKSURL == "" {
		r.Check("EDGE_JWT_CHANNELS_CLAIM", c.JWTChannelsClaim, errors.New("applies to tokens verified with EDGE_JWKS_URL, which is not set"))
	}
	if err := r.Err(); err != nil {
		return Config{}, fmt.Errorf("configuration: %w", err)
	}
	return c, nil
}

// DefaultSendQueueMaxDelay is EDGE_SEND_QUEUE_MAX_DELAY's default, and
// MinSendQueueMaxDelay the least it takes besides 0: below it, a client
// reading as fast as it can is closed on the scheduling jitter of a busy
// edge.
const (
	DefaultSendQueueMaxDelay = 250 * time.Millisecond
	MinSendQueueMaxDelay     = 10 * time.Millisecond
)

// queueDelay reads EDGE_SEND_QUEUE_MAX_DELAY: a duration of at least
// MinSendQueueMaxDelay, or 0 for no bound in time.
func queueDelay(r *envconfig.Reader) time.Duration {
	const name = "EDGE_SEND_QUEUE_MAX_DELAY"
	v := r.String(name, "")
	switch v {
	case "":
		return DefaultSendQueueMaxDelay
	case "0":
		return 0
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < MinSendQueueMaxDelay {
		r.Check(name, v, fmt.Errorf("want 0 (no bound in time) or a duration of at least %v, such as %v", MinSendQueueMaxDelay, DefaultSendQueueMaxDelay))
		return 0
	}
	return d
}

// presence reads EDGE_PRESENCE_NAMESPACES, "notify" when unset (the
// notification service asks whether a user is online) and none when
// "off", and EDGE_PRESENCE_TTL.
func (c *Config) presence(r *envconfig.Reader) {
	c.PresenceNamespaces = r.List("EDGE_PRESENCE_NAMESPACES", []string{"notify"})
	if len(c.PresenceNamespaces) == 1 && c.PresenceNamespaces[0] == "off" {
		c.PresenceNamespaces = nil
	}
	for _, ns := range c.PresenceNamespaces {
		switch err := channel.Validate(ns); {
		case ns == "*":
		case err != nil || strings.Contains(ns, ":"):
			r.Check("EDGE_PRESENCE_NAMESPACES", ns, errors.New("want namespaces (the first token of a channel, such as notify or room), \"*\" for all, or off"))
		case channel.Reserved(ns + ":x"):
			r.Check("EDGE_PRESENCE_NAMESPACES", ns, errors.New("the bus's own namespace keeps no presence"))
		}
	}
	c.PresenceTTL = r.Duration("EDGE_PRESENCE_TTL", 30*time.Second)
	if c.PresenceTTL < time.Second {
		r.Check("EDGE_PRESENCE_TTL", c.PresenceTTL.String(), errors.New("want at least 1s: the edge renews its connections every third of it"))
	}
}

// checkDemoURL accepts an absolute http(s) URL of a host, without a
// query or fragment: the demo's requests go to its routes under /v1.
// example is one such URL, for the error message.
func checkDemoURL(s, example string) error {
	if err := envconfig.CheckHTTPURL(s, example); err != nil {
		return err
	}
	if u, _ := url.Parse(s); u.RawQuery != "" || u.Fragment != "" {
		return errors.New("want no query or fragment")
	}
	return nil
}

// DefaultMQTTAddr is EDGE_MQTT_ADDR's default: MQTT's registered port.
const DefaultMQTTAddr = ":1883"

// mqttListeners reads EDGE_MQTT_ADDR, EDGE_MQTTS_ADDR and the TLS key pair
// of the second, loading it so that a missing, unreadable or mismatched
// file stops the edge at start rather than at the first client.
func (c *Config) mqttListeners(r *envconfig.Reader) {
	if !strings.EqualFold(r.String("EDGE_MQTT_IDLE_AFTER", ""), "off") {
		c.MQTTIdleAfter = r.Duration("EDGE_MQTT_IDLE_AFTER", time.Second)
	}
	// An unset variable reads as empty, so "off" is how TCP is turned off.
	if v := r.String("EDGE_MQTT_ADDR", DefaultMQTTAddr); !strings.EqualFold(v, "off") {
		c.MQTTAddr = r.Addr("EDGE_MQTT_ADDR", DefaultMQTTAddr)
	}
	if v := r.String("EDGE_MQTTS_ADDR", ""); v != "" && !strings.EqualFold(v, "off") {
		c.MQTTSAddr = r.Addr("EDGE_MQTTS_ADDR", "")
	}
	c.TLSCertFile, c.TLSKeyFile = r.String("EDGE_TLS_CERT", ""), r.String("EDGE_TLS_KEY", "")
	if c.MQTTSAddr == "" {
		for _, v := range [][2]string{{"EDGE_TLS_CERT", c.TLSCertFile}, {"EDGE_TLS_KEY", c.TLSKeyFile}} {
			if v[1] != "" {
				r.Check(v[0], v[1], errors.New("applies to the MQTT TLS listener, EDGE_MQTTS_ADDR, which is not set"))
			}
		}
		return
	}
	var pems [2][]byte
	read := true
	for i, v := range [][2]string{{"EDGE_TLS_CERT", c.TLSCertFile}, {"EDGE_TLS_KEY", c.TLSKeyFile}} {
		if v[1] == "" {
			r.Check(v[0], "", errors.New("required with EDGE_MQTTS_ADDR: a PEM file"))
			read = false
			continue
		}
		var err error
		pems[i], err = os.ReadFile(v[1])
		r.Check(v[0], v[1], err)
		read = read && err == nil
	}
	if !read {
		return
	}
	if _, err := tls.X509KeyPair(pems[0], pems[1]); err != nil {
		r.Check("EDGE_TLS_KEY", c.TLSKeyFile, fmt.Errorf("with EDGE_TLS_CERT=%q: %w", c.TLSCertFile, err))
	}
}

// prefixes reads the comma-separated CIDRs or addresses of variable name.
func prefixes(r *envconfig.Reader, name string) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range r.List(name, nil) {
		prefix, err := netip.ParsePrefix(p)
		if err != nil {
			var addr netip.Addr
			if addr, err = netip.ParseAddr(p); err == nil {
				prefix = netip.PrefixFrom(addr, addr.BitLen())
			}
		}
		r.Check(name, p, err)
		out = append(out, prefix)
	}
	return out
}
