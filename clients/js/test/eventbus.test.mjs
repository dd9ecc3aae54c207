// Unit tests of the client against fakes of WebSocket, fetch and storage:
// node --experimental-websocket --test test/ (after npm run build).
import { test } from "node:test";
import assert from "node:assert/strict";
import { EventBus, splitFrames, compareOffsets, advance, encodeCursor } from "../dist/eventbus.js";

// FakeWebSocket records what the client sends; the test plays the edge.
class FakeWebSocket {
  static OPEN = 1;
  static all = [];
  constructor(url) {
    this.url = url;
    this.sent = [];
    this.readyState = 0;
    FakeWebSocket.all.push(this);
  }
  send(data) {
    if (this.readyState === 0) throw new Error("InvalidStateError: still in CONNECTING state"); // as browsers do
    this.sent.push(JSON.parse(data));
  }
  close(code = 1000, reason = "") { this.readyState = 3; this.onclose?.({ code, reason }); }
  // edge side
  open() { this.readyState = 1; this.onopen?.(); }
  message(...frames) { this.onmessage?.({ data: frames.map((f) => JSON.stringify(f)).join("\n") }); }
  drop(code = 1006) { this.readyState = 3; this.onclose?.({ code, reason: "" }); }
  fail() { this.onerror?.({}); } // an error with no close after it, as Node 20's WebSocket may do
  last() { return this.sent[this.sent.length - 1]; }
}

class MemoryStorage {
  constructor() { this.m = new Map(); }
  getItem(k) { return this.m.has(k) ? this.m.get(k) : null; }
  setItem(k, v) { this.m.set(k, v); }
}

// until waits for cond, failing after 5 s; the client's timers are a
// millisecond long in these tests.
async function until(what, cond) {
  const deadline = Date.now() + 5000;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error("timed out waiting for " + what);
    await new Promise((r) => setTimeout(r, 1));
  }
}

function newBus(sockets, opts = {}) {
  sockets.length = 0;
  let tokens = 0;
  const bus = new EventBus("http://edge.test:8081", {
    WebSocket: class extends FakeWebSocket { constructor(u) { super(u); sockets.push(this); } },
    getToken: () => "t" + ++tokens,
    minBackoff: 1, maxBackoff: 2, storage: null, ...opts,
  });
  return { bus, tokens: () => tokens };
}

const ev = (subject, offset, subscriptions = ["order:*"], channel = "order:placed") =>
  ({ channel, subscriptions, offset, epoch: "e1", event: { subject } });

test("splitFrames splits what the edge packs into one message", () => {
  assert.deepEqual(splitFrames('{"a":1}\n{"b":2}\n\nnot json\n{"c":3}'), [{ a: 1 }, { b: 2 }, { c: 3 }]);
});

test("offsets compare as numbers, and positions only move forward within an epoch", () => {
  assert.equal(compareOffsets("9-0", "10-0"), -1);
  assert.equal(compareOffsets("10-2", "10-10"), -1);
  assert.equal(compareOffsets("10-10", "10-10"), 0);
  const ps = {};
  assert.equal(advance(ps, "order", { offset: "10-0", epoch: "e1" }), true);
  assert.equal(advance(ps, "order", { offset: "9-0", epoch: "e1" }), false);
  assert.equal(advance(ps, "order", { offset: "1-0", epoch: "e2" }), true); // a new epoch wins
  assert.deepEqual(ps.order, { offset: "1-0", epoch: "e2" });
});

test("encodeCursor writes what the edge reads back as Last-Event-ID", () => {
  const c = encodeCursor({ order: { offset: "1732290000000-1", epoch: "9f" } });
  assert.match(c, /^[A-Za-z0-9_-]+$/);
  const json = Buffer.from(c.replace(/-/g, "+").replace(/_/g, "/"), "base64").toString();
  assert.deepEqual(JSON.parse(json), { order: ["1732290000000-1", "9f"] });
});

