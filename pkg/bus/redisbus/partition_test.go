package redisbus

import (
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/redistest"
)

// keySlot agrees with Redis's CLUSTER KEYSLOT, hash tags included.
func TestKeySlotIsRedisSlot(t *testing.T) {
	t.Parallel()
	c := redistest.SharedCluster(t)
	cl := c.Client(t)
	keys := []string{"", "a", "order", "stream:{order}", "stream:{3b}:order", "{}x", "x{}", "{a}{b}", "a{b", "pre:{tag}:ns:meta", "\xff\x00"}
	keys = append(keys, balancedTags(8)...)
	for _, k := range keys {
		want, err := cl.ClusterKeySlot(t.Context(), k).Result()
		if err != nil {
			t.Fatal(err)
		}
		if got := keySlot(k); int64(got) != want {
			t.Errorf("keySlot(%q) = %d, Redis says %d", k, got, want)
		}
	}
}

// The tags of n partitions lie one in each n-th of the slots, so a
// cluster whose masters split the slots evenly (as redis-cli --cluster
// create does) gets the partitions in turn.
func TestBalancedTags(t *testing.T) {
	t.Parallel()
	for _, n := range []int{1, 3, 8, 12, 1024} {
		tags := balancedTags(n)
		if len(tags) != n || len(slices.Compact(slices.Sorted(slices.Values(tags)))) != n {
			t.Fatalf("balancedTags(%d) = %d tags, not all different", n, len(tags))
		}
		for i, tag := range tags {
			if s := keySlot("{" + tag + "}"); s < i*slots/n || s >= (i+1)*slots/n {
				t.Errorf("balancedTags(%d)[%d] = %q on slot %d, want it in [%d, %d)", n, i, tag, s, i*slots/n, (i+1)*slots/n)
			}
		}
	}
	// Masters splitting the slots evenly get ⌊n/masters⌋ or ⌈n/masters⌉
	// partitions each.
	for _, n := range []int{8, 12, 16} {
		for _, masters := range []int{1, 3, 6} {
			per := make([]int, masters)
			for _, tag := range balancedTags(n) {
				per[keySlot("{"+tag+"}")*masters/slots]++
			}
			for m, got := range per {
				if got != n/masters && got != (n+masters-1)/masters {
					t.Errorf("%d partitions over %d masters: master %d has %d (%v)", n, masters, m, got, per)
				}
			}
		}
	}
}

func TestStreamsAndTheirNames(t *testing.T) {
	t.Parallel()
	one := &Bus{opts: Options{Prefix: "p:"}, parts: 1}
	parted := &Bus{opts: Options{Prefix: "p:"}, parts: 4, tags: balancedTags(4)}
	clustered := &Bus{opts: Options{Prefix: "p:"}, parts: 4, tags: balancedTags(4), cluster: true}
	if st := one.streamFor("order:placed"); st.name != "order" || st.key != "p:stream:{order}" || st.meta != "p:stream:{order}:meta" || st.set != "p:namespaces" || st.live != "" {
		t.Errorf("one server, one partition: %+v, want today's keys", st)
	}
	for _, b := range []*Bus{parted, clustered} {
		st := b.streamFor("order:placed")
		slot := keySlot(st.key)
		if !strings.HasPrefix(st.name, "order.") || keySlot(st.meta) != slot || keySlot(st.set) != slot || st.live != "" && keySlot(st.live) != slot {
			t.Errorf("%+v: want one slot for the stream, its epoch, its partition's set and its live channel", st)
		}
		if got, ok := b.streamNamed(st.name); !ok || got != st {
			t.Errorf("streamNamed(%q) = %+v, %v; want %+v", st.name, got, ok, st)
		}
		if b.StreamOf("order:placed") != b.StreamOf("order:placed") || len(b.streamsOf("order")) != 4 {
			t.Errorf("StreamOf is not stable, or streamsOf is not every partition")
		}
	}
	// A channel's keys of other kinds (presence) share its stream's slot.
	for _, b := range []*Bus{one, parted, clustered} {
		for _, ch := range []string{"order:placed", "notify:user:42", "room:1"} {
			k := b.KeyOf("presence", ch)
			if !strings.HasPrefix(k, "p:presence:{") || !strings.HasSuffix(k, "}:"+ch) || keySlot(k) != keySlot(b.streamFor(ch).key) {
				t.Errorf("KeyOf(presence, %s) = %q; want p:presence:{tag}:%[2]s in the slot of %q", ch, k, b.streamFor(ch).key)
			}
		}
	}
	if clustered.streamFor("a:b").live == "" || parted.streamFor("a:b").live != "" {
		t.Error("a shard channel on a cluster only")
	}
	for _, name := range []string{"order.4", "order.-1", "order.01", "order.x", "order.", "Order.1"} {
		if _, ok := parted.streamNamed(name); ok {
			t.Errorf("streamNamed(%q) on 4 partitions = ok, want refused", name)
		}
	}
	if _, ok := one.streamNamed("order.0"); ok {
		t.Error("streamNamed(order.0) on one stream per namespace = ok, want refused")
	}
	// Channels spread over the partitions.
	seen := map[int]bool{}
	for i := range 100 {
		seen[parted.partitionOf("order:"+strings.Repeat("x", i))] = true
	}
	if len(seen) != 4 {
		t.Errorf("100 channels of one namespace reach %d of 4 partitions", len(seen))
	}
}

