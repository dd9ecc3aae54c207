package mqttapi

import (
	"context"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/eventbus-suite/eventbus/pkg/envelope"
)

// Delayed wills (5.0's Will Delay Interval). A will with a delay waits in
// Redis, not in the edge that lost the connection: a sorted set of the
// sessions whose will waits, scored by when it is due on Redis's clock,
// and a hash of the wills, in one slot. Any edge publishes a will that
// came due (RunWills); a new connection of the session, on any edge,
// takes its will back before its CONNACK (MQTT-3.1.3-9), and a clean
// start, which ends the session, publishes it at once. An edge that dies
// loses no will that waits.

func (s Store) willsDue() string  { return s.Prefix + "mqtt:{wills}:due" }
func (s Store) willsKept() string { return s.Prefix + "mqtt:{wills}:kept" }

// delayWill keeps ARGV[2] as the will of session ARGV[1], due ARGV[3] ms
// from now on Redis's clock.
var delayWill = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
return 1
`)

// DelayWill keeps will, an envelope, as the will of the session key,
// due after delay.
func (s Store) DelayWill(ctx context.Context, key string, will []byte, delay time.Duration) error {
	return delayWill.Run(ctx, s.Redis, []string{s.willsDue(), s.willsKept()}, key, will, delay.Milliseconds()).Err()
}

// takeWills takes the wills of sessions ARGV[2..] (none: up to ARGV[1] of
// those due now, on Redis's clock), and returns them.
var takeWills = redis.NewScript(`
local keys = {}
for i = 2, #ARGV do keys[#keys + 1] = ARGV[i] end
if #keys == 0 then
	local t = redis.call('TIME')
	local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
	keys = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
end
local out = {}
for _, k in ipairs(keys) do
	if redis.call('ZREM', KEYS[1], k) == 1 then
		local w = redis.call('HGET', KEYS[2], k)
		if w then out[#out + 1] = w end
	end
	redis.call('HDEL', KEYS[2], k)
end
return out
`)

// TakeWill takes back the will that waits for the session key, if one
// does.
func (s Store) TakeWill(ctx context.Context, key string) ([]byte, error) {
	ws, err := s.takeWills(ctx, 0, key)
	if err != nil || len(ws) == 0 {
		return nil, err
	}
	return ws[0], nil
}

// TakeDueWills takes at most n of the wills that are due, for publishing:
// each is taken by one edge.
func (s Store) TakeDueWills(ctx context.Context, n int) ([][]byte, error) {
	return s.takeWills(ctx, n)
}

func (s Store) takeWills(ctx context.Context, n int, keys ...string) ([][]byte, error) {
	args := append([]any{n}, toAny(keys)...)
	vs, err := takeWills.Run(ctx, s.Redis, []string{s.willsDue(), s.willsKept()}, args...).StringSlice()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	out := make([][]byte, len(vs))
	for i, v := range vs {
		out[i] = []byte(v)
	}
	return out, err
}

func toAny(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

// willsEvery is how often an edge looks for wills that came due, and
// willsBatch how many it takes at a time.
const (
	willsEvery = 500 * time.Millisecond
	willsBatch = 100
)

// takeBackWill takes back the will that waits for the session, as a new
// connection of it comes: it is not published, unless the connection
// starts clean, which ends the session the will waited on.
func (s *session) takeBackWill(clean bool) {
	ctx, cancel := context.WithTimeout(s.ctx, storeTimeout)
	defer cancel()
	w, err := s.h.Sessions.TakeWill(ctx, s.key)
	switch {
	case err != nil:
		s.h.Logger.Warn("the delayed will of a reconnecting mqtt session not taken back; it may be published", "client_id", s.id, "error", err)
	case w != nil && clean:
		s.h.publishDelayedWill(ctx, w)
	}
}

// RunWills publishes the delayed wills that come due, whichever edge lost
// their connection, until ctx ends. Redis away delays them; a will taken
// and not published (Redis went away in between) waits again, due at
// once.
func (h *Handler) RunWills(ctx context.Context) {
	if h.Sessions == nil {
		return
	}
	t := time.NewTicker(willsEvery)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		wills, err := h.Sessions.TakeDueWills(ctx, willsBatch)
		if err != nil {
			if !failing && ctx.Err() == nil {
				h.Logger.Warn("delayed mqtt wills not read; trying again", "error", err)
			}
			failing = true
			continue
		}
		failing = false
		for _, w := range wills {
			h.publishDelayedWill(ctx, w)
		}
	}
}

// publishDelayedWill publishes will, an envelope that waited; one Redis
// did not take waits again.
func (h *Handler) publishDelayedWill(ctx context.Context, will []byte) {
	ev, err := envelope.Unmarshal(will)
	if err != nil {
		h.Logger.Error("a delayed mqtt will is not an envelope: dropped", "error", err)
		return
	}
	pctx, cancel := context.WithTimeout(ctx, publishTimeout)
	defer cancel()
	if err := h.publishMessage(pctx, ev); err != nil {
		h.Logger.Warn("delayed mqtt will not published; it waits again", "channel", ev.GetChannel(), "error", err)
		key := "retry:" + ev.GetId()
		if err := h.Sessions.DelayWill(context.WithoutCancel(ctx), key, will, 0); err != nil {
			h.Logger.Error("delayed mqtt will lost: Redis took neither it nor its retry", "channel", ev.GetChannel(), "error", err)
		}
		return
	}
	h.publishes.WithLabelValues("will").Inc()
}
