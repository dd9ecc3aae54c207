#!/usr/bin/env python3
"""A consumer of the eventbus that reads Redis directly.

As any service not written in Go can, it subscribes to a pattern, decodes
each message, an eventbus.v1.Envelope carrying its position (offset,
epoch), with the code protoc generated from proto/ (gen/), unpacks its data
and prints one JSON line per event on stdout. See docs/consumers.md.

    REDIS_URL=redis://localhost:6379 REDIS_PREFIX=dev python3 consumer.py 'order:*'

The pattern defaults to *. REDIS_PREFIX is the services' own ("dev" or
"dev:" alike). Once Redis has confirmed the subscription it prints
"subscribed <prefix><pattern>" on stderr; a message that is no envelope is
reported on stderr and skipped.

    python3 consumer.py --stream order [--group example] [--consumer NAME]

reads the record of a namespace instead, durably: every event published from
the group's creation on, at least once, as one consumer (the host name by
default) of a consumer group, each acknowledged once printed; what it had
not acknowledged when it stopped comes first. It prints "reading
<prefix>stream:{order} as <group>/<consumer>" once the group exists.

The group outlives the consumer, and Redis trims no entry it has yet to
read: a group nobody reads any more pins the stream. With --remove-group,
a group this run created is destroyed (XGROUP DESTROY) when it stops on
SIGINT or SIGTERM; a group that existed before is left alone.

On a Redis Cluster (REDIS_URL=redis+cluster://host:port,host:port, or
rediss+cluster:// for TLS, with user:password@ before the first node if need
be) the bus spreads each namespace over BUS_PARTITIONS partitions (8 by
default there; give the services' own), each with a hash tag of its own.
Subscribed, the consumer SSUBSCRIBEs the partitions' shard channels its
pattern can reach, on a connection per partition to the master of its slot,
follows namespaces announced new, and matches each message's channel itself;
a partition whose connection is lost or whose slot moved is connected again
and resubscribed, and what went by meanwhile is in the stream. With --stream
it reads the namespace's stream in every partition,
<prefix>stream:{<tag>}:order, with one group on each (--remove-group removes
those it created), and says "reading <key>, <key>, ... as <group>/<consumer>"
once all exist.

Needs redis-py (4.3 or later) and protobuf (Debian: python3-redis and
python3-protobuf).
"""

import argparse
import json
import os
import re
import select
import signal
import socket
import sys
import time
import warnings
import zlib
from pathlib import Path
from urllib.parse import unquote

sys.path.insert(0, str(Path(__file__).resolve().parent / "gen"))

import redis  # noqa: E402
from redis.cluster import ClusterNode, RedisCluster  # noqa: E402
from redis.crc import key_slot  # noqa: E402
from google.protobuf import json_format, struct_pb2  # noqa: E402
from google.protobuf.message import DecodeError  # noqa: E402

from eventbus.v1 import envelope_pb2, events_pb2  # noqa: E402

# The messages data can hold, by full name: ours (OrderPlaced, ...) for the
# types the bus knows, a Struct for any other.
REGISTRY = {
    d.full_name: getattr(events_pb2, d.name)
    for d in events_pb2.DESCRIPTOR.message_types_by_name.values()
}
REGISTRY[struct_pb2.Struct.DESCRIPTOR.full_name] = struct_pb2.Struct

# A live message is an envelope whose offset and epoch say where it stands
# in its stream. Until the release after this one, a bus of the release
# before may still send its position in a header instead:
# "\x00eb1 <epoch> <offset>\n"; no envelope starts with a NUL byte.
HEADER = b"\x00eb1 "


class NotAnEnvelope(Exception):
    """A message on a bus channel that is no envelope."""


def split_position(message):
    """Return the position of a header (the release before; None without
    one) and the envelope bytes."""
    if not message.startswith(HEADER):
        return None, message
    line, nl, body = message[len(HEADER):].partition(b"\n")
    fields = line.decode("latin-1").split(" ")
    if not nl or len(fields) != 2:
        return None, message
    epoch, offset = fields
    return {"epoch": epoch, "offset": offset}, body


