// Package ingest is the core of the API service: it turns events into
// envelopes on the bus, whatever transport they came from.
package ingest

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/channel"
	"github.com/eventbus-suite/eventbus/pkg/envelope"
	"github.com/eventbus-suite/eventbus/pkg/revocation"
)

// Errors that say what became of an event that was not accepted.
var (
	// ErrUnavailable wraps every failure to reach the bus: the caller may
	// retry. Alone, it means the event was not published.
	ErrUnavailable = errors.New("event bus unavailable")
	// ErrOutcomeUnknown comes with ErrUnavailable when the event reached
	// Redis but its reply did not come back in time: it may have been
	// published.
	ErrOutcomeUnknown = errors.New("the event may have been published")
	// ErrCallerGone: the caller's context ended before publishing began, so
	// nothing was published.
	ErrCallerGone = errors.New("the caller went away before the event was published")
)

// The size of one page of history, for every transport: how many events
// one without a limit gets, and the most one may ask for.
const (
	DefaultHistoryLimit = 100
	MaxHistoryLimit     = 1000
)

// Result says where an accepted event went: its position in its
// namespace's stream (none when the bus keeps no history) and how many
// subscribers received it live.
type Result struct {
	ID        string `json:"id"`
	Channel   string `json:"channel"`
	Offset    string `json:"offset,omitempty"`
	Epoch     string `json:"epoch,omitempty"`
	Receivers int64  `json:"receivers"`
}

func result(env *envelope.Envelope, r bus.Receipt) Result {
	return Result{ID: env.GetId(), Channel: env.GetChannel(), Offset: r.Offset, Epoch: r.Epoch, Receivers: r.Receivers}
}

// Service publishes events. It is safe for concurrent use.
type Service struct {
	bus     bus.Publisher
	source  string
	timeout time.Duration
	now     func() time.Time

	published *prometheus.CounterVec
	rejected  *prometheus.CounterVec
	latency   prometheus.Histogram
}

// New returns a Service publishing on b, filling in source on events that
// have none, giving Redis at most timeout to take each publish, and
// registering its metrics on reg.
func New(b bus.Publisher, source string, timeout time.Duration, reg prometheus.Registerer) *Service {
	s := &Service{
		bus:     b,
		source:  source,
		timeout: timeout,
		now:     time.Now,
		published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "eventbus_api_events_published_total",
			Help: "Events published, by type (types the bus does not know count as \"other\").",
		}, []string{"type"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "eventbus_api_events_rejected_total",
			Help: "Events not published, by reason: invalid or unavailable.",
		}, []string{"reason"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "eventbus_api_publish_duration_seconds",
			Help:    "Time from accepting an event to Redis's reply.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 12),
		}),
	}
	reg.MustRegister(s.published, s.rejected, s.latency)
	return s
}

// Publish completes env (id, time, channel, source), validates it as an
// event from outside the bus (envelope.ValidateStrict; its data as from
// says) and publishes it.
//
// Once publishing begins it runs to its end whatever becomes of ctx, for at
// most the Service's timeout: a caller that hangs up must not leave behind
// an event published with nobody told, nor an idempotency key released for
// an event that went out. If ctx has ended before, nothing is published and
// the error wraps ErrCallerGone.
//
// Errors wrap envelope.ErrInvalid for a bad event and ErrUnavailable when
// the bus did not take it in time, with ErrOutcomeUnknown when it may have
// been published all the same.
func (s *Service) Publish(ctx context.Context, env *envelope.Envelope, from Data) (Result, error) {
	start := time.Now()
	payload, err := s.prepare(env, from)
	if err != nil {
		return Result{}, err
	}
	ctx, cancel, err := s.publishContext(ctx)
	if err != nil {
		return Result{}, err
	}
	defer cancel()
	receipt, err := s.bus.Publish(ctx, env.GetChannel(), payload)
	if err != nil {
		s.rejected.WithLabelValues("unavailable").Inc()
		return Result{}, unavailable(err)
	}
	s.latency.Observe(time.Since(start).Seconds())
	s.published.WithLabelValues(typeLabel(env.GetType())).Inc()
	return result(env, receipt), nil
}

