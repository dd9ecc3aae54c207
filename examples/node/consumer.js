#!/usr/bin/env node
// A consumer of the eventbus that reads Redis directly, as any service that
// is not written in Go can: it subscribes to a pattern, takes the position
// header off each message, decodes the eventbus.v1.Envelope with the code
// protobuf-es generated from proto/ (gen/), unpacks its data and prints one
// JSON line per event on stdout. See docs/consumers.md.
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

import { hostname } from "node:os";
import { parseArgs } from "node:util";

import { createRegistry, fromBinary, toJson } from "@bufbuild/protobuf";
import { anyUnpack, StructSchema, TimestampSchema } from "@bufbuild/protobuf/wkt";
import { createClient, RESP_TYPES } from "redis";

import { EnvelopeSchema } from "./gen/eventbus/v1/envelope_pb.js";
import { file_eventbus_v1_events } from "./gen/eventbus/v1/events_pb.js";

// The messages data can hold: ours (OrderPlaced, …) for the types the bus
// knows, a Struct for any other.
const registry = createRegistry(file_eventbus_v1_events, StructSchema);

// A live message starts with "\x00eb1 <epoch> <offset>\n" when the bus
// records history; no envelope starts with a NUL byte.
const header = Buffer.from("\x00eb1 ");

/**
 * Splits a message into its position (undefined without a header) and the
 * envelope bytes.
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
  const { position, body } = splitPosition(message);
  const env = fromBinary(EnvelopeSchema, body);
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

// Replies with Buffers, not strings: p is binary.
const binary = { typeMapping: { [RESP_TYPES.BLOB_STRING]: Buffer } };

/**
 * Prints every event recorded in the stream key from now on, at least
 * once, as the consumer of group, acknowledging each once printed; what
 * it was given before and did not acknowledge (a crash) comes first.
 * Returns when stopping() holds.
 */
async function readStream(client, key, group, consumer, stopping) {
  try {
    await client.sendCommand(["XGROUP", "CREATE", key, group, "$", "MKSTREAM"]);
  } catch (err) {
    if (!err.message.startsWith("BUSYGROUP")) {
      throw err;
    }
  }
  console.error(`reading ${key} as ${group}/${consumer}`);
  let from = "0"; // this consumer's pending entries, then > for new ones
  while (!stopping()) {
    let reply;
    try {
      reply = await client.sendCommand(
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
        await client.sendCommand(["XACK", key, group, id]);
      } catch (err) {
        if (stopping()) {
          return; // stopped mid-acknowledgement: the entry comes again at the next start
        }
        throw err;
      }
    }
  }
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

  const client = createClient({ url });
  // Without a listener an error (Redis gone) would end the process; the
  // client reconnects, and subscribes again, by itself.
  client.on("error", (err) => console.error(`redis: ${err.message}`));
  await client.connect();
  let stopped = false;
  const stop = () => {
    stopped = true;
    client.destroy();
  };
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);

  if (values.stream === undefined) {
    await subscribe(client, prefix + (positionals[0] || "*"));
  } else {
    await readStream(client, `${prefix}stream:{${values.stream}}`, values.group, values.consumer, () => stopped);
  }
}

main().catch((err) => {
  console.error(`consumer: ${err.message}`);
  process.exit(1);
});