test("it resumes every subscription from its positions after a reconnect, with a fresh token", async () => {
  const sockets = [];
  const { bus, tokens } = newBus(sockets);
  const got = [];
  const replies = [];
  bus.subscribe("order:*", (event) => got.push(event.subject), { onSubscribed: (r) => replies.push(r) });
  bus.connect();
  await until("a socket", () => sockets.length === 1);
  assert.equal(sockets[0].url, "ws://edge.test:8081/ws", "the token goes in a frame, not the URL");
  sockets[0].open();
  assert.deepEqual({ ...sockets[0].sent[0], id: undefined }, { action: "auth", token: "t1", id: undefined });
  const sub = sockets[0].last();
  assert.deepEqual({ ...sub, id: undefined }, { action: "subscribe", channel: "order:*", id: undefined });
  sockets[0].message({ id: sub.id, ok: true, positions: { order: { offset: "5-0", epoch: "e1" } } });
  sockets[0].message(ev("a", "6-0"), ev("b", "7-0"));
  sockets[0].message(ev("a again", "6-0")); // already had it: not delivered twice
  assert.deepEqual(got, ["a", "b"]);
  assert.deepEqual(bus.positions("order:*"), { order: { offset: "7-0", epoch: "e1" } });

  sockets[0].drop();
  await until("a new socket", () => sockets.length === 2);
  sockets[1].open();
  assert.equal(sockets[1].sent[0].token, "t2");
  assert.equal(tokens(), 2);
  const resume = sockets[1].last();
  assert.deepEqual(resume.since, { order: { offset: "7-0", epoch: "e1" } });
  const order = [];
  bus.subscribe("order:*", () => order.push("event"), { onSubscribed: () => order.push("reply") });
  sockets[1].message({ id: resume.id, ok: true, recovered: true, missed: 1 }, ev("c", "8-0"));
  assert.deepEqual(got, ["a", "b", "c"]);
  assert.deepEqual(order, ["reply", "event"], "the reply is reported before the events it precedes");
  assert.deepEqual(replies.map((r) => r.recovered), [undefined, true]);
  assert.equal(replies[1].missed, 1);
  bus.close();
});

test("a subscription that cannot recover starts over from the reply's positions", async () => {
  const sockets = [];
  const { bus } = newBus(sockets);
  const replies = [];
  bus.subscribe("order:*", () => {}, { onSubscribed: (r) => replies.push(r) });
  bus.connect();
  await until("a socket", () => sockets.length === 1);
  sockets[0].open();
  sockets[0].message({ id: sockets[0].last().id, ok: true }, ev("a", "6-0"));
  sockets[0].drop();
  await until("a new socket", () => sockets.length === 2);
  sockets[1].open();
  sockets[1].message({ id: sockets[1].last().id, ok: true, recovered: false, reason: "epoch_changed", positions: { order: { offset: "2-0", epoch: "e2" } } });
  assert.equal(replies[1].reason, "epoch_changed");
  assert.deepEqual(bus.positions("order:*"), { order: { offset: "2-0", epoch: "e2" } });
  bus.close();
});

test("positions survive a page reload in storage", async () => {
  const storage = new MemoryStorage();
  const sockets = [];
  const first = newBus(sockets, { storage }).bus;
  first.subscribe("order:*", () => {});
  first.connect();
  await until("a socket", () => sockets.length === 1);
  sockets[0].open();
  sockets[0].message({ id: sockets[0].last().id, ok: true }, ev("a", "6-0"));
  first.close(); // as pagehide would
  const second = newBus(sockets, { storage }).bus;
  second.subscribe("order:*", () => {});
  second.connect();
  await until("a socket", () => sockets.length === 1);
  sockets[0].open();
  assert.deepEqual(sockets[0].last().since, { order: { offset: "6-0", epoch: "e1" } });
  second.close();
});

test("the edge dropping a subscription is reported and forgotten", async () => {
  const sockets = [];
  const dropped = [];
  const { bus } = newBus(sockets, { onUnsubscribed: (p, reason) => dropped.push([p, reason]) });
  bus.subscribe("order:*", () => {});
  bus.connect();
  await until("a socket", () => sockets.length === 1);
  sockets[0].open();
  sockets[0].message({ unsubscribed: "order:*", reason: "forbidden" });
  assert.deepEqual(dropped, [["order:*", "forbidden"]]);
  assert.deepEqual(bus.positions("order:*"), {});
  bus.close();
});

