// Command notification turns events into welcome and receipt emails
// (through SendGrid) and browser notifications, each sent exactly once
// however many replicas run.
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
	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/bus/redisbus"
	"github.com/eventbus-suite/eventbus/pkg/logging"
	"github.com/eventbus-suite/eventbus/pkg/presence"
	"github.com/eventbus-suite/eventbus/pkg/server"
	"github.com/eventbus-suite/eventbus/services/notification/internal/claims"
	"github.com/eventbus-suite/eventbus/services/notification/internal/config"
	"github.com/eventbus-suite/eventbus/services/notification/internal/contacts"
	"github.com/eventbus-suite/eventbus/services/notification/internal/deadletter"
	"github.com/eventbus-suite/eventbus/services/notification/internal/mailer"
	"github.com/eventbus-suite/eventbus/services/notification/internal/notifier"
	"github.com/eventbus-suite/eventbus/services/notification/internal/push"
	"github.com/eventbus-suite/eventbus/services/notification/internal/routes"
	"github.com/eventbus-suite/eventbus/services/notification/internal/rules"
	"github.com/eventbus-suite/eventbus/services/notification/internal/templates"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Getenv, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "notification: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, getenv func(string) string, stderr io.Writer) error {
	cfg, err := config.Load(getenv)
	if err != nil {
		return err
	}
	log := logging.New(stderr, cfg.LogFormat, cfg.LogLevel, "notification")
	tmpl, err := templates.Load()
	if err != nil {
		return err
	}

	reg := server.NewRegistry()
	b, rdb, err := redisbus.Open(ctx, cfg.RedisURL, 5*time.Second, cfg.BusOptions(log, reg, "eventbus_notification"))
	if err != nil {
		return err
	}
	defer b.Close() // and its client
	// Every replica is a member of the group "notification": each event
	// goes to one of them, and to another if it is not acknowledged in time.
	con, err := b.ConsumeOrLive(ctx, "notification", cfg.Member, rules.Patterns, bus.ConsumerOptions{Visibility: cfg.Visibility})
	if err != nil {
		return err
	}
	defer con.Close()

	var mail mailer.Mailer
	var sg *mailer.SendGrid
	if cfg.SendGridAPIKey == "" {
		log.Warn("SENDGRID_API_KEY is not set: dry-run mode, emails are logged, not sent")
		dry := mailer.DryRun{Log: log, FromEmail: cfg.FromEmail, FromName: cfg.FromName}
		if cfg.LogFormat.For(stderr) == logging.Text {
			dry.Out = stderr // for a person: each email as it would read
		}
		mail = dry
	} else {
		sg = mailer.NewSendGrid(cfg.SendGridAPIKey, cfg.SendGridURL, cfg.FromEmail, cfg.FromName, cfg.MaxAttempts, cfg.RetryBase, cfg.RetryMax)
		mail = sg
	}
	// A first send and a dead letter's retry take the same claims.
	// A lease lasts one visibility timeout, extended by the notifier's
	// heartbeat while its send runs: a replica that dies mid-send holds
	// its notifications up for about as long as its events.
	cl := claims.New(rdb, cfg.RedisPrefix, cfg.Visibility)
	dead := deadletter.New(deadletter.Options{
		Redis: rdb, Prefix: cfg.RedisPrefix, Claims: cl, Mailer: mail,
		SendTimeout: cfg.SendTimeout, ClaimTTL: cfg.ClaimTTL, Logger: log,
	}, reg)
	subs := push.NewStore(rdb, cfg.RedisPrefix)
	var pusher *push.Sender
	if cfg.Push() {
		// Retried as emails are.
		pusher = push.NewSender(push.Options{
			VAPIDPublicKey: cfg.VAPIDPublicKey, VAPIDPrivateKey: cfg.VAPIDPrivateKey, Subject: cfg.VAPIDSubject,
			TTL: cfg.PushTTL, Timeout: cfg.PushTimeout, MaxAttempts: cfg.MaxAttempts, RetryBase: cfg.RetryBase, RetryMax: cfg.RetryMax,
		})
	} else {
		log.Warn("NOTIFY_VAPID_PUBLIC_KEY and NOTIFY_VAPID_PRIVATE_KEY are not set: Web Push is off, push subscriptions are kept but nothing is pushed")
	}
	// Read only: the edges write presence (EDGE_PRESENCE_NAMESPACES with
	// notify), and their TTL is theirs, so none is given here.
	online := presence.New(rdb, b.KeyOf, 0)
	if cfg.AckTimeout == 0 {
		log.Warn("NOTIFY_ACK_TIMEOUT is 0: a browser notification sent in the page and never acknowledged does not fall back to push or email")
	}
	n := notifier.New(notifier.Options{
		Consumer: con, Publisher: b, Contacts: contacts.New(rdb, cfg.RedisPrefix), Claims: cl, DeadLetters: dead,
		Mailer: mail, Templates: tmpl, Logger: log,
		Workers: cfg.Workers, ClaimTTL: cfg.ClaimTTL, SendTimeout: cfg.SendTimeout, Visibility: cfg.Visibility, ContactWait: 2 * cfg.Visibility,
		Push: pusher, Subscriptions: subs,
		Presence: online, Routes: routes.New(rdb, cfg.RedisPrefix, cfg.ClaimTTL), AckTimeout: cfg.AckTimeout,
	}, reg)
	if sg != nil {
		sg.OnRetry = n.CountRetry
	}
	if pusher != nil {
		pusher.OnRetry = n.CountPushRetry
	}

	mux := http.NewServeMux()
	keys := apikey.New(cfg.APIKeys)
	if keys.Open() {
		log.Warn("API_KEYS is not set: anyone who can reach the notification service may list and retry dead letters, and add and remove push subscriptions")
	}
	deadletter.Register(mux, dead, keys, log)
	push.Register(mux, subs, keys, cfg.PushAllowHTTP, cfg.VAPIDPublicKey, log)
	if cfg.Pprof {
		server.Pprof(mux)
	}
	server.Ops(mux, reg, b.Ready)
	l, err := server.Listen(ctx, cfg.HTTPAddr)
	if err != nil {
		return err
	}
	log.Info("listening", "http_addr", l.Addr().String(), "patterns", rules.Patterns, "dry_run", cfg.SendGridAPIKey == "", "push", cfg.Push(), "ack_timeout", cfg.AckTimeout.String())

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return n.Run(ctx) })
	g.Go(func() error {
		return server.ServeHTTP(ctx, server.NewHTTPServer(mux, server.HTTPOptions{}), l)
	})
	err = g.Wait()
	log.Info("stopped")
	return err
}
