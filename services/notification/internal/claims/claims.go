// Package claims keeps, per notification, the one Redis key that makes it go
// once however often its event is delivered or its dead letter retried:
// "sending <owner>" while a sender holds a lease on it, "sent" once it went,
// "dead_lettered" while its email waits in the dead letters.
package claims

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// State is what Take found.
type State int

const (
	// Taken: the caller holds the lease and may send.
	Taken State = iota
	// Sent: the notification went already; do not send it.
	Sent
	// Held: another sender holds the lease; leave the notification to it,
	// or to a later try once the lease runs out.
	Held
	// DeadLettered: the email finally failed and waits in the dead
	// letters; only a retry of its dead letter sends it (TakeDeadLetter).
	DeadLettered
)

// Values of a claim other than a lease.
const (
	sent         = "sent"
	deadLettered = "dead_lettered"
)

// Store reads and writes claims. It is safe for concurrent use.
type Store struct {
	rdb    redis.UniversalClient
	prefix string
	lease  time.Duration
	// value of this store's leases, "sending <host>/<pid>/<random>": two
	// stores of one process (replicas run in one test) hold different
	// leases.
	value string

	mu   sync.Mutex
	held map[string]bool // keys of the leases this store holds, which ExtendHeld extends
}

// New returns the claims under prefix (put before every key, like the bus's
// channel prefix), whose leases last lease unless extended (ExtendHeld).
// Leases it takes name this process (host/pid), for operators reading
// Redis.
func New(rdb redis.UniversalClient, prefix string, lease time.Duration) *Store {
	host, _ := os.Hostname()
	var rnd [3]byte
	_, _ = rand.Read(rnd[:])
	return &Store{
		rdb: rdb, prefix: prefix, lease: lease,
		value: fmt.Sprintf("sending %s/%d/%s", host, os.Getpid(), hex.EncodeToString(rnd[:])),
		held:  make(map[string]bool),
	}
}

// Key is the Redis key of the notification name of event eventID.
func (s *Store) Key(eventID, name string) string {
	return s.prefix + "notification:claim:" + eventID + ":" + name
}

// takeScript sets the lease unless the claim holds something else, or,
// with ARGV[3] = "1", holds "dead_lettered", which it takes over. It
// returns "" when it took the lease, else what the claim holds. KEYS: the
// claim. ARGV: the lease's value, its milliseconds, "1" to take a dead
// letter's claim.
var takeScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if not v or (ARGV[3] == '1' and v == 'dead_lettered') then
	redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
	return ''
end
return v
`)

// Take takes the lease on a notification for a first send, unless it went
// already, waits in the dead letters, or another sender holds it. What it
// found is in holder ("sent", "dead_lettered" or "sending <owner>"). The
// caller holding the lease keeps it with ExtendHeld and ends it with
// MarkSent, DeadLetter or Release; if the caller dies, it runs out.
func (s *Store) Take(ctx context.Context, eventID, name string) (state State, holder string, err error) {
	return s.take(ctx, eventID, name, false)
}

// TakeDeadLetter is Take for a retry of the notification's dead letter: it
// takes the lease from "dead_lettered" as well as from nothing.
func (s *Store) TakeDeadLetter(ctx context.Context, eventID, name string) (state State, holder string, err error) {
	return s.take(ctx, eventID, name, true)
}

func (s *Store) take(ctx context.Context, eventID, name string, dead bool) (State, string, error) {
	key := s.Key(eventID, name)
	// This store's senders take turns through held, and Redis orders the
	// stores: a lease of this store that none of its senders holds is
	// one an earlier try took whose answer was lost (a dropped
	// connection), and it is taken again rather than waited out.
	s.mu.Lock()
	if s.held[key] {
		s.mu.Unlock()
		return Held, s.value, nil
	}
	s.held[key] = true
	s.mu.Unlock()
	flag := "0"
	if dead {
		flag = "1"
	}
	v, err := takeScript.Run(ctx, s.rdb, []string{key}, s.value, s.lease.Milliseconds(), flag).Text()
	if err == nil && (v == "" || v == s.value) {
		return Taken, "", nil
	}
	s.forget(key)
	if err != nil {
		return 0, "", fmt.Errorf("claim %s: %w", key, err)
	}
	switch v {
	case sent:
		return Sent, v, nil
	case deadLettered:
		return DeadLettered, v, nil
	}
	return Held, v, nil
}

// forget stops extending key's lease: its sender is done with it.
func (s *Store) forget(key string) {
	s.mu.Lock()
	delete(s.held, key)
	s.mu.Unlock()
}

// extendScript restarts a lease's time if it is still the caller's.
// KEYS: the claim. ARGV: the lease's value, its milliseconds. It returns 1
// when it extended the lease.
var extendScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
	return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
`)