// PublishMany prepares every event, then publishes the valid ones in order
// in one batch, as Publish does one. It returns one result and one error
// per event; an event with an error was not published, unless the error
// wraps ErrOutcomeUnknown.
func (s *Service) PublishMany(ctx context.Context, envs []*envelope.Envelope, from Data) ([]Result, []error) {
	start := time.Now()
	results := make([]Result, len(envs))
	errs := make([]error, len(envs))
	msgs := make([]bus.Publication, 0, len(envs))
	index := make([]int, 0, len(envs))
	for i, env := range envs {
		payload, err := s.prepare(env, from)
		if err != nil {
			errs[i] = err
			continue
		}
		msgs = append(msgs, bus.Publication{Channel: env.GetChannel(), Payload: payload})
		index = append(index, i)
	}
	if len(msgs) == 0 {
		return results, errs
	}
	ctx, cancel, err := s.publishContext(ctx)
	if err != nil {
		for _, i := range index {
			errs[i] = err
		}
		return results, errs
	}
	defer cancel()
	receipts, perr, err := s.bus.PublishBatch(ctx, msgs)
	for j, i := range index {
		switch {
		case err != nil:
			errs[i] = unavailable(err)
		case perr[j] != nil:
			errs[i] = unavailable(perr[j])
		default:
			results[i] = result(envs[i], receipts[j])
			s.published.WithLabelValues(typeLabel(envs[i].GetType())).Inc()
			continue
		}
		s.rejected.WithLabelValues("unavailable").Inc()
	}
	s.latency.Observe(time.Since(start).Seconds())
	return results, errs
}

// publishContext is the context a publish runs under: ctx's values, but
// not its cancellation, and the Service's timeout.
func (s *Service) publishContext(ctx context.Context) (context.Context, context.CancelFunc, error) {
	if ctx.Err() != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrCallerGone, context.Cause(ctx))
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.timeout)
	return ctx, cancel, nil
}

// unavailable wraps a publish error in ErrUnavailable, and in
// ErrOutcomeUnknown unless the bus says the event was not sent.
func unavailable(err error) error {
	if errors.Is(err, bus.ErrNotSent) {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return fmt.Errorf("%w: %w: %w", ErrUnavailable, ErrOutcomeUnknown, err)
}

// Data says where the data of the events a caller publishes comes from.
type Data int

const (
	// Packed data came packed in its Any (gRPC), or was packed by its
	// caller: it is decoded and checked (envelope.FillStrict).
	Packed Data = iota
	// Decoded data was made from JSON by envelope.DecodeData for the
	// event's type, which checked it (envelope.FillStrictDecoded).
	Decoded
)

func (s *Service) prepare(env *envelope.Envelope, from Data) ([]byte, error) {
	fill := envelope.FillStrict
	if from == Decoded {
		fill = envelope.FillStrictDecoded
	}
	err := fill(env, s.source, s.now())
	if err == nil && channel.Reserved(env.GetChannel()) {
		err = fmt.Errorf("%w: channel %s: the namespace %s is the bus's own", envelope.ErrInvalid, env.GetChannel(), channel.ReservedNamespace)
	}
	if err == nil && envelope.EdgeOnly(env.GetType()) {
		err = fmt.Errorf("%w: type %s: only the edge publishes it", envelope.ErrInvalid, env.GetType())
	}
	if err != nil {
		s.rejected.WithLabelValues("invalid").Inc()
		return nil, err
	}
	return envelope.Marshal(env)
}

// Control records c, if it is a revocation, and publishes it on the
// control channel for every edge.
func (s *Service) Control(ctx context.Context, store revocation.Store, c revocation.Command) error {
	if err := c.Validate(); err != nil {
		return fmt.Errorf("%w: %w", envelope.ErrInvalid, err)
	}
	ctx, cancel, err := s.publishContext(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	if c.Action == revocation.ActionRevoke {
		if err := store.Record(ctx, c); err != nil {
			return fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
	}
	payload, err := c.Payload(s.source, s.now())
	if err != nil {
		return err
	}
	if _, err := s.bus.Publish(ctx, revocation.ControlChannel, payload); err != nil {
		return unavailable(err)
	}
	return nil
}

// typeLabel bounds the label's values to the registered types: event types
// are caller input and would otherwise grow the metric without limit.
func typeLabel(t string) string {
	if _, ok := envelope.Lookup(t); ok {
		return t
	}
	return "other"
}