def decode(message):
    """Return the object printed for a message; raise NotAnEnvelope."""
    position, body = split_position(message)
    env = envelope_pb2.Envelope()
    with warnings.catch_warnings(record=True) as warned:
        # protobuf's upb parser stops at a stray end-group tag with a
        # warning, not an error: take it as one.
        warnings.simplefilter("always")
        try:
            env.ParseFromString(body)
        except DecodeError as err:
            raise NotAnEnvelope(str(err)) from err
    if warned:
        raise NotAnEnvelope(str(warned[0].message))
    if not env.type:
        raise NotAnEnvelope("no type")
    if env.offset:
        position = {"epoch": env.epoch, "offset": env.offset}
    event = {"id": env.id, "type": env.type, "channel": env.channel}
    if env.subject:
        event["subject"] = env.subject
    if env.HasField("time"):
        event["time"] = env.time.ToJsonString()
    if position:
        event.update(position)
    if env.HasField("data"):
        cls = REGISTRY.get(env.data.TypeName())
        if cls is None:
            event["data_type_url"] = env.data.type_url  # a type newer than gen/
        else:
            data = cls()
            env.data.Unpack(data)
            # A Struct renders as the plain JSON object the event was
            # published with; int64 fields as strings, protobuf's JSON rule.
            event["data"] = json_format.MessageToDict(data, preserving_proto_field_name=True)
    return event


def emit(message, channel, offset=None):
    """Print the event a message holds, or say on stderr that it is none."""
    try:
        event = decode(message)
    except NotAnEnvelope as err:
        print(f"not an envelope on {channel}: {err}", file=sys.stderr, flush=True)
        return
    if offset is not None:
        event["offset"] = offset
    print(json.dumps(event, ensure_ascii=False, separators=(",", ":")), flush=True)


def subscribe(client, pattern):
    """Print what is published on channels matching pattern, from now on."""
    pubsub = client.pubsub()
    try:
        pubsub.psubscribe(pattern)
        for msg in pubsub.listen():
            if msg["type"] == "psubscribe":
                print(f"subscribed {msg['channel'].decode()}", file=sys.stderr, flush=True)
            elif msg["type"] == "pmessage":
                emit(msg["data"], msg["channel"].decode("utf-8", "replace"))
    finally:
        pubsub.close()


# On a cluster each message of a shard channel starts with a line naming its
# channel, with the prefix.
CHANNEL_HEADER = b"\x00ebc "


def match(pattern, channel):
    """Whether channel matches pattern as PSUBSCRIBE would.

    In the bus's grammar * matches any run of characters, : included, and
    nothing else is special.
    """
    return re.fullmatch(".*".join(map(re.escape, pattern.split("*"))), channel, re.DOTALL) is not None


def base36(n):
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = digits[n % 36]
    while n >= 36:
        n //= 36
        out = digits[n % 36] + out
    return out


def balanced_tags(n):
    """Return the hash tag of each of n partitions, as the bus chooses them.

    For partition i (pkg/bus/redisbus/partition.go): the first base-36
    number whose cluster slot lies within max(16384/(8n), 1) of the middle
    of the i-th n-th of the 16,384 slots.
    """
    tags = []
    for i in range(n):
        mid, within = (2 * i + 1) * 16384 // (2 * n), max(16384 // (8 * n), 1)
        c = 0
        while not mid - within <= key_slot(base36(c).encode()) < mid + within:
            c += 1
        tags.append(base36(c))
    return tags


def reach(pattern):
    """Return which namespaces the channels pattern matches can be in.

    The one its first token names (wild False), or, when that token has a
    wildcard, every namespace that starts with the text before it.
    """
    literal, star, _ = pattern.partition("*")
    if ":" in literal or not star:
        return literal.partition(":")[0], False
    return literal, True


class Shard:
    """One partition's connection: SSUBSCRIBE takes the channels of one slot."""

    def __init__(self, client, tag):
        self.client, self.tag = client, tag
        self.channels = set()  # the shard channels subscribed
        self.unconfirmed = set()  # those Redis has yet to confirm
        self.conn = None

    def connect(self):
        """Connect to the master of the partition's slot and subscribe again."""
        node = self.client.get_node_from_key("{" + self.tag + "}")
        # A connection of the node's pool's kind (credentials, TLS), of our own.
        self.conn = node.redis_connection.connection_pool.make_connection()
        self.conn.connect()
        self.unconfirmed = set(self.channels)
        if self.channels:
            self.conn.send_command("SSUBSCRIBE", *sorted(self.channels))

    def add(self, *channels):
        new = set(channels) - self.channels
        if new:
            self.channels |= new
            self.unconfirmed |= new
            self.conn.send_command("SSUBSCRIBE", *sorted(new))

    def close(self):
        if self.conn is not None:
            self.conn.disconnect()
            self.conn = None


class Lost(Exception):
    """A shard connection went, or its slot moved."""


