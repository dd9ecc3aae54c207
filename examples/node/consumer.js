#!/usr/bin/env node
// A consumer of the eventbus that reads Redis directly, as any service that
// is not written in Go can: it subscribes to a pattern, decodes each
// message, an eventbus.v1.Envelope carrying its position (offset, epoch),
// with the code protobuf-es generated from proto/ (gen/), unpacks its data
// and prints one JSON line per event on stdout. See docs/consumers.md.
//
//   REDIS_URL=redis://localhost:6379 REDIS_PREFIX=dev node consumer.js 'order:*'
//
// The pattern defaults to *. REDIS_PREFIX is the services' own ("dev" or
// "dev:" alike). Once Redis has confirmed the subscription it prints
// "subscribed <prefix><pattern>" on stderr; a message that is no envelope
// is reported on stderr and skipped.
//
//   node consumer.js --stream order [--group example] [--consumer NAME]
//
// reads the record of a namespace instead, durably: every event published
// from the group's creation on, at least once, as one consumer (the host
// name by default) of a consumer group, each acknowledged once printed;
// what it had not acknowledged when it stopped comes first. It prints
// "reading <prefix>stream:{order} as <group>/<consumer>" once the group
// exists.
//
// On a Redis Cluster (REDIS_URL=redis+cluster://host:port,host:port, or
// rediss+cluster:// for TLS, with user:password@ before the first node if
// need be) the bus spreads each namespace over BUS_PARTITIONS partitions (8
// by default there; give the services' own), each with a hash tag of its
// own. Subscribed, the consumer SSUBSCRIBEs the partitions' shard channels
// its pattern can reach, follows namespaces announced new, and matches each
// message's channel itself; with --stream it reads the namespace's stream
// in every partition, <prefix>stream:{<tag>}:order, with one group on each,
// and says "reading <key>, <key>, … as <group>/<consumer>" once all exist.
// node-redis subscribes again after a lost connection or a moved slot;
// what went by meanwhile is in the stream.

import { hostname } from "node:os";
import { parseArgs } from "node:util";
import { crc32 } from "node:zlib";

import { createRegistry, fromBinary, toJson } from "@bufbuild/protobuf";
import { anyUnpack, StructSchema, TimestampSchema } from "@bufbuild/protobuf/wkt";
import calculateSlot from "cluster-key-slot";
import { createClient, createCluster, RESP_TYPES } from "redis";

import { EnvelopeSchema } from "./gen/eventbus/v1/envelope_pb.js";
import { file_eventbus_v1_events } from "./gen/eventbus/v1/events_pb.js";

// The messages data can hold: ours (OrderPlaced, …) for the types the bus
// knows, a Struct for any other.
const registry = createRegistry(file_eventbus_v1_events, StructSchema);

// A live message is an envelope whose offset and epoch say where it stands
// in its stream. Until the release after this one, a bus of the release
// before may still send its position in a header instead:
// "\x00eb1 <epoch> <offset>\n"; no envelope starts with a NUL byte.
const header = Buffer.from("\x00eb1 ");

/**
 * Splits a message into the position of its header, if it has one (the
 * release before), and the envelope bytes.
 * @param {Buffer} message
 */
function splitPosition(message) {
  if (!message.subarray(0, header.length).equals(header)) {
    return { body: message };
  }
  const nl = message.indexOf(0x0a, header.length);
  if (nl < 0) {
    return { body: message };
  }
  const [epoch, offset, ...rest] = message.subarray(header.length, nl).toString("latin1").split(" ");
  if (offset === undefined || rest.length > 0) {
    return { body: message };
  }
  return { position: { epoch, offset }, body: message.subarray(nl + 1) };
}

/**
 * Decodes a message into the object printed for it, or throws when it is
 * no envelope.
 * @param {Buffer} message
 */
