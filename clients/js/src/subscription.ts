/**
 * One topic's subscription: its state, its position (the last offset delivered, for
 * resuming and for dropping duplicates) and its events. The client drives it; the
 * application listens to it.
 */

import { Emitter } from "./emitter.js";
import { StratusError } from "./errors.js";
import { OffsetTracker, isOffset } from "./offset.js";
import type {
  GapNotice,
  OccupancyNotice,
  PresenceMember,
  PresenceNotice,
  Publication,
  SkipNotice,
  SubscribeReply,
  UnsubscribedNotice,
} from "./protocol.js";

/**
 * - `subscribing`: waiting for the server's reply (at first, and again after each reconnect);
 * - `subscribed`: the server confirmed; publications flow;
 * - `unsubscribed`: ended by `unsubscribe()` or by the server (an `unsubscribed` notice);
 * - `failed`: the server refused it with an error that retrying will not fix.
 */
export type SubscriptionState = "subscribing" | "subscribed" | "unsubscribed" | "failed";

export interface SubscriptionEvents {
  /** A publication, each once, in order (duplicates by offset are dropped). */
  message: [publication: Publication];
  /** Publications before the next one may be missing. */
  gap: [notice: GapNotice];
  /** The conflate policy skipped publications. */
  skip: [notice: SkipNotice];
  /** One per member that joined (from a `presence` push). */
  join: [member: PresenceMember, notice: PresenceNotice];
  /** One per member that left (from a `presence` push). */
  leave: [member: PresenceMember, notice: PresenceNotice];
  /** A whole `presence` push. */
  presence: [notice: PresenceNotice];
  /** An `occupancy` push. */
  occupancy: [notice: OccupancyNotice];
  /** The server ended the subscription (e.g. a refreshed token no longer allows the topic). */
  unsubscribed: [notice: UnsubscribedNotice];
  /** The server confirmed the subscription (at first and after every reconnect). */
  subscribed: [reply: SubscribeReply];
  /** The subscription waits for the server again (after a disconnect). */
  subscribing: [];
  /** A refusal: retried with backoff when `error.retryable`, else the subscription failed. */
  error: [error: StratusError];
  /** The state changed. */
  state: [state: SubscriptionState, previous: SubscriptionState];
}

export interface SubscribeOptions {
  /**
   * Where to start: `"$"` (now, and report the position) or an offset to resume after.
   * Only used for the first subscribe; after that the SDK resumes from the last offset it
   * delivered.
   */
  since?: string;
}

/** What a subscription needs from its client. @internal */
export interface SubscriptionHost {
  /** Sends `unsubscribe` if connected; resolves when done (or not needed). */
  unsubscribeTopic(sub: Subscription): Promise<void>;
}

type Settle = { resolve: (reply: SubscribeReply) => void; reject: (error: StratusError) => void };

export class Subscription extends Emitter<SubscriptionEvents> {
  readonly topic: string;
  /** Resolves with the first subscribe reply; rejects if the subscription fails or ends before it. */
  readonly ready: Promise<SubscribeReply>;

  #state: SubscriptionState = "subscribing";
  #host: SubscriptionHost;
  #tracker = new OffsetTracker();
  #since: string | undefined;
  #settle: Settle | null;
  /** Retries after retryable refusals: attempt count and timer. @internal */
  retryAttempt = 0;
  /** @internal */
  retryTimer: ReturnType<typeof setTimeout> | null = null;

  /** @internal */
  constructor(host: SubscriptionHost, topic: string, options: SubscribeOptions = {}) {
    super();
    this.#host = host;
    this.topic = topic;
    this.#since = options.since;
    let settle!: Settle;
    this.ready = new Promise<SubscribeReply>((resolve, reject) => {
      settle = { resolve, reject };
    });
    // An application that never looks at `ready` must not get an unhandled rejection.
    this.ready.catch(() => {});
    this.#settle = settle;
  }

  get state(): SubscriptionState {
    return this.#state;
  }

  /** The offset of the last publication delivered (or where the subscription started); null without one. */
  get offset(): string | null {
    return this.#tracker.last;
  }

  /** Whether the subscription still wants the server's publications. */
  get active(): boolean {
    return this.#state === "subscribing" || this.#state === "subscribed";
  }

