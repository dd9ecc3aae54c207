// Package routes keeps, in Redis, what routing a browser notification by
// presence needs to remember across replicas and redeliveries: the route
// chosen for it (so a redelivered event does not choose again, and send it
// a second way), whether a client acknowledged it, and the receipts still
// awaited, by deadline, for the fallback to take when they do not come.
package routes

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Choice is a route and why it was chosen.
type Choice struct {
	Route  string
	Reason string
}

// Stage names a choice made for a notification: its first route, or the
// fallback's once no receipt came.
type Stage string

// Stages of a notification's routing.
const (
	First    Stage = "route"
	Fallback Stage = "fallback"
)

// Receipt is what Deliver found.
type Receipt int

const (
	// Unknown: no notification of that id was routed for that user (or
	// its state ran out): the receipt is ignored.
	Unknown Receipt = iota
	// FirstReceipt: the notification's first acknowledgement; it is
	// recorded as delivered.
	FirstReceipt
	// Repeat: acknowledged before (another tab, a redelivered frame).
	Repeat
)

// Due is a notification whose receipt did not come in time.
type Due struct {
	NotificationID string
	// Payload is what Await was given.
	Payload []byte
}

// Store reads and writes routes. It is safe for concurrent use. Each call
// touches one key per Redis command, so a cluster needs nothing more: a
// notification's state is one hash, <prefix>notification:route:<id>, in a
// slot of its own, and the receipts awaited one sorted set,
// <prefix>notification:acks, scored by deadline in milliseconds of
// Redis's clock (so replicas whose clocks disagree agree on it).
type Store struct {
	rdb    redis.UniversalClient
	prefix string
	ttl    time.Duration
}

// New returns the routes under prefix (put before every key, like the
// bus's channel prefix), each notification's state kept ttl after its
// route was chosen: as long as its claims, so that a redelivered event
// finds it.
func New(rdb redis.UniversalClient, prefix string, ttl time.Duration) *Store {
	return &Store{rdb: rdb, prefix: prefix, ttl: ttl}
}

// Key is the hash of notification id's state: user, the choices (route,
// route_reason, fallback, fallback_reason), pending (the payload of an
// awaited receipt) and delivered (when its first receipt came, in Unix
// milliseconds).
func (s *Store) Key(id string) string { return s.prefix + "notification:route:" + id }

// AcksKey is the sorted set of the notifications whose receipt is awaited,
// scored by deadline.
func (s *Store) AcksKey() string { return s.prefix + "notification:acks" }

// chooseScript records ARGV[3] and ARGV[4] as the choice of stage ARGV[2]
// for user ARGV[1] unless a choice of that stage is there, and returns
// the choice recorded and 1 when it was this call's. KEYS: the state.
// ARGV: user, stage, route, reason, ttl in milliseconds.
var chooseScript = redis.NewScript(`
local route = redis.call('HGET', KEYS[1], ARGV[2])
if route then
	return {route, redis.call('HGET', KEYS[1], ARGV[2] .. '_reason') or '', 0}
end
redis.call('HSET', KEYS[1], 'user', ARGV[1], ARGV[2], ARGV[3], ARGV[2] .. '_reason', ARGV[4])
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[5]) end
return {ARGV[3], ARGV[4], 1}
`)

// Choose records c as notification id's choice of stage for user, unless
// one was recorded before, and returns the choice that holds and whether
// it is c, recorded by this call: the first caller's choice stands for
// every replica and every redelivery.
func (s *Store) Choose(ctx context.Context, id, user string, stage Stage, c Choice) (Choice, bool, error) {
	res, err := chooseScript.Run(ctx, s.rdb, []string{s.Key(id)}, user, string(stage), c.Route, c.Reason, s.ttl.Milliseconds()).Slice()
	if err != nil {
		return Choice{}, false, fmt.Errorf("choose the %s of notification %s: %w", stage, id, err)
	}
	if len(res) != 3 {
		return Choice{}, false, fmt.Errorf("choose the %s of notification %s: unexpected reply %v", stage, id, res)
	}
	route, _ := res[0].(string)
	reason, _ := res[1].(string)
	won, _ := res[2].(int64)
	return Choice{Route: route, Reason: reason}, won == 1, nil
}

