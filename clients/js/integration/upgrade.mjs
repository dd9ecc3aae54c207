// Drives the client against a running edge for services/edge's
// TestJSClientMovesBackToWebSocket. Environment: EDGE (http://host:port),
// TOKEN, PATTERN. WebSockets are refused (their handshake goes to a path
// the edge answers 404) until the command "accept" on stdin; SSE always
// gets through. Every happening is one JSON line under "seen":
// {"transport":…} when the client moves, {"subscribed":reply},
// {"event":subject,"offset","transport"}. "quit" ends.
import { createInterface } from "node:readline";
import { EventBus } from "../dist/eventbus.js";

const out = (v) => process.stdout.write(JSON.stringify({ seen: v }) + "\n");
let refused = true;

class RefusableWebSocket extends WebSocket {
  constructor(url) {
    super(refused ? url.replace("/ws", "/refused") : url);
  }
}

const bus = new EventBus(process.env.EDGE, {
  token: process.env.TOKEN,
  WebSocket: RefusableWebSocket,
  storage: null,
  minBackoff: 20,
  maxBackoff: 100,
  minWebSocketRetry: 20,
  maxWebSocketRetry: 100,
  onTransport: (transport) => out({ transport }),
});
bus.subscribe(
  process.env.PATTERN,
  (event, frame) => out({ event: event.subject, offset: frame.offset, transport: bus.transport }),
  { onSubscribed: (reply) => out({ subscribed: reply }) },
);
bus.connect();

for await (const line of createInterface({ input: process.stdin })) {
  if (line === "accept") {
    refused = false;
  } else if (line === "quit") {
    bus.close();
    process.exit(0);
  }
}
