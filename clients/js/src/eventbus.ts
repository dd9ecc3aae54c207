// eventbus: the client of the eventbus edge, for browsers and Node ≥ 20.
//
// It keeps a position per subscription (stream → offset and epoch, from
// every event), and after every reconnect, or a page reload through
// sessionStorage, subscribes again from there: the edge sends what was
// missed, then the live events, and says whether that recovered
// everything. It splits the frames the edge packs into one message, asks
// getToken for a token on every connect, and falls back to Server-Sent
// Events when a WebSocket cannot be opened, trying WebSocket again, with
// backoff, for as long as it is on SSE. A subscription may also ask for its
// channel's joins and leaves (presence), and a notification may be
// acknowledged (ack) over WebSocket. The wire protocol is in
// docs/protocol.md.

/** Where a client stands in a stream: a namespace's, or one partition's. */
export interface Position {
  offset: string;
  epoch: string;
}

/**
 * Stream → position. A stream is named as its namespace (a channel's first
 * token), or, where the bus spreads a namespace over partitions, as the
 * event frame's `stream` says ("order.3").
 */
export type Positions = Record<string, Position>;

/**
 * An event frame as the edge sends it. offset and epoch are absent when
 * the bus keeps no history, and on presence events, which are live only.
 */
export interface EventFrame {
  channel: string;
  subscriptions: string[];
  offset?: string;
  epoch?: string;
  /** The partition's stream ("order.3"), where the bus has partitions. */
  stream?: string;
  event: Record<string, unknown>;
}

/** How a subscription began: the edge's subscribe reply. */
export interface Subscribed {
  /** Set when the subscription resumed from a position. */
  recovered?: boolean;
  /** Events the edge replayed, when recovered. */
  missed?: number;
  /** Why it did not recover: epoch_changed, truncated, too_many or unavailable. */
  reason?: string;
  positions?: Positions;
}

export type Status = "connecting" | "open" | "closed" | "error";
export type Transport = "websocket" | "sse";

/** A storage such as sessionStorage. */
export interface PositionStore {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
}

export interface Options {
  /** A fixed token; getToken wins when both are given. */
  token?: string;
  /** Called before every connect for a fresh token. */
  getToken?: () => string | undefined | Promise<string | undefined>;
  /**
   * "auto" (default) tries WebSocket, falls back to SSE when a WebSocket
   * cannot open, and from SSE tries WebSocket again until one opens.
   */
  transport?: "auto" | Transport;
  /** Reconnect backoff in ms: from minBackoff (500), doubling to maxBackoff (15 s), jittered. */
  minBackoff?: number;
  maxBackoff?: number;
  /**
   * On SSE in "auto", a WebSocket is tried again in the background after
   * minWebSocketRetry ms (2 s), doubling to maxWebSocketRetry (60 s),
   * jittered; the first one that opens takes over from SSE.
   */
  minWebSocketRetry?: number;
  maxWebSocketRetry?: number;
  /** A connection not open after this many ms is given up and tried again (10 s). */
  connectTimeout?: number;
  /**
   * Send the token as ?token= in the WebSocket URL instead of in the first
   * frame. Off by default: URLs end up in logs.
   */
  tokenInQuery?: boolean;
  onStatus?: (status: Status, detail: string, transport: Transport) => void;
  /**
   * A connection opened on another transport than the last one did: the
   * first connection, a fallback to SSE, and a move back to WebSocket.
   * bus.transport says the same at any time.
   */
  onTransport?: (transport: Transport) => void;
  /** The edge dropped a subscription (a new token no longer grants it). */
  onUnsubscribed?: (pattern: string, reason: string) => void;
  /** Where positions survive a page reload; sessionStorage by default, null for nowhere. */
  storage?: PositionStore | null;
  /** The WebSocket constructor; globalThis.WebSocket by default. */
  WebSocket?: typeof WebSocket;
  /** fetch, for the SSE fallback; globalThis.fetch by default. */
  fetch?: typeof fetch;
}

