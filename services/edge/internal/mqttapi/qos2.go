package mqttapi

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/eventbus-suite/eventbus/pkg/envelope"
)

// QoS 2 from clients is exactly once: a PUBLISH is published as an event
// once, however often its client sends it again before its PUBREL, on
// this edge or, for a kept session, on another after this one was lost.
// The session keeps each packet id between PUBLISH and PUBREL with the id
// of its event and whether it was published: in Redis for a kept session
// (<prefix>mqtt:qos2:<identity>/<client id>, a hash), in memory otherwise.
// A PUBLISH seen and published is answered PUBREC alone; one seen but not
// known to be published (its edge died in between) is published again
// with the same event id, so that a consumer can tell. A kept session is
// saved before it first holds QoS 2 state (keepSession), so that an edge
// lost within its first second leaves a session present for the next
// one. The edge's own QoS 2 messages are writer.go's.

// awaitingRelease keeps the QoS 2 messages of a session that wait for
// their PUBREL: packet id → the event's id and whether it was published.
type awaitingRelease interface {
	get(ctx context.Context, id uint16) (eventID string, published, ok bool, err error)
	put(ctx context.Context, id uint16, eventID string, published bool) error
	release(ctx context.Context, id uint16) (bool, error)
	clear(ctx context.Context) error
	// count is how many wait.
	count(ctx context.Context) (int, error)
}

// memoryAwaiting is awaitingRelease for a session that ends with its
// connection; only its reader uses it.
type memoryAwaiting map[uint16]string

func (m memoryAwaiting) get(_ context.Context, id uint16) (string, bool, bool, error) {
	v, ok := m[id]
	eventID, published := parseAwaiting(v)
	return eventID, published, ok, nil
}

func (m memoryAwaiting) put(_ context.Context, id uint16, eventID string, published bool) error {
	m[id] = awaitingValue(eventID, published)
	return nil
}

func (m memoryAwaiting) release(_ context.Context, id uint16) (bool, error) {
	_, ok := m[id]
	delete(m, id)
	return ok, nil
}

func (m memoryAwaiting) clear(context.Context) error {
	clear(m)
	return nil
}

func (m memoryAwaiting) count(context.Context) (int, error) { return len(m), nil }

// redisAwaiting is awaitingRelease for a kept session, in one hash that
// lives as long as the session may.
type redisAwaiting struct {
	rdb redis.UniversalClient
	key string
	ttl time.Duration
}

func (r redisAwaiting) get(ctx context.Context, id uint16) (string, bool, bool, error) {
	v, err := r.rdb.HGet(ctx, r.key, strconv.Itoa(int(id))).Result()
	if errors.Is(err, redis.Nil) {
		return "", false, false, nil
	}
	if err != nil {
		return "", false, false, err
	}
	eventID, published := parseAwaiting(v)
	return eventID, published, true, nil
}

func (r redisAwaiting) put(ctx context.Context, id uint16, eventID string, published bool) error {
	pipe := r.rdb.TxPipeline() // one key: one slot
	pipe.HSet(ctx, r.key, strconv.Itoa(int(id)), awaitingValue(eventID, published))
	pipe.PExpire(ctx, r.key, r.ttl)
	_, err := pipe.Exec(ctx)
	return err
}

func (r redisAwaiting) release(ctx context.Context, id uint16) (bool, error) {
	n, err := r.rdb.HDel(ctx, r.key, strconv.Itoa(int(id))).Result()
	return n == 1, err
}

func (r redisAwaiting) clear(ctx context.Context) error { return r.rdb.Del(ctx, r.key).Err() }

func (r redisAwaiting) count(ctx context.Context) (int, error) {
	n, err := r.rdb.HLen(ctx, r.key).Result()
	return int(n), err
}

func awaitingValue(eventID string, published bool) string {
	if published {
		return eventID + " published"
	}
	return eventID + " pending"
}

func parseAwaiting(v string) (eventID string, published bool) {
	eventID, state, _ := strings.Cut(v, " ")
	return eventID, state == "published"
}

// awaitingFor returns where s keeps its QoS 2 messages: Redis for a kept
// session, memory otherwise. A session that starts afresh (a clean
// start, or none kept to resume) forgets what an earlier one left.
func (s *session) awaitingFor(ctx context.Context, fresh bool) awaitingRelease {
	if s.h.Sessions == nil || s.expiry == 0 {
		return memoryAwaiting{}
	}
	a := redisAwaiting{rdb: s.h.Sessions.Redis, key: s.h.Sessions.Prefix + "mqtt:qos2:" + s.key, ttl: s.expiry + time.Hour}
	if fresh {
		if err := a.clear(ctx); err != nil {
			s.h.Logger.Warn("mqtt QoS 2 state of an earlier connection not cleared", "client_id", s.id, "error", err)
		}
	}
	return a
}

// errReceiveMaximum is publishOnce's error for a QoS 2 PUBLISH of a new
// packet id while as many as the CONNACK's Receive Maximum wait for their
// PUBREL: 5.0 closes the connection with 0x93.
var errReceiveMaximum = errors.New("more QoS 2 messages awaiting their PUBREL than the Receive Maximum")

// publishOnce publishes a QoS 2 PUBLISH's event unless it was published
// already, and reports whether it is done with (the PUBREC may go out).
// publish does the publishing, of env with the given event id. A new
// packet id is refused with errReceiveMaximum when limit (0: none) wait
// for their PUBREL already.
func (s *session) publishOnce(ctx context.Context, id uint16, limit int, publish func(eventID string) error) error {
	eventID, published, ok, err := s.awaiting.get(ctx, id)
	if err != nil {
		return fmt.Errorf("read the QoS 2 state: %w", err)
	}
	if ok && published {
		return nil // a resend: PUBREC alone
	}
	if !ok && limit > 0 {
		n, err := s.awaiting.count(ctx)
		if err != nil {
			return fmt.Errorf("read the QoS 2 state: %w", err)
		}
		if n >= limit {
			return fmt.Errorf("packet id %d: %w (%d)", id, errReceiveMaximum, limit)
		}
	}
	if !ok {
		s.keepSession()
		eventID = envelope.NewID()
		if err := s.awaiting.put(ctx, id, eventID, false); err != nil {
			return fmt.Errorf("keep the QoS 2 state: %w", err)
		}
	}
	if err := publish(eventID); err != nil {
		return err
	}
	if err := s.awaiting.put(ctx, id, eventID, true); err != nil {
		// Published: a resend publishes it again, with the same id.
		s.h.Logger.Warn("mqtt QoS 2 message published but not marked so", "client_id", s.id, "error", err)
	}
	return nil
}

// keepSession saves a kept session this connection has neither resumed
// nor saved yet, as it is about to hold QoS 2 state in Redis: else an
// edge killed before its first periodic save leaves that state without a
// session, the next connection's CONNACK says Session Present 0, and its
// client, as MQTT says, forgets the messages it awaits PUBREC or PUBCOMP
// for (one the dead edge never read is lost) and reuses their packet ids,
// which the state left behind takes for resends (PUBREC, not published).
func (s *session) keepSession() {
	s.mu.Lock()
	first := s.expiry > 0 && !s.resumed && s.saved.IsZero()
	if first {
		s.dirty = true
	}
	s.mu.Unlock()
	if first {
		s.save(false)
	}
}