test("when WebSockets cannot open it falls back to SSE, resuming from its positions", async () => {
  const sockets = [];
  const requests = [];
  let push;
  const fetch = async (url, init) => {
    requests.push({ url, headers: init.headers });
    const body = new ReadableStream({ start(c) { push = (s) => c.enqueue(new TextEncoder().encode(s)); } });
    return new Response(body, { status: 200, headers: { "Content-Type": "text/event-stream" } });
  };
  const storage = new MemoryStorage();
  storage.setItem("eventbus:positions:ws://edge.test:8081/ws", JSON.stringify({ "order:*": { order: { offset: "6-0", epoch: "e1" } } }));
  const statuses = [];
  const { bus } = newBus(sockets, { fetch, storage, onStatus: (s, _, transport) => statuses.push(s + "/" + transport) });
  const got = [];
  bus.subscribe("order:*", (event) => got.push(event.subject));
  bus.connect();
  await until("a first socket", () => sockets.length === 1);
  sockets[0].drop(); // refused before it opened
  await until("a second socket", () => sockets.length === 2);
  sockets[1].drop();
  await until("an SSE request", () => requests.length === 1);
  assert.equal(bus.currentTransport, "sse");
  assert.equal(requests[0].url, "http://edge.test:8081/sse?channel=order%3A*");
  assert.equal(requests[0].headers.Authorization, "Bearer t3");
  const id = requests[0].headers["Last-Event-ID"];
  assert.ok(id.startsWith("s1."), id);
  const sent = JSON.parse(Buffer.from(id.slice(3).replace(/-/g, "+").replace(/_/g, "/"), "base64").toString());
  assert.deepEqual(sent, { "order:*": { order: ["6-0", "e1"] } }, "each subscription its own positions");
  await until("the stream", () => push);
  push(': eventbus\n\nevent: subscribed\ndata: {"channel":"order:*","recovered":true,"missed":1}\n\n');
  push("id: x\ndata: " + JSON.stringify(ev("b", "7-0")) + "\r\n\r\n");
  push("data: " + JSON.stringify(ev("c", "8-0")).slice(0, 10));
  push(JSON.stringify(ev("c", "8-0")).slice(10) + "\n\n");
  await until("the events", () => got.length === 2);
  assert.deepEqual(got, ["b", "c"]);
  assert.ok(statuses.includes("open/sse"));
  bus.close();
});

test("on SSE it tries WebSocket again with backoff, and moves back once one opens, resuming from its positions", async () => {
  const sockets = [];
  const requests = [];
  let push;
  const fetch = async (url, init) => {
    requests.push({ url, headers: init.headers, signal: init.signal });
    const body = new ReadableStream({ start(c) { push = (s) => c.enqueue(new TextEncoder().encode(s)); } });
    return new Response(body, { status: 200, headers: { "Content-Type": "text/event-stream" } });
  };
  const statuses = [];
  const transports = [];
  const { bus } = newBus(sockets, {
    fetch, minWebSocketRetry: 1, maxWebSocketRetry: 2,
    onStatus: (s, _, transport) => statuses.push(s + "/" + transport),
    onTransport: (t) => transports.push(t),
  });
  const got = [];
  const replies = [];
  bus.subscribe("order:*", (event) => got.push(event.subject), { onSubscribed: (r) => replies.push(r) });
  bus.connect();
  await until("a first socket", () => sockets.length === 1);
  sockets[0].drop(); // the edge restarting: WebSockets refused
  await until("a second socket", () => sockets.length === 2);
  sockets[1].drop();
  await until("an SSE request", () => requests.length === 1 && push);
  push('event: subscribed\ndata: {"channel":"order:*","positions":{"order":{"offset":"6-0","epoch":"e1"}}}\n\n');
  push("data: " + JSON.stringify(ev("b", "7-0")) + "\n\n");
  push("data: " + JSON.stringify(ev("c", "8-0")) + "\n\n");
  await until("the events over SSE", () => got.length === 2);
  assert.equal(bus.transport, "sse");
  assert.deepEqual(transports, ["sse"]);

  await until("a WebSocket tried again", () => sockets.length === 3);
  sockets[2].drop(); // still refused: SSE goes on, and it tries again later
  assert.equal(bus.transport, "sse");
  assert.equal(requests[0].signal.aborted, false, "SSE is kept while WebSocket is tried");
  await until("a WebSocket tried once more", () => sockets.length === 4);
  sockets[3].open(); // accepted again
  assert.equal(bus.transport, "websocket");
  assert.deepEqual(transports, ["sse", "websocket"]);
  assert.equal(statuses.at(-1), "open/websocket");
  assert.equal(requests[0].signal.aborted, true, "SSE is closed once the WebSocket took over");
  assert.equal(sockets[3].sent[0].action, "auth");
  const resume = sockets[3].last();
  assert.equal(resume.action, "subscribe");
  assert.deepEqual(resume.since, { order: { offset: "8-0", epoch: "e1" } }, "it resumes from where SSE left it");
  // The edge replays from there; an event SSE delivered already is not delivered again.
  sockets[3].message({ id: resume.id, ok: true, recovered: true, missed: 1 }, ev("c", "8-0"), ev("d", "9-0"));
  sockets[3].message(ev("e", "10-0"));
  assert.deepEqual(got, ["b", "c", "d", "e"]);
  assert.equal(replies.at(-1).recovered, true);
  assert.equal(requests.length, 1, "no SSE stream opened again");
  assert.equal(sockets.length, 4);
  bus.close();
});