export type Handler = (event: Record<string, unknown>, frame: EventFrame) => void;

export interface SubscribeOptions {
  /** Called with the edge's reply on every (re)subscription: check recovered. */
  onSubscribed?: (reply: Subscribed) => void;
  /**
   * Also call the handler with the channel's joins and leaves: events of
   * type "presence.join" and "presence.leave" whose data is
   * {client_id, user_id, transport}. They are live only (no offset) and
   * never move positions. Only a channel (no wildcard) of a namespace the
   * edge keeps presence for has them; the edge refuses others with
   * presence_off, which rejects ready. Handlers of the same pattern that
   * did not ask get none.
   *
   * Over SSE presence is one switch for the whole stream: it is asked
   * (?presence=true) when any subscription wants it, and applies to every
   * channel of the stream. The edge refuses such a stream if one of its
   * channels keeps no presence; the client then reports the refusal
   * through onStatus ("error") and opens the stream again without
   * presence, until the subscriptions change.
   */
  presence?: boolean;
  /**
   * Acknowledge (ack) every "notification.created" event on a
   * "notify:user:<id>" channel once the handler has returned (a promise it
   * returns is not awaited: call ack yourself for that). A failed ack is
   * reported through onStatus ("error"). Over SSE nothing is acknowledged:
   * SSE cannot send requests, and the notification service falls back as
   * for an unacknowledged notification.
   */
  autoAck?: boolean;
}

/** Undoes a subscribe; ready settles with the first reply. */
export interface Unsubscribe {
  (): void;
  ready: Promise<Subscribed>;
}

/** What a handler asked for, of SubscribeOptions. */
interface HandlerOptions {
  presence: boolean;
  autoAck: boolean;
}

interface Subscription {
  handlers: Map<Handler, HandlerOptions>;
  onSubscribed: Set<(reply: Subscribed) => void>;
  positions: Positions;
  waiting: Array<{ resolve: (r: Subscribed) => void; reject: (e: Error) => void }>;
}

interface Connection {
  transport: Transport;
  close(): void;
  /** Sends a request over an open WebSocket; SSE connections, and sockets still connecting, take none. */
  send?(frame: object): void;
}

/** A WebSocket connection closed before it ever opened this many times in a row means SSE. */
const wsFailuresBeforeSSE = 2;

/** Compares stream offsets "<ms>-<seq>". */
export function compareOffsets(a: string, b: string): number {
  const [am, as] = a.split("-").map(BigInt);
  const [bm, bs] = b.split("-").map(BigInt);
  if (am !== bm) return am < bm ? -1 : 1;
  if (as !== bs) return as < bs ? -1 : 1;
  return 0;
}

/** Moves positions forward to p in its namespace (a new epoch always wins). */
export function advance(positions: Positions, ns: string, p: Position): boolean {
  const cur = positions[ns];
  if (cur && cur.epoch === p.epoch && compareOffsets(p.offset, cur.offset) <= 0) return false;
  positions[ns] = { offset: p.offset, epoch: p.epoch };
  return true;
}

/** Splits a WebSocket message into the frames the edge packed into it. */
export function splitFrames(data: string): unknown[] {
  const out: unknown[] = [];
  for (const line of data.split("\n")) {
    if (!line) continue;
    try {
      out.push(JSON.parse(line));
    } catch {
      // not a frame: skipped
    }
  }
  return out;
}

/** A history cursor, as the API's next and a bare SSE id: base64url of {"ns":["offset","epoch"]}. */
export function encodeCursor(positions: Positions): string {
  const m: Record<string, [string, string]> = {};
  for (const [ns, p] of Object.entries(positions)) m[ns] = [p.offset, p.epoch];
  return base64url(JSON.stringify(m));
}

