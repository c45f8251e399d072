/**
 * One Server-Sent Events request (docs/protocol.md section 21) made with `fetch()` and
 * read from its streaming body: the response head, then events as the
 * {@link EventStreamParser} completes them, then how it ended. The client decides what
 * the ending means (reconnect, another transport, an error).
 *
 * Only a CORS "simple request": a plain GET without custom headers (the token and the
 * resume point travel in the query), so a page on another allowed origin needs no
 * preflight, which the server does not answer.
 *
 * Bounded in time: `connectTimeout` until the response head, then `idleTimeout` without
 * a byte (the server sends a heartbeat comment after `--ping-interval` of silence).
 * Bounded in memory by the parser's cap.
 */

import { EventStreamParser, EventStreamTooLarge, type ServerSentEvent } from "./sse.js";

/** How a request ended. After `close()` nothing is reported. */
export type EventStreamEnd =
  /** An answer other than a 200 event stream: `status` with the start of its body. */
  | { kind: "refused"; status: number; body: string }
  /** No answer within `connectTimeout`. */
  | { kind: "timeout"; ms: number }
  /** The request or the read failed (no server, a reset, a CORS refusal, ...). */
  | { kind: "failed"; error: unknown }
  /** The server closed the stream. */
  | { kind: "ended" }
  /** Nothing arrived, not even a heartbeat, for `idleTimeout`. */
  | { kind: "idle"; ms: number }
  /** A line or an event past the parser's cap. */
  | { kind: "too_large"; message: string };

export interface EventStreamOptions {
  url: string;
  fetch: typeof fetch;
  /** Milliseconds until the response head (0: no limit). */
  connectTimeout: number;
  /** Milliseconds without a byte once open before giving up (0: no limit). */
  idleTimeout: number;
  /** The parser's cap, in characters. */
  maxBuffered?: number;
  /** The 200 event stream arrived. */
  onOpen(): void;
  /** One event. */
  onEvent(event: ServerSentEvent): void;
  /** How it ended (once; never after `close()`). */
  onEnd(end: EventStreamEnd): void;
}

/** How much of a refusal's body is read for the error message. */
const REFUSAL_BODY = 512;

export class EventStreamRequest {
  #options: EventStreamOptions;
  #controller = new AbortController();
  #closed = false;
  #connectTimer: ReturnType<typeof setTimeout> | null = null;
  #idleTimer: ReturnType<typeof setTimeout> | null = null;
  #lastActivity = 0;

  constructor(options: EventStreamOptions) {
    this.#options = options;
  }

  /** Sends the request and reads the stream until it ends or `close()`. */
  start(): void {
    void this.#run();
  }

