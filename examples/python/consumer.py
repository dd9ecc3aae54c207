#!/usr/bin/env python3
"""A consumer of the eventbus that reads Redis directly.

As any service not written in Go can, it subscribes to a pattern, takes the
position header off each message, decodes the eventbus.v1.Envelope with the
code protoc generated from proto/ (gen/), unpacks its data and prints one
JSON line per event on stdout. See docs/consumers.md.

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

Needs redis-py and protobuf (Debian: python3-redis and python3-protobuf).
"""

import argparse
import json
import os
import signal
import socket
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "gen"))

import redis  # noqa: E402
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

# A live message starts with "\x00eb1 <epoch> <offset>\n" when the bus
# records history; no envelope starts with a NUL byte.
HEADER = b"\x00eb1 "


class NotAnEnvelope(Exception):
    """A message on a bus channel that is no envelope."""


def split_position(message):
    """Return the position (None without a header) and the envelope bytes."""
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


def read_stream(client, key, group, consumer, remove_group=False):
    """Print every event recorded in the stream key from now on, at least once.

    As the consumer of group, acknowledging each once printed; what it was
    given before and did not acknowledge (a crash) comes first. With
    remove_group, a group this call created is destroyed when it stops.
    """
    created = True
    try:
        client.xgroup_create(key, group, id="$", mkstream=True)
    except redis.ResponseError as err:
        if not str(err).startswith("BUSYGROUP"):
            raise
        created = False
    print(f"reading {key} as {group}/{consumer}", file=sys.stderr, flush=True)
    try:
        consume_group(client, key, group, consumer)
    except Stop:
        if remove_group and created:
            # What the group had not acknowledged goes with it.
            client.xgroup_destroy(key, group)
            print(f"removed group {group} of {key}", file=sys.stderr, flush=True)
        elif remove_group:
            print(f"group {group} of {key} existed before: left in place", file=sys.stderr, flush=True)
        raise


def consume_group(client, key, group, consumer):
    """Read and acknowledge the entries of group as consumer until stopped."""
    start = "0"  # this consumer's pending entries, then > for new ones
    while True:
        reply = client.xreadgroup(group, consumer, {key: start}, count=100, block=5000)
        entries = reply[0][1] if reply else []
        if start != ">":
            start = entries[-1][0] if entries else ">"
        for entry_id, fields in entries:
            if fields and b"p" in fields:
                channel = fields.get(b"c", key.encode()).decode("utf-8", "replace")
                emit(fields[b"p"], channel, entry_id.decode())
            # else trimmed away while pending: nothing left to print
            client.xack(key, group, entry_id)


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
                        help="with --stream: destroy the group on SIGINT or SIGTERM if this run created it")
    args = parser.parse_args()
    url = os.environ.get("REDIS_URL") or "redis://localhost:6379"
    base = (os.environ.get("REDIS_PREFIX") or "").removesuffix(":")
    prefix = base + ":" if base else ""

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # Bytes, not strings (decode_responses stays off): the messages are binary.
    client = redis.Redis.from_url(url)
    try:
        if args.stream is None:
            subscribe(client, prefix + args.pattern)
        else:
            read_stream(client, f"{prefix}stream:{{{args.stream}}}", args.group, args.consumer, args.remove_group)
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