test("it moves back from an SSE stream that has sent nothing yet, and tries no WebSocket once closed", async () => {
  const sockets = [];
  let fetches = 0;
  const fetch = async () => {
    fetches++;
    const body = new ReadableStream({ start() {} });
    return new Response(body, { status: 200 });
  };
  const transports = [];
  const { bus } = newBus(sockets, { fetch, minWebSocketRetry: 1, maxWebSocketRetry: 2, onTransport: (t) => transports.push(t) });
  bus.subscribe("order:*", () => {});
  bus.connect();
  await until("a first socket", () => sockets.length === 1);
  sockets[0].drop();
  await until("a second socket", () => sockets.length === 2);
  sockets[1].drop();
  await until("SSE", () => transports.length === 1);
  await until("a WebSocket tried again", () => sockets.length === 3);
  sockets[2].open();
  assert.deepEqual(transports, ["sse", "websocket"]);
  assert.equal(fetches, 1);
  assert.equal(sockets[2].last().action, "subscribe");
  bus.close();
  assert.equal(sockets.length, 3, "no WebSocket tried after close");
});

test("a socket that fails with an error and no close is tried again", async () => {
  const sockets = [];
  const { bus } = newBus(sockets, { transport: "websocket" });
  bus.subscribe("order:*", () => {});
  bus.connect();
  await until("a socket", () => sockets.length === 1);
  sockets[0].fail();
  await until("another socket", () => sockets.length === 2);
  sockets[1].open();
  assert.equal(sockets[1].last().action, "subscribe");
  bus.close();
});

test("told its token expires, it sends a fresh one on the same connection", async () => {
  const sockets = [];
  const { bus, tokens } = newBus(sockets);
  bus.subscribe("order:*", () => {});
  bus.connect();
  await until("a socket", () => sockets.length === 1);
  sockets[0].open();
  const sent = sockets[0].sent.length;
  sockets[0].message({ expiring: { in_s: 30 } });
  await until("the refresh", () => sockets[0].sent.length === sent + 1);
  assert.deepEqual({ ...sockets[0].last(), id: undefined }, { action: "auth", token: "t2", id: undefined });
  assert.equal(tokens(), 2);
  assert.equal(sockets.length, 1, "no reconnect");
  bus.close();
});

test("tokenInQuery puts the token in the URL instead", async () => {
  const sockets = [];
  const { bus } = newBus(sockets, { tokenInQuery: true });
  bus.connect();
  await until("a socket", () => sockets.length === 1);
  assert.equal(sockets[0].url, "ws://edge.test:8081/ws?token=t1");
  sockets[0].open();
  assert.equal(sockets[0].sent.length, 0);
  bus.close();
});

test("an SSE stream refused for good rejects the subscriptions instead of retrying forever", async () => {
  const sockets = [];
  let calls = 0;
  const fetch = async () => {
    calls++;
    return new Response('{"error":{"code":"forbidden","message":"no"}}', { status: 403 });
  };
  const statuses = [];
  const { bus } = newBus(sockets, { transport: "sse", fetch, onStatus: (s, d) => statuses.push(s + " " + d) });
  const off = bus.subscribe("secret:*", () => {});
  bus.connect();
  await assert.rejects(off.ready, /403/);
  assert.equal(calls, 1);
  assert.ok(statuses.some((s) => s.startsWith("error GET /sse: 403")));
  bus.close();
});

test("a subscribe while the socket connects is sent once it opens", async () => {
  const sockets = [];
  const { bus } = newBus(sockets);
  bus.connect();
  await until("a socket", () => sockets.length === 1);
  const off = bus.subscribe("order:*", () => {}); // does not throw
  sockets[0].open();
  const sub = sockets[0].last();
  assert.equal(sub.action, "subscribe");
  assert.equal(sockets[0].sent.filter((f) => f.action === "subscribe").length, 1);
  sockets[0].message({ id: sub.id, ok: true });
  await off.ready;
  bus.close();
});