// FuzzShardMessage: no message on a shard channel panics the sharded
// subscription, and one it takes names a channel whose events go out on
// that very shard channel, with a position the publish script would give
// or none; an announcement it takes is a namespace.
func FuzzShardMessage(f *testing.F) {
	b := &Bus{opts: Options{Prefix: "p:"}, parts: 4, tags: balancedTags(4), cluster: true}
	s := &shardedSubscription{b: b, patterns: []string{"*"}}
	st := b.streamFor("order:placed")
	f.Add(st.part, st.live, channelHeader+"p:order:placed\n"+positionHeader+"9f01 1732290000000-0\n{}")
	f.Add(st.part, st.live, channelHeader+"p:user:1\nforged")
	f.Add(st.part, b.announceChannel(st.part), "order")
	f.Add(0, "x", "")
	f.Fuzz(func(t *testing.T, part int, shard, payload string) {
		if part < 0 || part >= b.parts {
			return
		}
		out, announced, ok := s.message(part, &redis.Message{Channel: shard, Payload: payload})
		if announced != "" && (ok || !bus.IsStream(announced) || strings.Contains(announced, ".")) {
			t.Fatalf("announcement %q taken from %q", announced, payload)
		}
		if !ok {
			return
		}
		if b.streamFor(out.Channel).live != shard || len(out.Patterns) == 0 {
			t.Fatalf("took %q from shard channel %q, whose events go out on %q", out.Channel, shard, b.streamFor(out.Channel).live)
		}
		if !out.Position.IsZero() && (!bus.IsOffset(out.Position.Offset) || !bus.IsEpoch(out.Position.Epoch)) {
			t.Fatalf("took position %+v", out.Position)
		}
	})
}

// A Bus keeps the streams of at most maxKnownNamespaces namespaces, however
// many it meets, and makes the same streams for those beyond.
func TestKnownStreamsAreBounded(t *testing.T) {
	t.Parallel()
	b := &Bus{opts: Options{Prefix: "p:"}, parts: 4, tags: balancedTags(4), cluster: true}
	for i := range maxKnownNamespaces + 100 {
		ns := "ns" + strconv.Itoa(i)
		for part := range b.parts {
			if got, want := b.streamOf(ns, part), b.makeStream(ns, part); got != want {
				t.Fatalf("streamOf(%s, %d) = %+v, want %+v", ns, part, got, want)
			}
		}
	}
	if n := len(b.streams.byNS); n != maxKnownNamespaces {
		t.Errorf("%d namespaces kept, want %d", n, maxKnownNamespaces)
	}
}

// A namespace's keys of a kind: the one a channel names is among those
// its namespace names, in the slot of the channel's stream.
func TestNamespaceKeys(t *testing.T) {
	t.Parallel()
	for _, b := range []*Bus{
		{opts: Options{Prefix: "p:"}, parts: 1},
		{opts: Options{Prefix: "p:"}, parts: 4, tags: balancedTags(4)},
		{opts: Options{Prefix: "p:"}, parts: 4, tags: balancedTags(4), cluster: true},
	} {
		keys := b.NamespaceKeys("mqtt:retained", "dev")
		if len(keys) != b.parts {
			t.Fatalf("%d keys for %d partitions", len(keys), b.parts)
		}
		for _, ch := range []string{"dev:a", "dev:b:c", "dev:x1", "dev:x2", "dev:x3"} {
			k := b.NamespaceKey("mqtt:retained", ch)
			if !slices.Contains(keys, k) || !strings.HasSuffix(k, "}:dev") || keySlot(k) != keySlot(b.streamFor(ch).key) {
				t.Errorf("NamespaceKey(%s) = %q; want one of %q, in the slot of %q", ch, k, keys, b.streamFor(ch).key)
			}
		}
	}
}

// A group's keys share one slot, whatever their names, and are the
// bus's: under its prefix.
func TestGroupKeysShareASlot(t *testing.T) {
	t.Parallel()
	b := &Bus{opts: Options{Prefix: "p:"}, parts: 4, tags: balancedTags(4), cluster: true}
	first := b.GroupKey("mqtt:wills", "due")
	for _, name := range []string{"kept", "newest:user:1/a", "newest:addr:192.0.2.1/{x}"} {
		if k := b.GroupKey("mqtt:wills", name); !strings.HasPrefix(k, "p:mqtt:wills:") || keySlot(k) != keySlot(first) {
			t.Errorf("GroupKey(mqtt:wills, %s) = %q; want under p: and in the slot of %q", name, k, first)
		}
	}
}
