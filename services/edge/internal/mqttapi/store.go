package mqttapi

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/eventbus-suite/eventbus/pkg/bus"
)

// Store keeps MQTT sessions that outlive their connection in Redis, one
// key a session: <prefix>mqtt:session:<identity>/<client id>, a JSON value
// with the time to live of the session's expiry.
type Store struct {
	Redis  redis.UniversalClient
	Prefix string // the bus's key prefix, "" or "name:"
}

// state is what a session keeps: its filters with their QoS, and where
// each namespace stands for it, so that it resumes with what it missed.
// The positions are those of the last event the client has for certain:
// a QoS 1 message not acknowledged yet is before them.
type state struct {
	Filters map[string]byte `json:"filters"`
	Cursor  bus.Cursor      `json:"cursor,omitempty"`
}

func (s Store) key(name string) string { return s.Prefix + "mqtt:session:" + name }

// Load returns the session saved under key, and false when there is none.
func (s Store) Load(ctx context.Context, key string) (state, bool, error) {
	b, err := s.Redis.Get(ctx, s.key(key)).Bytes()
	if errors.Is(err, redis.Nil) {
		return state{}, false, nil
	}
	if err != nil {
		return state{}, false, err
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return state{}, false, nil // unreadable: as if none
	}
	return st, true, nil
}

// Save keeps st under key for ttl.
func (s Store) Save(ctx context.Context, key string, st state, ttl time.Duration) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	return s.Redis.Set(ctx, s.key(key), b, ttl).Err()
}

// Delete ends the session saved under key.
func (s Store) Delete(ctx context.Context, key string) error {
	return s.Redis.Del(ctx, s.key(key)).Err()
}

// sessionKey names a client's session: its identity ("user:<id>", or
// "addr:<ip>" without a token), which holds no '/', then its client id.
func sessionKey(identity, clientID string) string { return identity + "/" + clientID }
