package ingest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/bus/bustest"
	"github.com/eventbus-suite/eventbus/pkg/bus/redisbus"
	"github.com/eventbus-suite/eventbus/pkg/envelope"
	"github.com/eventbus-suite/eventbus/pkg/redistest"
)

func TestMain(m *testing.M) { redistest.Main(m) }

// hookBus runs a hook as each publish begins and as it returns, the
// moments a client's hang-up used to make a difference.
type hookBus struct {
	bus.Publisher
	before, after func()
}

func (h *hookBus) Publish(ctx context.Context, ch string, payload []byte) (bus.Receipt, error) {
	h.before()
	defer h.after()
	return h.Publisher.Publish(ctx, ch, payload)
}

func (h *hookBus) PublishBatch(ctx context.Context, msgs []bus.Publication) ([]bus.Receipt, []error, error) {
	h.before()
	defer h.after()
	return h.Publisher.PublishBatch(ctx, msgs)
}

func TestHangUpPublishesEachKeyOnce(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	prefix := redistest.Prefix(t)
	b, err := redisbus.New(srv.Client(t), redisbus.Options{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	sub, err := b.Subscribe(t.Context(), "*")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()

	// cancel is the current request's: the hooks and fn end the caller's
	// context at the point under test.
	var cancel context.CancelFunc
	at := ""
	hook := func(point string) func() {
		return func() {
			if at == point {
				cancel()
			}
		}
	}
	hb := &hookBus{Publisher: b, before: hook("as publishing begins"), after: hook("as publishing returns")}
	svc := New(hb, "test", 10*time.Second, prometheus.NewRegistry())
	idem := NewIdempotency(srv.Client(t), prefix, time.Hour, 10*time.Second)

	request := func(ctx context.Context, key string, batch bool) error {
		_, _, err := idem.Do(ctx, key, []byte(key), func() ([]byte, error) {
			hook("as the key is claimed")()
			env := &envelope.Envelope{Type: "hang.up", Subject: key}
			if batch {
				_, errs := svc.PublishMany(ctx, []*envelope.Envelope{env}, Packed)
				return nil, errs[0]
			}
			_, err := svc.Publish(ctx, env, Packed)
			return nil, err
		})
		return err
	}
	points := []string{"before the request", "as the key is claimed", "as publishing begins", "as publishing returns"}
	const keysPerPoint = 10
	var keys []string
	for _, point := range points {
		for _, batch := range []bool{false, true} {
			for i := range keysPerPoint {
				key := strings.ReplaceAll(fmt.Sprintf("%s/%v/%d", point, batch, i), " ", "-")
				keys = append(keys, key)
				var ctx context.Context
				ctx, cancel = context.WithCancel(t.Context())
				at = point
				if point == "before the request" {
					cancel()
				}
				err := request(ctx, key, batch)
				cancel()
				if err != nil && !errors.Is(err, ErrCallerGone) {
					t.Fatalf("%s: first request = %v, want success or ErrCallerGone", key, err)
				}
				// The client retries with the same key until it has an answer.
				at = ""
				if err := request(t.Context(), key, batch); err != nil {
					t.Fatalf("%s: retry = %v", key, err)
				}
			}
		}
	}
	if _, err := svc.Publish(t.Context(), &envelope.Envelope{Type: "hang.up", Subject: "sentinel"}, Packed); err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for {
		env, err := envelope.Unmarshal(bustest.Receive(t, sub).Payload)
		if err != nil {
			t.Fatal(err)
		}
		if env.GetSubject() == "sentinel" {
			break
		}
		got[env.GetSubject()]++
	}
	for _, key := range keys {
		if got[key] != 1 {
			t.Errorf("key %q published %d times, want once", key, got[key])
		}
	}
}

func TestOutcomeUnknownKeepsTheKey(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	idem := NewIdempotency(srv.Client(t), redistest.Prefix(t), time.Hour, 10*time.Second)
	lost := fmt.Errorf("%w: %w: reply lost", ErrUnavailable, ErrOutcomeUnknown)
	if _, _, err := idem.Do(t.Context(), "k", []byte("r"), func() ([]byte, error) { return nil, lost }); !errors.Is(err, ErrOutcomeUnknown) {
		t.Fatalf("Do = %v, want the fn's error", err)
	}
	ran := false
	_, _, err := idem.Do(t.Context(), "k", []byte("r"), func() ([]byte, error) { ran = true; return []byte("{}"), nil })
	if !errors.Is(err, ErrInProgress) || ran {
		t.Errorf("retry after an unknown outcome = %v (ran %v), want ErrInProgress without running: the event may be out", err, ran)
	}
	// A failure that published nothing releases the key.
	notSent := fmt.Errorf("%w: not sent", ErrUnavailable)
	if _, _, err := idem.Do(t.Context(), "k2", []byte("r"), func() ([]byte, error) { return nil, notSent }); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Do = %v, want the fn's error", err)
	}
	if _, _, err := idem.Do(t.Context(), "k2", []byte("r"), func() ([]byte, error) { return []byte("{}"), nil }); err != nil {
		t.Errorf("retry after nothing was published = %v, want it to run", err)
	}
}
