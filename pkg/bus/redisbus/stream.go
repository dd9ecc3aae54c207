package redisbus

import (
	"context"
	"crypto/rand"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/eventbus-suite/eventbus/pkg/bus"
)

// The record's keys are in partition.go.

func (b *Bus) groupsKey() string { return b.opts.Prefix + "groups" }

// namespaceOf returns the first token of ch.
func namespaceOf(ch string) string {
	ns, _ := reach(ch)
	return ns
}

// reach says which namespaces the channels that pattern p matches can be
// in: the one its first token names (wild false), or, when that token has
// a wildcard, every namespace that starts with prefix, the text before it.
// A channel is a pattern without wildcard.
func reach(p string) (prefix string, wild bool) {
	literal, _, wild := strings.Cut(p, "*")
	if ns, _, ok := strings.Cut(literal, ":"); ok || !wild {
		return ns, false
	}
	return literal, true
}

// publishScript records messages of one stream (a namespace, or one
// partition of it) and publishes each live, with its position, in one
// step: a subscriber never sees an event the record lacks, and no recorded
// event skips the live path. The stream's epoch is made when the stream
// is (new, or lost with its data), and the namespace is added to its
// partition's set of namespaces. Each redis.call costs: one XADD and one
// PUBLISH per message is all the script does per message.
//
// Live, each message goes out as published with its position appended as
// two envelope fields (appendPosition; on a JSON object, two last
// members): on one server PUBLISHed on its own channel, on a cluster
// SPUBLISHed on the stream's shard channel, after a line naming its
// channel (channelHeader).
//
// Trimming, in the runs the publisher asks for it (see trimmer), keeps
// about MAXLEN entries and none older than MINID, but never what a
// consumer group has yet to read or acknowledge: a group that falls
// behind holds the record back, so it loses nothing, at the cost of the
// memory its backlog takes. A stream has no index by position, so the
// script keeps marks to find where MAXLEN entries from the end begin: the
// meta hash counts the entries ever added, and each trimming run adds the
// newest entry's id to a sorted set (the marks key) scored by that count,
// at most one per EVERY entries. The newest mark scored at most
// added−MAXLEN is a cut that keeps at least MAXLEN entries, and the marks
// before it are dropped. Without such a mark (a stream recorded before
// marks were kept) it reads the entries beyond MAXLEN, at most 10,000, as
// it did before: that costs about as much as recording them.
//
// KEYS: stream, meta, the partition's namespace set, marks. ARGV: maxlen
// and minid (both "" for no trimming in this run, minid "" for no bound by
// age), a new epoch in case one is needed, the namespace, the shard
// channel ("" to PUBLISH each message on its channel), the partition's
// announcement channel (on a cluster, where a namespace new to the
// partition is named before its first events), the marks' spacing, then
// channel and payload of each message. It returns the epoch, 1 when the
// namespace was new to the partition (else 0), then the offset and
// receiver count of each message.
var publishScript = redis.NewScript(`
local stream, meta, marks = KEYS[1], KEYS[2], KEYS[4]
local epoch, added = nil, nil
if redis.call('EXISTS', stream) == 1 then
	local m = redis.call('HMGET', meta, 'epoch', 'added')
	epoch, added = m[1], tonumber(m[2])
end
if not epoch then
	epoch, added = ARGV[3], 0
	redis.call('HSET', meta, 'epoch', epoch)
	redis.call('DEL', marks)
elseif not added then
	added = redis.call('XLEN', stream) -- recorded before the count was kept
end
local isNew = redis.call('SADD', KEYS[3], ARGV[4])
-- The position goes after the envelope as its fields 9 (offset) and 10
-- (epoch), strings of fewer than 128 bytes: a tag byte, a length byte,
-- the bytes (appendPosition).
local maxlen, live, epochField = ARGV[1], ARGV[5], string.char(82, #epoch) .. epoch
if isNew == 1 and live ~= '' then
	redis.call('SPUBLISH', ARGV[6], ARGV[4])
end
local out, n, last = {epoch, isNew}, 2, nil
for i = 8, #ARGV, 2 do
	local ch, payload = ARGV[i], ARGV[i + 1]
	last = redis.call('XADD', stream, '*', 'c', ch, 'p', payload)
	out[n + 1] = last
	local message
	if string.sub(payload, 1, 1) == '{' and string.sub(payload, -1) == '}' then
		-- A JSON object (BUS_WIRE=json): the position as two members.
		local sep = ','
		if string.match(payload, '^{%s*}$') then
			sep = ''
		end
		message = string.sub(payload, 1, -2) .. sep .. '"offset":"' .. last .. '","epoch":"' .. epoch .. '"}'
	else
		message = payload .. string.char(74, #last) .. last .. epochField
	end
	if live == '' then
		out[n + 2] = redis.call('PUBLISH', ch, message)
	else
		out[n + 2] = redis.call('SPUBLISH', live, '\0ebc ' .. ch .. '\n' .. message)
	end
	n = n + 2
end
added = added + (n - 2) / 2
redis.call('HSET', meta, 'added', added)
if maxlen == '' then
	return out
end
local function split(id)
	local ms, seq = string.match(id, '^(%d+)-(%d+)$')
	return tonumber(ms), tonumber(seq)
end
local function less(a, b)
	local am, as = split(a)
	local bm, bs = split(b)
	return am < bm or (am == bm and as < bs)
end
maxlen = tonumber(maxlen)
local newest = redis.call('ZREVRANGE', marks, 0, 0, 'WITHSCORES')
if #newest == 0 or added - tonumber(newest[2]) >= tonumber(ARGV[7]) then
	redis.call('ZADD', marks, added, last)
end
-- The newest mark with at least MAXLEN entries after it; older ones go.
local mark = redis.call('ZREVRANGEBYSCORE', marks, added - maxlen, '-inf', 'WITHSCORES', 'LIMIT', 0, 1)
if #mark > 0 then
	redis.call('ZREMRANGEBYSCORE', marks, '-inf', '(' .. mark[2])
end
local len, ttl = redis.call('XLEN', stream), ARGV[2]
if len > maxlen or ttl ~= '' then
	-- The furthest trimming may go: what every group has read and
	-- acknowledged ('+' without groups).
	local limit = '+'
	for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
		local f = {}
		for j = 1, #g, 2 do
			f[g[j]] = g[j + 1]
		end
		local floor = f['last-delivered-id']
		if f['pending'] > 0 then
			floor = redis.call('XPENDING', stream, f['name'])[2]
		end
		if limit == '+' or less(floor, limit) then
			limit = floor
		end
	end
	local cut
	if ttl ~= '' then
		cut = ttl
	end
	if len > maxlen then
		-- Where the last MAXLEN entries begin, no further than the limit.
		local beyond
		if #mark > 0 then
			beyond = mark[1]
		else
			local head = redis.call('XRANGE', stream, '-', limit, 'COUNT', math.min(len - maxlen, 10000))
			if #head > 0 then
				beyond = head[#head][1]
			end
		end
		if beyond and (cut == nil or less(cut, beyond)) then
			cut = beyond
		end
	end
	if cut and limit ~= '+' and less(limit, cut) then
		cut = limit
	end
	if cut then
		redis.call('XTRIM', stream, 'MINID', '~', cut)
	end
end
return out
`)

