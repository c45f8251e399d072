/**
 * The one error type the SDK rejects with and emits: a {@link StratusError} with a stable
 * `code` a program can switch on.
 *
 * Server codes are those of docs/protocol.md section 7 (sent in `{"type":"error"}`
 * replies); the SDK adds its own for what happens on this side of the wire.
 */

/** Error codes the server sends (docs/protocol.md, section 7), plus `no_presence`. */
export const SERVER_CODES = [
  "bad_request",
  "invalid_topic",
  "forbidden",
  "too_many_topics",
  "topic_full",
  "not_subscribed",
  "no_history",
  "rate_limited",
  "too_large",
  "overloaded",
  "unavailable",
  "invalid_token",
  "no_presence",
] as const;

/** Error codes the SDK itself produces. */
export const SDK_CODES = [
  /** The connection closed (or was never open) while the command waited for its reply. */
  "disconnected",
  /** The offline queue or the table of commands waiting for replies is full. */
  "queue_full",
  /** No reply within the command's timeout. */
  "timeout",
  /** `client.close()` was called: the client is done. */
  "closed",
  /** The subscription ended (by `unsubscribe()` or the server) before it was confirmed. */
  "unsubscribed",
  /** The server did not answer with the `stratus.v1` subprotocol, or sent a frame v1 does not allow. */
  "protocol_error",
  /** The WebSocket (or the event stream) could not be opened, or failed. */
  "transport",
  /** `getToken()` threw or returned something that is not a string. */
  "token",
  /** The arguments of a call were not valid (checked before anything is sent). */
  "invalid_argument",
  /**
   * The client is connected (or reconnecting) over Server-Sent Events, which only
   * receives: publish, history, presence, occupancy, refresh and ping cannot be sent.
   */
  "receive_only",
] as const;

export type ServerErrorCode = (typeof SERVER_CODES)[number];
export type SdkErrorCode = (typeof SDK_CODES)[number];
/** Every code a {@link StratusError} can carry (a newer server may send others: they pass through). */
export type ErrorCode = ServerErrorCode | SdkErrorCode;

/** Codes after which the same command may succeed later (docs/protocol.md, section 16). */
export const RETRYABLE_CODES: ReadonlySet<string> = new Set([
  "rate_limited",
  "overloaded",
  "unavailable",
  "topic_full",
  "disconnected",
  "timeout",
]);

/** An `{"type":"error"}` reply as the server sends it. */
export interface ErrorReply {
  type: "error";
  code: string;
  message: string;
  id: number | string | null;
  op: string | null;
  topic: string | null;
}

export class StratusError extends Error {
  /** The stable code: a server code (section 7) or one of the SDK's. */
  readonly code: ErrorCode | (string & {});
  /** The command's op, where there was one. */
  readonly op: string | null;
  /** The topic the command named, where there was one. */
  readonly topic: string | null;
  /** The server's error reply, when the error came from the server. */
  readonly reply: ErrorReply | null;

  constructor(
    code: ErrorCode | (string & {}),
    message: string,
    details: { op?: string | null; topic?: string | null; reply?: ErrorReply | null; cause?: unknown } = {},
  ) {
    super(message);
    this.name = "StratusError";
    this.code = code;
    this.op = details.op ?? null;
    this.topic = details.topic ?? null;
    this.reply = details.reply ?? null;
    if (details.cause !== undefined) (this as { cause?: unknown }).cause = details.cause;
  }

  /** Whether the same command may succeed if tried again later. */
  get retryable(): boolean {
    return RETRYABLE_CODES.has(this.code);
  }

  /** The error a server `{"type":"error"}` reply stands for. */
  static fromReply(reply: ErrorReply): StratusError {
    return new StratusError(String(reply.code), String(reply.message ?? reply.code), {
      op: reply.op ?? null,
      topic: reply.topic ?? null,
      reply,
    });
  }
}
