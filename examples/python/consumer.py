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
reported on stderr and skipped. Needs redis-py and protobuf (Debian:
python3-redis and python3-protobuf).
"""

import json
import os
import signal
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


class Stop(Exception):
    """SIGTERM or SIGINT arrived."""


def stop(signum, frame):
    raise Stop()


def main():
    url = os.environ.get("REDIS_URL") or "redis://localhost:6379"
    base = (os.environ.get("REDIS_PREFIX") or "").removesuffix(":")
    prefix = base + ":" if base else ""
    pattern = prefix + (sys.argv[1] if len(sys.argv) > 1 else "*")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # Bytes, not strings (decode_responses stays off): the messages are binary.
    client = redis.Redis.from_url(url)
    pubsub = client.pubsub()
    try:
        pubsub.psubscribe(pattern)
        for msg in pubsub.listen():
            if msg["type"] == "psubscribe":
                print(f"subscribed {msg['channel'].decode()}", file=sys.stderr, flush=True)
                continue
            if msg["type"] != "pmessage":
                continue
            channel = msg["channel"].decode("utf-8", "replace")
            try:
                event = decode(msg["data"])
            except NotAnEnvelope as err:
                print(f"not an envelope on {channel}: {err}", file=sys.stderr, flush=True)
                continue
            print(json.dumps(event, ensure_ascii=False, separators=(",", ":")), flush=True)
    except Stop:
        pass
    finally:
        pubsub.close()
        client.close()


if __name__ == "__main__":
    try:
        main()
    except redis.RedisError as err:
        print(f"consumer: {err}", file=sys.stderr)
        sys.exit(1)