def subscribe_sharded(client, prefix, pattern, tags):
    """Print what is published on channels matching pattern, from now on, on a cluster.

    It SSUBSCRIBEs the shard channels of the partitions (one per tag) that
    the pattern (without the prefix) can reach, and matches each message's
    channel itself.
    """
    shards = [Shard(client, tag) for tag in tags]
    for shard in shards:
        shard.connect()
    ns_prefix, wild = reach(pattern)
    followed = set()

    def live(shard, ns):
        return f"{prefix}live:{{{shard.tag}}}:{ns}"

    def follow(ns):
        if re.fullmatch(r"[a-z0-9_~-]+", ns) and ns.startswith(ns_prefix) and ns not in followed:
            followed.add(ns)
            for shard in shards:
                shard.add(live(shard, ns))

    def handle(shard, reply):
        if not isinstance(reply, list):
            return  # PONG to a connection with no channel yet
        kind, shard_channel = reply[0], reply[1].decode()
        if kind == b"ssubscribe":
            shard.unconfirmed.discard(shard_channel)
        elif kind == b"sunsubscribe":
            raise Lost(f"slot of {shard_channel} moved")  # we never unsubscribe
        elif kind == b"smessage" and shard_channel == f"{prefix}live:{{{shard.tag}}}":
            follow(reply[2].decode("utf-8", "replace"))  # a namespace new to the partition
        elif kind == b"smessage":
            line, nl, message = reply[2].partition(b"\n")
            if not line.startswith(CHANNEL_HEADER) or not nl:
                print(f"not an envelope on {shard_channel}: no channel line", file=sys.stderr, flush=True)
                return
            channel = line[len(CHANNEL_HEADER):].decode("utf-8", "replace")
            if match(prefix + pattern, channel):
                emit(message, channel)

    def pump(timeout):
        """Handle what the shards' connections bring within timeout."""
        active = [shard for shard in shards if shard.channels]
        socks = {shard.conn._sock: shard for shard in active}
        ready, _, _ = select.select(list(socks), [], [], timeout)
        for shard in active if not ready else [socks[sock] for sock in ready]:
            try:
                if not ready:
                    shard.conn.send_command("PING")  # a connection gone without a word says so now
                while shard.conn.can_read(0):
                    handle(shard, shard.conn.read_response())
            except (Lost, redis.ConnectionError, redis.ResponseError, OSError) as err:
                resubscribe(shard, err)

    def resubscribe(shard, err):
        """Connect shard again, to the master of its slot as the cluster now says."""
        print(f"redis: partition {{{shard.tag}}}: {str(err).rstrip('.')}; subscribing again (what went by meanwhile is in the stream)",
              file=sys.stderr, flush=True)
        while True:
            shard.close()
            try:
                client.nodes_manager.initialize()
                shard.connect()
                return
            except (redis.RedisError, OSError) as again:
                print(f"redis: partition {{{shard.tag}}}: {str(again).rstrip('.')}; trying again", file=sys.stderr, flush=True)
                time.sleep(1)

    def confirmed():
        while any(shard.unconfirmed for shard in shards):
            pump(1)

    try:
        if "*" not in pattern:
            # One channel: the shard channel of its partition, the CRC-32
            # of the channel modulo the partitions.
            shard = shards[zlib.crc32(pattern.encode()) % len(shards)]
            shard.add(live(shard, ns_prefix))
        elif not wild:
            for shard in shards:
                shard.add(live(shard, ns_prefix))
        else:
            # Every namespace the pattern can reach, in every partition:
            # those known now, and those each partition announces (the name
            # of one new to it), listened to first so that none appears
            # unseen in between. The first events of a namespace come with
            # its announcement and go by: the stream has them.
            for shard in shards:
                shard.add(f"{prefix}live:{{{shard.tag}}}")
            confirmed()
            for shard in shards:
                for ns in client.smembers(f"{prefix}namespaces:{{{shard.tag}}}"):
                    follow(ns.decode())
        confirmed()
        print(f"subscribed {prefix}{pattern}", file=sys.stderr, flush=True)
        while True:
            pump(30)
    finally:
        for shard in shards:
            shard.close()


