// Command edge is the WebSocket gateway between browsers and the bus.
package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/signal"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/pires/go-proxyproto"
	"golang.org/x/sync/errgroup"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/bus/redisbus"
	"github.com/eventbus-suite/eventbus/pkg/logging"
	"github.com/eventbus-suite/eventbus/pkg/presence"
	"github.com/eventbus-suite/eventbus/pkg/revocation"
	"github.com/eventbus-suite/eventbus/pkg/server"
	"github.com/eventbus-suite/eventbus/pkg/token"
	"github.com/eventbus-suite/eventbus/services/edge/internal/access"
	"github.com/eventbus-suite/eventbus/services/edge/internal/config"
	"github.com/eventbus-suite/eventbus/services/edge/internal/control"
	"github.com/eventbus-suite/eventbus/services/edge/internal/hub"
	"github.com/eventbus-suite/eventbus/services/edge/internal/mqttapi"
	"github.com/eventbus-suite/eventbus/services/edge/internal/receipt"
	"github.com/eventbus-suite/eventbus/services/edge/internal/roster"
	"github.com/eventbus-suite/eventbus/services/edge/internal/session"
	"github.com/eventbus-suite/eventbus/services/edge/internal/sseapi"
	"github.com/eventbus-suite/eventbus/services/edge/internal/tlsfiles"
	"github.com/eventbus-suite/eventbus/services/edge/internal/web"
	"github.com/eventbus-suite/eventbus/services/edge/internal/wsapi"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Getenv, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "edge: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, getenv func(string) string, stderr io.Writer) error {
	cfg, err := config.Load(getenv)
	if err != nil {
		return err
	}
	log := logging.New(stderr, cfg.LogFormat, cfg.LogLevel, "edge")
	secret := cfg.JWTSecret
	if cfg.Demo {
		if len(secret) == 0 {
			secret = []byte(rand.Text()) // demo tokens only need to verify here
		}
		log.Warn("EDGE_DEMO is on: GET /demo/token mints a token for any user; never enable it where real users connect")
	}
	var verifier *token.Verifier
	if len(secret) > 0 || cfg.JWKSURL != "" {
		opts := token.Options{Logger: log}
		if len(secret) > 0 {
			opts.Secret = secret
		}
		if cfg.JWKSURL != "" {
			// Fetched now, then refreshed until ctx ends; an identity
			// provider that is down does not stop the edge.
			opts.JWKS = &token.JWKSOptions{URL: cfg.JWKSURL, MinRefresh: cfg.JWKSMinRefresh,
				Issuer: cfg.JWTIssuer, Audience: cfg.JWTAudience, ChannelsClaim: cfg.JWTChannelsClaim}
		}
		if verifier, err = token.New(ctx, opts); err != nil {
			return err
		}
	}

	reg := server.NewRegistry()
	busOpts := cfg.BusOptions(log, reg, "eventbus_edge")
	busOpts.ConnBuffer = 4 << 10 // small commands, pools that grow with bursts of clients connecting
	b, rdb, err := redisbus.Open(ctx, cfg.RedisURL, 5*time.Second, busOpts)
	if err != nil {
		return err
	}
	defer b.Close() // and its client
	// One pub/sub connection for every client of this edge.
	sub, err := b.Subscribe(ctx)
	if err != nil {
		return err
	}
	defer sub.Close()
	opts := hub.Options{
		QueueBytes: cfg.SendQueueBytes, QueueDelay: cfg.SendQueueMaxDelay, MaxUserPatterns: cfg.MaxUserPatterns,
		MaxUserConnections: cfg.MaxUserConnections, MaxRedisPatterns: cfg.MaxRedisPatterns,
		MaxAddressConnections: cfg.MaxAddrConnections, RecoverMax: cfg.RecoverMax,
	}
	if cfg.HistoryMaxLen > 0 {
		opts.History = b
	}
	var ros *roster.Roster
	if len(cfg.PresenceNamespaces) > 0 {
		ros = roster.New(roster.Options{
			Store: presence.New(rdb, b.KeyOf, cfg.PresenceTTL), Bus: b, Namespaces: cfg.PresenceNamespaces, Logger: log,
		}, reg)
		opts.Presence = ros
	}
	// One budget of writes per second for the connections of every
	// transport, which the hub strains when its dispatch falls behind.
	pacer := &hub.Pacer{Rate: cfg.WriteRate}
	opts.Pacer = pacer
	h := hub.New(sub, opts, log, reg)

	mux := http.NewServeMux()
	policy := &access.Policy{
		Verifier: verifier, AllowAnonymous: cfg.AllowAnonymous, PublicChannels: cfg.PublicChannels, PublicPublish: cfg.PublicPublish,
		TrustedProxies: cfg.TrustedProxies,
		Revocations:    &revocation.Store{Redis: rdb, Prefix: cfg.RedisPrefix, MaxAge: cfg.MaxTokenAge},
		MaxTokenAge:    cfg.MaxTokenAge,
	}
	// Commands for every edge: revocations, forced disconnects and
	// unsubscriptions.
	ctl, err := b.Subscribe(ctx, revocation.ControlChannel)
	if err != nil {
		return err
	}
	defer ctl.Close()
	// Every transport's connections keep the same rules.
	sessions := session.New(session.Options{
		Hub: h, Access: policy, MaxSubscriptions: cfg.MaxSubscriptions,
		MaxUserPatterns: cfg.MaxUserPatterns, MaxUserConnections: cfg.MaxUserConnections,
		RateLimit: cfg.RateLimit, RateBurst: cfg.RateBurst, RefreshBefore: cfg.RefreshBefore,
		Receipts: receipt.New(b, log, reg),
	}, reg)
	ws := wsapi.New(wsapi.Options{
		Sessions: sessions, Access: policy, Logger: log, AllowedOrigins: cfg.AllowedOrigins,
		PingInterval: cfg.PingInterval, PongTimeout: cfg.PongTimeout, AuthTimeout: cfg.AuthTimeout,
		MaxMessageBytes: cfg.MaxMessageBytes, Pacer: pacer,
	}, reg)
	// MQTT sessions outlive their connection, and the latest event can
	// stand for a channel's retained message, only where there is a
	// record; retained messages per topic are kept either way.
	var kept *mqttapi.Store
	var record mqttapi.Record
	var consumers bus.Consumers // shared subscriptions read the record
	if cfg.HistoryMaxLen > 0 {
		kept = &mqttapi.Store{Redis: rdb, Prefix: cfg.RedisPrefix, Keys: b}
		record = b
		consumers = b
	}
	mq := mqttapi.New(mqttapi.Options{
		Edge: sessions, Hub: h, Access: policy, Bus: b, Logger: log, AllowedOrigins: cfg.AllowedOrigins,
		ConnectTimeout: cfg.AuthTimeout, MaxMessageBytes: cfg.MaxMessageBytes,
		RetryInterval: cfg.MQTTRetryInterval, QueueBytes: cfg.SendQueueBytes,
		Sessions: kept, SessionExpiry: cfg.MQTTSessionExpiry, Record: record, Pacer: pacer,
		Retained: &mqttapi.RetainedStore{Redis: rdb, Keys: b, Max: cfg.MQTTRetainedMax}, RetainLatest: cfg.MQTTRetained == "latest" && record != nil,
		Consumers: consumers, ShareVisibility: cfg.MQTTShareVisibility, IdleAfter: cfg.MQTTIdleAfter,
		// Takeovers go live only: a CONNECT costs no recorded event.
		Announce: control.Live{Bus: b, Source: "edge"}.Announce,
	}, reg)
	// MQTT clients may use /ws as well, offering the mqtt subprotocol.
	mux.Handle("GET /ws", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if mqttapi.Offered(r) {
			mq.ServeHTTP(w, r)
			return
		}
		ws.ServeHTTP(w, r)
	}))
	mux.Handle("GET /mqtt", mq)
	mux.Handle("GET /sse", sseapi.New(sseapi.Options{
		Sessions: sessions, Hub: h, Access: policy, Logger: log,
		KeepAlive: cfg.SSEKeepAlive, WriteTimeout: cfg.PingInterval + cfg.PongTimeout,
	}))
	var demo web.Demo
	if cfg.Demo {
		demo = web.Demo{Secret: secret, APIKey: cfg.DemoAPIKey}
		demo.API, _ = url.Parse(cfg.DemoAPIURL) // checked by config.Load
		demo.Notify, _ = url.Parse(cfg.DemoNotifyURL)
	}
	web.Register(mux, demo)
	if cfg.Pprof {
		server.Pprof(mux)
	}
	server.Ops(mux, reg, b.Ready)
	l, err := server.Listen(ctx, cfg.HTTPAddr)
	if err != nil {
		return err
	}
	mqttListeners, err := listenMQTT(ctx, cfg, log)
	if err != nil {
		_ = l.Close()
		return err
	}
	attrs := []any{"http_addr", l.Addr().String()}
	for name, ml := range mqttListeners {
		attrs = append(attrs, name, ml.Addr().String())
	}
	log.Info("listening", append(attrs, "demo", cfg.Demo, "anonymous", cfg.AllowAnonymous)...)

	// The roster outlives the hub, to announce the leaves of the
	// connections the hub closes on its way down.
	var presenceDone sync.WaitGroup
	stopPresence := func() {}
	if ros != nil {
		var pctx context.Context
		pctx, stopPresence = context.WithCancel(context.WithoutCancel(ctx))
		presenceDone.Go(func() { _ = ros.Run(pctx) })
	}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return h.Run(ctx) })
	g.Go(func() error { return control.Run(ctx, ctl, h, mq, log, reg) })
	g.Go(func() error {
		return server.ServeHTTP(ctx, server.NewHTTPServer(mux, server.HTTPOptions{}), l)
	})
	for _, ml := range mqttListeners {
		g.Go(func() error { return mq.Serve(ctx, ml) })
	}
	g.Go(func() error { return mq.RunWills(ctx) }) // whichever edge lost their connection
	err = g.Wait()
	stopPresence()
	presenceDone.Wait()
	log.Info("stopped")
	return err
}