  /** Aborts the request; no callback is called after this. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#clearTimers();
    this.#controller.abort();
  }

  get closed(): boolean {
    return this.#closed;
  }

  #end(end: EventStreamEnd): void {
    if (this.#closed) return;
    this.close();
    this.#options.onEnd(end);
  }

  #clearTimers(): void {
    if (this.#connectTimer !== null) clearTimeout(this.#connectTimer);
    if (this.#idleTimer !== null) clearTimeout(this.#idleTimer);
    this.#connectTimer = this.#idleTimer = null;
  }

  async #run(): Promise<void> {
    const o = this.#options;
    if (o.connectTimeout > 0) {
      this.#connectTimer = setTimeout(() => {
        this.#connectTimer = null;
        this.#end({ kind: "timeout", ms: o.connectTimeout });
      }, o.connectTimeout);
    }
    // Called as a plain function: a browser's fetch called as a method of another object
    // throws "Illegal invocation".
    const fetchImpl = o.fetch;
    let response: Response;
    try {
      // Cookies go along across origins too, as they do with a WebSocket: a server whose
      // connect hook signs users in by cookie sees them (it allows credentials only to
      // the origins it lets in).
      response = await fetchImpl(o.url, { signal: this.#controller.signal, credentials: "include" });
    } catch (error) {
      this.#end({ kind: "failed", error });
      return;
    }
    if (this.#closed) {
      void response.body?.cancel().catch(() => {});
      return;
    }
    const type = response.headers.get("content-type") ?? "";
    if (response.status !== 200 || !/^text\/event-stream\b/i.test(type) || response.body === null) {
      // The connect timer still runs: a body that never ends cannot hold this here.
      const body = await readPrefix(response, REFUSAL_BODY);
      const status = response.status === 200 ? 0 : response.status;
      this.#end({ kind: "refused", status, body: status === 0 ? `not an event stream (content-type ${JSON.stringify(type)})` : body });
      return;
    }
    if (this.#connectTimer !== null) clearTimeout(this.#connectTimer);
    this.#connectTimer = null;
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    const parser = new EventStreamParser(o.maxBuffered);
    this.#lastActivity = Date.now();
    this.#armIdle();
    o.onOpen();
    try {
      for (;;) {
        if (this.#closed) break;
        const { value, done } = await reader.read();
        if (this.#closed) break;
        if (done) {
          this.#end({ kind: "ended" });
          return;
        }
        this.#lastActivity = Date.now();
        let events: ServerSentEvent[];
        try {
          events = parser.push(decoder.decode(value, { stream: true }));
        } catch (error) {
          if (!(error instanceof EventStreamTooLarge)) throw error;
          this.#end({ kind: "too_large", message: error.message });
          return;
        }
        for (const event of events) {
          if (this.#closed) break;
          o.onEvent(event);
        }
      }
    } catch (error) {
      this.#end({ kind: "failed", error });
      return;
    } finally {
      if (this.#closed) reader.cancel().catch(() => {});
    }
  }

  /** Checks for silence every `idleTimeout`, measured from the last byte. */
  #armIdle(): void {
    const ms = this.#options.idleTimeout;
    if (ms <= 0 || this.#closed) return;
    const wait = Math.max(1, this.#lastActivity + ms - Date.now());
    this.#idleTimer = setTimeout(() => {
      this.#idleTimer = null;
      if (this.#closed) return;
      if (Date.now() - this.#lastActivity >= ms) this.#end({ kind: "idle", ms });
      else this.#armIdle();
    }, wait);
  }
}

/**
 * Whether the server answers HTTP at `url`, without topics (used when no stream is
 * needed yet, and to confirm a fallback): `"ok"` when it answered as a Stratus server
 * does (400: a stream needs a topic; or an opaque cross-origin answer, which a page
 * cannot read); otherwise how the request ended.
 */
export async function probe(url: string, fetchImpl: typeof fetch, timeout: number): Promise<"ok" | EventStreamEnd> {
  const controller = new AbortController();
  let timedOut = false;
  const timer =
    timeout > 0
      ? setTimeout(() => {
          timedOut = true;
          controller.abort();
        }, timeout)
      : null;
  try {
    // no-cors: the probe only asks whether something answers; a page on another origin
    // gets an opaque answer, which says as much.
    const response = await fetchImpl(url, { signal: controller.signal, mode: "no-cors" });
    if (response.type === "opaque" || response.status === 400 || response.status === 200) {
      void response.body?.cancel().catch(() => {});
      return "ok";
    }
    return { kind: "refused", status: response.status, body: await readPrefix(response, REFUSAL_BODY) };
  } catch (error) {
    return timedOut ? { kind: "timeout", ms: timeout } : { kind: "failed", error };
  } finally {
    if (timer !== null) clearTimeout(timer);
  }
}

/** The first `limit` characters of a body (then the rest is dropped), "" when unreadable. */
async function readPrefix(response: Response, limit: number): Promise<string> {
  const body = response.body;
  if (body === null) return "";
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let text = "";
  try {
    while (text.length < limit) {
      const { value, done } = await reader.read();
      if (done) break;
      text += decoder.decode(value, { stream: true });
    }
  } catch {
    // a body that fails half-way: what was read is enough
  } finally {
    reader.cancel().catch(() => {});
  }
  return text.slice(0, limit).trim();
}
