package redisbus

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/redis/go-redis/v9"
)

// Dial connects to the Redis at url (redis://host:port/db) and checks that
// it answers within timeout, so a service fails fast on a wrong address.
// The client honours context deadlines, also while it waits on a socket
// (go-redis does not unless told to).
func Dial(ctx context.Context, url string, timeout time.Duration) (*redis.Client, error) {
	opt, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("parse redis url: %w", err)
	}
	opt.ContextTimeoutEnabled = true
	c := redis.NewClient(opt)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("connect to redis at %s: %w", opt.Addr, err)
	}
	return c, nil
}

// Open dials url like Dial and returns a Bus on the connection that owns
// it: Close closes the client too.
func Open(ctx context.Context, url string, timeout time.Duration, opts Options) (*Bus, error) {
	c, err := Dial(ctx, url, timeout)
	if err != nil {
		return nil, err
	}
	b, err := New(c, opts)
	if err != nil {
		_ = c.Close()
		return nil, err
	}
	b.ownsClient = true
	return b, nil
}

// Client returns the Redis client, for commands outside pub/sub (keys,
// idempotency records). It stays valid until Close.
func (b *Bus) Client() *redis.Client { return b.client }

// Ready reports whether Redis answers and every open subscription is live:
// what a service's /readyz needs.
func (b *Bus) Ready(ctx context.Context) error {
	b.mu.Lock()
	for s := range b.subs {
		if !s.Live() {
			b.mu.Unlock()
			return errors.New("a subscription to redis is not live")
		}
	}
	b.mu.Unlock()
	return b.Ping(ctx)
}

// Stats is what Redis says about pub/sub, seen through the bus's prefix.
type Stats struct {
	// Channels with at least one exact subscriber (PUBSUB CHANNELS), sorted.
	Channels []string `json:"channels"`
	// NumSub is the exact subscriber count of each of Channels (PUBSUB NUMSUB).
	NumSub map[string]int64 `json:"numsub"`
	// NumPat counts the pattern subscriptions of the whole server (PUBSUB
	// NUMPAT): Redis cannot count them per prefix.
	NumPat int64 `json:"numpat"`
}

// Stats asks Redis about the channels under the bus's prefix.
func (b *Bus) Stats(ctx context.Context) (Stats, error) {
	raw, err := b.client.PubSubChannels(ctx, b.opts.Prefix+"*").Result()
	if err != nil {
		return Stats{}, fmt.Errorf("pubsub channels: %w", err)
	}
	st := Stats{Channels: make([]string, 0, len(raw)), NumSub: make(map[string]int64, len(raw))}
	if len(raw) > 0 {
		counts, err := b.client.PubSubNumSub(ctx, raw...).Result()
		if err != nil {
			return Stats{}, fmt.Errorf("pubsub numsub: %w", err)
		}
		for ch, n := range counts {
			st.NumSub[b.unkey(ch)] = n
		}
	}
	for _, ch := range raw {
		st.Channels = append(st.Channels, b.unkey(ch))
	}
	slices.Sort(st.Channels)
	if st.NumPat, err = b.client.PubSubNumPat(ctx).Result(); err != nil {
		return Stats{}, fmt.Errorf("pubsub numpat: %w", err)
	}
	return st, nil
}