// proxied lets the trusted proxies (EDGE_MQTT_TRUSTED_PROXIES, by default
// EDGE_TRUSTED_PROXIES) say who the client of a connection is, with a
// PROXY protocol header (v1 or v2, as nginx's stream proxy_protocol and
// TCP load balancers send it) before its bytes of MQTT or TLS: the edge
// then bounds and names the connection by the client's address, not the
// proxy's. A trusted proxy may also send none; anyone else's first bytes
// are MQTT's (or TLS's), so a header from them fails as a malformed
// packet.
func proxied(l net.Listener, cfg config.Config) net.Listener {
	if len(cfg.MQTTTrustedProxies) == 0 {
		return l
	}
	return &proxyproto.Listener{Listener: l, ReadHeaderTimeout: cfg.AuthTimeout,
		ConnPolicy: func(o proxyproto.ConnPolicyOptions) (proxyproto.Policy, error) {
			ap, err := netip.ParseAddrPort(o.Upstream.String())
			if err == nil && slices.ContainsFunc(cfg.MQTTTrustedProxies, func(p netip.Prefix) bool { return p.Contains(ap.Addr().Unmap()) }) {
				return proxyproto.USE, nil
			}
			return proxyproto.SKIP, nil // a plain connection, unwrapped
		}}
}

