package mqttapi

import (
	"context"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/eventbus-suite/eventbus/pkg/envelope"
)

// Delayed wills (5.0's Will Delay Interval). A will with a delay waits in
// Redis, not in the edge that lost the connection, in one slot: a sorted
// set of the sessions whose will waits, scored by when it is due on
// Redis's clock, and a hash of the wills. Any edge publishes a will that
// came due (RunWills): it takes it for a lease, publishes it and only then
// deletes it, so an edge that dies on the way leaves it to another when
// the lease ends. A will is at least once: one published whose deletion
// failed, or whose edge stalled past its lease, goes again.
//
// A new connection of the session, on any edge, takes the will back
// before its CONNACK (MQTT-3.1.3-9), and a clean start, which ends the
// session, publishes it at once. Each connection leaves its start as the
// session's newest: a connection that ends after a newer one took the
// session over (its edge late to notice) keeps no will.

// willsGroup is the group of the wills' keys, in one slot (Keys.GroupKey).
const willsGroup = "mqtt:wills"

func (s Store) willsDue() string              { return s.Keys.GroupKey(willsGroup, "due") }
func (s Store) willsKept() string             { return s.Keys.GroupKey(willsGroup, "kept") }
func (s Store) willsNewest(key string) string { return s.Keys.GroupKey(willsGroup, "newest:"+key) }

// delayWill keeps ARGV[2] as the will of session ARGV[1], due ARGV[3] ms
// from now on Redis's clock, unless a connection of the session newer than
// ARGV[4] (its start, ns) began: KEYS[3] holds the newest's.
var delayWill = redis.NewScript(`
local newest = redis.call('GET', KEYS[3])
if newest and tonumber(newest) > tonumber(ARGV[4]) then
	return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
return 1
`)

// DelayWill keeps will, an envelope, as the will of the session key, due
// after delay, for the connection that began at since; false when a newer
// connection of the session began since, which takes the will's place.
func (s Store) DelayWill(ctx context.Context, key string, since int64, will []byte, delay time.Duration) (bool, error) {
	n, err := delayWill.Run(ctx, s.Redis, []string{s.willsDue(), s.willsKept(), s.willsNewest(key)},
		key, will, delay.Milliseconds(), since).Int()
	return n == 1, err
}

// takeWill marks ARGV[2] (ns) as the start of session ARGV[1]'s newest
// connection for ARGV[3] ms, unless a newer one's is there, and takes the
// session's will, if one waits.
var takeWill = redis.NewScript(`
local newest = redis.call('GET', KEYS[3])
if not newest or tonumber(newest) < tonumber(ARGV[2]) then
	redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[3])
end
local w = false
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
	w = redis.call('HGET', KEYS[2], ARGV[1])
end
redis.call('HDEL', KEYS[2], ARGV[1])
return w
`)

// TakeWill takes back the will that waits for the session key, if one
// does, as its connection that began at since connects; what that
// connection's predecessors leave later is refused for ttl.
func (s Store) TakeWill(ctx context.Context, key string, since int64, ttl time.Duration) ([]byte, error) {
	w, err := takeWill.Run(ctx, s.Redis, []string{s.willsDue(), s.willsKept(), s.willsNewest(key)},
		key, since, ttl.Milliseconds()).Text()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	return []byte(w), err
}

