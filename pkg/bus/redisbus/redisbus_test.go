package redisbus_test

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/eventbus-suite/eventbus/pkg/bus/bustest"
	"github.com/eventbus-suite/eventbus/pkg/bus/redisbus"
	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
)

func TestMain(m *testing.M) { redistest.Main(m) }

func newBus(t testing.TB, srv *redistest.Server, opts redisbus.Options) *redisbus.Bus {
	t.Helper()
	if opts.Prefix == "" {
		opts.Prefix = redistest.Prefix(t)
	}
	b, err := redisbus.New(srv.Client(t), opts)
	if err != nil {
		t.Fatalf("redisbus.New = %v", err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

func TestConformance(t *testing.T) {
	srv := redistest.Shared(t)
	// The embedded fallback delivers a message once per connection, not once
	// per matching pattern as Redis does.
	redistest.RequireReal(t, srv)
	bustest.Run(t, func(t *testing.T) bustest.Bus { return newBus(t, srv, redisbus.Options{}) })
}

func TestPrefixIsolates(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	a := newBus(t, srv, redisbus.Options{})
	b := newBus(t, srv, redisbus.Options{})
	sub, err := a.Subscribe(t.Context(), "*")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if n, err := b.Publish(t.Context(), "order:placed", []byte("b")); err != nil || n != 0 {
		t.Fatalf("Publish on another prefix = %d, %v; want 0, nil", n, err)
	}
	if n, err := a.Publish(t.Context(), "order:placed", []byte("a")); err != nil || n != 1 {
		t.Fatalf("Publish on own prefix = %d, %v; want 1, nil", n, err)
	}
	if m := bustest.Receive(t, sub); m.Channel != "order:placed" || !slices.Equal(m.Patterns, []string{"*"}) || string(m.Payload) != "a" {
		t.Fatalf("received %+v, want the prefix taken off and payload a", m)
	}
}

func TestNewRejectsBadPrefix(t *testing.T) {
	t.Parallel()
	for _, p := range []string{"noColon", "wild*:", "a::", ":"} {
		if _, err := redisbus.New(redis.NewClient(&redis.Options{}), redisbus.Options{Prefix: p}); err == nil {
			t.Errorf("New(prefix %q) = nil error, want one", p)
		}
	}
}

func TestResubscribesAfterRedisRestart(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	redistest.RequireReal(t, srv)
	var logs servicetest.Buffer
	reg := prometheus.NewRegistry()
	b := newBus(t, srv, redisbus.Options{
		Logger:     slog.New(slog.NewJSONHandler(&logs, nil)),
		Registerer: reg,
		Namespace:  "test",
	})
	sub, err := b.Subscribe(t.Context(), "order:*", "user:created")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()

	srv.Stop(t)
	// Publishing while Redis is down fails promptly rather than hanging.
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	_, err = b.Publish(ctx, "order:placed", []byte("lost"))
	cancel()
	if err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Publish with Redis down = %v, want a connection error", err)
	}
	srv.Restart(t)

	servicetest.WaitFor(t, "subscription live again", sub.Live)
	// Live is the receive loop's last word; under load it may not have seen
	// the loss yet. Wait until Redis has both subscriptions back as well.
	rdb := srv.Client(t)
	servicetest.WaitFor(t, "both subscriptions back in Redis", func() bool {
		pat, err1 := rdb.PubSubNumPat(t.Context()).Result()
		chans, err2 := rdb.PubSubChannels(t.Context(), "*").Result()
		return err1 == nil && err2 == nil && pat == 1 && len(chans) == 1
	})
	for _, ch := range []string{"order:placed", "user:created"} {
		if n, err := b.Publish(t.Context(), ch, []byte(ch)); err != nil || n != 1 {
			t.Fatalf("Publish(%s) after restart = %d, %v; want 1, nil", ch, n, err)
		}
		if m := bustest.Receive(t, sub); string(m.Payload) != ch {
			t.Fatalf("received %q after restart, want %q", m.Payload, ch)
		}
	}
	if got := counterValue(t, reg, "test_bus_reconnects_total"); got < 1 {
		t.Errorf("test_bus_reconnects_total = %v, want ≥ 1", got)
	}
	for _, want := range []string{"redis subscription lost", "redis subscription restored"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("logs lack %q:\n%s", want, logs.String())
		}
	}
}

// counterValue reads a counter from reg.
func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}
