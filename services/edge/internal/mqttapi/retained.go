package mqttapi

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

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
	// Max bounds the retained messages of a namespace (0: none), each of
	// its partitions' hashes holding at most its share, rounded up: past
	// it, a message retained on a channel that has none is published but
	// not kept (ErrRetainedFull). Replacing or clearing one is always
	// done.
	Max int

	adopted sync.Map // hash → when this edge last adopted its old clears (adopt)
}

// ErrRetainedFull is Set's error for a message not kept because its
// namespace holds RetainedStore.Max retained messages already.
var ErrRetainedFull = errors.New("the namespace holds its most retained messages")

// clearedFor is how long a clear's position is kept: longer than a
// retained message published before it takes to reach the store, which it
// keeps out. After that, the next write to the same hash forgets it.
const clearedFor = time.Minute

// A clear removes the channel's message from the hash and keeps its
// position apart, in a hash of clears (channel → offset) listed by when
// in a sorted set, both in the slot of the messages' hash (their names
// extend its name, tag included): so that an older message arriving late
// does not come back, while clears take no room from messages. Each
// write forgets up to 8 clears older than clearedFor, on Redis's clock,
// the same for every edge. An edge older than this kept a clear in the
// messages' hash instead, as its position and no envelope; those are
// moved apart when a hash is full (adopt).

// retainedLua is what the scripts share: the keys (KEYS[1] the messages,
// KEYS[2] the clears' positions, KEYS[3] their times), now in Unix
// milliseconds on Redis's clock, what an old clear in the messages' hash
// looks like, and how a clear's position is kept apart (with laterLua's
// later, which goes before it).
const retainedLua = `
local function oldClear(v) -- a position with no envelope?
  return string.find(v, '\n', 1, true) == #v
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function cleared(ch, offset) -- keep a clear's position apart
  local was = redis.call('HGET', KEYS[2], ch)
  if not was or later(offset, was) then redis.call('HSET', KEYS[2], ch, offset) end
  redis.call('ZADD', KEYS[3], now, ch)
end
`

// laterLua is whether stream offset a comes after offset b.
const laterLua = `
local function later(a, b)
  local ams, aseq = string.match(a, '^(%d+)-(%d+)$')
  local bms, bseq = string.match(b, '^(%d+)-(%d+)$')
  if not ams or not bms then return true end
  if #ams ~= #bms then return #ams > #bms end
  if ams ~= bms then return ams > bms end
  if #aseq ~= #bseq then return #aseq > #bseq end
  return aseq > bseq
end
`

// keep writes a channel's retained message, or clears it, unless one of
// a later position is kept or was cleared: of two retained publishes
// racing to the store, the later in the record stands, as it does for
// subscribers. Without a position (a bus without history) the last write
// stands. A message for a channel the hash does not hold is refused (-1)
// when the hash holds ARGV[4] (0: no bound) messages already.
//
// ARGV[1] the channel, ARGV[2] its offset ("" for none), ARGV[3] the
// value, ARGV[4] the bound, ARGV[5] "1" for a clear. It returns 1 when
// done, 0 when a later one stands, -1 when refused.
var keep = redis.NewScript(laterLua + retainedLua + `
local cut = string.format('(%.0f', now - ` + fmt.Sprint(clearedFor.Milliseconds()) + `)
for _, ch in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', cut, 'LIMIT', 0, 8)) do
  redis.call('HDEL', KEYS[2], ch)
  redis.call('ZREM', KEYS[3], ch)
end
local old = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[2] ~= '' then
  local stands = {redis.call('HGET', KEYS[2], ARGV[1])}
  if old then stands[#stands + 1] = string.match(old, '^(%S*)') end
  for _, offset in ipairs(stands) do
    if offset and offset ~= '' and not later(ARGV[2], offset) then return 0 end
  end
end
if ARGV[5] == '1' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  if ARGV[2] ~= '' then cleared(ARGV[1], ARGV[2]) end
  return 1
end
local bound = tonumber(ARGV[4])
if not old and bound > 0 and redis.call('HLEN', KEYS[1]) >= bound then
  return -1
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1`)

// adoptClears moves the old clears among the channels ARGV names out of
// the messages' hash, into the clears as of now. It returns how many.
var adoptClears = redis.NewScript(laterLua + retainedLua + `
local n = 0
for _, ch in ipairs(ARGV) do
  local v = redis.call('HGET', KEYS[1], ch)
  if v and oldClear(v) then
    redis.call('HDEL', KEYS[1], ch)
    local offset = string.match(v, '^(%S*)')
    if offset ~= '' then cleared(ch, offset) end
    n = n + 1
  end
end
return n`)

// Set makes env, recorded at pos, the retained message of channel ch,
// unless a later one is kept or cleared; ErrRetainedFull when ch's
// namespace holds Max retained messages already.
func (s *RetainedStore) Set(ctx context.Context, ch string, pos bus.Position, env []byte) error {
	err := s.keep(ctx, ch, pos, env)
	if errors.Is(err, ErrRetainedFull) {
		// An older edge's clears take room in the hash: when it is full,
		// this edge moves them apart (at most once a clearedFor per
		// hash), and tries again if that made room.
		if moved, aerr := s.adopt(ctx, s.Keys.NamespaceKey(retainedKind, ch)); aerr == nil && moved > 0 {
			err = s.keep(ctx, ch, pos, env)
		}
	}
	return err
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
	clear := "0"
	if env == nil {
		clear = "1"
	}
	bound := 0
	if s.Max > 0 {
		ns, _, _ := strings.Cut(ch, ":")
		parts := max(len(s.Keys.NamespaceKeys(retainedKind, ns)), 1)
		bound = (s.Max + parts - 1) / parts
	}
	n, err := keep.Run(ctx, s.Redis, retainedKeys(s.Keys.NamespaceKey(retainedKind, ch)), ch, pos.Offset, v, bound, clear).Int()
	switch {
	case err != nil:
		return fmt.Errorf("keep the retained message of %s: %w", ch, err)
	case n < 0:
		return fmt.Errorf("retained message of %s: %w (%d)", ch, ErrRetainedFull, s.Max)
	}
	return nil
}

