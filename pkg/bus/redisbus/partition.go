package redisbus

import (
	"hash/crc32"
	"strconv"
	"strings"
	"sync"

	"github.com/eventbus-suite/eventbus/pkg/bus"
)

// A namespace's record is one stream on a single Redis, or, on a Redis
// Cluster (or with Options.Partitions above one), Partitions streams: a
// channel's events always go to the same one, chosen by a hash of the
// channel, so each channel keeps its order while a namespace's traffic
// spreads over the cluster's shards. Partition i of every namespace
// shares one hash tag, tags[i], chosen so that the tags' slots lie evenly
// over the 16,384 (as centrifuge's balanced tags do: the slots of short
// sequential tags bunch up), and so the streams, epochs, namespace set
// and live channel of one partition are on one slot: the publish script
// touches them in one step, and a consumer reads every namespace of a
// partition in one XREADGROUP.
//
// Key layout, one server, one partition (today's wire):
//
//	<prefix>stream:{order}            the stream: fields c (channel, with the prefix) and p (payload)
//	<prefix>stream:{order}:meta       hash: epoch, added (entries ever added)
//	<prefix>stream:{order}:marks      sorted set: ids by added, where trimming cuts
//	<prefix>namespaces                set of the namespaces that have a stream
//	<prefix>order:placed              the live channel: PUBLISH, what PSUBSCRIBE order:* hears
//
// Partitioned, for partition i with tag T = tags[i]:
//
//	<prefix>stream:{T}:order          the stream of order's partition i
//	<prefix>stream:{T}:order:meta     hash: its epoch, added
//	<prefix>stream:{T}:order:marks    sorted set: its trimming marks
//	<prefix>namespaces:{T}            set of the namespaces recorded in partition i
//	<prefix>live:{T}:order            on a cluster, the shard channel of order's partition i
//	                                  (SPUBLISH; each message says its channel)
//
// and, either way, <prefix>groups (hash: consumer group → its patterns,
// for groups that cover namespaces yet to appear).

// stream is one partition of one namespace's record.
type stream struct {
	ns   string
	part int
	// name is the stream's name in cursors (bus.Cursor): the namespace,
	// or "<namespace>.<partition>" when namespaces are partitioned.
	name string
	key  string // the stream
	meta string // hash: epoch, added
	// marks is a sorted set of ids by the count of entries added when
	// each was the newest: where trimming to MAXLEN cuts (publishScript).
	marks string
	set   string // the set of namespaces recorded in this partition
	// live is the shard channel the partition's events of ns go out on,
	// on a cluster; "" on one server, where each channel is its own.
	live string
	tag  string // the partition's hash tag, "" on one server with one partition
}

// partitioned reports whether namespaces are spread over tagged
// partitions: always on a cluster, where namespaces on different slots
// could not be read together, and on one server when asked for.
func (b *Bus) partitioned() bool { return b.cluster || b.parts > 1 }

// streamOf returns partition part of namespace ns. Every event published,
// read and acknowledged asks for its stream, so the streams of the first
// maxKnownNamespaces namespaces are made once and kept (streamCache);
// those of any beyond are made each time.
func (b *Bus) streamOf(ns string, part int) stream {
	b.streams.mu.RLock()
	known, ok := b.streams.byNS[ns]
	b.streams.mu.RUnlock()
	if ok {
		return known[part]
	}
	all := make([]stream, max(b.parts, 1))
	for i := range all {
		all[i] = b.makeStream(ns, i)
	}
	b.streams.mu.Lock()
	if b.streams.byNS == nil {
		b.streams.byNS = make(map[string][]stream)
	}
	if len(b.streams.byNS) < maxKnownNamespaces {
		b.streams.byNS[ns] = all
	}
	b.streams.mu.Unlock()
	return all[part]
}

// maxKnownNamespaces bounds the namespaces whose streams a Bus keeps:
// namespaces are publishers' to name, and a Bus must not grow with them.
const maxKnownNamespaces = 4096

// streamCache holds the streams of the namespaces met so far.
type streamCache struct {
	mu   sync.RWMutex
	byNS map[string][]stream // namespace → its partitions
}

// makeStream makes partition part of namespace ns.
func (b *Bus) makeStream(ns string, part int) stream {
	p := b.opts.Prefix
	if !b.partitioned() {
		key := p + "stream:{" + ns + "}"
		return stream{ns: ns, name: ns, key: key, meta: key + ":meta", marks: key + ":marks", set: p + "namespaces"}
	}
	tag := b.tags[part]
	key := p + "stream:{" + tag + "}:" + ns
	s := stream{
		ns: ns, part: part, name: ns + "." + strconv.Itoa(part), tag: tag,
		key: key, meta: key + ":meta", marks: key + ":marks", set: p + "namespaces:{" + tag + "}",
	}
	if b.cluster {
		s.live = p + "live:{" + tag + "}:" + ns
	}
	return s
}

// partitionOf returns the partition of channel ch: the CRC-32 (IEEE, as
// zlib computes it) of the channel, without the bus's prefix, modulo the
// partitions; docs/scaling.md says so for consumers in other languages.
func (b *Bus) partitionOf(ch string) int {
	if b.parts <= 1 {
		return 0
	}
	return int(crc32.ChecksumIEEE([]byte(ch)) % uint32(b.parts))
}

