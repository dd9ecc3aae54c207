package redisbus

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	published     prometheus.Counter
	publishErrors prometheus.Counter
	batchSize     prometheus.Histogram
	received      prometheus.Counter
	reconnects    prometheus.Counter
	stalls        prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, ns string) (*metrics, error) {
	name := func(s string) string {
		if ns == "" {
			return "eventbus_bus_" + s
		}
		return ns + "_bus_" + s
	}
	m := &metrics{
		published: prometheus.NewCounter(prometheus.CounterOpts{
			Name: name("published_total"), Help: "Messages published to Redis."}),
		publishErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: name("publish_errors_total"), Help: "Messages Redis did not accept."}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: name("publish_batch_size"), Help: "Messages per pipeline sent to Redis.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 6)}),
		received: prometheus.NewCounter(prometheus.CounterOpts{
			Name: name("received_total"), Help: "Messages received from Redis subscriptions."}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: name("reconnects_total"), Help: "Times a subscription reconnected to Redis and resubscribed."}),
		stalls: prometheus.NewCounter(prometheus.CounterOpts{
			Name: name("subscriber_stalls_total"), Help: "Times a consumer fell behind and delivery from Redis blocked."}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.published, m.publishErrors, m.batchSize, m.received, m.reconnects, m.stalls} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register bus metrics: %w", err)
		}
	}
	return m, nil
}
