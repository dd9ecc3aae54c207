package hub

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	subscriptions prometheus.Gauge
	delivered     prometheus.Counter
	slowCloses    prometheus.Counter
	malformed     prometheus.Counter
	refusals      *prometheus.CounterVec
	recoveries    *prometheus.CounterVec
	recovered     prometheus.Counter
	dispatchLag   prometheus.Histogram
}

func newMetrics(h *Hub, reg prometheus.Registerer) *metrics {
	m := &metrics{
		subscriptions: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "eventbus_edge_subscriptions", Help: "Subscriptions of connected clients."}),
		delivered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "eventbus_edge_deliveries_total", Help: "Event frames queued for clients."}),
		slowCloses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "eventbus_edge_slow_consumer_closes_total", Help: "Connections closed as too slow (4008): their send queue overflowed in bytes, or its oldest frame waited longer than EDGE_SEND_QUEUE_MAX_DELAY."}),
		malformed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "eventbus_edge_malformed_total", Help: "Messages that were no envelope, not forwarded."}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "eventbus_edge_limit_refusals_total", Help: "Subscriptions and connections refused at a bound, by bound."},
			[]string{"limit"}),
		recoveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "eventbus_edge_recoveries_total", Help: "Subscriptions that resumed from a position, by result: recovered, or the reason they could not."},
			[]string{"result"}),
		recovered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "eventbus_edge_recovered_events_total", Help: "Missed events read from the record and queued for resuming subscriptions."}),
		dispatchLag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "eventbus_edge_dispatch_lag_seconds", Help: "How long each message the hub dispatched had waited since the bus read it from Redis: past 0.02, the edge is short of CPU and its writes are paced for fewer, fuller writes (eventbus_edge_pacing_strained).",
			Buckets: []float64{0.001, 0.005, 0.02, 0.05, 0.1, 0.25, 1, 5}}),
	}
	// gauge reads what the hub holds, under its lock, when scraped.
	gauge := func(name, help string, read func() int) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 {
			h.mu.RLock()
			defer h.mu.RUnlock()
			return float64(read())
		})
	}
	reg.MustRegister(m.subscriptions, m.delivered, m.slowCloses, m.malformed, m.refusals, m.recoveries, m.recovered, m.dispatchLag,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "eventbus_edge_pacing_strained", Help: "1 while the dispatch has fallen behind within the last second and writes are paced at a third of EDGE_WRITE_RATE, 0 otherwise."},
			func() float64 {
				if p := h.opts.Pacer; p != nil && p.Rate > 0 && p.Strained(time.Now()) {
					return 1
				}
				return 0
			}),
		gauge("eventbus_edge_connections", "Connected clients.",
			func() int { return len(h.clients) }),
		gauge("eventbus_edge_redis_subscriptions", "Channels and patterns subscribed in Redis.",
			func() int { return len(h.redis) }),
		gauge("eventbus_edge_redis_patterns", "Wildcard patterns subscribed in Redis, at most EDGE_MAX_REDIS_PATTERNS.",
			func() int { return len(h.wild) }),
		gauge("eventbus_edge_covered_patterns", "Client patterns served by a covering Redis pattern and matched on the edge.",
			func() int { return len(h.coveredBy) }),
		gauge("eventbus_edge_send_queue_bytes", "Bytes of frames waiting in every client's send queue.",
			func() int {
				n := 0
				for c := range h.clients {
					n += c.queued()
				}
				return n
			}),
	)
	return m
}