// retainedKeys names the keys of the scripts for the messages' hash key:
// it, the clears' positions and their times.
func retainedKeys(key string) []string {
	return []string{key, key + ":clears", key + ":clears:by-time"}
}

// adopt moves the old clears out of hash key, unless this edge did within
// clearedFor (whether it worked or not: a hash full of messages is not
// read whole at every refusal), and reports how many it moved.
func (s *RetainedStore) adopt(ctx context.Context, key string) (int, error) {
	now := time.Now()
	for {
		last, loaded := s.adopted.LoadOrStore(key, now)
		if !loaded {
			break
		}
		if now.Sub(last.(time.Time)) < clearedFor {
			return 0, nil
		}
		if s.adopted.CompareAndSwap(key, last, now) {
			break
		}
	}
	total := 0
	err := s.pages(ctx, key, "", func(kv []string) error {
		var clears []any
		for i := 0; i+1 < len(kv); i += 2 {
			if head, env, ok := strings.Cut(kv[i+1], "\n"); ok && env == "" && head != "" {
				clears = append(clears, kv[i])
			}
		}
		if len(clears) == 0 {
			return nil
		}
		n, err := adoptClears.Run(ctx, s.Redis, retainedKeys(key), clears...).Int()
		total += n
		return err
	})
	if err != nil {
		return total, fmt.Errorf("adopt the clears of %s: %w", key, err)
	}
	return total, nil
}

// pages reads hash key a page of retainedScanCount fields at a time
// (HSCAN, those matching match, "" for all) and hands each page, fields
// and values in turn, to page, until the hash is read or an error.
func (s *RetainedStore) pages(ctx context.Context, key, match string, page func(kv []string) error) error {
	var cursor uint64
	for {
		kv, next, err := s.Redis.HScan(ctx, key, cursor, match, retainedScanCount).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
		if err := page(kv); err != nil {
			return err
		}
		if next == 0 {
			return nil
		}
		cursor = next
	}
}

// retainedScanCount is how many fields each HSCAN of a hash of retained
// messages asks Redis to look at: a subscription to a wide filter reads a
// namespace of many retained messages a page at a time, so that neither
// Redis nor the edge builds one reply of all of them.
const retainedScanCount = 256

// Matching returns the retained messages of the channels pattern matches
// that keep accepts (nil: all), at most max of them: those of the first
// channels in order. The messages of a namespace are read a page at a
// time (HSCAN, matched by Redis with pattern, whose grammar is a Redis
// glob of the same meaning), and the edge holds at most 2×max of them
// while it reads; keep runs before the bound, so channels a subscription
// would skip take no room from those it wants.
func (s *RetainedStore) Matching(ctx context.Context, pattern string, keep func(ch string) bool, max int) ([]bus.Event, error) {
	if max <= 0 {
		return nil, nil
	}
	if !channel.IsPattern(pattern) {
		v, err := s.Redis.HGet(ctx, s.Keys.NamespaceKey(retainedKind, pattern), pattern).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return nil, fmt.Errorf("read retained messages: %w", err)
		}
		if e, ok := parseRetained(pattern, v); ok && (keep == nil || keep(pattern)) {
			return []bus.Event{e}, nil
		}
		return nil, nil
	}
	nss, err := s.Keys.NamespacesOf(ctx, pattern)
	if err != nil {
		return nil, err
	}
	first := firstChannels{max: max}
	for _, ns := range nss {
		for _, key := range s.Keys.NamespaceKeys(retainedKind, ns) {
			if err := s.scan(ctx, key, pattern, keep, &first); err != nil {
				return first.events(), err
			}
		}
	}
	return first.events(), nil
}

// scan adds the retained messages of hash key whose channels match
// pattern and keep to first, a page at a time.
func (s *RetainedStore) scan(ctx context.Context, key, pattern string, keep func(string) bool, first *firstChannels) error {
	err := s.pages(ctx, key, pattern, func(kv []string) error {
		for i := 0; i+1 < len(kv); i += 2 {
			ch, v := kv[i], kv[i+1]
			// Redis matched the glob; Match again in case a server
			// answers a MATCH more widely, then the caller's own test.
			if !channel.Match(pattern, ch) || (keep != nil && !keep(ch)) {
				continue
			}
			if e, ok := parseRetained(ch, v); ok {
				first.add(e)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("read retained messages: %w", err)
	}
	return nil
}

// firstChannels keeps the events of the first max channels in order of
// those added, holding at most 2×max at a time. HSCAN may return a field
// twice (when the hash is resized meanwhile): a channel is kept once.
type firstChannels struct {
	max int
	all []bus.Event
}

func (f *firstChannels) add(e bus.Event) {
	f.all = append(f.all, e)
	if len(f.all) >= 2*f.max {
		f.trim()
	}
}

func (f *firstChannels) trim() {
	slices.SortStableFunc(f.all, func(a, b bus.Event) int { return strings.Compare(a.Channel, b.Channel) })
	f.all = slices.CompactFunc(f.all, func(a, b bus.Event) bool { return a.Channel == b.Channel })
	clear(f.all[min(len(f.all), f.max):])
	f.all = f.all[:min(len(f.all), f.max)]
}

// events returns the events kept, by channel.
func (f *firstChannels) events() []bus.Event {
	f.trim()
	return f.all
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