function decode(message) {
  let { position, body } = splitPosition(message);
  const env = fromBinary(EnvelopeSchema, body);
  if (env.offset !== "") {
    position = { epoch: env.epoch, offset: env.offset };
  }
  if (env.type === "") {
    throw new Error("no type");
  }
  const event = { id: env.id, type: env.type, channel: env.channel };
  if (env.subject !== "") {
    event.subject = env.subject;
  }
  if (env.time) {
    event.time = toJson(TimestampSchema, env.time);
  }
  if (position) {
    event.epoch = position.epoch;
    event.offset = position.offset;
  }
  if (env.data) {
    // A Struct renders as the plain JSON object the event was published
    // with; int64 fields as strings, protobuf's JSON rule.
    const data = anyUnpack(env.data, registry);
    if (data === undefined) {
      event.data_type_url = env.data.typeUrl; // a type newer than gen/
    } else {
      event.data = toJson(registry.getMessage(data.$typeName), data, { useProtoFieldName: true });
    }
  }
  return event;
}

/**
 * Prints the event a message holds, or says on stderr that it is none.
 * @param {Buffer} message
 * @param {Buffer|string} channel
 * @param {string} [offset] its stream entry id, read from a stream
 */
function print(message, channel, offset) {
  let event;
  try {
    event = decode(message);
  } catch (err) {
    console.error(`not an envelope on ${channel}: ${err.message}`);
    return;
  }
  if (offset !== undefined) {
    event.offset = offset;
  }
  process.stdout.write(JSON.stringify(event) + "\n");
}

/** Prints what is published on channels matching pattern, from now on. */
async function subscribe(client, pattern) {
  await client.pSubscribe(
    pattern,
    (message, channel) => print(message, channel),
    true, // Buffers, not strings: the messages are binary
  );
  console.error(`subscribed ${pattern}`);
}

// On a cluster each message of a shard channel starts with a line naming
// its channel, with the prefix.
const channelHeader = Buffer.from("\x00ebc ");

/**
 * Reports whether channel ch matches pattern p as PSUBSCRIBE would: in the
 * bus's grammar, * matches any run of characters, : included, and nothing
 * else is special.
 */
function match(p, ch) {
  const parts = p.split("*").map((part) => part.replace(/[\\^$.|?+()[\]{}]/g, "\\$&"));
  return new RegExp(`^${parts.join(".*")}$`, "s").test(ch);
}

/**
 * Returns the hash tag of each of n partitions, as the bus chooses them
 * (pkg/bus/redisbus/partition.go): for partition i, the first base-36
 * number whose cluster slot lies within max(16384/(8n), 1) of the middle
 * of the i-th n-th of the 16,384 slots.
 */
function balancedTags(n) {
  const slots = 16384;
  const tags = [];
  for (let i = 0; i < n; i++) {
    const mid = Math.floor(((2 * i + 1) * slots) / (2 * n));
    const within = Math.max(Math.floor(slots / (8 * n)), 1);
    const near = (slot) => slot >= mid - within && slot < mid + within;
    let c = 0;
    while (!near(calculateSlot(c.toString(36)))) {
      c++;
    }
    tags.push(c.toString(36));
  }
  return tags;
}

/**
 * Reports which namespaces the channels pattern p matches can be in: the
 * one its first token names (wild false), or, when that token has a
 * wildcard, every namespace that starts with prefix, the text before it.
 */
function reach(p) {
  const star = p.indexOf("*");
  const literal = star < 0 ? p : p.slice(0, star);
  const colon = literal.indexOf(":");
  if (colon >= 0 || star < 0) {
    return { prefix: colon >= 0 ? literal.slice(0, colon) : literal, wild: false };
  }
  return { prefix: literal, wild: true };
}

/**
 * Prints what is published on channels matching pattern (without the
 * prefix), from now on, on a cluster of tags.length partitions: it
 * SSUBSCRIBEs the shard channels the pattern can reach, each partition's
 * in a call of its own (SSUBSCRIBE takes the channels of one slot), and
 * matches each message's channel itself.
 */