// A live message carries its position in the envelope itself: the
// publish script appends fields 9 (offset) and 10 (epoch) of
// eventbus.v1.Envelope to the payload as published, and protobuf takes
// appended fields as part of the message, so any decoder of the envelope
// reads them with nothing to strip. A payload that is a JSON object (the
// JSON wire, BUS_WIRE=json) gets them as its last two members instead,
// "offset" and "epoch", as protobuf JSON names them. Readers here take
// them off again (splitPosition): bus.Message carries the payload as
// published and the position beside it.
const (
	offsetField = 9
	epochField  = 10
)

// positionHeader started a live message before the position moved into
// the envelope, and may still come from a publisher of the release
// before:
//
//	"\x00eb1 <epoch> <offset>\n" then the payload as published.
//
// Readers take it for one more release.
const positionHeader = "\x00eb1 "

// channelHeader starts a message on a cluster's shard channel, which
// carries the events of several channels:
//
//	"\x00ebc <channel>\n" then the live message.
const channelHeader = "\x00ebc "

// appendPosition appends pos to an envelope's bytes as the publish
// script does.
func appendPosition(b []byte, pos bus.Position) []byte {
	b = protowire.AppendTag(b, offsetField, protowire.BytesType)
	b = protowire.AppendString(b, pos.Offset)
	b = protowire.AppendTag(b, epochField, protowire.BytesType)
	return protowire.AppendString(b, pos.Epoch)
}