// Extend restarts the lease on a notification if this store still holds
// it, and reports whether it did: false means the lease ran out, and
// another sender may hold it now.
func (s *Store) Extend(ctx context.Context, eventID, name string) (bool, error) {
	key := s.Key(eventID, name)
	n, err := extendScript.Run(ctx, s.rdb, []string{key}, s.value, s.lease.Milliseconds()).Int()
	if err != nil {
		return false, fmt.Errorf("extend claim %s: %w", key, err)
	}
	return n == 1, nil
}

// ExtendHeld extends every lease this store holds, in one round trip: call
// it more often than the lease lasts for as long as sends run. A lease
// that ran out meanwhile is left to whoever holds it now.
func (s *Store) ExtendHeld(ctx context.Context) error {
	s.mu.Lock()
	keys := make([]string, 0, len(s.held))
	for k := range s.held {
		keys = append(keys, k)
	}
	s.mu.Unlock()
	if len(keys) == 0 {
		return nil
	}
	pipe := s.rdb.Pipeline()
	for _, key := range keys {
		// Eval, not EvalSha: a pipeline cannot fall back on NOSCRIPT.
		extendScript.Eval(ctx, pipe, []string{key}, s.value, s.lease.Milliseconds())
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("extend %d claims: %w", len(keys), err)
	}
	return nil
}

// MarkSent records the notification as sent for ttl: a later Take finds
// Sent. Call it only once the notification went; until it succeeds, the
// notification may go again once the lease runs out, which is no longer
// extended once MarkSent is called. It records sent whoever holds the
// lease: the notification went.
func (s *Store) MarkSent(ctx context.Context, eventID, name string, ttl time.Duration) error {
	key := s.Key(eventID, name)
	s.forget(key)
	if err := s.rdb.Set(ctx, key, sent, ttl).Err(); err != nil {
		return fmt.Errorf("record %s as sent: %w", key, err)
	}
	return nil
}

// releaseScript deletes a lease if it is still the caller's. KEYS: the
// claim. ARGV: the lease's value.
var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
	return redis.call('DEL', KEYS[1])
end
return 0
`)

// Release ends the caller's lease without the notification having gone, so
// that the next Take may send it. A lease that ran out and another sender
// took meanwhile stays theirs. Whatever it returns, the lease is no longer
// extended: should the release fail, it runs out.
func (s *Store) Release(ctx context.Context, eventID, name string) error {
	key := s.Key(eventID, name)
	s.forget(key)
	if err := releaseScript.Run(ctx, s.rdb, []string{key}, s.value).Err(); err != nil {
		return fmt.Errorf("release claim %s: %w", key, err)
	}
	return nil
}

// deadLetterScript, while the caller holds the lease, removes old from the
// list (when not empty), pushes letter onto it and records the claim as
// dead-lettered, all in one step. KEYS: the claim, the list. ARGV: the
// lease's value, the claim's ttl in milliseconds, letter, old. It returns
// 1 when it did, 0 when the lease was not the caller's.
var deadLetterScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
	return 0
end
if ARGV[4] ~= '' then
	redis.call('LREM', KEYS[2], 1, ARGV[4])
end
redis.call('LPUSH', KEYS[2], ARGV[3])
redis.call('SET', KEYS[1], 'dead_lettered', 'PX', ARGV[2])
return 1
`)

// DeadLetter records that the notification's email finally failed: in one
// step, while the caller holds the lease, it pushes letter onto the Redis
// list (replacing old there, when old is not empty) and leaves the claim
// "dead_lettered" for ttl, which a first send's Take finds and leaves
// alone, and which only TakeDeadLetter takes. So an email is dead-lettered
// at most once at a time, and never by a sender whose lease ran out: the
// error wraps ErrLost then, and nothing was written. Once DeadLetter is
// called, the lease is no longer extended.
func (s *Store) DeadLetter(ctx context.Context, eventID, name string, ttl time.Duration, list, letter, old string) error {
	key := s.Key(eventID, name)
	s.forget(key)
	n, err := deadLetterScript.Run(ctx, s.rdb, []string{key, list}, s.value, ttl.Milliseconds(), letter, old).Int()
	if err != nil {
		return fmt.Errorf("dead-letter %s: %w", key, err)
	}
	if n == 0 {
		return fmt.Errorf("dead-letter %s: %w", key, ErrLost)
	}
	return nil
}

// ErrLost is wrapped by DeadLetter's error when the caller's lease ran out
// before it: another sender may hold the notification now.
var ErrLost = errors.New("lease lost")
