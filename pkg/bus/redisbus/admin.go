package redisbus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

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
	// Channels with at least one exact subscriber (PUBSUB CHANNELS), sorted;
	// on a cluster, the partitions' shard channels with a subscriber
	// (PUBSUB SHARDCHANNELS on every master), named as their streams.
	Channels []string `json:"channels"`
	// NumSub is the exact subscriber count of each of Channels (PUBSUB NUMSUB).
	NumSub map[string]int64 `json:"numsub"`
	// NumPat counts the pattern subscriptions of the whole server (PUBSUB
	// NUMPAT): Redis cannot count them per prefix, nor per pattern.
	NumPat int64 `json:"numpat"`
	// Namespaces are the recorded namespaces' streams (one each, or one
	// per partition) with their consumer groups, sorted: the subscribers
	// that read durably. Empty without history.
	Namespaces []NamespaceStats `json:"namespaces"`
}

// NamespaceStats is one namespace's stream, or one of its partitions.
type NamespaceStats struct {
	Namespace string       `json:"namespace"`
	Stream    string       `json:"stream"` // as cursors name it: the namespace, or "<namespace>.<partition>"
	Events    int64        `json:"events"` // entries the stream keeps
	Epoch     string       `json:"epoch"`
	Last      string       `json:"last_offset,omitempty"`
	Groups    []GroupStats `json:"groups"`
}

// GroupStats is a consumer group on a namespace's stream.
type GroupStats struct {
	Name      string `json:"name"`
	Consumers int64  `json:"consumers"`
	Pending   int64  `json:"pending"` // delivered, not yet acknowledged
	Lag       int64  `json:"lag"`     // not yet delivered; -1 when Redis cannot tell
}

// Stats asks Redis about the channels under the bus's prefix: on one
// server, its channels with exact subscribers and its pattern count; on a
// cluster, every master's shard channels of the bus, each named as its
// stream ("order.3": the partition's live channel of order), with their
// subscriptions.
func (b *Bus) Stats(ctx context.Context) (Stats, error) {
	if cc, ok := b.client.(*redis.ClusterClient); ok {
		return b.clusterStats(ctx, cc)
	}
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
	if st.Namespaces, err = b.namespaceStats(ctx); err != nil {
		return Stats{}, err
	}
	return st, nil
}

// clusterStats is Stats on a cluster.
func (b *Bus) clusterStats(ctx context.Context, cc *redis.ClusterClient) (Stats, error) {
	part := make(map[string]int, len(b.tags)) // tag → partition
	for i, t := range b.tags {
		part[t] = i
	}
	st := Stats{Channels: []string{}, NumSub: map[string]int64{}}
	var mu sync.Mutex
	err := cc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
		raw, err := node.PubSubShardChannels(ctx, b.opts.Prefix+"live:{*}:*").Result()
		if err != nil || len(raw) == 0 {
			return err
		}
		counts, err := node.PubSubShardNumSub(ctx, raw...).Result()
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		for ch, n := range counts {
			tag, ns, ok := strings.Cut(strings.TrimPrefix(strings.TrimPrefix(ch, b.opts.Prefix), "live:{"), "}:")
			if i, known := part[tag]; ok && known {
				name := b.streamOf(ns, i).name
				st.Channels = append(st.Channels, name)
				st.NumSub[name] = n
			}
		}
		return nil
	})
	if err != nil {
		return Stats{}, fmt.Errorf("pubsub shard channels: %w", err)
	}
	slices.Sort(st.Channels)
	if st.Namespaces, err = b.namespaceStats(ctx); err != nil {
		return Stats{}, err
	}
	return st, nil
}

// namespaceStats reads every stream of every recorded namespace and its
// groups.
func (b *Bus) namespaceStats(ctx context.Context) ([]NamespaceStats, error) {
	namespaces, err := b.knownNamespaces(ctx)
	if err != nil {
		return nil, err
	}
	var streams []stream
	for _, ns := range namespaces {
		streams = append(streams, b.streamsOf(ns)...)
	}
	pipe := b.client.Pipeline()
	infos := make([]*redis.XInfoStreamCmd, len(streams))
	groups := make([]*redis.XInfoGroupsCmd, len(streams))
	epochs := make([]*redis.StringCmd, len(streams))
	for i, st := range streams {
		infos[i] = pipe.XInfoStream(ctx, st.key)
		groups[i] = pipe.XInfoGroups(ctx, st.key)
		epochs[i] = pipe.HGet(ctx, st.meta, "epoch")
	}
	_, _ = pipe.Exec(ctx) // a stream that is gone reads as empty
	out := make([]NamespaceStats, 0, len(streams))
	for i, st := range streams {
		n := NamespaceStats{Namespace: st.ns, Stream: st.name, Epoch: epochs[i].Val(), Groups: []GroupStats{}}
		if info, err := infos[i].Result(); err == nil {
			n.Events, n.Last = info.Length, info.LastGeneratedID
		}
		gs, _ := groups[i].Result()
		for _, g := range gs {
			n.Groups = append(n.Groups, GroupStats{Name: g.Name, Consumers: g.Consumers, Pending: g.Pending, Lag: g.Lag})
		}
		out = append(out, n)
	}
	return out, nil
}

// driverLog is go-redis's logger writing to a slog.Logger at debug level.
type driverLog struct{ log *slog.Logger }

func (d driverLog) Printf(ctx context.Context, format string, v ...any) {
	if d.log.Enabled(ctx, slog.LevelDebug) {
		d.log.DebugContext(ctx, "go-redis: "+fmt.Sprintf(format, v...))
	}
}
