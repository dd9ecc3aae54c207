// Package presence records which connections are on which channel, in
// Redis, for every edge at once: the edges write it, the api reads it
// (GET /v1/presence), the notification service asks it whether a user is
// online.
//
// A channel's presence is one sorted set, named by the bus's KeyOf
// ("presence:{<tag>}:<channel>"), so it sits in the slot of the channel's
// stream on a cluster. Its members are the connections, encoded as JSON;
// each one's score is when it expires, in milliseconds of Redis's own
// clock, so that edges whose clocks disagree agree on it. An edge renews
// its connections' scores every third of the TTL; a lost edge stops
// renewing, and its connections stop counting within the TTL. Every read
// leaves expired members out, and Sweep removes them, saying which.
package presence

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/redis/go-redis/v9"
)

// Member is one connection on a channel.
type Member struct {
	// Client is the connection's id, unique across edges and restarts.
	Client string `json:"client"`
	// User is the user its token names; empty without a token.
	User string `json:"user,omitempty"`
	// Transport is how it is connected: "ws", "sse", "mqtt" (over
	// WebSocket) or "mqtt-tcp" (over TCP or TLS).
	Transport string `json:"transport"`
}

// encode gives the member as the sorted set holds it: the same bytes for
// the same member, so that a renewal finds it.
func (m Member) encode() string {
	b, _ := json.Marshal(m) // three strings: cannot fail
	return string(b)
}

func decode(s string) (Member, bool) {
	var m Member
	if json.Unmarshal([]byte(s), &m) != nil || m.Client == "" {
		return Member{}, false
	}
	return m, true
}

// Stats count a channel's connections and their distinct users.
type Stats struct {
	Clients int `json:"num_clients"`
	Users   int `json:"num_users"`
}

// Entry is one member on one channel, for Renew.
type Entry struct {
	Channel string
	Member  Member
}

// Store reads and writes presence. Its methods are safe for concurrent use.
type Store struct {
	rdb   redis.UniversalClient
	keyOf func(kind, ch string) string
	ttl   time.Duration
}

// New returns a store on rdb whose members expire ttl after their last
// renewal (which matters only to a store that writes). keyOf names keys as the bus does (redisbus.Bus.KeyOf), so that
// every process of a deployment finds the same key.
func New(rdb redis.UniversalClient, keyOf func(kind, ch string) string, ttl time.Duration) *Store {
	return &Store{rdb: rdb, keyOf: keyOf, ttl: ttl}
}

// TTL is how long a member counts after its last renewal.
func (s *Store) TTL() time.Duration { return s.ttl }

func (s *Store) key(ch string) string { return s.keyOf("presence", ch) }

// now gives Redis's clock in milliseconds, inside a script.
const now = `local t = redis.call('TIME'); local now = t[1] * 1000 + math.floor(t[2] / 1000)
`

// renew adds or renews ARGV[2] on KEYS[1], expiring ARGV[1] ms from now,
// and keeps the key as long as its longest-lived member. It returns 1
// when the member was not there (or had expired): new to the channel.
// Members expired for longer than the TTL go: a sweep had a TTL to
// announce them, and a channel nobody watches is swept by nobody, so
// its lost members would otherwise stay as long as a live one renews.
var renew = redis.NewScript(now + `
local ttl = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
local old = redis.call('ZSCORE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[2])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
if old and tonumber(old) > now then return 0 end
return 1`)

// leave removes ARGV[1] from KEYS[1] and returns 1 when it had not
// expired.
var leave = redis.NewScript(now + `
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
if tonumber(score) > now then return 1 end
return 0`)

// sweep removes the members of KEYS[1] that expired and returns them.
var sweep = redis.NewScript(now + `
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #gone > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now) end
return gone`)

// live returns how many members of KEYS[1] have not expired and, when
// ARGV[1] is 1, the members.
var live = redis.NewScript(now + `
local n = redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
if ARGV[1] ~= '1' or n == 0 then return {n, {}} end
return {n, redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')}`)

// Join adds m to ch, or renews it, and reports whether it is new there.
func (s *Store) Join(ctx context.Context, ch string, m Member) (bool, error) {
	n, err := renew.Run(ctx, s.rdb, []string{s.key(ch)}, s.ttl.Milliseconds(), m.encode()).Int()
	if err != nil {
		return false, fmt.Errorf("presence join %s: %w", ch, err)
	}
	return n == 1, nil
}

