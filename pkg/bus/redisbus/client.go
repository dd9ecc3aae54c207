package redisbus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// clusterSchemes are the URL schemes of a Redis Cluster, each with the
// scheme go-redis reads for its nodes.
var clusterSchemes = map[string]string{"redis+cluster": "redis", "rediss+cluster": "rediss"}

// NewClient returns a client of the Redis at url, without connecting yet:
// one server for redis://host:port/db (rediss:// for TLS), a cluster for
// redis+cluster://host:port,host:port (rediss+cluster:// for TLS), where
// the nodes named are where it starts: it finds the rest. A cluster URL
// may carry user:password@ before the first node and go-redis's query
// options after the last; it has no database. Either client honours
// context deadlines, also while it waits on a socket (go-redis does not
// unless told to).
func NewClient(url string) (redis.UniversalClient, error) {
	scheme, rest, _ := strings.Cut(url, "://")
	nodeScheme, cluster := clusterSchemes[scheme]
	if !cluster {
		opt, err := redis.ParseURL(url)
		if err != nil {
			return nil, fmt.Errorf("parse redis url: %w", err)
		}
		opt.ContextTimeoutEnabled = true
		return redis.NewClient(opt), nil
	}
	opt, err := parseClusterURL(nodeScheme, rest)
	if err != nil {
		return nil, fmt.Errorf("parse redis cluster url: %w", err)
	}
	opt.ContextTimeoutEnabled = true
	return redis.NewClusterClient(opt), nil
}

// parseClusterURL reads what follows "redis+cluster://":
// [user:password@]host:port,host:port[/][?options].
func parseClusterURL(scheme, rest string) (*redis.ClusterOptions, error) {
	rest, query, _ := strings.Cut(rest, "?")
	rest = strings.TrimSuffix(rest, "/")
	userinfo, hosts, ok := strings.Cut(rest, "@")
	if !ok {
		userinfo, hosts = "", rest
	}
	addrs := strings.Split(hosts, ",")
	for _, a := range addrs {
		if host, port, err := net.SplitHostPort(a); err != nil || host == "" || port == "" {
			return nil, fmt.Errorf("node %q: want host:port", a)
		}
	}
	// go-redis's own form: the first node in the URL, the others as
	// addr= options.
	u := scheme + "://"
	if userinfo != "" {
		u += userinfo + "@"
	}
	u += addrs[0] + "?"
	for _, a := range addrs[1:] {
		u += "addr=" + a + "&"
	}
	return redis.ParseClusterURL(u + query)
}

// CheckURL reports whether url is one NewClient takes.
func CheckURL(url string) error {
	c, err := NewClient(url)
	if err != nil {
		return err
	}
	return c.Close()
}

// Dial connects to the Redis at url (see NewClient) and checks that it
// answers within timeout, so a service fails fast on a wrong address; on
// a cluster, that every node it knows answers. The caller closes the
// client, after the Bus and the stores made on it.
//
// Dial is for a service's run: with a log, it also sends go-redis's own
// log, which is process-wide and by default prints a line to stderr for
// every failed dial of every pool, to log at debug level. A service says
// once that Redis went away and once that it is back (package retry);
// go-redis would say it several times a second for as long as Redis is
// away.
func Dial(ctx context.Context, url string, timeout time.Duration, log *slog.Logger) (redis.UniversalClient, error) {
	if log != nil {
		redis.SetLogger(driverLog{log})
	}
	c, err := NewClient(url)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := ping(ctx, c); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("connect to redis at %s: %w", redactedURL(url), err)
	}
	return c, nil
}

// ping pings a single server, or every master and replica of a cluster.
func ping(ctx context.Context, c redis.UniversalClient) error {
	cc, ok := c.(*redis.ClusterClient)
	if !ok {
		return c.Ping(ctx).Err()
	}
	return cc.ForEachShard(ctx, func(ctx context.Context, node *redis.Client) error {
		if err := node.Ping(ctx).Err(); err != nil {
			return fmt.Errorf("%s: %w", node.Options().Addr, err)
		}
		return nil
	})
}

// redactedURL is url without its password, for messages.
func redactedURL(url string) string {
	scheme, rest, ok := strings.Cut(url, "://")
	if !ok {
		return url
	}
	if at := strings.LastIndex(rest, "@"); at >= 0 {
		if user, _, hasPass := strings.Cut(rest[:at], ":"); hasPass {
			rest = user + ":xxxxx" + rest[at:]
		}
	}
	return scheme + "://" + rest
}

// newPublishClient returns the pipeline's client: c's servers and
// connection settings, no retries, deadlines honoured. What go-redis
// attaches to a client for itself (its push notification processor,
// maintenance notifications, client-side cache) is left for the new
// client to make its own: sharing them fails or mixes two clients'
// state. Publishing needs none of them.
func newPublishClient(c redis.UniversalClient) (redis.UniversalClient, error) {
	switch c := c.(type) {
	case *redis.Client:
		po := *c.Options()
		po.MaxRetries = -1
		po.ContextTimeoutEnabled = true
		po.PushNotificationProcessor = nil
		po.MaintNotificationsConfig = nil
		po.ClientSideCache = nil
		po.ClientSideCacheConfig = nil
		return redis.NewClient(&po), nil
	case *redis.ClusterClient:
		// A MOVED or ASK answer means the command did not run, so
		// following it cannot publish twice; retries stay off.
		po := *c.Options()
		po.MaxRetries = -1
		po.ContextTimeoutEnabled = true
		po.PushNotificationProcessor = nil
		po.MaintNotificationsConfig = nil
		return redis.NewClusterClient(&po), nil
	}
	return nil, errors.New("redisbus: want a *redis.Client or a *redis.ClusterClient")
}

// reloadSlots has a cluster's clients read again which master serves which
// slot, after a command failed for want of an answer: a master may have
// died and a replica taken its slots, and go-redis would otherwise go on
// dialling the dead one until its own periodic reload, up to 10 s later.
// On one server it does nothing.
func (b *Bus) reloadSlots(ctx context.Context) {
	for _, c := range []redis.UniversalClient{b.client, b.pub} {
		if cc, ok := c.(*redis.ClusterClient); ok {
			cc.ReloadState(ctx)
		}
	}
}
