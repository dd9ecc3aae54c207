// Package contacts keeps each user's email address and name, as
// user.created said them, for the emails that later events send.
package contacts

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/eventbus-suite/eventbus/services/notification/internal/rules"
)

// Store reads and writes contacts: one hash per user, <prefix>contact:<id>,
// fields email and name. It is safe for concurrent use; on a Redis Cluster
// each user's key is on a slot of its own, and each call touches one.
type Store struct {
	rdb    redis.UniversalClient
	prefix string
}

// New returns the contacts under prefix, put before every key like the
// bus's channel prefix.
func New(rdb redis.UniversalClient, prefix string) *Store { return &Store{rdb: rdb, prefix: prefix} }

func (s *Store) key(userID string) string { return s.prefix + "contact:" + userID }

// Save records c as user userID's contact, replacing what was there.
func (s *Store) Save(ctx context.Context, userID string, c rules.Contact) error {
	if err := s.rdb.HSet(ctx, s.key(userID), "email", c.Email, "name", c.Name).Err(); err != nil {
		return fmt.Errorf("record the contact of user %s: %w", userID, err)
	}
	return nil
}

// Get returns user userID's contact, or nil when none was recorded.
func (s *Store) Get(ctx context.Context, userID string) (*rules.Contact, error) {
	v, err := s.rdb.HGetAll(ctx, s.key(userID)).Result()
	if err != nil {
		return nil, fmt.Errorf("read the contact of user %s: %w", userID, err)
	}
	if v["email"] == "" {
		return nil, nil
	}
	return &rules.Contact{Email: v["email"], Name: v["name"]}, nil
}