function base64url(text: string): string {
  let bin = "";
  for (const b of new TextEncoder().encode(text)) bin += String.fromCharCode(b);
  return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

const namespaceOf = (channel: string) => channel.split(":", 1)[0];

/** Whether an event is a join or leave: the edge's rule, type "presence.*". */
const isPresence = (event: Record<string, unknown>) => typeof event.type === "string" && event.type.startsWith("presence.");

/** Whether a subscription has a handler that asked for presence. */
const wantsPresence = (sub: Subscription) => [...sub.handlers.values()].some((o) => o.presence);

/** The notification id a frame carries, if it is one the edge takes an ack of. */
function notificationId(frame: EventFrame): string | undefined {
  const { type, id } = frame.event;
  if (type !== "notification.created" || typeof id !== "string" || !id) return undefined;
  return frame.channel.startsWith("notify:user:") ? id : undefined;
}

/** Whether the browser knows it is offline (never in Node). */
const offline = () => (globalThis as any).navigator?.onLine === false;

export class EventBus {
  private readonly wsURL: string;
  private readonly sseURL: string;
  private readonly opts: Required<
    Pick<Options, "minBackoff" | "maxBackoff" | "minWebSocketRetry" | "maxWebSocketRetry" | "connectTimeout" | "transport">
  > &
    Options;
  private readonly subs = new Map<string, Subscription>();
  /** Requests awaiting their reply: called as the reply is read, before the frames after it. */
  private readonly pending = new Map<string, (reply: any, err?: Error & { code?: string }) => void>();
  /** Acks awaiting their reply, by notification id: a second ack of one joins the first. */
  private readonly acks = new Map<string, Promise<void>>();
  /** The edge refused ?presence=true for the SSE stream's channels: asked again once they change. */
  private ssePresenceOff = false;
  private conn: Connection | null = null;
  private nextId = 1;
  private attempt = 0;
  private backoff: number;
  private closed = true;
  private wsFailures = 0;
  private next: Transport;
  /** The transport of the last connection that opened, as onTransport last said. */
  private reported: Transport | null = null;
  /** On SSE: a WebSocket being tried in the background, or the timer that will try one. */
  private probe: Connection | null = null;
  private probeTimer: ReturnType<typeof setTimeout> | null = null;
  private probeBackoff: number;
  private saveTimer: ReturnType<typeof setTimeout> | null = null;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private readonly storageKey: string;
  private readonly storage: PositionStore | null;

  /**
   * @param url the edge: http(s)://host:8081, or its WebSocket URL ws(s)://host:8081/ws
   */
  constructor(url: string, options: Options = {}) {
    const u = new URL(url);
    const secure = u.protocol === "https:" || u.protocol === "wss:";
    const base = u.host + (u.pathname.endsWith("/ws") ? u.pathname.slice(0, -3) : u.pathname.replace(/\/$/, ""));
    this.wsURL = `${secure ? "wss" : "ws"}://${base}/ws`;
    this.sseURL = `${secure ? "https" : "http"}://${base}/sse`;
    this.opts = {
      minBackoff: 500,
      maxBackoff: 15000,
      minWebSocketRetry: 2000,
      maxWebSocketRetry: 60000,
      connectTimeout: 10000,
      transport: "auto",
      ...options,
    };
    this.backoff = this.opts.minBackoff;
    this.probeBackoff = this.opts.minWebSocketRetry;
    this.next = this.opts.transport === "sse" ? "sse" : "websocket";
    this.storageKey = "eventbus:positions:" + this.wsURL;
    this.storage =
      options.storage !== undefined ? options.storage : ((globalThis as any).sessionStorage as PositionStore | undefined) ?? null;
    this.load();
    const g = globalThis as any;
    if (g.addEventListener) {
      g.addEventListener("pagehide", () => this.save());
      // A connection may outlive the network silently for a long while:
      // the browser knowing it is offline drops it at once, and knowing it
      // is back reconnects at once.
      g.addEventListener("offline", () => this.wentOffline());
      g.addEventListener("online", () => this.cameOnline());
    }
  }

  private wentOffline(): void {
    const c = this.conn;
    if (this.closed || !c) return;
    this.conn = null;
    c.close();
    this.dropped("offline");
  }

  private cameOnline(): void {
    if (this.closed || this.conn) return;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.backoff = this.opts.minBackoff;
    void this.open();
  }

  /** Opens the connection, and reopens it whenever it drops, until close. */
  connect(): void {
    if (!this.closed) return;
    this.closed = false;
    void this.open();
  }

  /** Closes the connection for good; positions stay saved. */
  close(): void {
    this.closed = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.stopProbe();
    this.conn?.close();
    this.conn = null;
    this.save();
  }

  /**
   * The transport in use ("websocket" or "sse"), or, while disconnected,
   * the one to be tried next. onTransport reports each change.
   */
  get transport(): Transport {
    return this.next;
  }

  /** @deprecated the same as transport. */
  get currentTransport(): Transport {
    return this.next;
  }

  /** Where a subscription stands: what it resumes from. */
  positions(pattern: string): Positions {
    return { ...(this.subs.get(pattern)?.positions ?? {}) };
  }

  /**
   * Calls fn(event, frame) for every event on a channel matching pattern,
   * from now on and, after a reconnect, for what was missed meanwhile.
   * Subscribing to a pattern subscribed already adds fn to it; asking for
   * presence there subscribes it again, with presence.
   */
  subscribe(pattern: string, fn: Handler, options: SubscribeOptions = {}): Unsubscribe {
    let sub = this.subs.get(pattern);
    const first = !sub;
    if (!sub) {
      sub = { handlers: new Map(), onSubscribed: new Set(), positions: this.saved[pattern] ?? {}, waiting: [] };
      this.subs.set(pattern, sub);
    }
    const presenceAdded = !!options.presence && !first && !wantsPresence(sub);
    sub.handlers.set(fn, { presence: !!options.presence, autoAck: !!options.autoAck });
    if (options.onSubscribed) sub.onSubscribed.add(options.onSubscribed);
    const s = sub;
    const ready = new Promise<Subscribed>((resolve, reject) => s.waiting.push({ resolve, reject }));
    ready.catch(() => {});
    if (first || presenceAdded) {
      this.ssePresenceOff = false;
      this.sendSubscribe(pattern);
    } else if (this.conn) s.waiting.shift()?.resolve({}); // subscribed already
    const off = (() => {
      s.handlers.delete(fn);
      if (options.onSubscribed) s.onSubscribed.delete(options.onSubscribed);
      if (s.handlers.size > 0 || this.subs.get(pattern) !== s) return;
      this.subs.delete(pattern);
      this.ssePresenceOff = false;
      delete this.saved[pattern];
      this.scheduleSave();
      if (this.conn?.transport === "websocket") this.request({ action: "unsubscribe", channel: pattern }, () => {});
      else if (this.conn) this.reopen();
    }) as Unsubscribe;
    off.ready = ready;
    return off;
  }

  /**
   * Acknowledges the notification id (a "notification.created" event's
   * id, as this connection received it on "notify:user:<id>"): the edge
   * publishes its receipt, and the notification service does not fall back
   * to Web Push or email as it does for one left unacknowledged.
   * Resolves once the edge has taken it; rejects with an Error whose code
   * is the edge's: "unknown_notification" (not received on this
   * connection, or acknowledged already) or "unavailable" (ack again).
   * Acks need a WebSocket: on SSE, or while disconnected, it rejects at
   * once, and an ack in flight when the connection drops rejects with
   * "connection closed". Acking an id whose ack is in flight returns
   * that ack's promise.
   */
  ack(id: string): Promise<void> {
    const inflight = this.acks.get(id);
    if (inflight) return inflight;
    const conn = this.conn;
    if (!conn?.send) {
      const why = conn?.transport === "sse" ? "on SSE, which cannot send requests" : "not connected";
      return Promise.reject(new Error(`ack ${id}: acks need a WebSocket connection (${why})`));
    }
    if (this.pending.has(id)) {
      // The edge echoes the notification id as the reply's id: it must
      // not be one of this client's own request ids in flight.
      return Promise.reject(new Error(`ack ${id}: a request with this id is in flight; ack again`));
    }
    const p = new Promise<void>((resolve, reject) => {
      this.request({ action: "ack", id }, (_, err) => {
        this.acks.delete(id);
        if (err) reject(err);
        else resolve();
      });
    });
    this.acks.set(id, p);
    return p;
  }

  // --- connections ---

  private status(s: Status, detail = ""): void {
    this.opts.onStatus?.(s, detail, this.next);
  }

  /** A connection on transport t opened: onStatus, and onTransport if t is new. */
  private opened(t: Transport): void {
    this.next = t;
    this.status("open");
    if (this.reported === t) return;
    this.reported = t;
    this.opts.onTransport?.(t);
  }

  private async token(): Promise<string | undefined> {
    return this.opts.getToken ? await this.opts.getToken() : this.opts.token;
  }

  private async open(): Promise<void> {
    if (this.closed) return;
    // Only the latest open goes on: another (the browser back online, a
    // reconnect) may start while getToken is pending.
    const attempt = ++this.attempt;
    this.status("connecting");
    let token: string | undefined;
    try {
      token = await this.token();
    } catch (err) {
      if (attempt !== this.attempt) return;
      this.status("error", String(err));
      return this.retry();
    }
    if (this.closed || attempt !== this.attempt) return;
    const previous = this.conn;
    this.conn = null;
    previous?.close();
    if (this.next === "websocket") this.openWebSocket(token);
    else this.openSSE(token);
  }

  private retry(): void {
    if (this.closed || offline()) return; // the online event reconnects
    const delay = this.backoff * (0.5 + Math.random() / 2);
    this.backoff = Math.min(this.backoff * 2, this.opts.maxBackoff);
    this.retryTimer = setTimeout(() => void this.open(), delay);
  }

  private dropped(detail: string): void {
    this.stopProbe(); // tried again once SSE works again
    for (const done of this.pending.values()) done(undefined, new Error("connection closed"));
    this.pending.clear();
    this.conn = null;
    this.save();
    this.status("closed", detail);
    this.retry();
  }

  /** Reopens at once: SSE subscriptions are fixed per connection. */
  private reopen(): void {
    const c = this.conn;
    this.conn = null;
    c?.close();
    void this.open();
  }

  /**
   * Opens a WebSocket. A probe is tried in the background while SSE is in
   * use: it becomes the connection only once it opens, and a probe that
   * does not open is tried again later, leaving SSE as it was.
   */
  private openWebSocket(token: string | undefined, probe = false): void {
    const WS = this.opts.WebSocket ?? (globalThis as any).WebSocket;
    if (!WS) {
      if (probe) return; // stays on SSE: nothing to try
      this.next = "sse";
      return void this.open();
    }
    const url = this.wsURL + (token && this.opts.tokenInQuery ? "?token=" + encodeURIComponent(token) : "");
    const ws: WebSocket = new WS(url);
    let opened = false;
    // send comes with onopen: a WebSocket still connecting throws on send.
    const conn: Connection = { transport: "websocket", close: () => ws.close(1000, "bye") };
    const current = () => (probe && !opened ? this.probe : this.conn) === conn;
    if (probe) this.probe = conn;
    else this.conn = conn;
    // A network that drops packets leaves a handshake hanging for minutes.
    const timer = setTimeout(() => {
      if (!opened && current()) ws.close(4000, "connect timeout");
    }, this.opts.connectTimeout);
    ws.onopen = () => {
      clearTimeout(timer);
      if (!current()) return; // given up on: its close is on its way
      if (probe) this.takeOver(conn);
      opened = true;
      conn.send = (frame) => ws.send(JSON.stringify(frame));
      this.wsFailures = 0;
      this.backoff = this.opts.minBackoff;
      this.probeBackoff = this.opts.minWebSocketRetry;
      this.opened("websocket");
      // The edge reads frames in order: the subscriptions come after it.
      // Over SSE until now, each resumes from the positions SSE reached.
      if (token && !this.opts.tokenInQuery) this.sendAuth(token);
      for (const pattern of this.subs.keys()) this.sendSubscribe(pattern);
    };
    ws.onmessage = (msg: MessageEvent) => {
      if (this.conn !== conn) return;
      for (const f of splitFrames(String(msg.data))) this.receive(f as any);
    };
    let ended = false;
    const end = (detail: string) => {
      clearTimeout(timer);
      if (ended || !current()) return; // handled, replaced, or closed on purpose
      ended = true;
      if (probe && !opened) {
        this.probe = null;
        return this.scheduleProbe(); // SSE goes on
      }
      if (!opened && !offline() && this.opts.transport === "auto" && ++this.wsFailures >= wsFailuresBeforeSSE) {
        this.next = "sse"; // WebSockets do not get through: try SSE
      }
      this.dropped(detail);
    };
    ws.onclose = (ev: CloseEvent) => end(`${ev.code} ${ev.reason}`);
    // Browsers follow an error with a close; Node 20's WebSocket may not.
    ws.onerror = () => {
      end("error");
      try {
        ws.close();
      } catch {
        // closed already
      }
    };
  }

  /**
   * A probe opened: it replaces SSE, or the wait for SSE's next attempt.
   * SSE's events stop counting here; the WebSocket's subscriptions resume
   * from where they left positions, so nothing is missed, and an event
   * both send is delivered once.
   */
  private takeOver(conn: Connection): void {
    this.probe = null;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.attempt++; // an open waiting for getToken gives way
    const previous = this.conn;
    this.conn = conn;
    previous?.close();
  }

  /** On SSE in "auto": tries a WebSocket again after the probe backoff. */
  private scheduleProbe(): void {
    if (this.opts.transport !== "auto" || this.closed || this.probe || this.probeTimer) return;
    if (!(this.opts.WebSocket ?? (globalThis as any).WebSocket)) return;
    const delay = this.probeBackoff * (0.5 + Math.random() / 2);
    this.probeBackoff = Math.min(this.probeBackoff * 2, this.opts.maxWebSocketRetry);
    this.probeTimer = setTimeout(async () => {
      this.probeTimer = null;
      if (this.closed || this.conn?.transport !== "sse") return;
      let token: string | undefined;
      try {
        token = await this.token();
      } catch (err) {
        this.status("error", "getToken: " + String(err));
        return this.scheduleProbe();
      }
      if (this.closed || this.conn?.transport !== "sse" || this.probe) return;
      this.openWebSocket(token, true);
    }, delay);
  }

  private stopProbe(): void {
    if (this.probeTimer) clearTimeout(this.probeTimer);
    this.probeTimer = null;
    const p = this.probe;
    this.probe = null;
    p?.close();
  }

  private openSSE(token: string | undefined): void {
    const f = this.opts.fetch ?? (globalThis as any).fetch;
    const q = new URLSearchParams();
    for (const pattern of this.subs.keys()) q.append("channel", pattern);
    // One switch for the stream: presence for every channel of it.
    const presence = !this.ssePresenceOff && [...this.subs.values()].some(wantsPresence);
    if (presence) q.set("presence", "true");
    if (!q.has("channel")) {
      // Nothing to subscribe to: the stream opens with the first subscription.
      this.conn = { transport: "sse", close: () => {} };
      this.opened("sse");
      this.scheduleProbe();
      return;
    }
    const headers: Record<string, string> = { Accept: "text/event-stream" };
    if (token) headers.Authorization = "Bearer " + token;
    const id = this.sseId();
    if (id) headers["Last-Event-ID"] = id;
    const abort = new AbortController();
    const conn: Connection = { transport: "sse", close: () => abort.abort() };
    this.conn = conn;
    void (async () => {
      try {
        const resp: Response = await f(this.sseURL + "?" + q, { headers, signal: abort.signal });
        if (!resp.ok || !resp.body) {
          const body = await resp.text();
          const detail = `GET /sse: ${resp.status} ${body.trim()}`;
          if (presence && resp.status === 400 && errorCode(body) === "presence_off") {
            // A channel of the stream keeps no presence: the others go on without it.
            if (this.conn !== conn) return;
            this.ssePresenceOff = true;
            this.status("error", detail + "; opening it again without presence");
            return void this.open();
          }
          if ([400, 403, 404].includes(resp.status)) {
            // Trying again gets the same answer: tell the subscriptions.
            if (this.conn !== conn) return;
            this.conn = null;
            this.status("error", detail);
            const err = new Error(detail);
            for (const sub of this.subs.values()) for (const w of sub.waiting.splice(0)) w.reject(err);
            return;
          }
          throw new Error(detail);
        }
        if (this.conn !== conn) return;
        this.backoff = this.opts.minBackoff;
        this.opened("sse");
        this.scheduleProbe();
        await readSSE(resp.body, (type, data) => {
          if (this.conn !== conn) return;
          let frame: any;
          try {
            frame = JSON.parse(data);
          } catch {
            return;
          }
          if (type === "subscribed") this.subscribed(frame.channel, frame);
          else if (type === "close") this.status("closed", `${frame.code} ${frame.reason}`);
          else if (type === "message") this.receive(frame);
        });
        throw new Error("stream ended");
      } catch (err) {
        if (this.conn === conn) this.dropped(String(err));
      }
    })();
  }

  /** Every subscription's positions as the SSE id the edge reads back: "s1." then base64url of {"pattern":{"ns":["offset","epoch"]}}. */
  private sseId(): string {
    const m: Record<string, Record<string, [string, string]>> = {};
    for (const [pattern, sub] of this.subs) {
      const entries = Object.entries(sub.positions);
      if (entries.length > 0) m[pattern] = Object.fromEntries(entries.map(([ns, p]) => [ns, [p.offset, p.epoch]]));
    }
    return Object.keys(m).length > 0 ? "s1." + base64url(JSON.stringify(m)) : "";
  }

  // --- requests and frames ---

  private sendSubscribe(pattern: string): void {
    const conn = this.conn;
    if (!conn) return; // sent when the connection opens
    if (conn.transport === "sse") return this.reopen();
    const sub = this.subs.get(pattern)!;
    const frame: Record<string, unknown> = { action: "subscribe", channel: pattern };
    if (Object.keys(sub.positions).length > 0) frame.since = sub.positions;
    if (wantsPresence(sub)) frame.presence = true;
    this.request(frame, (reply, err) => {
      if (!err) return this.subscribed(pattern, reply);
      if (!err.code) return; // the connection dropped: resent on the next one
      for (const w of sub.waiting.splice(0)) w.reject(err);
    });
  }

  /** Sends a request; done gets its reply, or the error, as it is read. */
  private sendAuth(token: string): void {
    this.request({ action: "auth", token }, (_, err) => {
      if (err?.code) this.status("error", `auth: ${err.code}: ${err.message}`); // the edge closes the connection
    });
  }

  /** The edge says the token expires soon: send a fresh one on the same connection. */
  private async refresh(): Promise<void> {
    const conn = this.conn;
    let token: string | undefined;
    try {
      token = await this.token();
    } catch (err) {
      this.status("error", "getToken: " + String(err)); // the edge closes at expiry: reconnected then
      return;
    }
    if (token && this.conn === conn && conn?.send) this.sendAuth(token);
  }

  /** Sends a request under frame.id, or an id of its own; done gets its reply, or the error, as it is read. */
  private request(frame: Record<string, unknown>, done: (reply: any, err?: Error & { code?: string }) => void): void {
    const send = this.conn?.send;
    if (!send) return done(undefined, new Error("not connected"));
    const id = typeof frame.id === "string" ? frame.id : String(this.nextId++);
    this.pending.set(id, done);
    send({ ...frame, id });
  }

  private subscribed(pattern: string, reply: Subscribed): void {
    const sub = this.subs.get(pattern);
    if (!sub) return;
    if (reply.recovered === false) sub.positions = {}; // what it had is gone: start over from here
    for (const [ns, p] of Object.entries(reply.positions ?? {})) {
      if (!sub.positions[ns]) sub.positions[ns] = p;
    }
    this.scheduleSave();
    const r: Subscribed = { recovered: reply.recovered, missed: reply.missed, reason: reply.reason, positions: reply.positions };
    for (const w of sub.waiting.splice(0)) w.resolve(r);
    for (const fn of sub.onSubscribed) fn(r);
  }

  private receive(frame: any): void {
    if (frame === null || typeof frame !== "object") return;
    if (frame.id && this.pending.has(frame.id)) {
      const done = this.pending.get(frame.id)!;
      this.pending.delete(frame.id);
      if (frame.error) done(undefined, Object.assign(new Error(frame.error.message), { code: frame.error.code }));
      else done(frame);
      return;
    }
    if (frame.expiring) {
      void this.refresh();
      return;
    }
    if (frame.unsubscribed) {
      this.subs.delete(frame.unsubscribed);
      delete this.saved[frame.unsubscribed];
      this.opts.onUnsubscribed?.(frame.unsubscribed, frame.reason);
      return;
    }
    if (!frame.event) return;
    const ns = frame.stream ?? namespaceOf(frame.channel);
    const presence = isPresence(frame.event);
    let ack = false;
    for (const pattern of frame.subscriptions ?? []) {
      const sub = this.subs.get(pattern);
      if (!sub) continue;
      // A frame without offset (presence, or no history) is live only: it
      // leaves positions as they are.
      if (frame.offset && !advance(sub.positions, ns, { offset: frame.offset, epoch: frame.epoch })) continue; // had it
      for (const [fn, o] of sub.handlers) {
        if (presence && !o.presence) continue;
        fn(frame.event, frame);
        ack ||= o.autoAck;
      }
    }
    this.scheduleSave();
    const id = ack ? notificationId(frame) : undefined;
    if (id && this.conn?.send) {
      this.ack(id).catch((err) => this.status("error", err.code ? `ack ${id}: ${err.code}: ${err.message}` : err.message));
    }
  }

  // --- positions across page reloads ---

  private saved: Record<string, Positions> = {};

  private load(): void {
    try {
      const v = this.storage?.getItem(this.storageKey);
      if (v) this.saved = JSON.parse(v) ?? {};
    } catch {
      this.saved = {};
    }
  }

  private scheduleSave(): void {
    if (!this.storage || this.saveTimer) return;
    this.saveTimer = setTimeout(() => this.save(), 250);
  }

  private save(): void {
    if (this.saveTimer) clearTimeout(this.saveTimer);
    this.saveTimer = null;
    if (!this.storage) return;
    for (const [pattern, sub] of this.subs) this.saved[pattern] = sub.positions;
    try {
      this.storage.setItem(this.storageKey, JSON.stringify(this.saved));
    } catch {
      // storage full or denied: positions live as long as the page
    }
  }
}

/** The code of an edge's JSON error body, {"error":{"code":…}}. */
function errorCode(body: string): string | undefined {
  try {
    return JSON.parse(body)?.error?.code;
  } catch {
    return undefined;
  }
}

/** Reads an SSE stream, calling onEvent(type, data) for each event. */
export async function readSSE(body: ReadableStream<Uint8Array>, onEvent: (type: string, data: string) => void): Promise<void> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  let type = "";
  let data: string[] = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += decoder.decode(value, { stream: true });
    for (;;) {
      const m = /\r\n|\r|\n/.exec(buf);
      if (!m) break;
      if (m[0] === "\r" && m.index === buf.length - 1) break; // may be half of CRLF
      const line = buf.slice(0, m.index);
      buf = buf.slice(m.index + m[0].length);
      if (line === "") {
        if (data.length > 0) onEvent(type || "message", data.join("\n"));
        type = "";
        data = [];
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value2 = colon < 0 ? "" : line.slice(colon + 1);
      if (value2.startsWith(" ")) value2 = value2.slice(1);
      if (field === "event") type = value2;
      else if (field === "data") data.push(value2);
    }
  }
}
