/**
 * The client: one WebSocket speaking `stratus.v1` (or, where no WebSocket opens, a
 * receive-only Server-Sent Events stream of its subscriptions), reopened with jittered
 * exponential backoff whenever it drops, every subscription resumed from the last offset
 * it delivered.
 *
 * What it owns, and the bound on each:
 * - the subscriptions, one per topic, removed when they end;
 * - commands sent and waiting for their reply (`maxPending`), each with a timeout;
 * - commands made while disconnected (`maxOfflineQueue`), sent in order on reconnect;
 *   past either cap a command is refused at once with `queue_full`;
 * - over SSE, one event-stream request at a time, its parser capped (16 MiB of text).
 *
 * Transports (`transports`, default `["websocket", "sse"]`): each attempt uses the
 * current one; one that fails before it ever opened passes the turn to the next at once,
 * and the backoff delay comes after the whole list failed. A transport that opened is
 * kept for later reconnects; when it then fails to open, the list starts again from its
 * head. Before settling for SSE after a failed WebSocket, the client checks that the
 * server answers HTTP and tries a WebSocket once more (a server that was just starting
 * must not leave its clients receive-only).
 */

import { backoffDelay, resolveBackoff, type BackoffOptions, type ResolvedBackoff } from "./backoff.js";
import { base64ToBytes, decodeBinaryPublication } from "./binary.js";
import { Emitter } from "./emitter.js";
import { StratusError, type ErrorReply } from "./errors.js";
import { EventStreamRequest, probe, type EventStreamEnd } from "./event-stream.js";
import { compareOffsets, isOffset, offsetBefore } from "./offset.js";
import {
  SUBPROTOCOL,
  type GapNotice,
  type HistoryPage,
  type OccupancyNotice,
  type OccupancyReply,
  type PingReply,
  type PresenceNotice,
  type PresenceReply,
  type Publication,
  type PublishBody,
  type PublishReply,
  type RefreshNotice,
  type RefreshReply,
  type ReplyBase,
  type SkipNotice,
  type SubscribeReply,
  type UnsubscribedNotice,
} from "./protocol.js";
import type { ServerSentEvent } from "./sse.js";
import { Subscription, type SubscribeOptions, type SubscriptionHost } from "./subscription.js";