// pendingScript sets the pending field of KEYS[1] to ARGV[1] if the state
// is there, and returns 1 when it was.
var pendingScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'pending', ARGV[1])
return 1
`)

// awaitScript adds ARGV[1] to KEYS[1], due ARGV[2] ms from now, unless it
// is there. KEYS: the acks. ARGV: the notification id, the timeout.
var awaitScript = redis.NewScript(`
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
return redis.call('ZADD', KEYS[1], 'NX', now + tonumber(ARGV[2]), ARGV[1])
`)

// Await records that notification id's receipt is awaited for timeout,
// with payload for whoever takes it once due (TakeDue). Call it after
// Choose and before the notification goes, so that a receipt never comes
// first; calling it again keeps the first deadline.
func (s *Store) Await(ctx context.Context, id string, payload []byte, timeout time.Duration) error {
	n, err := pendingScript.Run(ctx, s.rdb, []string{s.Key(id)}, payload).Int()
	if err != nil {
		return fmt.Errorf("await the receipt of notification %s: %w", id, err)
	}
	if n == 0 {
		// Its state would have no TTL, and no user to check receipts by.
		return fmt.Errorf("await the receipt of notification %s: no route chosen for it", id)
	}
	if err := awaitScript.Run(ctx, s.rdb, []string{s.AcksKey()}, id, timeout.Milliseconds()).Err(); err != nil {
		return fmt.Errorf("await the receipt of notification %s: %w", id, err)
	}
	return nil
}

// deliverScript records the first receipt of a notification of user
// ARGV[1] at ARGV[2]: it returns 1 for the first, 2 for a repeat, 0 when
// the state is not there or names another user. KEYS: the state.
var deliverScript = redis.NewScript(`
local user = redis.call('HGET', KEYS[1], 'user')
if not user or user ~= ARGV[1] then return 0 end
if redis.call('HSETNX', KEYS[1], 'delivered', ARGV[2]) == 1 then return 1 end
return 2
`)

// Deliver records a receipt of notification id by a connection of user
// at at, and says whether it is the first: from then on Delivered reports
// it, and a fallback checks that before it sends. The caller then ends
// the wait with Done (which, were it lost, a fallback taking the
// notification does instead).
func (s *Store) Deliver(ctx context.Context, id, user string, at time.Time) (Receipt, error) {
	n, err := deliverScript.Run(ctx, s.rdb, []string{s.Key(id)}, user, at.UnixMilli()).Int()
	if err != nil {
		return Unknown, fmt.Errorf("record the receipt of notification %s: %w", id, err)
	}
	switch n {
	case 1:
		return FirstReceipt, nil
	case 2:
		return Repeat, nil
	}
	return Unknown, nil
}

// Delivered reports whether notification id was acknowledged.
func (s *Store) Delivered(ctx context.Context, id string) (bool, error) {
	ok, err := s.rdb.HExists(ctx, s.Key(id), "delivered").Result()
	if err != nil {
		return false, fmt.Errorf("read whether notification %s was delivered: %w", id, err)
	}
	return ok, nil
}

// takeScript returns up to ARGV[1] members of KEYS[1] that are due and
// makes each due again ARGV[2] ms from now: the caller's lease on them.
var takeScript = redis.NewScript(`
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(due) do
	redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), id)
end
return due
`)

// TakeDue returns up to n notifications whose receipt is overdue, and
// leases them to the caller for lease: no other caller gets them until the
// lease runs out, when they are due again (the caller died, or its
// fallback was left for later). The caller ends a fallback it completed
// with Done. A notification whose state ran out is dropped.
func (s *Store) TakeDue(ctx context.Context, n int, lease time.Duration) ([]Due, error) {
	ids, err := takeScript.Run(ctx, s.rdb, []string{s.AcksKey()}, n, lease.Milliseconds()).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("take the overdue receipts: %w", err)
	}
	if len(ids) == 0 {
		return nil, nil
	}
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.StringCmd, len(ids))
	for i, id := range ids {
		cmds[i] = pipe.HGet(ctx, s.Key(id), "pending")
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("read %d overdue receipts: %w", len(ids), err)
	}
	out := make([]Due, 0, len(ids))
	for i, c := range cmds {
		b, err := c.Bytes()
		if errors.Is(err, redis.Nil) {
			// Nothing to fall back with: its state ran out, or was never
			// written (Await fails before adding it then).
			if err := s.Done(ctx, ids[i]); err != nil {
				return out, err
			}
			continue
		}
		out = append(out, Due{NotificationID: ids[i], Payload: b})
	}
	return out, nil
}

// extendScript makes each of ARGV[2…] in KEYS[1] due ARGV[1] ms from now,
// if it is there.
var extendScript = redis.NewScript(`
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
for i = 2, #ARGV do
	redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[i])
end
return 0
`)

// Extend renews the caller's lease on the overdue notifications ids, in
// one round trip, so that no other caller takes them while their fallback
// runs. One no longer awaited stays so.
func (s *Store) Extend(ctx context.Context, lease time.Duration, ids ...string) error {
	if len(ids) == 0 {
		return nil
	}
	args := make([]any, 0, len(ids)+1)
	args = append(args, lease.Milliseconds())
	for _, id := range ids {
		args = append(args, id)
	}
	if err := extendScript.Run(ctx, s.rdb, []string{s.AcksKey()}, args...).Err(); err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("extend %d overdue receipts: %w", len(ids), err)
	}
	return nil
}

// Done stops awaiting notification id's receipt.
func (s *Store) Done(ctx context.Context, id string) error {
	if err := s.rdb.ZRem(ctx, s.AcksKey(), id).Err(); err != nil {
		return fmt.Errorf("stop awaiting the receipt of notification %s: %w", id, err)
	}
	return nil
}