// splitPosition takes a live message apart into its position and the
// payload as published. The position is the message's last two fields
// when they are an offset and an epoch, in that order, as the publish
// script appends them, or the header of the release before. Anything
// else, however close, has no position and is the payload as it is: a
// position the edge would hand to browsers must be one the script wrote
// (or one that a client able to PUBLISH on Redis forged, which it could
// as well in the header). The payload need not be an envelope: the bus
// carries any bytes, and gives them back as they were published.
func splitPosition(payload string) (bus.Position, string) {
	// What the script appended comes first: a payload of the bus's may
	// itself start like the old header, and must come back as it was.
	if strings.HasPrefix(payload, "{") && strings.HasSuffix(payload, "}") {
		if pos, body := jsonPosition(payload); !pos.IsZero() {
			return pos, body
		}
	} else if pos, n, ok := trailingPosition(payload); ok {
		return pos, payload[:len(payload)-n]
	}
	rest, ok := strings.CutPrefix(payload, positionHeader)
	if !ok {
		return bus.Position{}, payload
	}
	line, body, ok := strings.Cut(rest, "\n")
	if !ok {
		return bus.Position{}, payload
	}
	epoch, offset, ok := strings.Cut(line, " ")
	if !ok || !bus.IsEpoch(epoch) || !bus.IsOffset(offset) {
		return bus.Position{}, payload
	}
	return bus.Position{Offset: offset, Epoch: epoch}, body
}

// livePosition is splitPosition for what this bus's subscriptions
// receive: a bus without history records nothing and appends no
// position, so a message that merely ends like one is left as it is.
func (b *Bus) livePosition(payload string) (bus.Position, string) {
	if b.opts.HistoryMaxLen <= 0 {
		return bus.Position{}, payload
	}
	return splitPosition(payload)
}

// jsonPosition reads the members the publish script appends to a JSON
// object, `"offset":"<offset>","epoch":"<epoch>"` before its closing
// brace, after a comma unless they are its only members, and returns the
// object without them.
func jsonPosition(m string) (bus.Position, string) {
	rest, ok := strings.CutSuffix(m, `"}`)
	if !ok {
		return bus.Position{}, m
	}
	i := strings.LastIndex(rest, `","epoch":"`)
	if i < 0 || !bus.IsEpoch(rest[i+len(`","epoch":"`):]) {
		return bus.Position{}, m
	}
	epoch, rest := rest[i+len(`","epoch":"`):], rest[:i]
	j := strings.LastIndex(rest, `"offset":"`)
	if j < 1 || !bus.IsOffset(rest[j+len(`"offset":"`):]) {
		return bus.Position{}, m
	}
	pos, before := bus.Position{Offset: rest[j+len(`"offset":"`):], Epoch: epoch}, rest[:j]
	switch {
	case strings.HasSuffix(before, ","):
		return pos, before[:len(before)-1] + "}"
	case strings.TrimSpace(before) == "{":
		return pos, before + "}"
	}
	return bus.Position{}, m
}

// trailingPosition reads the position the publish script appends, from
// the end of a live message: whatever comes before it (an envelope, or
// anything else published through the bus) is left as it is. It returns
// the position and how many bytes it takes. The fields are read as the
// script writes them, a tag byte and a one-byte length each (offsets and
// epochs are far shorter than 128 bytes); at most one reading is
// possible, for neither tag byte ('J', 'R') is a character of an offset
// or an epoch.
func trailingPosition(m string) (pos bus.Position, n int, ok bool) {
	field := func(end int, tag byte, valid func(string) bool) (string, int, bool) {
		for l := 1; l <= 64 && l+2 <= end; l++ {
			if m[end-l-2] == tag && int(m[end-l-1]) == l && valid(m[end-l:end]) {
				return m[end-l : end], end - l - 2, true
			}
		}
		return "", 0, false
	}
	const (
		offsetTag = byte(offsetField<<3 | byte(protowire.BytesType))
		epochTag  = byte(epochField<<3 | byte(protowire.BytesType))
	)
	epoch, at, ok := field(len(m), epochTag, bus.IsEpoch)
	if !ok {
		return bus.Position{}, 0, false
	}
	offset, at, ok := field(at, offsetTag, bus.IsOffset)
	if !ok {
		return bus.Position{}, 0, false
	}
	return bus.Position{Offset: offset, Epoch: epoch}, len(m) - at, true
}

// newEpoch returns a random epoch: 16 hex digits.
func newEpoch() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%x", b)
}

