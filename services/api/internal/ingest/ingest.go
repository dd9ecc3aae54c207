// Package ingest is the core of the API service: it turns events into
// envelopes on the bus, whatever transport they came from.
package ingest

import (
	"errors"
	"fmt"
	"time"

	"context"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/envelope"
)

// ErrUnavailable wraps every failure to reach the bus: the caller may retry.
var ErrUnavailable = errors.New("event bus unavailable")

// Result says where an accepted event went.
type Result struct {
	ID        string `json:"id"`
	Channel   string `json:"channel"`
	Receivers int64  `json:"receivers"`
}

// Service publishes events. It is safe for concurrent use.
type Service struct {
	bus    bus.Publisher
	source string
	now    func() time.Time

	published *prometheus.CounterVec
	rejected  *prometheus.CounterVec
	latency   prometheus.Histogram
}

// New returns a Service publishing on b, filling in source on events that
// have none, and registering its metrics on reg.
func New(b bus.Publisher, source string, reg prometheus.Registerer) *Service {
	s := &Service{
		bus:    b,
		source: source,
		now:    time.Now,
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
// event from outside the bus (envelope.ValidateStrict) and publishes it. Errors wrap envelope.ErrInvalid for a bad event and
// ErrUnavailable when the bus cannot be reached.
func (s *Service) Publish(ctx context.Context, env *envelope.Envelope) (Result, error) {
	start := time.Now()
	payload, err := s.prepare(env)
	if err != nil {
		return Result{}, err
	}
	n, err := s.bus.Publish(ctx, env.GetChannel(), payload)
	if err != nil {
		s.rejected.WithLabelValues("unavailable").Inc()
		return Result{}, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	s.latency.Observe(time.Since(start).Seconds())
	s.published.WithLabelValues(typeLabel(env.GetType())).Inc()
	return Result{ID: env.GetId(), Channel: env.GetChannel(), Receivers: n}, nil
}

// PublishMany prepares every event, then publishes the valid ones in order
// in one batch. It returns one result and one error per event; an event
// with an error was not published.
func (s *Service) PublishMany(ctx context.Context, envs []*envelope.Envelope) ([]Result, []error) {
	start := time.Now()
	results := make([]Result, len(envs))
	errs := make([]error, len(envs))
	msgs := make([]bus.Publication, 0, len(envs))
	index := make([]int, 0, len(envs))
	for i, env := range envs {
		payload, err := s.prepare(env)
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
	receivers, perr, err := s.bus.PublishBatch(ctx, msgs)
	for j, i := range index {
		switch {
		case err != nil:
			errs[i] = fmt.Errorf("%w: %w", ErrUnavailable, err)
		case perr[j] != nil:
			errs[i] = fmt.Errorf("%w: %w", ErrUnavailable, perr[j])
		default:
			results[i] = Result{ID: envs[i].GetId(), Channel: envs[i].GetChannel(), Receivers: receivers[j]}
			s.published.WithLabelValues(typeLabel(envs[i].GetType())).Inc()
			continue
		}
		s.rejected.WithLabelValues("unavailable").Inc()
	}
	s.latency.Observe(time.Since(start).Seconds())
	return results, errs
}

func (s *Service) prepare(env *envelope.Envelope) ([]byte, error) {
	if err := envelope.FillStrict(env, s.source, s.now()); err != nil {
		s.rejected.WithLabelValues("invalid").Inc()
		return nil, err
	}
	return envelope.Marshal(env)
}

// typeLabel bounds the label's values to the registered types: event types
// are caller input and would otherwise grow the metric without limit.
func typeLabel(t string) string {
	if _, ok := envelope.Lookup(t); ok {
		return t
	}
	return "other"
}
