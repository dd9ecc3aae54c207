package hub

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	subscriptions prometheus.Gauge
	delivered     prometheus.Counter
	slowCloses    prometheus.Counter
	malformed     prometheus.Counter
}

func newMetrics(h *Hub, reg prometheus.Registerer) *metrics {
	m := &metrics{
		subscriptions: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "eventbus_edge_subscriptions", Help: "Subscriptions of connected clients."}),
		delivered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "eventbus_edge_deliveries_total", Help: "Event frames queued for clients."}),
		slowCloses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "eventbus_edge_slow_consumer_closes_total", Help: "Connections closed because their send queue overflowed."}),
		malformed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "eventbus_edge_malformed_total", Help: "Messages that were no envelope, not forwarded."}),
	}
	reg.MustRegister(m.subscriptions, m.delivered, m.slowCloses, m.malformed,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "eventbus_edge_connections", Help: "Connected clients."},
			func() float64 {
				h.mu.RLock()
				defer h.mu.RUnlock()
				return float64(len(h.clients))
			}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "eventbus_edge_redis_subscriptions", Help: "Channels and patterns subscribed in Redis (one per distinct client subscription)."},
			func() float64 {
				h.mu.RLock()
				defer h.mu.RUnlock()
				return float64(len(h.subs))
			}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "eventbus_edge_send_queue_bytes", Help: "Bytes of frames waiting in every client's send queue."},
			func() float64 {
				h.mu.RLock()
				defer h.mu.RUnlock()
				n := 0
				for c := range h.clients {
					n += c.queued()
				}
				return float64(n)
			}),
	)
	return m
}