const presenceEvent = (type, client, channel = "room:1") => ({
  channel, subscriptions: [channel],
  event: { type, channel, data: { "@type": "type.googleapis.com/eventbus.v1.Presence", client_id: client, user_id: "u" + client, transport: "ws" } },
});

test("presence is asked on subscribe and on every resubscribe, and its events move no position", async () => {
  const sockets = [];
  const { bus } = newBus(sockets);
  const got = [];
  const plain = [];
  bus.subscribe("room:1", (event) => got.push(event.type + " " + (event.data?.client_id ?? event.subject)), { presence: true });
  bus.subscribe("room:1", (event) => plain.push(event.type)); // a handler that did not ask
  bus.connect();
  await until("a socket", () => sockets.length === 1);
  sockets[0].open();
  const sub = sockets[0].last();
  assert.deepEqual({ ...sub, id: undefined }, { action: "subscribe", channel: "room:1", presence: true, id: undefined });
  sockets[0].message(
    { id: sub.id, ok: true, positions: { room: { offset: "5-0", epoch: "e1" } } },
    presenceEvent("presence.join", "c1"),
    { channel: "room:1", subscriptions: ["room:1"], offset: "6-0", epoch: "e1", event: { type: "room.message", subject: "hi" } },
    presenceEvent("presence.leave", "c1"),
  );
  assert.deepEqual(got, ["presence.join c1", "room.message hi", "presence.leave c1"]);
  assert.deepEqual(plain, ["room.message"], "joins and leaves go only to the handlers that asked");
  assert.deepEqual(bus.positions("room:1"), { room: { offset: "6-0", epoch: "e1" } });

  sockets[0].drop();
  await until("a new socket", () => sockets.length === 2);
  sockets[1].open();
  const resume = sockets[1].last();
  assert.equal(resume.presence, true, "presence asked again after the reconnect");
  assert.deepEqual(resume.since, { room: { offset: "6-0", epoch: "e1" } });
  sockets[1].message({ id: resume.id, ok: true, recovered: true, missed: 0 }, presenceEvent("presence.join", "c2"));
  assert.deepEqual(got.at(-1), "presence.join c2");
  assert.deepEqual(bus.positions("room:1"), { room: { offset: "6-0", epoch: "e1" } });
  bus.close();
});

test("presence asked of a pattern subscribed already subscribes it again; a refusal rejects ready", async () => {
  const sockets = [];
  const { bus } = newBus(sockets);
  bus.subscribe("room:1", () => {});
  bus.connect();
  await until("a socket", () => sockets.length === 1);
  sockets[0].open();
  const first = sockets[0].last();
  assert.equal(first.presence, undefined);
  sockets[0].message({ id: first.id, ok: true });
  const off = bus.subscribe("room:1", () => {}, { presence: true });
  const again = sockets[0].last();
  assert.deepEqual({ ...again, id: undefined }, { action: "subscribe", channel: "room:1", presence: true, id: undefined });
  sockets[0].message({ id: again.id, ok: true, recovered: true });
  assert.equal((await off.ready).recovered, true);

  const wild = bus.subscribe("room:*", () => {}, { presence: true });
  const refused = sockets[0].last();
  assert.equal(refused.presence, true);
  sockets[0].message({ id: refused.id, error: { code: "presence_off", message: "room:* keeps no presence" } });
  await assert.rejects(wild.ready, (err) => err.code === "presence_off");
  bus.close();
});

// sseFetch answers every GET /sse as fn says, recording the requests.
function sseFetch(requests, answer = () => new Response(new ReadableStream({ start() {} }), { status: 200 })) {
  return async (url, init) => {
    requests.push({ url, headers: init.headers });
    return answer(url);
  };
}

test("over SSE, presence=true goes in the URL when any subscription asks", async () => {
  const sockets = [];
  const requests = [];
  const opens = [];
  const { bus } = newBus(sockets, { transport: "sse", fetch: sseFetch(requests), onStatus: (s) => s === "open" && opens.push(s) });
  bus.subscribe("order:*", () => {});
  bus.connect();
  await until("an SSE request", () => requests.length === 1 && opens.length === 1);
  assert.equal(new URL(requests[0].url).searchParams.get("presence"), null);
  bus.subscribe("room:1", () => {}, { presence: true });
  await until("the stream opened again", () => requests.length === 2);
  const u = new URL(requests[1].url);
  assert.deepEqual(u.searchParams.getAll("channel"), ["order:*", "room:1"]);
  assert.equal(u.searchParams.get("presence"), "true");
  bus.close();
});

