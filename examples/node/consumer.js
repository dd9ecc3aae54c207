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

import { createRegistry, fromBinary, toJson } from "@bufbuild/protobuf";
import { anyUnpack, StructSchema, TimestampSchema } from "@bufbuild/protobuf/wkt";
import { createClient } from "redis";

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

async function main() {
  const url = process.env.REDIS_URL || "redis://localhost:6379";
  const base = (process.env.REDIS_PREFIX || "").replace(/:$/, "");
  const prefix = base === "" ? "" : base + ":";
  const pattern = prefix + (process.argv[2] || "*");

  const client = createClient({ url });
  // Without a listener an error (Redis gone) would end the process; the
  // client reconnects and subscribes again by itself.
  client.on("error", (err) => console.error(`redis: ${err.message}`));
  await client.connect();

  await client.pSubscribe(
    pattern,
    (message, channel) => {
      let event;
      try {
        event = decode(message);
      } catch (err) {
        console.error(`not an envelope on ${channel}: ${err.message}`);
        return;
      }
      process.stdout.write(JSON.stringify(event) + "\n");
    },
    true, // Buffers, not strings: the messages are binary
  );
  console.error(`subscribed ${pattern}`);

  const stop = () => {
    client.destroy();
  };
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);
}

main().catch((err) => {
  console.error(`consumer: ${err.message}`);
  process.exit(1);
});
