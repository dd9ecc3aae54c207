package push

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// MaxPerUser bounds the subscriptions kept for one user: a browser
// profile has one per site, and one that is gone is removed by the push
// service's 404 or 410 on the next push.
const MaxPerUser = 10

// ErrTooMany is returned by Add when the user has MaxPerUser subscriptions
// already, none of them at the new one's endpoint.
var ErrTooMany = errors.New("too many push subscriptions")

// Store keeps the users' push subscriptions: one hash per user,
// <prefix>push:<user id>, endpoint → the subscription's JSON. It is safe for
// concurrent use; on a Redis Cluster each user's key is on a slot of its
// own, and each call touches one.
type Store struct {
	rdb    redis.UniversalClient
	prefix string
}

// NewStore returns the subscriptions under prefix, put before every key
// like the bus's channel prefix.
func NewStore(rdb redis.UniversalClient, prefix string) *Store {
	return &Store{rdb: rdb, prefix: prefix}
}

// Key is the Redis key of user userID's subscriptions.
func (s *Store) Key(userID string) string { return s.prefix + "push:" + userID }

// addScript sets a field unless the hash holds ARGV[3] fields already and
// not this one. KEYS: the hash. ARGV: field, value, the most fields. It
// returns 1 when it set the field.
var addScript = redis.NewScript(`
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then
	return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
`)

// Add records sub for user userID, replacing the subscription at the same
// endpoint (a browser that subscribes again). It returns ErrTooMany when
// the user has MaxPerUser others.
func (s *Store) Add(ctx context.Context, userID string, sub Subscription) error {
	v, err := json.Marshal(sub)
	if err != nil {
		return err
	}
	n, err := addScript.Run(ctx, s.rdb, []string{s.Key(userID)}, sub.Endpoint, v, MaxPerUser).Int()
	if err != nil {
		return fmt.Errorf("record a push subscription of user %s: %w", userID, err)
	}
	if n == 0 {
		return ErrTooMany
	}
	return nil
}

// Remove deletes user userID's subscription at endpoint and reports
// whether there was one.
func (s *Store) Remove(ctx context.Context, userID, endpoint string) (bool, error) {
	n, err := s.rdb.HDel(ctx, s.Key(userID), endpoint).Result()
	if err != nil {
		return false, fmt.Errorf("remove a push subscription of user %s: %w", userID, err)
	}
	return n == 1, nil
}

// List returns user userID's subscriptions, in no particular order. One
// that does not decode (written by hand) is left out.
func (s *Store) List(ctx context.Context, userID string) ([]Subscription, error) {
	m, err := s.rdb.HGetAll(ctx, s.Key(userID)).Result()
	if err != nil {
		return nil, fmt.Errorf("read the push subscriptions of user %s: %w", userID, err)
	}
	subs := make([]Subscription, 0, len(m))
	for endpoint, v := range m {
		var sub Subscription
		if json.Unmarshal([]byte(v), &sub) != nil || sub.Endpoint != endpoint {
			continue
		}
		subs = append(subs, sub)
	}
	return subs, nil
}