// streamFor returns the stream the events of channel ch are recorded in.
func (b *Bus) streamFor(ch string) stream { return b.streamOf(namespaceOf(ch), b.partitionOf(ch)) }

// StreamOf names the stream the events of channel ch are recorded in, as
// cursors name it (bus.Cursor): its namespace, or "<namespace>.<partition>"
// on a partitioned bus. Every process of a deployment agrees on it as long
// as they agree on the partitions.
func (b *Bus) StreamOf(ch string) string { return b.streamFor(ch).name }

// KeyOf names a key of kind about channel ch, in the slot of ch's stream:
// "<prefix><kind>:{<tag>}:<ch>", the tag being the stream's partition's on
// a partitioned bus and ch's namespace on one server. A script or a
// MULTI may then touch it together with ch's stream on a cluster, and
// every process of a deployment names it alike (presence keys are made
// so).
func (b *Bus) KeyOf(kind, ch string) string {
	return b.taggedKey(kind, b.streamFor(ch), ch)
}

// NamespaceKey names a key of kind about the events of ch's namespace in
// ch's partition, in the slot of that partition's stream:
// "<prefix><kind>:{<tag>}:<namespace>". NamespaceKeys names those of
// every partition of namespace ns, so that a reader finds what a writer
// of any of its channels wrote (MQTT's retained messages are kept so).
func (b *Bus) NamespaceKey(kind, ch string) string {
	st := b.streamFor(ch)
	return b.taggedKey(kind, st, st.ns)
}

// NamespaceKeys names the keys of kind of every partition of namespace
// ns (see NamespaceKey).
func (b *Bus) NamespaceKeys(kind, ns string) []string {
	sts := b.streamsOf(ns)
	out := make([]string, len(sts))
	for i, st := range sts {
		out[i] = b.taggedKey(kind, st, ns)
	}
	return out
}

// GroupKey names key name of a group of keys that a script or a MULTI
// touches together, all in one slot: "<prefix><group>:{<group>}:<name>"
// (MQTT's delayed wills are kept so).
func (b *Bus) GroupKey(group, name string) string {
	return b.opts.Prefix + group + ":{" + group + "}:" + name
}

// taggedKey names key name of kind in the slot of stream st:
// "<prefix><kind>:{<tag>}:<name>", the tag being st's partition's, or its
// namespace on one server.
func (b *Bus) taggedKey(kind string, st stream, name string) string {
	tag := st.tag
	if tag == "" {
		tag = st.ns
	}
	return b.opts.Prefix + kind + ":{" + tag + "}:" + name
}

// streamsOf returns every partition of namespace ns.
func (b *Bus) streamsOf(ns string) []stream {
	out := make([]stream, b.parts)
	for i := range out {
		out[i] = b.streamOf(ns, i)
	}
	return out
}

// streamNamed returns the stream a cursor names, if it is one of this
// bus's.
func (b *Bus) streamNamed(name string) (stream, bool) {
	if !bus.IsStream(name) {
		return stream{}, false
	}
	ns, part, dotted := strings.Cut(name, ".")
	if !dotted {
		return b.streamOf(ns, 0), !b.partitioned()
	}
	i, err := strconv.Atoi(part)
	if err != nil || !b.partitioned() || i < 0 || i >= b.parts || strconv.Itoa(i) != part {
		return stream{}, false
	}
	return b.streamOf(ns, i), true
}

// namespaceSets returns the keys of the sets that together name every
// recorded namespace: one on one server, one per partition when
// partitioned.
func (b *Bus) namespaceSets() []string {
	if !b.partitioned() {
		return []string{b.opts.Prefix + "namespaces"}
	}
	out := make([]string, b.parts)
	for i := range out {
		out[i] = b.streamOf("", i).set
	}
	return out
}

// slots is the number of hash slots of a Redis Cluster.
const slots = 16384

// balancedTags returns n hash tags whose slots lie one in each n-th of the
// slot range, each near the middle of its n-th: the first of the shortest
// base-36 names that falls within an eighth of the n-th's width of it
// (within a slot, for many partitions). A cluster whose masters split the
// slots evenly, as redis-cli --cluster create does, then gets the
// partitions in turn, each master ⌊n/masters⌋ or ⌈n/masters⌉ of them. The
// tags are the same for every process, so every publisher and consumer
// agrees.
func balancedTags(n int) []string {
	tags := make([]string, n)
	for i := range tags {
		mid := (2*i + 1) * slots / (2 * n)
		near := max(slots/(8*n), 1)
		for c := 0; ; c++ {
			t := strconv.FormatInt(int64(c), 36)
			if s := int(crc16(t) % slots); s >= mid-near && s < mid+near {
				tags[i] = t
				break
			}
		}
	}
	return tags
}

// keySlot is the cluster slot of key, by Redis's rule: the CRC16 of the
// text between its first '{' and the next '}', when that is not empty,
// else of the whole key.
func keySlot(key string) int {
	if open := strings.IndexByte(key, '{'); open >= 0 {
		if end := strings.IndexByte(key[open+1:], '}'); end > 0 {
			key = key[open+1 : open+1+end]
		}
	}
	return int(crc16(key) % slots)
}

// crc16 is CRC-16/XMODEM (polynomial 0x1021, initial 0), the checksum
// Redis Cluster hashes keys with.
func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}
