// eventbus.js: a small, dependency-free client of the eventbus edge.
//
//   import { EventBus } from "/eventbus.js";
//   const bus = new EventBus("ws://localhost:8081/ws", { getToken: async () => myToken });
//   const off = bus.subscribe("order:*", (event, frame) => console.log(frame.channel, event));
//   bus.connect();
//
// It reconnects by itself with exponential backoff and jitter, fetching a
// fresh token each time, and resubscribes everything it had. When the edge
// drops a subscription (a new token no longer grants it), it calls
// onUnsubscribed(pattern, reason) and forgets the pattern's callbacks.
export class EventBus {
  constructor(url, { token, getToken, minBackoff = 500, maxBackoff = 15000, onStatus, onUnsubscribed } = {}) {
    this.url = url;
    this.getToken = getToken || (async () => token);
    this.minBackoff = minBackoff;
    this.maxBackoff = maxBackoff;
    this.onStatus = onStatus || (() => {});
    this.onUnsubscribed = onUnsubscribed || (() => {});
    this.handlers = new Map(); // pattern → Set of callbacks
    this.pending = new Map(); // request id → {resolve, reject}
    this.nextId = 1;
    this.backoff = minBackoff;
    this.closed = false;
    this.ws = null;
  }

  // connect opens the connection; it is safe to call once.
  async connect() {
    this.closed = false;
    this.onStatus("connecting");
    let url = this.url;
    try {
      const token = await this.getToken();
      if (token) url += (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
    } catch (err) {
      this.onStatus("error", String(err));
      return this.retry();
    }
    const ws = new WebSocket(url);
    this.ws = ws;
    ws.onopen = () => {
      this.backoff = this.minBackoff;
      this.onStatus("open");
      for (const pattern of this.handlers.keys()) this.request({ action: "subscribe", channel: pattern }).catch(() => {});
    };
    // Under load the edge packs several frames into one message, one per line.
    ws.onmessage = (msg) => { for (const line of msg.data.split("\n")) if (line) this.receive(line); };
    ws.onclose = (ev) => {
      for (const { reject } of this.pending.values()) reject(new Error("connection closed"));
      this.pending.clear();
      this.onStatus("closed", `${ev.code} ${ev.reason}`);
      if (!this.closed) this.retry();
    };
  }

  retry() {
    const delay = this.backoff * (0.5 + Math.random() / 2);
    this.backoff = Math.min(this.backoff * 2, this.maxBackoff);
    setTimeout(() => { if (!this.closed) this.connect(); }, delay);
  }

  receive(data) {
    let frame;
    try { frame = JSON.parse(data); } catch { return; }
    if (frame.id && this.pending.has(frame.id)) {
      const { resolve, reject } = this.pending.get(frame.id);
      this.pending.delete(frame.id);
      if (frame.error) reject(Object.assign(new Error(frame.error.message), { code: frame.error.code }));
      else resolve(frame);
      return;
    }
    if (frame.unsubscribed) {
      this.handlers.delete(frame.unsubscribed);
      this.onUnsubscribed(frame.unsubscribed, frame.reason);
      return;
    }
    if (!frame.event) return;
    for (const pattern of frame.subscriptions || []) {
      for (const fn of this.handlers.get(pattern) || []) fn(frame.event, frame);
    }
  }

  // request sends a frame and resolves with the edge's reply.
  request(frame) {
    const id = String(this.nextId++);
    return new Promise((resolve, reject) => {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return reject(new Error("not connected"));
      this.pending.set(id, { resolve, reject });
      this.ws.send(JSON.stringify({ ...frame, id }));
    });
  }

  // subscribe calls fn(event, frame) for every event on a channel matching
  // pattern, and returns a function that undoes it. The returned function
  // has a .ready promise that settles with the edge's reply.
  subscribe(pattern, fn) {
    let set = this.handlers.get(pattern);
    const first = !set;
    if (first) this.handlers.set(pattern, (set = new Set()));
    set.add(fn);
    // Not connected yet: the subscription goes out when the connection opens.
    const open = this.ws && this.ws.readyState === WebSocket.OPEN;
    const ready = first && open ? this.request({ action: "subscribe", channel: pattern }) : Promise.resolve({ ok: true });
    const off = () => {
      set.delete(fn);
      if (set.size === 0) {
        this.handlers.delete(pattern);
        this.request({ action: "unsubscribe", channel: pattern }).catch(() => {});
      }
    };
    off.ready = ready;
    return off;
  }

  close() {
    this.closed = true;
    if (this.ws) this.ws.close(1000, "bye");
  }
}