// streamMaxLen is about how many entries each stream keeps: a namespace
// keeps about HistoryMaxLen events over its partitions.
func (b *Bus) streamMaxLen() int64 {
	parts := int64(max(b.parts, 1))
	return (b.opts.HistoryMaxLen + parts - 1) / parts
}

// minID is the oldest offset the record keeps, or "" for no bound by age.
func (b *Bus) minID(now time.Time) string {
	if b.opts.HistoryTTL <= 0 {
		return ""
	}
	return strconv.FormatInt(now.Add(-b.opts.HistoryTTL).UnixMilli(), 10) + "-0"
}

// trimmer says which script runs trim their stream. Trimming reads the
// stream's groups and the entries it would cut, which costs as much as
// recording a few hundred events, so a publisher asks for it once every
// `every` messages of a stream, or when a second has passed since it
// last did: the record then exceeds its bounds by at most that much. Only
// the pipeline goroutine uses it.
type trimmer struct {
	every int
	last  map[string]trimState // by stream key
}

type trimState struct {
	msgs int // recorded since the last trim
	at   time.Time
}

// maxTrimmed bounds the streams a trimmer remembers: past it, it forgets
// them all, and each trims in its next run.
const maxTrimmed = 10_000

func newTrimmer(maxLen int64) *trimmer {
	return &trimmer{every: int(min(max(maxLen/100, 1), 1000)), last: make(map[string]trimState)}
}

// due counts n messages of the stream key and reports whether their run
// trims.
func (t *trimmer) due(key string, n int, now time.Time) bool {
	st, ok := t.last[key]
	st.msgs += n
	if ok && st.msgs < t.every && now.Sub(st.at) < time.Second {
		t.last[key] = st
		return false
	}
	if !ok && len(t.last) >= maxTrimmed {
		clear(t.last)
	}
	t.last[key] = trimState{at: now}
	return true
}

// recordCall is one run of the publish script: consecutive messages of one
// stream in a pipeline.
type recordCall struct {
	stream stream
	keys   []string
	args   []any
	cmd    *redis.Cmd
	n      int // messages
}

// record queues the publish script for msgs, all of stream st. It runs
// the script by its digest: Redis answers NOSCRIPT, having done nothing,
// when its script cache lacks it (after a restart), and rerun sends the
// script itself.
func (b *Bus) record(ctx context.Context, pipe redis.Pipeliner, trim *trimmer, st stream, msgs []bus.Publication, now time.Time) recordCall {
	maxLen, minID := "", ""
	if trim.due(st.key, len(msgs), now) {
		maxLen, minID = strconv.FormatInt(b.streamMaxLen(), 10), b.minID(now)
	}
	c := recordCall{stream: st, keys: []string{st.key, st.meta, st.set, st.marks}, n: len(msgs)}
	announce := ""
	if st.live != "" {
		announce = b.announceChannel(st.part)
	}
	c.args = make([]any, 0, 7+2*len(msgs))
	c.args = append(c.args, maxLen, minID, newEpoch(), st.ns, st.live, announce, trim.every)
	for _, m := range msgs {
		c.args = append(c.args, b.key(m.Channel), m.Payload)
	}
	c.cmd = publishScript.EvalSha(ctx, pipe, c.keys, c.args...)
	return c
}

// unknownScript reports whether c's run failed, without effect, because
// Redis did not have the script.
func (c recordCall) unknownScript() bool {
	return redis.HasErrorPrefix(c.cmd.Err(), "NOSCRIPT")
}

// rerun queues c again with the script's text, which Redis then keeps.
func (c *recordCall) rerun(ctx context.Context, pipe redis.Pipeliner) {
	c.cmd = publishScript.Eval(ctx, pipe, c.keys, c.args...)
}

// results reads the receipts of a recordCall, or its error for each, and
// whether the run added its namespace to its partition.
func (c recordCall) results() (receipts []bus.Receipt, added bool, err error) {
	v, err := c.cmd.Slice()
	if err != nil {
		return nil, false, err
	}
	if len(v) != 2+2*c.n {
		return nil, false, fmt.Errorf("publish script answered %d values for %d messages", len(v), c.n)
	}
	epoch, _ := v[0].(string)
	n, _ := v[1].(int64)
	out := make([]bus.Receipt, c.n)
	for i := range out {
		offset, _ := v[2+2*i].(string)
		n, _ := v[3+2*i].(int64)
		out[i] = bus.Receipt{Position: bus.Position{Offset: offset, Epoch: epoch}, Receivers: n}
	}
	return out, n == 1, nil
}