/** The part of the WebSocket API the SDK uses (the browser's, Node's, or the `ws` package's). */
export interface WebSocketLike {
  readonly protocol: string;
  readonly readyState: number;
  binaryType: string;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: unknown) => void) | null;
  onclose: ((event: { code: number; reason: string; wasClean?: boolean }) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

/** How the client reaches the server: a `stratus.v1` WebSocket, or a receive-only event stream. */
export type Transport = "websocket" | "sse";

/** Why `getToken` is called. */
export interface TokenContext {
  /**
   * `connect`: before a connection attempt; `expired`: before reconnecting after the
   * server closed with 1008 "token expired"; `refresh`: the server asked for a fresh token
   * (or `refresh()` was called without one).
   */
  reason: "connect" | "expired" | "refresh";
  /** With `refresh` from the server: the current token's `exp` (seconds since the epoch). */
  expires?: number;
}

export interface ClientOptions {
  /**
   * Returns the JWT to connect with (may be async), called before every connection attempt
   * and when the server asks for a refresh. Omit when the server runs without auth.
   */
  getToken?: (context: TokenContext) => string | Promise<string>;
  /**
   * How the token reaches the server at the upgrade (docs/protocol.md section 3): the
   * `token` query parameter (default), or an offered subprotocol `bearer.<jwt>`. Browsers
   * cannot set headers, so these are the two ways that work everywhere.
   */
  tokenIn?: "query" | "protocol";
  /** More subprotocols to offer after `stratus.v1`. */
  protocols?: string[];
  /** Reconnect delays. */
  backoff?: BackoffOptions;
  /** Commands kept while disconnected (default 100); past it they reject with `queue_full`. */
  maxOfflineQueue?: number;
  /** Commands sent and waiting for a reply (default 1000); past it they reject with `queue_full`. */
  maxPending?: number;
  /** Milliseconds a command may wait for its reply, queued time included (default 10000; 0: no limit). */
  commandTimeout?: number;
  /** Milliseconds a connection attempt may take before it is abandoned (default 10000). */
  connectTimeout?: number;
  /** The WebSocket implementation (default: `globalThis.WebSocket`). */
  WebSocket?: WebSocketConstructor;
  /**
   * The transports to try, in order (default `["websocket", "sse"]`): `["sse"]` forces
   * Server-Sent Events, `["websocket"]` turns the fallback off.
   */
  transports?: Transport[];
  /**
   * The event-stream endpoint (default: from the WebSocket URL, `ws:` to `http:`, `wss:`
   * to `https:`, its last path segment replaced by `sse`, its query dropped:
   * `ws://host/ws` gives `http://host/sse`).
   */
  sseUrl?: string;
  /** The fetch implementation for SSE (default: `globalThis.fetch`). */
  fetch?: typeof fetch;
  /**
   * Milliseconds an open event stream may stay silent (not even a heartbeat) before it is
   * dropped and reopened (default 60000, twice the server's default `--ping-interval`;
   * 0: no limit).
   */
  sseIdleTimeout?: number;
  /**
   * Whether an SSE publication's text is handed out parsed when it is JSON (default true,
   * as a WebSocket gives JSON publications), or always as the string (false). The event
   * does not say whether a publication was JSON, text or binary (base64).
   */
  sseParseJson?: boolean;
  /** The random source of the backoff jitter (default `Math.random`), for tests. */
  random?: () => number;
}

export type ClientState = "disconnected" | "connecting" | "connected";

export interface ConnectedEvent {
  transport: Transport;
  /** The WebSocket URL, or the event-stream URL (without topics or token) over SSE. */
  url: string;
  /** The WebSocket subprotocol (`stratus.v1`); `""` over SSE. */
  protocol: string;
}

export interface DisconnectedEvent {
  /**
   * The WebSocket close code (1006 when the connection failed or dropped). Over SSE: 1006,
   * or 1008 with the reason "token expired" after a 401 or a stream ended by its token's
   * expiry.
   */
  code: number;
  reason: string;
  /** Whether the client will reconnect (false after `close()`). */
  reconnect: boolean;
  /** When it will, after how many milliseconds. */
  delay?: number;
}

export interface ClientEvents {
  /** A connection is open (a `stratus.v1` WebSocket, or SSE); subscriptions are being resumed. */
  connected: [event: ConnectedEvent];
  /** The connection closed (or an attempt failed). */
  disconnected: [event: DisconnectedEvent];
  /** Something went wrong that no promise reports (a failed attempt, a refused refresh, an error without id). */
  error: [error: StratusError];
  /** The transport in use, on each connection (before `connected`). */
  transport: [transport: Transport];
  /** The token was refreshed on the open connection (after a server `refresh` notice, or `refresh()`). */
  refreshed: [reply: RefreshReply];
  /** The state changed. */
  state: [state: ClientState, previous: ClientState];
}

export interface HistoryOptions {
  /** An offset: publications after it; `"$"`: an empty page; absent: from the oldest kept. */
  since?: string;
  /** At most this many (the server clamps to 1..100; default 100). */
  limit?: number;
}

export interface PublishOptions {
  /** The publication's key (at most 128 bytes), for conflation. */
  key?: string;
}

/** A command waiting for its reply. */
interface Pending {
  op: string;
  topic: string | null;
  sentAt: number;
  timer: ReturnType<typeof setTimeout> | null;
  resolve: (reply: ReplyBase) => void;
  reject: (error: StratusError) => void;
  /** Internal commands (subscribe, the SDK's own refresh) are not the application's: not capped, not queued. */
  internal: boolean;
}

/** A command made while disconnected. */
interface Queued {
  id: number;
  frame: Record<string, unknown>;
  pending: Pending;
}

/** An open (or opening) event stream: the request and what it carries. */
interface SseStream {
  topics: Set<string>;
  /** Topics not on the last stream that opened on this connection (a refusal is theirs). */
  added: Set<string>;
  /** Where each topic resumes, as sent (one `since` per topic). */
  since: Map<string, string>;
  token: string | null;
  request: EventStreamRequest | null;
  open: boolean;
}

/** SSE event names that carry a v1 notice or push (with the same `type`) as data. */
const SSE_NOTICES: ReadonlySet<string> = new Set(["gap", "skip", "unsubscribed", "subscribed", "presence", "occupancy"]);

const TRANSPORTS: readonly Transport[] = ["websocket", "sse"];

const OPEN = 1;

export class Client extends Emitter<ClientEvents> implements SubscriptionHost {
  readonly url: string;

  #options: {
    getToken: ClientOptions["getToken"];
    tokenIn: "query" | "protocol";
    protocols: string[];
    backoff: ResolvedBackoff;
    maxOfflineQueue: number;
    maxPending: number;
    commandTimeout: number;
    connectTimeout: number;
    WebSocket: WebSocketConstructor | undefined;
    random: () => number;
    fetch: typeof fetch | undefined;
    sseIdleTimeout: number;
    sseParseJson: boolean;
  };
  /** The event-stream endpoint (docs/protocol.md section 21). */
  readonly sseUrl: string;
  #transports: readonly Transport[];
  /** The transport of the next (or current) attempt, as an index into `#transports`. */
  #index = 0;
  /** The transport that opened last: kept for reconnects until it fails to open. */
  #kept: Transport | null = null;
  /** The transport of the open connection. */
  #current: Transport | null = null;
  /** This round of attempts already checked that SSE is needed (the server answers HTTP, a WebSocket does not open). */
  #fallbackConfirmed = false;
  /** Whether the current WebSocket attempt opened. */
  #wsOpened = false;
  #stream: SseStream | null = null;
  /** The topics of the last stream that opened on this connection. */
  #sseOpenTopics = new Set<string>();
  /** Topics a stream carried since `connect()` (their position is at least the stream's newest). */
  #sseCarried = new Set<string>();
  #sseSyncQueued = false;
  /** The newest offset delivered over SSE (on any topic): where a reopened stream resumes. */
  #sseNewest: string | null = null;
  #lastToken: string | null = null;
  #state: ClientState = "disconnected";
  /** Whether the application wants a connection (`connect()` without `close()` since). */
  #wanted = false;
  /** Bumped by every attempt and by `close()`: callbacks of older attempts do nothing. */
  #generation = 0;
  #ws: WebSocketLike | null = null;
  #attempt = 0;
  #reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  #connectTimer: ReturnType<typeof setTimeout> | null = null;
  #nextId = 1;
  #pending = new Map<number, Pending>();
  #queue: Queued[] = [];
  #subs = new Map<string, Subscription>();
  #lastClose: { code: number; reason: string } | null = null;
  #connectWaiters: { resolve: () => void; reject: (e: StratusError) => void }[] = [];
  /** Binary frames that arrive as Blobs are read asynchronously; this keeps frames in order. */
  #inbound: Promise<void> | null = null;

  constructor(url: string, options: ClientOptions = {}) {
    super();
    const parsed = new URL(url);
    if (parsed.protocol === "http:") parsed.protocol = "ws:";
    if (parsed.protocol === "https:") parsed.protocol = "wss:";
    if (parsed.protocol !== "ws:" && parsed.protocol !== "wss:") {
      throw new StratusError("invalid_argument", `not a ws:// or wss:// URL: ${url}`);
    }
    this.url = parsed.toString();
    const count = (v: number | undefined, d: number, name: string): number => {
      const n = v ?? d;
      if (!(Number.isInteger(n) && n >= 0)) throw new StratusError("invalid_argument", `${name} must be an integer >= 0`);
      return n;
    };
    this.#options = {
      getToken: options.getToken,
      tokenIn: options.tokenIn ?? "query",
      protocols: options.protocols ?? [],
      backoff: resolveBackoff(options.backoff),
      maxOfflineQueue: count(options.maxOfflineQueue, 100, "maxOfflineQueue"),
      maxPending: count(options.maxPending, 1000, "maxPending"),
      commandTimeout: count(options.commandTimeout, 10_000, "commandTimeout"),
      connectTimeout: count(options.connectTimeout, 10_000, "connectTimeout"),
      WebSocket: options.WebSocket,
      random: options.random ?? Math.random,
      fetch: options.fetch,
      sseIdleTimeout: count(options.sseIdleTimeout, 60_000, "sseIdleTimeout"),
      sseParseJson: options.sseParseJson ?? true,
    };
    const transports = options.transports ?? TRANSPORTS;
    if (
      !Array.isArray(transports) ||
      transports.length === 0 ||
      transports.some((t) => !TRANSPORTS.includes(t)) ||
      new Set(transports).size !== transports.length
    ) {
      throw new StratusError("invalid_argument", `transports must list "websocket" and/or "sse", each once: ${JSON.stringify(transports)}`);
    }
    this.#transports = [...transports];
    if (options.sseUrl !== undefined) {
      let sse: URL;
      try {
        sse = new URL(options.sseUrl);
      } catch {
        throw new StratusError("invalid_argument", `not a URL: ${options.sseUrl}`);
      }
      if (sse.protocol !== "http:" && sse.protocol !== "https:") {
        throw new StratusError("invalid_argument", `sseUrl must be http:// or https://: ${options.sseUrl}`);
      }
      this.sseUrl = sse.toString();
    } else {
      this.sseUrl = sseUrlFor(parsed);
    }
  }

  // ---- getters -------------------------------------------------------------------------

  get state(): ClientState {
    return this.#state;
  }

  /** The transport of the current connection (null while there is none). */
  get transport(): Transport | null {
    return this.#state === "connected" ? this.#current : null;
  }

  /** The active subscriptions by topic. */
  get subscriptions(): ReadonlyMap<string, Subscription> {
    return this.#subs;
  }

  /** Commands waiting while disconnected. */
  get queued(): number {
    return this.#queue.length;
  }

  /** Commands sent and waiting for a reply. */
  get pending(): number {
    return this.#pending.size;
  }

  // ---- connecting ----------------------------------------------------------------------

  /**
   * Starts connecting (and reconnecting whenever the connection drops, until `close()`).
   * Resolves when a connection is open; rejects only if `close()` is called first.
   */
  connect(): Promise<void> {
    const done = new Promise<void>((resolve, reject) => {
      if (this.#state === "connected") resolve();
      else this.#connectWaiters.push({ resolve, reject });
    });
    // Fire-and-forget `connect()` must not leave an unhandled rejection behind.
    done.catch(() => {});
    if (!this.#wanted) {
      this.#wanted = true;
      this.#attempt = 0;
      void this.#open();
    }
    return done;
  }

  /**
   * Closes the connection and stops reconnecting. Commands waiting (sent or queued)
   * reject with `closed`. Subscriptions are kept: a later `connect()` resumes them.
   */
  close(): void {
    const was = this.#state;
    this.#wanted = false;
    this.#generation++;
    this.#clearTimers();
    const ws = this.#ws;
    this.#ws = null;
    if (ws) {
      detach(ws);
      try {
        ws.close(1000, "client closed");
      } catch {
        // already closing
      }
    }
    this.#stopStream();
    this.#current = null;
    this.#sseOpenTopics = new Set();
    const error = new StratusError("closed", "the client was closed");
    this.#failPending(error);
    for (const q of this.#queue.splice(0)) this.#settle(q.pending, null, error);
    for (const sub of this.#subs.values()) this.#resetSubscription(sub);
    for (const w of this.#connectWaiters.splice(0)) w.reject(error);
    this.#setState("disconnected");
    if (was !== "disconnected") this.emit("disconnected", { code: 1000, reason: "client closed", reconnect: false });
  }

  /** One connection attempt over the current transport. */
  async #open(): Promise<void> {
    const generation = ++this.#generation;
    this.#setState("connecting");
    const transport = this.#transports[this.#index] ?? "websocket";
    let token: string | null = null;
    if (this.#options.getToken) {
      try {
        token = await this.#takeToken(transport === "sse");
      } catch (cause) {
        if (generation !== this.#generation) return;
        this.emit("error", new StratusError("token", `getToken() failed: ${describe(cause)}`, { cause }));
        this.#scheduleReconnect(1006, "no token");
        return;
      }
      if (generation !== this.#generation) return;
    }
    if (transport === "sse") void this.#openSse(generation, token);
    else this.#openWebSocket(token);
  }

  /**
   * A token from `getToken()` (which must be set): reason `expired` after a close for
   * an expired token or, over SSE, when the last token's `exp` has passed.
   */
  async #takeToken(sse: boolean): Promise<string> {
    const getToken = this.#options.getToken!;
    const expired =
      (this.#lastClose?.code === 1008 && this.#lastClose.reason === "token expired") ||
      (sse && this.#lastToken !== null && tokenExpired(this.#lastToken));
    const token = await getToken({ reason: expired ? "expired" : "connect" });
    if (typeof token !== "string") throw new TypeError("getToken() must return a string");
    this.#lastToken = token;
    return token;
  }

  #openWebSocket(token: string | null): void {
    const url = new URL(this.url);
    const protocols = [SUBPROTOCOL, ...this.#options.protocols];
    if (token !== null) {
      if (this.#options.tokenIn === "protocol") protocols.push(`bearer.${token}`);
      else url.searchParams.set("token", token);
    }
    const Impl = this.#options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!Impl) {
      this.emit(
        "error",
        new StratusError("transport", "no WebSocket implementation: pass options.WebSocket (Node 20 needs --experimental-websocket)"),
      );
      this.#attemptFailed(1006, "no WebSocket implementation");
      return;
    }
    let ws: WebSocketLike;
    try {
      ws = new Impl(url.toString(), protocols);
    } catch (cause) {
      this.emit("error", new StratusError("transport", `the WebSocket could not be created: ${describe(cause)}`, { cause }));
      this.#attemptFailed(1006, "the WebSocket could not be created");
      return;
    }
    this.#ws = ws;
    this.#wsOpened = false;
    ws.binaryType = "arraybuffer";
    if (this.#options.connectTimeout > 0) {
      this.#connectTimer = setTimeout(() => {
        this.#connectTimer = null;
        if (this.#ws !== ws) return;
        this.emit("error", new StratusError("timeout", `the connection did not open within ${this.#options.connectTimeout} ms`));
        this.#dropSocket(ws, 1006, "connect timeout");
      }, this.#options.connectTimeout);
    }
    ws.onopen = () => {
      if (this.#ws !== ws) return;
      this.#wsOpened = true;
      if (this.#connectTimer !== null) clearTimeout(this.#connectTimer);
      this.#connectTimer = null;
      if (ws.protocol !== SUBPROTOCOL) {
        this.emit(
          "error",
          new StratusError("protocol_error", `the server answered the subprotocol ${JSON.stringify(ws.protocol)}, not ${SUBPROTOCOL}`),
        );
        this.#dropSocket(ws, 1006, "wrong subprotocol");
        return;
      }
      this.#onOpen(ws);
    };
    ws.onmessage = (event) => {
      if (this.#ws === ws) this.#receive(ws, event.data);
    };
    ws.onerror = () => {
      if (this.#ws !== ws) return;
      this.emit("error", new StratusError("transport", "the WebSocket failed"));
      // Some implementations (Node 20's, after a refused upgrade) never follow an error
      // with a close event: the connection is given up here, not there.
      this.#dropSocket(ws, 1006, "");
    };
    ws.onclose = (event) => {
      if (this.#ws !== ws) return;
      this.#dropSocket(ws, event.code, event.reason ?? "");
    };
  }

  #onOpen(ws: WebSocketLike): void {
    this.#attempt = 0;
    this.#lastClose = null;
    this.#kept = "websocket";
    this.#current = "websocket";
    this.#fallbackConfirmed = false;
    this.#setState("connected");
    this.emit("transport", "websocket");
    this.emit("connected", { transport: "websocket", url: this.url, protocol: ws.protocol });
    for (const w of this.#connectWaiters.splice(0)) w.resolve();
    if (this.#ws !== ws) return; // a listener closed it
    // Subscriptions first: a queued publish may need its topic subscribed.
    for (const sub of this.#subs.values()) this.#sendSubscribe(sub);
    for (const q of this.#queue.splice(0)) {
      if (this.#ws !== ws) {
        this.#settle(q.pending, null, new StratusError("disconnected", "the connection closed before the command was sent"));
        continue;
      }
      this.#pending.set(q.id, q.pending);
      q.pending.sentAt = now();
      ws.send(JSON.stringify(q.frame));
    }
  }

  /** The connection is gone (closed, failed, or abandoned by us): clean up and maybe reconnect. */
  #dropSocket(ws: WebSocketLike, code: number, reason: string): void {
    if (this.#ws !== ws) return;
    this.#ws = null;
    this.#inbound = null;
    detach(ws);
    try {
      ws.close();
    } catch {
      // already closed
    }
    if (this.#connectTimer !== null) clearTimeout(this.#connectTimer);
    this.#connectTimer = null;
    this.#lastClose = { code, reason };
    this.#failPending(new StratusError("disconnected", `the connection closed (${code}${reason ? ` ${reason}` : ""}) before the reply`));
    for (const sub of this.#subs.values()) this.#resetSubscription(sub);
    if (this.#wsOpened) this.#scheduleReconnect(code, reason);
    else this.#attemptFailed(code, reason);
  }

  /**
   * The attempt failed before its transport opened: the next transport at once, or, after
   * the last one (or when the kept transport failed), the backoff delay and the list's head.
   */
  #attemptFailed(code: number, reason: string): void {
    const failed = this.#transports[this.#index];
    if (this.#kept === failed) {
      this.#kept = null;
      this.#index = 0;
    } else if (this.#index + 1 < this.#transports.length) {
      this.#index++;
      this.#current = null;
      if (this.#wanted) void this.#open();
      return;
    } else {
      this.#index = 0;
    }
    this.#scheduleReconnect(code, reason);
  }

  #scheduleReconnect(code: number, reason: string): void {
    this.#ws = null;
    this.#current = null;
    this.#fallbackConfirmed = false;
    if (!this.#wanted) {
      this.#setState("disconnected");
      this.emit("disconnected", { code, reason, reconnect: false });
      return;
    }
    const delay = backoffDelay(this.#attempt++, this.#options.backoff, this.#options.random);
    this.#setState("connecting");
    this.emit("disconnected", { code, reason, reconnect: true, delay });
    if (!this.#wanted) return; // a listener called close()
    if (this.#reconnectTimer !== null) clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = setTimeout(() => {
      this.#reconnectTimer = null;
      if (this.#wanted) void this.#open();
    }, delay);
  }

  #clearTimers(): void {
    if (this.#reconnectTimer !== null) clearTimeout(this.#reconnectTimer);
    if (this.#connectTimer !== null) clearTimeout(this.#connectTimer);
    this.#reconnectTimer = this.#connectTimer = null;
  }

  #setState(state: ClientState): void {
    const previous = this.#state;
    if (previous === state) return;
    this.#state = state;
    this.emit("state", state, previous);
  }

  // ---- receiving -----------------------------------------------------------------------

  #receive(ws: WebSocketLike, data: unknown): void {
    const isBlob = typeof Blob !== "undefined" && data instanceof Blob;
    if (this.#inbound === null && !isBlob) {
      this.#dispatchFrame(ws, data);
      return;
    }
    // Keep frames in order behind a Blob being read.
    const chain: Promise<void> = (this.#inbound ?? Promise.resolve())
      .then(async () => {
        const frame = isBlob ? new Uint8Array(await (data as Blob).arrayBuffer()) : data;
        if (this.#ws === ws) this.#dispatchFrame(ws, frame);
      })
      .finally(() => {
        if (this.#inbound === chain) this.#inbound = null;
      });
    this.#inbound = chain;
  }

  #dispatchFrame(ws: WebSocketLike, data: unknown): void {
    if (typeof data === "string") {
      let message: unknown;
      try {
        message = JSON.parse(data);
      } catch {
        message = undefined;
      }
      if (message === null || typeof message !== "object" || Array.isArray(message)) {
        this.#protocolError(ws, data);
        return;
      }
      this.#dispatch(message as Record<string, unknown>);
      return;
    }
    let bytes: Uint8Array;
    if (data instanceof ArrayBuffer) bytes = new Uint8Array(data);
    else if (ArrayBuffer.isView(data)) bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    else return;
    let pub;
    try {
      pub = decodeBinaryPublication(bytes);
    } catch (cause) {
      this.emit("error", new StratusError("protocol_error", `a malformed binary publication: ${describe(cause)}`, { cause }));
      return;
    }
    if (pub === null) return; // a binary frame of a kind this SDK does not know: ignored
    this.#subs.get(pub.topic)?.handlePublication({ ...pub, binary: true });
  }

  /**
   * A text frame that is not a JSON object. v1 never sends one, so the connection cannot
   * be trusted (a WebSocket implementation that fails to inflate a message may deliver it
   * as an empty string): report it and reconnect, resuming from the last offset delivered.
   */
  #protocolError(ws: WebSocketLike, data: string): void {
    const hint =
      data === ""
        ? " (an empty text frame: this WebSocket implementation probably failed to inflate a permessage-deflate " +
          "message; use another implementation or a server with --deflate off)"
        : "";
    this.emit(
      "error",
      new StratusError("protocol_error", `the server sent a text frame that is not a JSON object: ${JSON.stringify(data.slice(0, 80))}${hint}`),
    );
    this.#dropSocket(ws, 1006, "unreadable frame");
  }

  #dispatch(m: Record<string, unknown>): void {
    switch (m.type) {
      case "reply":
      case "error": {
        const id = m.id;
        const pending = typeof id === "number" ? this.#pending.get(id) : undefined;
        if (pending === undefined || typeof id !== "number") {
          // An error without an id (a malformed command) or a reply nobody waits for (timed out).
          if (m.type === "error") this.emit("error", StratusError.fromReply(m as unknown as ErrorReply));
          return;
        }
        this.#pending.delete(id);
        if (m.type === "reply") this.#settle(pending, m as ReplyBase, null);
        else this.#settle(pending, null, StratusError.fromReply(m as unknown as ErrorReply));
        return;
      }
      case "pub": {
        if (typeof m.topic !== "string") return;
        this.#subs.get(m.topic)?.handlePublication({
          topic: m.topic,
          data: m.data,
          offset: typeof m.offset === "string" ? m.offset : null,
          key: typeof m.key === "string" ? m.key : null,
          binary: false,
        });
        return;
      }
      case "gap":
        if (typeof m.topic === "string") this.#subs.get(m.topic)?.handleGap(m as unknown as GapNotice);
        return;
      case "skip":
        if (typeof m.topic === "string") this.#subs.get(m.topic)?.handleSkip(m as unknown as SkipNotice);
        return;
      case "unsubscribed": {
        if (typeof m.topic !== "string") return;
        const sub = this.#subs.get(m.topic);
        if (!sub) return;
        this.#subs.delete(m.topic);
        sub.handleUnsubscribed(m as unknown as UnsubscribedNotice);
        return;
      }
      case "presence":
        if (typeof m.topic === "string") this.#subs.get(m.topic)?.handlePresence(m as unknown as PresenceNotice);
        return;
      case "occupancy":
        if (typeof m.topic === "string") this.#subs.get(m.topic)?.handleOccupancy(m as unknown as OccupancyNotice);
        return;
      case "refresh":
        void this.#onRefreshNotice(m as unknown as RefreshNotice);
        return;
      default:
        return; // a type this SDK does not know: ignored, as the protocol asks
    }
  }

  // ---- Server-Sent Events --------------------------------------------------------------

  /**
   * Whether commands are refused with `receive_only`: the client is on (or reconnecting
   * over) the SSE transport, which has no way to send them.
   */
  #receiveOnly(): boolean {
    return this.#wanted && this.#kept === "sse" && this.#transports[this.#index] === "sse";
  }

  /**
   * One attempt over SSE. A stream needs a topic, so without subscriptions (and to
   * confirm a fallback from a WebSocket) a topic-less request checks that the server
   * answers; otherwise the stream of the subscriptions is opened.
   */
  async #openSse(generation: number, token: string | null): Promise<void> {
    const fetchImpl = this.#fetch();
    if (!fetchImpl) {
      this.emit("error", new StratusError("transport", "no fetch implementation: pass options.fetch"));
      this.#attemptFailed(1006, "no fetch implementation");
      return;
    }
    const confirm =
      this.#kept !== "sse" && !this.#fallbackConfirmed && this.#transports.slice(0, this.#index).includes("websocket");
    if (confirm || (this.#wantedTopics().size === 0 && !this.#fallbackConfirmed)) {
      const result = await probe(this.#sseRequestUrl(new Map(), token), fetchImpl, this.#options.connectTimeout);
      if (generation !== this.#generation) return;
      if (result !== "ok") {
        this.#sseAttemptFailed(result, token);
        return;
      }
      if (confirm) {
        // The server answers HTTP. It may have been down when the WebSocket failed (a
        // restart): one more WebSocket attempt, at once, before settling for SSE.
        this.#fallbackConfirmed = true;
        this.#index = this.#transports.indexOf("websocket");
        void this.#open();
        return;
      }
    }
    const topics = this.#wantedTopics();
    if (topics.size === 0) {
      this.#onSseOpen(); // connected, with no stream until the first subscription
      return;
    }
    this.#sendStream(this.#newStream(topics), token);
  }

  #fetch(): typeof fetch | undefined {
    return this.#options.fetch ?? (globalThis as { fetch?: typeof fetch }).fetch;
  }

  /** The topics of the active subscriptions: what the stream must carry. */
  #wantedTopics(): Set<string> {
    const topics = new Set<string>();
    for (const sub of this.#subs.values()) if (sub.active) topics.add(sub.topic);
    return topics;
  }

  /**
   * Where each topic of a stream resumes (one `since` per topic, docs/protocol.md section
   * 21, so each resumes exactly): its own newest offset, or the `since` it asked for; for
   * a topic an earlier stream carried that has neither, just before the newest offset
   * delivered on any topic (it missed nothing until then); else `$` (live).
   */
  #streamPositions(topics: Set<string>): Map<string, string> {
    const moment = this.#sseNewest === null ? null : offsetBefore(this.#sseNewest);
    const positions = new Map<string, string>();
    for (const topic of topics) {
      const since = this.#subs.get(topic)?.resumeFrom().since;
      if (since !== undefined && (since === "$" || isOffset(since))) positions.set(topic, since);
      else if (moment !== null && this.#sseCarried.has(topic)) positions.set(topic, moment);
      else positions.set(topic, "$");
    }
    return positions;
  }

  #sseRequestUrl(positions: Map<string, string>, token: string | null): string {
    const url = new URL(this.sseUrl);
    for (const [topic, since] of positions) {
      url.searchParams.append("topic", topic);
      url.searchParams.append("since", since);
    }
    if (token !== null) url.searchParams.set("token", token);
    return url.toString();
  }

  #newStream(topics: Set<string>): SseStream {
    const added = new Set<string>();
    for (const t of topics) if (!this.#sseOpenTopics.has(t)) added.add(t);
    const stream: SseStream = { topics, added, since: new Map(), token: null, request: null, open: false };
    this.#stream = stream;
    return stream;
  }

  #sendStream(stream: SseStream, token: string | null): void {
    if (this.#stream !== stream) return;
    const fetchImpl = this.#fetch();
    if (!fetchImpl) {
      this.#onStreamEnd(stream, { kind: "failed", error: new TypeError("no fetch implementation: pass options.fetch") });
      return;
    }
    stream.since = this.#streamPositions(stream.topics);
    stream.token = token;
    stream.request = new EventStreamRequest({
      url: this.#sseRequestUrl(stream.since, token),
      fetch: fetchImpl,
      connectTimeout: this.#options.connectTimeout,
      idleTimeout: this.#options.sseIdleTimeout,
      onOpen: () => this.#onStreamOpen(stream),
      onEvent: (event) => this.#onStreamEvent(stream, event),
      onEnd: (end) => this.#onStreamEnd(stream, end),
    });
    stream.request.start();
  }

  #stopStream(): void {
    const stream = this.#stream;
    this.#stream = null;
    stream?.request?.close();
  }

  /** The connection is up over SSE (a stream opened, or the server answered and no stream is needed yet). */
  #onSseOpen(): void {
    this.#attempt = 0;
    this.#lastClose = null;
    this.#kept = "sse";
    this.#current = "sse";
    this.#fallbackConfirmed = false;
    this.#sseOpenTopics = new Set();
    this.#setState("connected");
    this.emit("transport", "sse");
    this.emit("connected", { transport: "sse", url: this.sseUrl, protocol: "" });
    for (const w of this.#connectWaiters.splice(0)) w.resolve();
    // What was queued while connecting cannot be sent over a receive-only stream.
    for (const q of this.#queue.splice(0)) this.#settle(q.pending, null, receiveOnlyError(q.pending.op, q.pending.topic));
  }

  #onStreamOpen(stream: SseStream): void {
    if (this.#stream !== stream) return;
    stream.open = true;
    if (this.#state !== "connected") {
      this.#onSseOpen();
      if (this.#stream !== stream) return; // a listener closed the client
    }
    this.#sseOpenTopics = new Set(stream.topics);
    for (const topic of stream.topics) {
      this.#sseCarried.add(topic);
      const since = stream.since.get(topic);
      const resumed = since !== undefined && isOffset(since);
      this.#subs.get(topic)?.handleStreamOpen({
        type: "reply",
        id: 0,
        op: "subscribe",
        topic,
        offset: resumed ? since : null,
        recovering: resumed,
      });
    }
    this.#scheduleSseSync(); // subscriptions made or ended while it opened
  }

  #onStreamEvent(stream: SseStream, event: ServerSentEvent): void {
    if (this.#stream !== stream) return;
    const name = event.type;
    if (event.id === undefined && SSE_NOTICES.has(name)) {
      const notice = parseObject(event.data);
      if (notice !== null && notice.type === name) {
        if (name === "unsubscribed" && typeof notice.topic === "string") {
          stream.topics.delete(notice.topic); // the server dropped it from the stream
          this.#sseOpenTopics.delete(notice.topic);
        }
        this.#dispatch(notice);
        if (stream.topics.size === 0) this.#scheduleSseSync(); // nothing left to carry: closed
        return;
      }
    }
    // A publication: the event is named for its topic, its id is the offset.
    const sub = this.#subs.get(name);
    if (!sub) return;
    const offset = event.id !== undefined && isOffset(event.id) ? event.id : null;
    const delivered = sub.handlePublication({ topic: name, data: this.#sseData(event.data), offset, key: null, binary: false });
    if (delivered && offset !== null && (this.#sseNewest === null || compareOffsets(offset, this.#sseNewest) > 0)) {
      this.#sseNewest = offset;
    }
  }

  #sseData(text: string): unknown {
    if (!this.#options.sseParseJson) return text;
    try {
      return JSON.parse(text);
    } catch {
      return text;
    }
  }

  #onStreamEnd(stream: SseStream, end: EventStreamEnd): void {
    if (this.#stream !== stream) return;
    this.#stream = null;
    if (this.#state !== "connected") {
      this.#sseAttemptFailed(end, stream.token);
      return;
    }
    const refusedTopics = !stream.open && end.kind === "refused" && (end.status === 400 || end.status === 403);
    if (refusedTopics && stream.added.size > 0) {
      // The stream before these topics were added was accepted: the refusal is theirs,
      // as a refused subscribe is on a WebSocket. They fail; the stream reopens without them.
      const refusal = this.#streamError(end, stream.token).error;
      const code = refusal?.code ?? "forbidden";
      const message = refusal?.message ?? `the server refused the event stream (${end.status})`;
      for (const topic of stream.added) {
        const sub = this.#subs.get(topic);
        if (!sub) continue;
        this.#subs.delete(topic);
        sub.fail(new StratusError(code, message, { op: "subscribe", topic }));
      }
      this.#scheduleSseSync();
      return;
    }
    const { code, reason, error } = this.#streamError(end, stream.token);
    if (error) this.emit("error", error);
    this.#sseDropped(code, reason);
  }

  /** The connection over SSE is gone (its stream dropped, or a reopen failed): reconnect, resuming. */
  #sseDropped(code: number, reason: string): void {
    this.#stopStream();
    this.#lastClose = { code, reason };
    this.#current = null;
    this.#sseOpenTopics = new Set();
    for (const sub of this.#subs.values()) this.#resetSubscription(sub);
    this.#scheduleReconnect(code, reason);
  }

  /** An SSE attempt failed before the connection was up. */
  #sseAttemptFailed(end: EventStreamEnd, token: string | null): void {
    const { code, reason, error } = this.#streamError(end, token);
    if (error) this.emit("error", error);
    this.#lastClose = { code, reason };
    this.#attemptFailed(code, reason);
  }

  /** What an ended request means: the error to report (if any), and the close code and reason it counts as. */
  #streamError(end: EventStreamEnd, token: string | null): { code: number; reason: string; error: StratusError | null } {
    const expired = { code: 1008, reason: "token expired" };
    switch (end.kind) {
      case "refused": {
        const detail = end.body ? `: ${end.body}` : "";
        if (end.status === 401) {
          // As a WebSocket closed with 1008 "token expired": the next getToken() says "expired".
          return { ...expired, error: new StratusError("invalid_token", `the server refused the token (401)${detail}`) };
        }
        const codes: Record<number, string> = { 400: "bad_request", 403: "forbidden", 429: "rate_limited", 503: "unavailable" };
        const errorCode = end.status === 0 ? "protocol_error" : (codes[end.status] ?? "transport");
        const what = end.status === 0 ? "the server's answer is" : `the server refused the event stream (${end.status})`;
        return { code: 1006, reason: `HTTP ${end.status}`, error: new StratusError(errorCode, `${what}${detail}`) };
      }
      case "timeout":
        return { code: 1006, reason: "connect timeout", error: new StratusError("timeout", `the event stream did not open within ${end.ms} ms`) };
      case "failed":
        return {
          code: 1006,
          reason: "",
          error: new StratusError("transport", `the event stream failed: ${describe(end.error)}`, { cause: end.error }),
        };
      case "ended":
        // The server ends a stream when its token expires (there is no refresh over SSE).
        if (token !== null && tokenExpired(token)) return { ...expired, error: null };
        return { code: 1006, reason: "the event stream ended", error: null };
      case "idle":
        return { code: 1006, reason: "idle", error: new StratusError("timeout", `nothing arrived on the event stream for ${end.ms} ms`) };
      case "too_large":
        return { code: 1006, reason: "unreadable stream", error: new StratusError("protocol_error", end.message) };
    }
  }

  /** Reopens the stream with the subscriptions' topics, once for all the changes made in one go. */
  #scheduleSseSync(): void {
    if (this.#sseSyncQueued) return;
    this.#sseSyncQueued = true;
    queueMicrotask(() => {
      this.#sseSyncQueued = false;
      this.#sseSync();
    });
  }

  #sseSync(): void {
    if (this.#state !== "connected" || this.#current !== "sse") return;
    const wanted = this.#wantedTopics();
    const stream = this.#stream;
    if (stream ? stream.topics.size > 0 && sameSet(stream.topics, wanted) : wanted.size === 0) return;
    this.#stopStream();
    if (wanted.size === 0) return; // still connected; no stream until the next subscription
    void this.#reopenStream(this.#newStream(wanted));
  }

  async #reopenStream(stream: SseStream): Promise<void> {
    let token: string | null = null;
    if (this.#options.getToken) {
      try {
        token = await this.#takeToken(true);
      } catch (cause) {
        if (this.#stream !== stream) return;
        this.emit("error", new StratusError("token", `getToken() failed: ${describe(cause)}`, { cause }));
        this.#sseDropped(1006, "no token");
        return;
      }
    }
    this.#sendStream(stream, token);
  }

  // ---- tokens --------------------------------------------------------------------------

  async #onRefreshNotice(notice: RefreshNotice): Promise<void> {
    const getToken = this.#options.getToken;
    if (!getToken) {
      this.emit("error", new StratusError("token", "the server asked for a token refresh, but the client has no getToken()"));
      return;
    }
    const ws = this.#ws;
    let token: string;
    try {
      token = await getToken({ reason: "refresh", expires: notice.expires });
      if (typeof token !== "string") throw new TypeError("getToken() must return a string");
    } catch (cause) {
      this.emit("error", new StratusError("token", `getToken() failed: ${describe(cause)}`, { cause }));
      return;
    }
    // On a new connection the token was fetched at connect: this refresh is moot.
    if (ws === null || this.#ws !== ws) return;
    try {
      const reply = (await this.#command("refresh", { token }, { internal: true })) as RefreshReply;
      this.emit("refreshed", reply);
    } catch (error) {
      this.emit("error", asStratusError(error));
    }
  }

  /**
   * Replaces the connection's token (`refresh`, docs/protocol.md 5.5) with `token`, or with
   * one from `getToken({reason: "refresh"})`. Rejects with `invalid_token` when the server
   * refuses it (the old token stays in force).
   */
  async refresh(token?: string): Promise<RefreshReply> {
    if (this.#receiveOnly()) throw receiveOnlyError("refresh", null);
    if (token === undefined) {
      if (!this.#options.getToken) throw new StratusError("invalid_argument", "refresh() without a token needs options.getToken");
      token = await this.#options.getToken({ reason: "refresh" });
    }
    if (typeof token !== "string") throw new StratusError("invalid_argument", "the token must be a string");
    const reply = (await this.#command("refresh", { token })) as RefreshReply;
    this.emit("refreshed", reply);
    return reply;
  }

  // ---- subscriptions -------------------------------------------------------------------

  /**
   * Subscribes to a topic (or returns the active subscription to it). The subscription
   * lives until `unsubscribe()`, a refusal that retrying cannot fix, or an `unsubscribed`
   * notice; across reconnects it resumes from the last offset it delivered.
   */
  subscribe(topic: string, options: SubscribeOptions = {}): Subscription {
    if (typeof topic !== "string") throw new StratusError("invalid_argument", "the topic must be a string");
    if (options.since !== undefined && options.since !== "$" && !isOffset(options.since)) {
      throw new StratusError("invalid_argument", `since must be "$" or an offset such as "1732000000000-0": ${JSON.stringify(options.since)}`);
    }
    const existing = this.#subs.get(topic);
    if (existing && existing.active) return existing;
    const sub = new Subscription(this, topic, options);
    this.#sseCarried.delete(topic); // a new subscription: nothing owed from before it
    this.#subs.set(topic, sub);
    if (this.#state === "connected") {
      if (this.#current === "sse") this.#scheduleSseSync();
      else this.#sendSubscribe(sub);
    }
    return sub;
  }

  #sendSubscribe(sub: Subscription): void {
    if (this.#subs.get(sub.topic) !== sub || !sub.active || this.#state !== "connected" || this.#current !== "websocket") return;
    if (sub.retryTimer !== null) return; // a retry is scheduled
    const { since, fromTracker } = sub.resumeFrom();
    const fields: Record<string, unknown> = { topic: sub.topic };
    if (since !== undefined) fields.since = since;
    const ws = this.#ws;
    this.#request(
      "subscribe",
      fields,
      { internal: true, timeout: 0 },
      (reply) => sub.handleReply(reply as SubscribeReply),
      (error: StratusError) => {
        if (this.#subs.get(sub.topic) !== sub || !sub.active) return;
        if (error.code === "disconnected" || error.code === "closed") return; // resubscribed on reconnect
        if (error.code === "no_history" && fromTracker) {
          // The server no longer keeps a history for this topic (its configuration changed):
          // what came meanwhile cannot be recovered; say so and continue from now.
          sub.forgetPosition();
          sub.handleGap({
            type: "gap",
            topic: sub.topic,
            reason: "the server keeps no history for this topic any more; resubscribed without resuming",
          });
          this.#sendSubscribe(sub);
          return;
        }
        if (error.retryable) {
          sub.handleRetryableError(error);
          const delay = backoffDelay(sub.retryAttempt++, this.#options.backoff, this.#options.random);
          sub.retryTimer = setTimeout(() => {
            sub.retryTimer = null;
            if (this.#ws === ws) this.#sendSubscribe(sub);
          }, delay);
          return;
        }
        this.#subs.delete(sub.topic);
        sub.fail(error);
      },
    );
  }

  #resetSubscription(sub: Subscription): void {
    if (sub.retryTimer !== null) clearTimeout(sub.retryTimer);
    sub.retryTimer = null;
    sub.handleDisconnect();
  }

  /** @internal (SubscriptionHost) */
  async unsubscribeTopic(sub: Subscription): Promise<void> {
    if (this.#subs.get(sub.topic) === sub) this.#subs.delete(sub.topic);
    if (this.#state !== "connected") return; // the next connection will not have it
    if (this.#current === "sse") {
      this.#scheduleSseSync(); // the stream reopens without it
      return;
    }
    try {
      await this.#command("unsubscribe", { topic: sub.topic }, { internal: true });
    } catch {
      // not_subscribed: already so; disconnected: the server dropped it with the connection.
    }
  }

  // ---- commands ------------------------------------------------------------------------

  /**
   * The `unsubscribe` command itself (docs/protocol.md 5.2): ends the local subscription to
   * the topic, if any, and resolves with the server's reply, or rejects (`not_subscribed`
   * when the connection was not subscribed). `Subscription.unsubscribe()` is the usual
   * way, and treats `not_subscribed` as done.
   */
  unsubscribe(topic: string): Promise<ReplyBase> {
    const sub = this.#subs.get(topic);
    if (sub) {
      this.#subs.delete(topic);
      sub.end("unsubscribed", new StratusError("unsubscribed", "unsubscribed before the server confirmed", { op: "subscribe", topic }));
    }
    if (this.#receiveOnly()) {
      // Over SSE the stream is the subscription: it reopens without the topic.
      if (!sub) return reject("not_subscribed", `not subscribed to ${JSON.stringify(topic)}`, "unsubscribe", topic);
      this.#scheduleSseSync();
      return Promise.resolve({ type: "reply", id: 0, op: "unsubscribe", topic } as ReplyBase);
    }
    return this.#command("unsubscribe", { topic });
  }

  /**
   * Publishes on a topic (`publish`, docs/protocol.md 5.3): `{data}` as a JSON publication
   * or `{text}` as a text one. Resolves with the reply (its `offset`, null without history).
   */
  publish(topic: string, body: PublishBody, options: PublishOptions = {}): Promise<PublishReply> {
    if (typeof topic !== "string") return reject("invalid_argument", "the topic must be a string", "publish");
    if (body === null || typeof body !== "object") {
      return reject("invalid_argument", "publish takes {data: <JSON value>} or {text: <string>}", "publish", topic);
    }
    const hasData = body.data !== undefined;
    const hasText = body.text !== undefined;
    if (hasData === hasText) {
      return reject("invalid_argument", "publish takes exactly one of {data} and {text}", "publish", topic);
    }
    if (hasText && typeof body.text !== "string") return reject("invalid_argument", "text must be a string", "publish", topic);
    if (hasData && body.data === null) {
      return reject("invalid_argument", "null cannot be published from a connection (it counts as no data)", "publish", topic);
    }
    const fields: Record<string, unknown> = { topic };
    if (hasData) fields.data = body.data;
    else fields.text = body.text;
    if (options.key !== undefined) fields.key = options.key;
    return this.#command("publish", fields) as Promise<PublishReply>;
  }

  /** Reads a page of a topic's history (`history`, docs/protocol.md 5.4); binary payloads come as bytes. */
  async history(topic: string, options: HistoryOptions = {}): Promise<HistoryPage> {
    const fields: Record<string, unknown> = { topic };
    if (options.since !== undefined) fields.since = options.since;
    if (options.limit !== undefined) fields.limit = options.limit;
    const reply = (await this.#command("history", fields)) as ReplyBase & { publications?: unknown; topic?: string };
    const raw = Array.isArray(reply.publications) ? (reply.publications as Record<string, unknown>[]) : [];
    const publications: Publication[] = raw.map((p) => {
      const binary = p.encoding === "base64" && typeof p.data === "string";
      return {
        topic,
        data: binary ? base64ToBytes(p.data as string) : p.data,
        offset: typeof p.offset === "string" ? p.offset : null,
        key: typeof p.key === "string" ? p.key : null,
        binary,
      };
    });
    return { ...reply, publications } as HistoryPage;
  }

  /** Who is on a topic (`presence`). Rejects with `no_presence` where the namespace has presence off. */
  presence(topic: string): Promise<PresenceReply> {
    return this.#command("presence", { topic }) as Promise<PresenceReply>;
  }

  /** How many connections and users a topic has (`occupancy`). */
  occupancy(topic: string): Promise<OccupancyReply> {
    return this.#command("occupancy", { topic }) as Promise<OccupancyReply>;
  }

  /** An application-level round trip (`ping`); the reply carries the measured `rtt`. */
  async ping(): Promise<PingReply> {
    const started = now();
    const reply = await this.#command("ping", {});
    return { ...reply, rtt: now() - started } as PingReply;
  }

  /**
   * Sends a command, or queues it while disconnected; settles with its reply or error.
   * Internal commands are sent only on an open connection (else they fail with
   * `disconnected`) and are not capped: there is at most one per subscription.
   */
  #command(op: string, fields: Record<string, unknown>, opts: { internal?: boolean; timeout?: number } = {}): Promise<ReplyBase> {
    return new Promise<ReplyBase>((resolve, reject) => this.#request(op, fields, opts, resolve, reject));
  }

  /**
   * `#command` with plain callbacks, called synchronously as the reply is read: a
   * subscribe reply must move the subscription's position before the frames that follow
   * it in the same read are dispatched (a promise would run its callback after them).
   */
  #request(
    op: string,
    fields: Record<string, unknown>,
    opts: { internal?: boolean; timeout?: number },
    resolve: (reply: ReplyBase) => void,
    reject: (error: StratusError) => void,
  ): void {
    const internal = opts.internal ?? false;
    const topic = typeof fields.topic === "string" ? fields.topic : null;
    if (!internal && this.#receiveOnly()) {
      reject(receiveOnlyError(op, topic));
      return;
    }
    {
      const connected = this.#state === "connected" && this.#ws !== null && this.#ws.readyState === OPEN;
      if (internal && !connected) {
        reject(new StratusError("disconnected", "not connected", { op, topic }));
        return;
      }
      if (!internal) {
        if (connected && this.#countPending() >= this.#options.maxPending) {
          reject(new StratusError("queue_full", `${this.#options.maxPending} commands already wait for their replies`, { op, topic }));
          return;
        }
        if (!connected && this.#queue.length >= this.#options.maxOfflineQueue) {
          reject(new StratusError("queue_full", `the offline queue is full (${this.#options.maxOfflineQueue} commands)`, { op, topic }));
          return;
        }
      }
      const id = this.#takeId();
      const frame = { id, op, ...fields };
      const pending: Pending = { op, topic, sentAt: now(), timer: null, resolve, reject, internal };
      const timeout = opts.timeout ?? this.#options.commandTimeout;
      if (timeout > 0) {
        pending.timer = setTimeout(() => {
          pending.timer = null;
          this.#pending.delete(id);
          const at = this.#queue.findIndex((q) => q.id === id);
          if (at >= 0) this.#queue.splice(at, 1);
          reject(new StratusError("timeout", `no reply to ${op} within ${timeout} ms`, { op, topic }));
        }, timeout);
      }
      if (connected) {
        this.#pending.set(id, pending);
        this.#ws!.send(JSON.stringify(frame));
      } else {
        this.#queue.push({ id, frame, pending });
      }
    }
  }

  #countPending(): number {
    let n = 0;
    for (const p of this.#pending.values()) if (!p.internal) n++;
    return n;
  }

  #takeId(): number {
    const id = this.#nextId;
    this.#nextId = id >= Number.MAX_SAFE_INTEGER ? 1 : id + 1;
    return id;
  }

  #settle(pending: Pending, reply: ReplyBase | null, error: StratusError | null): void {
    if (pending.timer !== null) clearTimeout(pending.timer);
    pending.timer = null;
    if (error) pending.reject(error);
    else pending.resolve(reply!);
  }

  #failPending(error: StratusError): void {
    const all = [...this.#pending.values()];
    this.#pending.clear();
    for (const p of all) {
      this.#settle(p, null, new StratusError(error.code, error.message, { op: p.op, topic: p.topic }));
    }
  }
}

function detach(ws: WebSocketLike): void {
  ws.onopen = ws.onclose = ws.onmessage = null;
  // Keep a no-op error handler: some implementations throw on an unhandled error event.
  ws.onerror = () => {};
}

function now(): number {
  return typeof performance !== "undefined" ? performance.now() : Date.now();
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function asStratusError(error: unknown): StratusError {
  return error instanceof StratusError ? error : new StratusError("transport", describe(error), { cause: error });
}

function reject<T>(code: string, message: string, op: string, topic: string | null = null): Promise<T> {
  return Promise.reject(new StratusError(code, message, { op, topic }));
}

function receiveOnlyError(op: string, topic: string | null): StratusError {
  return new StratusError("receive_only", `${op} cannot be sent over Server-Sent Events (receive-only)`, { op, topic });
}

/** The default event-stream URL: the WebSocket URL's scheme to HTTP, its last path segment `sse`, no query. */
function sseUrlFor(ws: URL): string {
  const url = new URL(ws.toString());
  url.protocol = url.protocol === "wss:" ? "https:" : "http:";
  url.search = "";
  url.hash = "";
  const parts = url.pathname.split("/");
  parts[parts.length - 1] = "sse";
  url.pathname = parts.join("/");
  return url.toString();
}

/** Whether a JWT's `exp` has passed (within a second); false for anything that is not a JWT with an `exp`. */
function tokenExpired(token: string): boolean {
  const payload = token.split(".")[1];
  if (payload === undefined) return false;
  try {
    const b64 = payload.replace(/-/g, "+").replace(/_/g, "/");
    const claims: unknown = JSON.parse(atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4)));
    const exp = claims !== null && typeof claims === "object" ? (claims as { exp?: unknown }).exp : undefined;
    return typeof exp === "number" && exp * 1000 <= Date.now() + 1000;
  } catch {
    return false;
  }
}

function parseObject(text: string): Record<string, unknown> | null {
  try {
    const v: unknown = JSON.parse(text);
    return v !== null && typeof v === "object" && !Array.isArray(v) ? (v as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

function sameSet<T>(a: ReadonlySet<T>, b: ReadonlySet<T>): boolean {
  if (a.size !== b.size) return false;
  for (const x of a) if (!b.has(x)) return false;
  return true;
}
