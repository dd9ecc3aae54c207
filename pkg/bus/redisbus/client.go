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
func NewClient(url string) (redis.UniversalClient, error) { return newClient(url, 0) }

// newClient is NewClient with its connections' buffers sized by buffer
// (Options.ConnBuffer), or go-redis's when it is 0.
func newClient(url string, buffer int) (redis.UniversalClient, error) {
	scheme, rest, _ := strings.Cut(url, "://")
	nodeScheme, cluster := clusterSchemes[scheme]
	if !cluster {
		opt, err := redis.ParseURL(url)
		if err != nil {
			return nil, fmt.Errorf("parse redis url: %w", err)
		}
		opt.ContextTimeoutEnabled = true
		if buffer > 0 {
			opt.ReadBufferSize, opt.WriteBufferSize = buffer, buffer
			opt.PipelineReadBufferSize, opt.PipelineWriteBufferSize = 4*buffer, 4*buffer
		}
		return redis.NewClient(opt), nil
	}
	opt, err := parseClusterURL(nodeScheme, rest)
	if err != nil {
		return nil, fmt.Errorf("parse redis cluster url: %w", err)
	}
	opt.ContextTimeoutEnabled = true
	if buffer > 0 {
		opt.ReadBufferSize, opt.WriteBufferSize = buffer, buffer
		opt.PipelineReadBufferSize, opt.PipelineWriteBufferSize = 4*buffer, 4*buffer
	}
	return newClusterClient(opt), nil
}

// newClusterClient returns a cluster client that reads again which master
// serves which slot whenever a command, a pipeline or a dial fails for want
// of an answer, or is redirected (MOVED, ASK, CLUSTERDOWN, TRYAGAIN): a
// master may have died and a replica taken its slots, or a slot moved, and
// go-redis would otherwise go on asking the old node until a reload of its
// own, which fails as often as it asks a dead node; the publishing client,
// which follows no redirection, would not learn of a move at all.
func newClusterClient(opt *redis.ClusterOptions) *redis.ClusterClient {
	cc := redis.NewClusterClient(opt)
	cc.AddHook(slotReloader{cc})
	return cc
}

// slotReloader is the hook of newClusterClient.
type slotReloader struct{ cc *redis.ClusterClient }

// stale reports whether err means the client's map of slots may be stale:
// no answer (not an answer of Redis's, nor the caller's context ending),
// or an answer redirecting the command.
func stale(ctx context.Context, err error) bool {
	return err != nil && ctx.Err() == nil && !errors.Is(err, redis.Nil) && (!isRedisError(err) || redirected(err))
}

// isRedisError reports whether err is an answer of Redis's, as opposed to
// no answer (a lost connection, a dial that failed, a deadline).
func isRedisError(err error) bool {
	var re redis.Error
	return errors.As(err, &re)
}

func (h slotReloader) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := next(ctx, network, addr)
		if stale(ctx, err) {
			h.cc.ReloadState(ctx)
		}
		return c, err
	}
}

func (h slotReloader) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if stale(ctx, err) {
			h.cc.ReloadState(ctx)
		}
		return err
	}
}

func (h slotReloader) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		if stale(ctx, err) {
			h.cc.ReloadState(ctx)
		}
		return err
	}
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
	return dial(ctx, url, timeout, log, 0)
}

// dial is Dial with the connections' buffers sized by buffer (newClient).
func dial(ctx context.Context, url string, timeout time.Duration, log *slog.Logger, buffer int) (redis.UniversalClient, error) {
	if log != nil {
		redis.SetLogger(driverLog{log})
	}
	c, err := newClient(url, buffer)
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

// Open dials url (Dial, with opts.Logger and opts.ConnBuffer) and makes a
// Bus on the client, which it owns: the Bus's Close closes the client
// too. The client is returned for the service's small stores (claims,
// contacts, idempotency, revocations), which must not outlive the Bus.
func Open(ctx context.Context, url string, timeout time.Duration, opts Options) (*Bus, redis.UniversalClient, error) {
	rdb, err := dial(ctx, url, timeout, opts.Logger, opts.ConnBuffer)
	if err != nil {
		return nil, nil, err
	}
	b, err := New(rdb, opts)
	if err != nil {
		_ = rdb.Close()
		return nil, nil, err
	}
	b.ownsClient = true
	return b, rdb, nil
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
		// go-redis's cluster client sends a pipeline again, up to
		// MaxRedirects times, when its replies were lost with the
		// connection, as well as after a MOVED or ASK: off, so that a
		// publish is never sent twice. A publish answered MOVED (a slot
		// that moved, a replica promoted) fails unsent, and the hook has
		// the slots read again for the next.
		po := *c.Options()
		po.MaxRetries = -1
		po.MaxRedirects = -1
		po.ContextTimeoutEnabled = true
		po.PushNotificationProcessor = nil
		po.MaintNotificationsConfig = nil
		return newClusterClient(&po), nil
	}
	return nil, errors.New("redisbus: want a *redis.Client or a *redis.ClusterClient")
}