async function subscribeSharded(cluster, prefix, pattern, tags) {
  const live = (tag, ns) => `${prefix}live:{${tag}}:${ns}`;
  const onMessage = (message, shardChannel) => {
    const nl = message.indexOf(0x0a);
    if (!message.subarray(0, channelHeader.length).equals(channelHeader) || nl < 0) {
      console.error(`not an envelope on ${shardChannel}: no channel line`);
      return;
    }
    const channel = message.subarray(channelHeader.length, nl).toString();
    if (match(prefix + pattern, channel)) {
      print(message.subarray(nl + 1), channel);
    }
  };
  const sub = (channels) => cluster.sSubscribe(channels, onMessage, true);
  const { prefix: nsPrefix, wild } = reach(pattern);
  if (!pattern.includes("*")) {
    // One channel: the shard channel of its partition, the CRC-32 of the
    // channel modulo the partitions.
    await sub(live(tags[crc32(pattern) % tags.length], nsPrefix));
  } else if (!wild) {
    await Promise.all(tags.map((tag) => sub(live(tag, nsPrefix))));
  } else {
    // Every namespace the pattern can reach, in every partition: those
    // known now, and those each partition announces (the name of one new
    // to it, on <prefix>live:{<tag>}), listened to first so that none
    // appears unseen in between. The first events of a namespace come
    // with its announcement and go by: the stream has them.
    const followed = new Set();
    const follow = async (ns) => {
      if (/^[a-z0-9_~-]+$/.test(ns) && ns.startsWith(nsPrefix) && !followed.has(ns)) {
        followed.add(ns);
        await Promise.all(tags.map((tag) => sub(live(tag, ns))));
      }
    };
    await Promise.all(
      tags.map((tag) =>
        cluster.sSubscribe(`${prefix}live:{${tag}}`, (ns) =>
          follow(ns).catch((err) => console.error(`subscribe namespace ${ns}: ${err.message}`)),
        ),
      ),
    );
    for (const tag of tags) {
      for (const ns of await cluster.sMembers(`${prefix}namespaces:{${tag}}`)) {
        await follow(ns);
      }
    }
  }
  console.error(`subscribed ${prefix}${pattern}`);
}

// Replies with Buffers, not strings: p is binary.
const binary = { typeMapping: { [RESP_TYPES.BLOB_STRING]: Buffer } };

/** Creates group on the stream key, and the stream if need be. */
async function createGroup(send, key, group) {
  try {
    await send(["XGROUP", "CREATE", key, group, "$", "MKSTREAM"]);
  } catch (err) {
    if (!err.message.startsWith("BUSYGROUP")) {
      throw err;
    }
  }
}

/**
 * Prints every event recorded in the stream key from now on, at least
 * once, as the consumer of group, acknowledging each once printed; what
 * it was given before and did not acknowledge (a crash) comes first.
 * send sends a command; returns when stopping() holds.
 */
async function readStream(send, key, group, consumer, stopping) {
  let from = "0"; // this consumer's pending entries, then > for new ones
  while (!stopping()) {
    let reply;
    try {
      reply = await send(
        ["XREADGROUP", "GROUP", group, consumer, "COUNT", "100", "BLOCK", "5000", "STREAMS", key, from],
        binary,
      );
    } catch (err) {
      if (stopping()) {
        return;
      }
      throw err;
    }
    const entries = reply?.[0]?.[1] ?? [];
    if (from !== ">") {
      from = entries.length === 0 ? ">" : entries[entries.length - 1][0].toString();
    }
    for (const [rawID, fields] of entries) {
      const id = rawID.toString();
      const entry = new Map();
      for (let i = 0; fields && i + 1 < fields.length; i += 2) {
        entry.set(fields[i].toString(), fields[i + 1]);
      }
      if (entry.has("p")) {
        print(entry.get("p"), entry.get("c")?.toString() ?? key, id);
      } // else trimmed away while pending: nothing left to print
      try {
        await send(["XACK", key, group, id]);
      } catch (err) {
        if (stopping()) {
          return; // stopped mid-acknowledgement: the entry comes again at the next start
        }
        throw err;
      }
    }
  }
}

