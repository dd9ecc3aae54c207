// Package claims keeps, per notification, the one Redis key that makes it go
// once however often its event is delivered or its dead letter retried:
// "sending <owner>" while a sender holds a lease on it, "sent" once it went.
package claims

import (
	"context"
	"errors"
	"fmt"
	"os"
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
)

// sent is the value of a notification that went.
const sent = "sent"

// Store reads and writes claims. It is safe for concurrent use.
type Store struct {
	rdb    redis.UniversalClient
	prefix string
	owner  string
}

// New returns the claims under prefix (put before every key, like the bus's
// channel prefix). Leases it takes name this process (host/pid), for
// operators reading Redis.
func New(rdb redis.UniversalClient, prefix string) *Store {
	host, _ := os.Hostname()
	return &Store{rdb: rdb, prefix: prefix, owner: fmt.Sprintf("%s/%d", host, os.Getpid())}
}

// Key is the Redis key of the notification name of event eventID.
func (s *Store) Key(eventID, name string) string {
	return s.prefix + "notification:claim:" + eventID + ":" + name
}

// Take takes the lease on a notification for lease (SET NX PX), unless it
// went already or another sender holds it. What it found is in holder
// ("sent", "sending <owner>", or empty when the lease was released between
// the two reads, which Take reports as Held: someone just sent or failed).
// The caller holding the lease ends it with MarkSent or Release; if the
// caller dies, it runs out.
func (s *Store) Take(ctx context.Context, eventID, name string, lease time.Duration) (state State, holder string, err error) {
	key := s.Key(eventID, name)
	ok, err := s.rdb.SetNX(ctx, key, "sending "+s.owner, lease).Result()
	if err != nil {
		return 0, "", fmt.Errorf("claim %s: %w", key, err)
	}
	if ok {
		return Taken, "", nil
	}
	v, err := s.rdb.Get(ctx, key).Result()
	switch {
	case errors.Is(err, redis.Nil):
		return Held, "", nil
	case err != nil:
		return 0, "", fmt.Errorf("read claim %s: %w", key, err)
	case v == sent:
		return Sent, v, nil
	}
	return Held, v, nil
}

// MarkSent records the notification as sent for ttl: a later Take finds
// Sent. Call it only once the notification went; until it succeeds, the
// notification may go again once the lease runs out.
func (s *Store) MarkSent(ctx context.Context, eventID, name string, ttl time.Duration) error {
	key := s.Key(eventID, name)
	if err := s.rdb.Set(ctx, key, sent, ttl).Err(); err != nil {
		return fmt.Errorf("record %s as sent: %w", key, err)
	}
	return nil
}

// Release ends the caller's lease without the notification having gone, so
// that the next Take may send it.
func (s *Store) Release(ctx context.Context, eventID, name string) error {
	key := s.Key(eventID, name)
	if err := s.rdb.Del(ctx, key).Err(); err != nil {
		return fmt.Errorf("release claim %s: %w", key, err)
	}
	return nil
}