// leaseDue takes, for ARGV[2] ms, at most ARGV[1] of the wills due now on
// Redis's clock (or whose lease ended), returning each session's key and
// will in turn.
var leaseDue = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for _, k in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))) do
	local w = redis.call('HGET', KEYS[2], k)
	if w then
		redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), k)
		out[#out + 1] = k
		out[#out + 1] = w
	else
		redis.call('ZREM', KEYS[1], k)
	end
end
return out
`)

// dueWill is a will taken for publishing: its session's key and the will.
type dueWill struct {
	key  string
	will []byte
}

// LeaseDueWills takes at most n of the wills that are due, each for lease:
// published and deleted (DoneWill) within it, or taken again after.
func (s Store) LeaseDueWills(ctx context.Context, n int, lease time.Duration) ([]dueWill, error) {
	vs, err := leaseDue.Run(ctx, s.Redis, []string{s.willsDue(), s.willsKept()}, n, lease.Milliseconds()).StringSlice()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, err
	}
	out := make([]dueWill, 0, len(vs)/2)
	for i := 0; i+1 < len(vs); i += 2 {
		out = append(out, dueWill{key: vs[i], will: []byte(vs[i+1])})
	}
	return out, nil
}

// doneWill deletes the will of session ARGV[1] if it is still ARGV[2]: a
// will delayed anew in the meantime stays.
var doneWill = redis.NewScript(`
if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[2] then
	redis.call('HDEL', KEYS[2], ARGV[1])
	redis.call('ZREM', KEYS[1], ARGV[1])
end
return 1
`)

// DoneWill deletes w, published.
func (s Store) DoneWill(ctx context.Context, w dueWill) error {
	return doneWill.Run(ctx, s.Redis, []string{s.willsDue(), s.willsKept()}, w.key, w.will).Err()
}

// takeBackWill takes back the will that waits for the session, as a new
// connection of it comes: it is not published, unless the connection
// starts clean, which ends the session the will waited on.
func (s *session) takeBackWill(clean bool) {
	ctx, cancel := context.WithTimeout(s.ctx, storeTimeout)
	defer cancel()
	// The mark of the newest connection lasts as long as a connection it
	// took over might yet end: as long as the session.
	w, err := s.h.Sessions.TakeWill(ctx, s.key, s.since.UnixNano(), s.h.SessionExpiry+time.Hour)
	switch {
	case err != nil:
		s.h.Logger.Warn("the delayed will of a reconnecting mqtt session not taken back; it may be published", "client_id", s.id, "error", err)
	case w != nil && clean:
		if err := s.h.publishWillEnvelope(ctx, w); err != nil {
			s.h.Logger.Warn("mqtt will of an ended session not published", "client_id", s.id, "error", err)
		}
	}
}

// willsEvery is how often an edge looks for wills that came due,
// willsBatch how many it takes at a time, and willLease how long one is
// its to publish.
const (
	willsEvery = 500 * time.Millisecond
	willsBatch = 100
	willLease  = 30 * time.Second
)

// RunWills publishes the delayed wills that come due, whichever edge lost
// their connection, until ctx ends. Redis away delays them.
func (h *Handler) RunWills(ctx context.Context) error {
	if h.Sessions == nil {
		return nil
	}
	t := time.NewTicker(willsEvery)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		wills, err := h.Sessions.LeaseDueWills(ctx, willsBatch, willLease)
		if err != nil {
			if !failing && ctx.Err() == nil {
				h.Logger.Warn("delayed mqtt wills not read; trying again", "error", err)
			}
			failing = true
			continue
		}
		failing = false
		for _, w := range wills {
			if err := h.publishWillEnvelope(ctx, w.will); err != nil {
				h.Logger.Warn("delayed mqtt will not published; it goes again when its lease ends", "error", err)
				continue
			}
			if err := h.Sessions.DoneWill(context.WithoutCancel(ctx), w); err != nil {
				h.Logger.Warn("delayed mqtt will published but not deleted; it may go again", "error", err)
			}
		}
	}
}

// publishWillEnvelope publishes will, an envelope that waited.
func (h *Handler) publishWillEnvelope(ctx context.Context, will []byte) error {
	ev, err := envelope.Unmarshal(will)
	if err != nil {
		h.Logger.Error("a delayed mqtt will is not an envelope: dropped", "error", err)
		return nil
	}
	return h.publishWillEvent(ctx, ev)
}

// publishWillEvent publishes ev, a will, at once or as it comes due. A will
// published whose retained message was not kept counts as published:
// publishing it again would not keep it either.
func (h *Handler) publishWillEvent(ctx context.Context, ev *envelope.Envelope) error {
	ctx, cancel := context.WithTimeout(ctx, publishTimeout)
	defer cancel()
	switch err := h.publishMessage(ctx, ev); {
	case errors.Is(err, errNotRetained):
		h.Logger.Warn("mqtt will published, its retained message not kept", "channel", ev.GetChannel(), "error", err)
	case err != nil:
		return err
	}
	h.publishes.WithLabelValues("will").Inc()
	return nil
}