// renewBatch bounds the renewals of one pipeline.
const renewBatch = 512

// Renew renews every entry, renewBatch to a pipeline, and returns those
// that were gone (expired, or swept by another edge while this one could
// not reach Redis) and are back: their joins are news again.
func (s *Store) Renew(ctx context.Context, es []Entry) ([]Entry, error) {
	if len(es) == 0 {
		return nil, nil
	}
	if err := renew.Load(ctx, s.rdb).Err(); err != nil {
		return nil, fmt.Errorf("presence renew: %w", err)
	}
	var back []Entry
	var errs []error
	for chunk := range slices.Chunk(es, renewBatch) {
		b, err := s.renew(ctx, chunk)
		back = append(back, b...)
		if err != nil {
			errs = append(errs, err)
		}
	}
	return back, errors.Join(errs...)
}

// renew renews es in one pipeline.
func (s *Store) renew(ctx context.Context, es []Entry) ([]Entry, error) {
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.Cmd, len(es))
	for i, e := range es {
		cmds[i] = renew.EvalSha(ctx, pipe, []string{s.key(e.Channel)}, s.ttl.Milliseconds(), e.Member.encode())
	}
	_, _ = pipe.Exec(ctx) // each command carries its own error
	var back []Entry
	var errs []error
	for i, c := range cmds {
		n, err := c.Int()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if n == 1 {
			back = append(back, es[i])
		}
	}
	if len(errs) > 0 {
		return back, fmt.Errorf("presence renew: %d of %d failed: %w", len(errs), len(es), errs[0])
	}
	return back, nil
}

// Leave removes m from ch and reports whether it was there and had not
// expired: an expired member is Sweep's to announce, so that no member
// leaves twice.
func (s *Store) Leave(ctx context.Context, ch string, m Member) (bool, error) {
	n, err := leave.Run(ctx, s.rdb, []string{s.key(ch)}, m.encode()).Int()
	if err != nil {
		return false, fmt.Errorf("presence leave %s: %w", ch, err)
	}
	return n == 1, nil
}

// Sweep removes the members of ch that expired and returns them: only
// one caller gets each, so whoever sweeps one announces it gone.
func (s *Store) Sweep(ctx context.Context, ch string) ([]Member, error) {
	raw, err := sweep.Run(ctx, s.rdb, []string{s.key(ch)}).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("presence sweep %s: %w", ch, err)
	}
	out := make([]Member, 0, len(raw))
	for _, r := range raw {
		if m, ok := decode(r); ok {
			out = append(out, m)
		}
	}
	return out, nil
}

// List returns up to limit members of ch (0: all; -1: none, the counts
// only), in no promised order, and the channel's counts. The users are
// counted over every member, so a channel of many members costs one read
// of all of them, whatever the limit.
func (s *Store) List(ctx context.Context, ch string, limit int) ([]Member, Stats, error) {
	all, n, err := s.read(ctx, ch, true) // the users are counted over every member
	if err != nil {
		return nil, Stats{}, err
	}
	users := make(map[string]struct{})
	for _, m := range all {
		if m.User != "" {
			users[m.User] = struct{}{}
		}
	}
	switch {
	case limit < 0:
		all = nil
	case limit > 0 && limit < len(all):
		all = all[:limit]
	}
	return all, Stats{Clients: n, Users: len(users)}, nil
}

// Count returns how many connections are on ch.
func (s *Store) Count(ctx context.Context, ch string) (int, error) {
	_, n, err := s.read(ctx, ch, false)
	return n, err
}

// read runs live: the count of ch's members, and, with members, them.
func (s *Store) read(ctx context.Context, ch string, members bool) ([]Member, int, error) {
	flag := 0
	if members {
		flag = 1
	}
	res, err := live.Run(ctx, s.rdb, []string{s.key(ch)}, flag).Slice()
	if err != nil {
		return nil, 0, fmt.Errorf("presence of %s: %w", ch, err)
	}
	if len(res) != 2 {
		return nil, 0, fmt.Errorf("presence of %s: unexpected reply %v", ch, res)
	}
	n, _ := res[0].(int64)
	var out []Member
	if members {
		raw, _ := res[1].([]any)
		out = make([]Member, 0, len(raw))
		for _, r := range raw {
			if s, ok := r.(string); ok {
				if m, ok := decode(s); ok {
					out = append(out, m)
				}
			}
		}
	}
	return out, int(n), nil
}