/**
 * Returns a client of the Redis at url, not yet connected, and whether it
 * is a cluster's: one server for redis:// (rediss://), a cluster for
 * redis+cluster://host:port,host:port (rediss+cluster://), with
 * user:password@ before the first node if need be.
 */
function newClient(url) {
  const m = /^(rediss?)\+cluster:\/\/(?:(.*)@)?([^/?@]+)/.exec(url);
  if (!m) {
    return { client: createClient({ url }), cluster: false };
  }
  const [, scheme, userinfo = "", hosts] = m;
  const colon = userinfo.indexOf(":");
  const defaults = {
    username: decodeURIComponent(colon < 0 ? userinfo : userinfo.slice(0, colon)) || undefined,
    password: colon < 0 ? undefined : decodeURIComponent(userinfo.slice(colon + 1)),
    socket: { tls: scheme === "rediss" },
  };
  const rootNodes = hosts.split(",").map((h) => ({ url: `${scheme}://${h}` }));
  // Connections to the nodes a command needs, not to every one.
  return { client: createCluster({ rootNodes, defaults, minimizeConnections: true }), cluster: true };
}

async function main() {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      stream: { type: "string" },
      group: { type: "string", default: "example" },
      consumer: { type: "string", default: hostname() },
    },
  });
  const url = process.env.REDIS_URL || "redis://localhost:6379";
  const base = (process.env.REDIS_PREFIX || "").replace(/:$/, "");
  const prefix = base === "" ? "" : base + ":";
  const { client, cluster } = newClient(url);
  // The services' BUS_PARTITIONS: each namespace's streams, 1 on one
  // server, 8 on a cluster by default.
  const partitions = Number(process.env.BUS_PARTITIONS || (cluster ? 8 : 1));
  if (!Number.isInteger(partitions) || partitions < 1) {
    throw new Error(`BUS_PARTITIONS ${process.env.BUS_PARTITIONS}: want a number from 1`);
  }
  const tags = balancedTags(partitions);

  // Without a listener an error (Redis gone) would end the process; the
  // client reconnects, and subscribes again, by itself.
  client.on("error", (err) => console.error(`redis: ${err.message}`));
  client.on("node-error", (err, node) => console.error(`redis ${node.host}:${node.port}: ${err.message}`));
  await client.connect();
  const clients = [client];
  let stopped = false;
  const stop = () => {
    stopped = true;
    clients.forEach((c) => c.destroy());
  };
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);

  if (values.stream === undefined) {
    const pattern = positionals[0] || "*";
    await (cluster ? subscribeSharded(client, prefix, pattern, tags) : subscribe(client, prefix + pattern));
    return;
  }
  // One stream per partition when partitioned (always on a cluster), each
  // read on a connection of its own: a blocked XREADGROUP holds up its
  // connection, and each stream is on a slot of its own.
  const ns = values.stream;
  const keys =
    cluster || partitions > 1 ? tags.map((tag) => `${prefix}stream:{${tag}}:${ns}`) : [`${prefix}stream:{${ns}}`];
  for (let i = 1; i < keys.length; i++) {
    const c = client.duplicate();
    c.on("error", (err) => console.error(`redis: ${err.message}`));
    clients.push(c);
    await c.connect();
  }
  const senders = keys.map((key, i) =>
    cluster
      ? (args, options) => clients[i].sendCommand(key, false, args, options)
      : (args, options) => clients[i].sendCommand(args, options),
  );
  for (const [i, key] of keys.entries()) {
    await createGroup(senders[i], key, values.group);
  }
  console.error(`reading ${keys.join(", ")} as ${values.group}/${values.consumer}`);
  await Promise.all(keys.map((key, i) => readStream(senders[i], key, values.group, values.consumer, () => stopped)));
}

main().catch((err) => {
  console.error(`consumer: ${err.message}`);
  process.exit(1);
});
