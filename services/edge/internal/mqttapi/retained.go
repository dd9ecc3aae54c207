package mqttapi

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/channel"
)

// Retained messages are what MQTT says they are: a PUBLISH with RETAIN
// is its topic's retained message until the next one, and one with an
// empty payload clears it. They are kept in Redis, one hash per namespace
// and partition (the bus's NamespaceKey, in the slot of the partition's
// stream): field the channel, value the event's position and envelope.
// EDGE_MQTT_RETAINED=latest keeps the edge's older behaviour instead:
// every channel's latest recorded event counts as retained (retain.go).

// retainedKind names the hashes of retained messages.
const retainedKind = "mqtt:retained"

// RetainedKeys is the part of the bus that names where retained messages
// are kept (redisbus.Bus).
type RetainedKeys interface {
	NamespaceKey(kind, ch string) string
	NamespaceKeys(kind, ns string) []string
	NamespacesOf(ctx context.Context, pattern string) ([]string, error)
}

// RetainedStore keeps the retained messages of every topic.
type RetainedStore struct {
	Redis redis.UniversalClient
	Keys  RetainedKeys
}

// keep writes a channel's retained message, or clears it, unless one of
// a later position is kept: of two retained publishes racing to the
// store, the later in the record stands, as it does for subscribers. A
// clear leaves its position behind (an empty value), so that an older
// message arriving late does not come back; without a position (a bus
// without history) the last write stands. KEYS[1] the hash, ARGV[1] the
// channel, ARGV[2] the offset ("" for none), ARGV[3] the value.
var keep = redis.NewScript(`
local function later(a, b) -- offset a after offset b?
  local ams, aseq = string.match(a, '^(%d+)-(%d+)$')
  local bms, bseq = string.match(b, '^(%d+)-(%d+)$')
  if not ams or not bms then return true end
  if #ams ~= #bms then return #ams > #bms end
  if ams ~= bms then return ams > bms end
  if #aseq ~= #bseq then return #aseq > #bseq end
  return aseq > bseq
end
if ARGV[2] ~= '' then
  local old = redis.call('HGET', KEYS[1], ARGV[1])
  if old then
    local offset = string.match(old, '^(%S*)')
    if offset ~= '' and not later(ARGV[2], offset) then return 0 end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1`)

// Set makes env, recorded at pos, the retained message of channel ch,
// unless a later one is kept.
func (s *RetainedStore) Set(ctx context.Context, ch string, pos bus.Position, env []byte) error {
	return s.keep(ctx, ch, pos, env)
}

// Clear clears the retained message of channel ch, as of pos.
func (s *RetainedStore) Clear(ctx context.Context, ch string, pos bus.Position) error {
	if pos.IsZero() {
		if err := s.Redis.HDel(ctx, s.Keys.NamespaceKey(retainedKind, ch), ch).Err(); err != nil {
			return fmt.Errorf("clear the retained message of %s: %w", ch, err)
		}
		return nil
	}
	return s.keep(ctx, ch, pos, nil)
}

func (s *RetainedStore) keep(ctx context.Context, ch string, pos bus.Position, env []byte) error {
	v := pos.Offset + " " + pos.Epoch + "\n" + string(env)
	if err := keep.Run(ctx, s.Redis, []string{s.Keys.NamespaceKey(retainedKind, ch)}, ch, pos.Offset, v).Err(); err != nil {
		return fmt.Errorf("keep the retained message of %s: %w", ch, err)
	}
	return nil
}

// Matching returns the retained messages of the channels pattern matches,
// at most max of them, by channel.
func (s *RetainedStore) Matching(ctx context.Context, pattern string, max int) ([]bus.Event, error) {
	var out []bus.Event
	if !channel.IsPattern(pattern) {
		v, err := s.Redis.HGet(ctx, s.Keys.NamespaceKey(retainedKind, pattern), pattern).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return nil, fmt.Errorf("read retained messages: %w", err)
		}
		if e, ok := parseRetained(pattern, v); ok {
			out = append(out, e)
		}
		return out, nil
	}
	nss, err := s.Keys.NamespacesOf(ctx, pattern)
	if err != nil {
		return nil, err
	}
	for _, ns := range nss {
		for _, key := range s.Keys.NamespaceKeys(retainedKind, ns) {
			all, err := s.Redis.HGetAll(ctx, key).Result()
			if err != nil && !errors.Is(err, redis.Nil) {
				return out, fmt.Errorf("read retained messages: %w", err)
			}
			for ch, v := range all {
				if !channel.Match(pattern, ch) {
					continue
				}
				if e, ok := parseRetained(ch, v); ok {
					out = append(out, e)
				}
			}
		}
	}
	slices.SortFunc(out, func(a, b bus.Event) int { return strings.Compare(a.Channel, b.Channel) })
	return out[:min(len(out), max)], nil
}

// parseRetained reads a stored retained message back: none for a clear.
func parseRetained(ch, v string) (bus.Event, bool) {
	head, env, ok := strings.Cut(v, "\n")
	if !ok || env == "" {
		return bus.Event{}, false
	}
	offset, epoch, _ := strings.Cut(head, " ")
	return bus.Event{Channel: ch, Payload: []byte(env), Position: bus.Position{Offset: offset, Epoch: epoch}}, true
}