def read_stream(client, keys, group, consumer, remove_group=False):
    """Print every event recorded in the streams keys from now on, at least once.

    As the consumer of group, acknowledging each once printed; what it was
    given before and did not acknowledge (a crash) comes first. With
    remove_group, the groups this call created are destroyed when it stops.
    """
    created = []
    for key in keys:
        try:
            client.xgroup_create(key, group, id="$", mkstream=True)
            created.append(key)
        except redis.ResponseError as err:
            if not str(err).startswith("BUSYGROUP"):
                raise
    print(f"reading {', '.join(keys)} as {group}/{consumer}", file=sys.stderr, flush=True)
    try:
        consume_group(client, keys, group, consumer)
    except Stop:
        for key in keys if remove_group else []:
            if key in created:
                # What the group had not acknowledged goes with it.
                client.xgroup_destroy(key, group)
                print(f"removed group {group} of {key}", file=sys.stderr, flush=True)
            else:
                print(f"group {group} of {key} existed before: left in place", file=sys.stderr, flush=True)
        raise


def consume_group(client, keys, group, consumer):
    """Read and acknowledge the entries of group as consumer until stopped.

    Each stream is on a slot of its own on a cluster, read in turn, each
    blocking a moment when it has nothing: one stream blocks as long as
    it likes.
    """
    start = {key: "0" for key in keys}  # this consumer's pending entries, then > for new ones
    block = 5000 if len(keys) == 1 else 50
    while True:
        for key in keys:
            reply = client.xreadgroup(group, consumer, {key: start[key]}, count=100, block=block)
            entries = reply[0][1] if reply else []
            if start[key] != ">":
                start[key] = entries[-1][0] if entries else ">"
            for entry_id, fields in entries:
                if fields and b"p" in fields:
                    channel = fields.get(b"c", key.encode()).decode("utf-8", "replace")
                    emit(fields[b"p"], channel, entry_id.decode())
                # else trimmed away while pending: nothing left to print
                client.xack(key, group, entry_id)


def connect(url):
    """Return a client of the Redis at url and whether it is a cluster's.

    One server for redis:// (rediss://), a cluster for
    redis+cluster://host:port,host:port (rediss+cluster://), with
    user:password@ before the first node if need be.
    """
    scheme, _, rest = url.partition("://")
    if scheme not in ("redis+cluster", "rediss+cluster"):
        # Bytes, not strings (decode_responses stays off): the messages are binary.
        return redis.Redis.from_url(url), False
    userinfo, _, hosts = rest.split("?")[0].rstrip("/").rpartition("@")
    user, _, password = userinfo.partition(":")
    nodes = [ClusterNode(host, int(port)) for host, _, port in (a.rpartition(":") for a in hosts.split(","))]
    return RedisCluster(startup_nodes=nodes, username=unquote(user) or None, password=unquote(password) or None,
                        ssl=scheme == "rediss+cluster"), True


class Stop(Exception):
    """SIGTERM or SIGINT arrived."""


def stop(signum, frame):
    raise Stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pattern", nargs="?", default="*", help="channel pattern to subscribe to (default *)")
    parser.add_argument("--stream", metavar="NAMESPACE", help="read the record of this namespace instead, durably")
    parser.add_argument("--group", default="example", help="consumer group (with --stream; default example)")
    parser.add_argument("--consumer", default=socket.gethostname(), help="this consumer's name in the group (default the host name)")
    parser.add_argument("--remove-group", action="store_true",
                        help="with --stream: destroy the groups this run created on SIGINT or SIGTERM")
    args = parser.parse_args()
    url = os.environ.get("REDIS_URL") or "redis://localhost:6379"
    base = (os.environ.get("REDIS_PREFIX") or "").removesuffix(":")
    prefix = base + ":" if base else ""

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    client, cluster = connect(url)
    # The services' BUS_PARTITIONS: each namespace's streams, 1 on one
    # server, 8 on a cluster by default.
    partitions = int(os.environ.get("BUS_PARTITIONS") or (8 if cluster else 1))
    tags = balanced_tags(partitions)
    try:
        if args.stream is None and cluster:
            subscribe_sharded(client, prefix, args.pattern, tags)
        elif args.stream is None:
            subscribe(client, prefix + args.pattern)
        elif cluster or partitions > 1:
            keys = [f"{prefix}stream:{{{tag}}}:{args.stream}" for tag in tags]
            read_stream(client, keys, args.group, args.consumer, args.remove_group)
        else:
            read_stream(client, [f"{prefix}stream:{{{args.stream}}}"], args.group, args.consumer, args.remove_group)
    except Stop:
        pass
    finally:
        client.close()


if __name__ == "__main__":
    try:
        main()
    except redis.RedisError as err:
        print(f"consumer: {err}", file=sys.stderr)
        sys.exit(1)