test("over SSE, a stream refused with presence_off opens again without presence", async () => {
  const sockets = [];
  const requests = [];
  const answer = (url) => new URL(url).searchParams.has("presence")
    ? new Response('{"error":{"code":"presence_off","message":"order:* keeps no presence"}}', { status: 400 })
    : new Response(new ReadableStream({ start() {} }), { status: 200 });
  const statuses = [];
  const { bus } = newBus(sockets, { transport: "sse", fetch: sseFetch(requests, answer), onStatus: (s, d) => statuses.push(s + " " + d) });
  bus.subscribe("order:*", () => {});
  bus.subscribe("room:1", () => {}, { presence: true });
  bus.connect();
  await until("a stream without presence", () => requests.length === 2);
  assert.equal(new URL(requests[0].url).searchParams.get("presence"), "true");
  assert.equal(new URL(requests[1].url).searchParams.get("presence"), null);
  assert.deepEqual(new URL(requests[1].url).searchParams.getAll("channel"), ["order:*", "room:1"]);
  assert.ok(statuses.some((s) => s.startsWith("error GET /sse: 400") && s.includes("presence_off")), statuses.join("; "));
  await until("the stream open", () => statuses.at(-1) === "open ");
  bus.close();
});

test("ack sends the notification id and settles with the edge's reply", async () => {
  const sockets = [];
  const { bus } = newBus(sockets);
  bus.connect();
  await until("a socket", () => sockets.length === 1);
  sockets[0].open();
  const ok = bus.ack("n-1");
  assert.equal(bus.ack("n-1"), ok, "an ack in flight is not sent twice");
  assert.deepEqual(sockets[0].last(), { action: "ack", id: "n-1" });
  sockets[0].message({ id: "n-1", ok: true });
  await ok;

  const unknown = bus.ack("n-1");
  sockets[0].message({ id: "n-1", error: { code: "unknown_notification", message: "n-1: acknowledged already" } });
  await assert.rejects(unknown, (err) => err.code === "unknown_notification" && /acknowledged already/.test(err.message));

  const lost = bus.ack("n-2");
  sockets[0].drop();
  await assert.rejects(lost, /connection closed/);
  await assert.rejects(bus.ack("n-2"), /acks need a WebSocket connection \(not connected\)/);
  bus.close();
});

test("ack is refused on SSE", async () => {
  const sockets = [];
  const requests = [];
  const { bus } = newBus(sockets, { transport: "sse", fetch: sseFetch(requests) });
  bus.subscribe("notify:user:1", () => {});
  bus.connect();
  await until("an SSE request", () => requests.length === 1 && bus.transport === "sse");
  await assert.rejects(bus.ack("n-1"), (err) => /acks need a WebSocket connection \(on SSE/.test(err.message));
  bus.close();
});

test("autoAck acknowledges each notification once its handler has returned", async () => {
  const sockets = [];
  const statuses = [];
  const { bus } = newBus(sockets, { onStatus: (s, d) => statuses.push(s + " " + d) });
  const order = [];
  bus.subscribe("notify:user:1", (event) => order.push("handled " + event.id), { autoAck: true });
  bus.subscribe("notify:*", () => {}, { autoAck: true }); // a second match: still one ack
  bus.connect();
  await until("a socket", () => sockets.length === 1);
  sockets[0].open();
  const note = (id, offset, type = "notification.created") => ({
    channel: "notify:user:1", subscriptions: ["notify:user:1", "notify:*"], offset, epoch: "e1", event: { id, type },
  });
  const sent = sockets[0].sent.length;
  sockets[0].send = ((send) => (data) => { order.push("sent " + JSON.parse(data).action); send.call(sockets[0], data); })(sockets[0].send);
  sockets[0].message(note("n-1", "1-0"), note("x-1", "2-0", "notification.read"));
  assert.deepEqual(order, ["handled n-1", "sent ack", "handled x-1"]);
  assert.deepEqual(sockets[0].sent.slice(sent), [{ action: "ack", id: "n-1" }], "one ack, and none of other types");
  sockets[0].message({ id: "n-1", error: { code: "unavailable", message: "redis: down; acknowledge it again" } });
  await until("the failure reported", () => statuses.some((s) => s.startsWith("error ack n-1: unavailable")));
  bus.close();
});