  /**
   * Ends the subscription: no more events, no resubscribe on reconnect. Resolves when the
   * server has confirmed (or at once when disconnected); never rejects.
   */
  unsubscribe(): Promise<void> {
    if (!this.active) return Promise.resolve();
    this.end("unsubscribed", new StratusError("unsubscribed", "unsubscribed before the server confirmed", { op: "subscribe", topic: this.topic }));
    return this.#host.unsubscribeTopic(this);
  }

  // ---- driven by the client ------------------------------------------------------------

  /**
   * The `since` of the next subscribe command: the last offset seen, else what the
   * application asked for. @internal
   */
  resumeFrom(): { since: string | undefined; fromTracker: boolean } {
    const last = this.#tracker.last;
    if (last !== null) return { since: last, fromTracker: true };
    return { since: this.#since, fromTracker: false };
  }

  /** Forget the position (the server no longer has a history to resume from). @internal */
  forgetPosition(): void {
    this.#tracker.reset(null);
    this.#since = undefined;
  }

  /** @internal */
  handleReply(reply: SubscribeReply): void {
    if (!this.active) return;
    // Where the server says the subscription starts: the `since` sent, or earlier when the
    // server's history was reset (a restarted node); every publication after it follows.
    if (typeof reply.offset === "string") this.#tracker.reset(reply.offset);
    this.#subscribed(reply);
  }

  /**
   * An event stream carrying the topic opened (SSE): subscribed, if it was not already.
   * The position stays: the stream's resume point is not this topic's. @internal
   */
  handleStreamOpen(reply: SubscribeReply): void {
    if (!this.active || this.#state === "subscribed") return;
    // An offset asked for with `since` is where it starts, as a subscribe reply says on a
    // WebSocket: nothing at or before it is delivered.
    if (this.#tracker.last === null && this.#since !== undefined && isOffset(this.#since)) this.#tracker.reset(this.#since);
    this.#subscribed(reply);
  }

  #subscribed(reply: SubscribeReply): void {
    this.retryAttempt = 0;
    this.#setState("subscribed");
    this.emit("subscribed", reply);
    if (this.#settle) {
      this.#settle.resolve(reply);
      this.#settle = null;
    }
  }

  /** A refusal the client will retry. @internal */
  handleRetryableError(error: StratusError): void {
    if (!this.active) return;
    this.emit("error", error);
  }

  /** A refusal that ends the subscription. @internal */
  fail(error: StratusError): void {
    if (!this.active) return;
    this.end("failed", error);
    this.emit("error", error);
  }

  /** The connection dropped: wait for the server again. @internal */
  handleDisconnect(): void {
    if (this.#state !== "subscribed") return;
    this.#setState("subscribing");
    this.emit("subscribing");
  }

  /** Whether it was delivered (not a duplicate, the subscription active). @internal */
  handlePublication(p: Publication): boolean {
    if (!this.active) return false;
    if (!this.#tracker.accept(p.offset)) return false; // a duplicate: at or before the last offset delivered
    this.emit("message", p);
    return true;
  }

  /** @internal */
  handleGap(n: GapNotice): void {
    if (this.active) this.emit("gap", n);
  }

  /** @internal */
  handleSkip(n: SkipNotice): void {
    if (this.active) this.emit("skip", n);
  }

  /** @internal */
  handlePresence(n: PresenceNotice): void {
    if (!this.active) return;
    this.emit("presence", n);
    for (const m of Array.isArray(n.joins) ? n.joins : []) this.emit("join", m, n);
    for (const m of Array.isArray(n.leaves) ? n.leaves : []) this.emit("leave", m, n);
  }

  /** @internal */
  handleOccupancy(n: OccupancyNotice): void {
    if (this.active) this.emit("occupancy", n);
  }

  /** @internal */
  handleUnsubscribed(n: UnsubscribedNotice): void {
    if (!this.active) return;
    this.end("unsubscribed", new StratusError("unsubscribed", n.reason, { op: "subscribe", topic: this.topic }));
    this.emit("unsubscribed", n);
  }

  /** Moves to a final state, settles `ready` and stops retrying. @internal */
  end(state: "unsubscribed" | "failed", error: StratusError): void {
    if (this.retryTimer !== null) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.#setState(state);
    if (this.#settle) {
      this.#settle.reject(error);
      this.#settle = null;
    }
  }

  #setState(state: SubscriptionState): void {
    const previous = this.#state;
    if (previous === state) return;
    this.#state = state;
    this.emit("state", state, previous);
  }
}
