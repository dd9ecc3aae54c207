// Package redisbus implements package bus on Redis pub/sub with go-redis.
//
// Publishes from any number of goroutines are pipelined: while one pipeline
// is in flight, the next requests queue up and go out together, so many
// concurrent publishers share a round trip. Each Subscription owns one
// pub/sub connection, reconnects by itself after Redis goes away, and
// resubscribes to everything it had, which it reports in a log line and in
// the reconnects metric.
package redisbus

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/eventbus-suite/eventbus/pkg/channel"
)

// subscription is what the bus keeps of each open subscription: one on a
// server's classic pub/sub, or a cluster's sharded one.
type subscription interface {
	Live() bool
	Close() error
}

// Options configure a Bus. The zero value works.
type Options struct {
	// Prefix is put before every channel and pattern in Redis and taken off
	// on the way back, so several deployments or tests can share one Redis
	// without seeing each other. It must be empty or a channel followed by
	// ':' (no wildcard).
	Prefix string
	// Logger receives connection losses, resubscriptions and stalls.
	// Nil discards them.
	Logger *slog.Logger
	// Registerer, when set, gets the bus metrics, named Namespace + "_bus_...".
	Registerer prometheus.Registerer
	// Namespace prefixes metric names, e.g. "eventbus_api".
	Namespace string
	// MaxBatch caps the commands in one pipeline. Default 512.
	MaxBatch int
	// Buffer is the length of each subscription's Messages channel.
	// Default 4096.
	Buffer int
	// HistoryMaxLen, when above zero, makes the bus keep history: every
	// message is recorded in its namespace's stream and published live in
	// one step, and the stream keeps about this many entries. Zero
	// publishes live only, with no positions.
	HistoryMaxLen int64
	// HistoryTTL bounds the age of what a stream keeps; zero keeps entries
	// for as long as HistoryMaxLen allows.
	HistoryTTL time.Duration
	// Partitions is how many streams each namespace's record is spread
	// over, by a hash of the channel (see partition.go); at most
	// MaxPartitions. Zero means 1 on a single Redis, where one stream per
	// namespace keeps today's layout, and DefaultClusterPartitions on a
	// cluster. Every process of a deployment must use the same.
	Partitions int
	// Encode, when set, turns each payload into what goes on the wire and
	// into the record (BUS_WIRE=json: an envelope's canonical protobuf
	// JSON, envelope.ToJSON). It must return a payload it does not know
	// as it is.
	Encode func([]byte) []byte
	// ConnBuffer, when above zero, sizes the read and write buffers of
	// each connection Open's client makes, in place of go-redis's 32 KiB:
	// ConnBuffer for commands, four times that for pipelines (128 KiB by
	// default), on every node of a cluster too. It is for a service whose
	// commands and replies are mostly small (a larger reply takes more
	// reads, no more memory) but whose pools grow with bursts of its own
	// clients: the edge's, with a thousand MQTT clients connecting at
	// once, held 4–6 KB of buffers per connection.
	ConnBuffer int
}

// DefaultClusterPartitions is a namespace's partitions on a cluster
// unless Options.Partitions says otherwise.
const DefaultClusterPartitions = 8

// MaxPartitions bounds Options.Partitions.
const MaxPartitions = 1024

// Bus publishes and subscribes through one Redis server.
type Bus struct {
	client redis.UniversalClient
	pub    redis.UniversalClient // client's options without retries: for what must not be sent twice (publishes, consumers' reads)
	opts   Options
	log    *slog.Logger
	m      *metrics

	cluster bool     // client is a *redis.ClusterClient
	parts   int      // partitions of a namespace
	tags    []string // hash tag of each partition, when partitioned
	streams streamCache

	reqs chan *request
	stop chan struct{}
	wg   sync.WaitGroup

	mu         sync.Mutex
	closed     bool
	subs       map[subscription]struct{}
	ownsClient bool // made by Open: Close closes the client
}

// New returns a Bus on client and starts its publishing pipeline; Close
// stops it. The client stays the caller's: Close does not close it (Open
// makes a Bus that owns its client).
//
// Publishing runs on a client of its own, made with client's options but
// with no retries and with context deadlines honoured: go-redis would
// otherwise send a pipeline again after losing its reply, which publishes
// it twice when Redis had taken it (or into a restarted Redis seconds
// later, long after the caller should have had an answer), and would
// ignore a deadline while it waits on a socket.
func New(client redis.UniversalClient, opts Options) (*Bus, error) {
	if opts.Prefix != "" {
		p := strings.TrimSuffix(opts.Prefix, ":")
		if err := channel.Validate(p); err != nil || p+":" != opts.Prefix {
			return nil, fmt.Errorf("redisbus prefix %q: want a channel followed by ':'", opts.Prefix)
		}
	}
	opts.MaxBatch = cmp.Or(opts.MaxBatch, 512)
	opts.Buffer = cmp.Or(opts.Buffer, 4096)
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	_, cluster := client.(*redis.ClusterClient)
	parts := opts.Partitions
	if parts == 0 {
		parts = 1
		if cluster {
			parts = DefaultClusterPartitions
		}
	}
	if parts < 1 || parts > MaxPartitions {
		return nil, fmt.Errorf("redisbus partitions %d: want 1 to %d", parts, MaxPartitions)
	}
	pub, err := newPublishClient(client)
	if err != nil {
		return nil, err
	}
	m, err := newMetrics(opts.Registerer, opts.Namespace)
	if err != nil {
		_ = pub.Close()
		return nil, err
	}
	b := &Bus{
		client: client,
		pub:    pub,
		opts:   opts,
		log:    log,
		m:      m,
		reqs:   make(chan *request, opts.MaxBatch),
		stop:   make(chan struct{}),
		subs:   make(map[subscription]struct{}),

		cluster: cluster,
		parts:   parts,
	}
	if b.partitioned() {
		b.tags = balancedTags(parts)
	}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		// Marks and trims are spaced by what each stream keeps.
		b.pipeline(newTrimmer(b.streamMaxLen()))
	}()
	return b, nil
}

// Ping reports whether Redis answers: the server, or every node of a
// cluster.
func (b *Bus) Ping(ctx context.Context) error {
	if err := ping(ctx, b.client); err != nil {
		return fmt.Errorf("ping redis: %w", err)
	}
	return nil
}

// Close closes every subscription, waits for publishes in flight and stops
// the pipeline. Publishing after Close returns bus.ErrClosed.
func (b *Bus) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	subs := make([]subscription, 0, len(b.subs))
	for s := range b.subs {
		subs = append(subs, s)
	}
	b.mu.Unlock()
	for _, s := range subs {
		_ = s.Close()
	}
	close(b.stop)
	b.wg.Wait()
	err := b.pub.Close()
	if b.ownsClient {
		err = errors.Join(err, b.client.Close())
	}
	return err
}

func (b *Bus) key(ch string) string { return b.opts.Prefix + ch }

func (b *Bus) unkey(ch string) string { return strings.TrimPrefix(ch, b.opts.Prefix) }