// listenMQTT opens the MQTT listeners the configuration asks for, keyed
// by the name their address is logged under: TCP at EDGE_MQTT_ADDR, TLS
// at EDGE_MQTTS_ADDR, whose key pair is read again when its files change.
func listenMQTT(ctx context.Context, cfg config.Config, log *slog.Logger) (map[string]net.Listener, error) {
	var pair *tlsfiles.Pair
	if cfg.MQTTSAddr != "" {
		var err error
		if pair, err = tlsfiles.Load(cfg.TLSCertFile, cfg.TLSKeyFile, log); err != nil {
			return nil, fmt.Errorf("mqtts: %w", err)
		}
	}
	ls := map[string]net.Listener{}
	if cfg.MQTTAddr != "" {
		l, err := server.Listen(ctx, cfg.MQTTAddr)
		if err != nil {
			return nil, fmt.Errorf("mqtt: %w", err)
		}
		ls["mqtt_addr"] = proxied(l, cfg)
	}
	if cfg.MQTTSAddr != "" {
		l, err := server.Listen(ctx, cfg.MQTTSAddr)
		if err != nil {
			for _, l := range ls {
				_ = l.Close()
			}
			return nil, fmt.Errorf("mqtts: %w", err)
		}
		ls["mqtts_addr"] = tls.NewListener(proxied(l, cfg), &tls.Config{
			MinVersion: tls.VersionTLS12, GetCertificate: pair.GetCertificate,
		})
	}
	return ls, nil
}
