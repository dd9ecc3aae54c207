// Drives the client against a running edge for services/edge's
// TestJSClientFromNode. Environment: EDGE (http://host:port), TOKEN,
// PATTERN, TRANSPORT (websocket or sse). It prints one JSON line per
// happening ({"event":subject,"offset"}, {"subscribed":reply},
// {"status":…}) and takes commands on stdin: "offline" cuts the
// connection and keeps it cut, "online" lets it reconnect, "quit" ends.
import { createInterface } from "node:readline";
import { EventBus } from "../dist/eventbus.js";

const out = (v) => process.stdout.write(JSON.stringify(v) + "\n");
let offline = false;
let socket = null;
let stream = null;

class CuttableWebSocket extends WebSocket {
  constructor(url) {
    // Offline, the handshake fails before it opens, as through a cut
    // network: the edge answers 404 to a path it does not serve.
    super(offline ? url.replace("/ws", "/offline") : url);
    socket = this;
  }
}

const cuttableFetch = (url, init) => {
  if (offline) return Promise.reject(new Error("offline"));
  stream = new AbortController();
  init.signal.addEventListener("abort", () => stream.abort());
  return fetch(url, { ...init, signal: stream.signal });
};

const bus = new EventBus(process.env.EDGE, {
  token: process.env.TOKEN,
  transport: process.env.TRANSPORT,
  WebSocket: CuttableWebSocket,
  fetch: cuttableFetch,
  storage: null,
  minBackoff: 20,
  maxBackoff: 100,
  onStatus: (status, detail, transport) => out({ status, transport }),
});
bus.subscribe(process.env.PATTERN, (event, frame) => out({ event: event.subject, offset: frame.offset }), {
  onSubscribed: (reply) => out({ subscribed: reply }),
});
bus.connect();

for await (const line of createInterface({ input: process.stdin })) {
  if (line === "offline") {
    offline = true;
    socket?.close(4000, "offline");
    stream?.abort();
  } else if (line === "online") {
    offline = false;
  } else if (line === "quit") {
    bus.close();
    process.exit(0);
  }
}
