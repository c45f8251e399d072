/**
 * Stratus client SDK: protocol v1 (`stratus.v1`, docs/protocol.md) for browsers and
 * Node 20+, with no dependencies.
 *
 * What it does for you: one connection with reconnects (jittered exponential backoff),
 * a receive-only Server-Sent Events fallback where no WebSocket opens,
 * subscriptions that resume from the last offset they delivered (each publication once,
 * a `gap` event where the server's history no longer reaches), token refresh through
 * `getToken()`, commands that settle with their reply or a {@link StratusError} with the
 * protocol's stable code, and caps on everything it holds.
 *
 * What it does not: publish binary data (the protocol has no binary publish from a
 * connection), or retry commands that failed (publish is not idempotent: the caller
 * decides).
 */

export { Client } from "./client.js";
export type {
  ClientEvents,
  ClientOptions,
  ClientState,
  ConnectedEvent,
  DisconnectedEvent,
  HistoryOptions,
  PublishOptions,
  TokenContext,
  Transport,
  WebSocketConstructor,
  WebSocketLike,
} from "./client.js";
export { Subscription } from "./subscription.js";
export type { SubscribeOptions, SubscriptionEvents, SubscriptionState } from "./subscription.js";
export { StratusError, SERVER_CODES, SDK_CODES, RETRYABLE_CODES } from "./errors.js";
export type { ErrorCode, ErrorReply, SdkErrorCode, ServerErrorCode } from "./errors.js";
export { backoffDelay, resolveBackoff, DEFAULT_BACKOFF } from "./backoff.js";
export type { BackoffOptions, ResolvedBackoff } from "./backoff.js";
export { compareOffsets, isOffset, offsetBefore, parseOffset, OffsetTracker } from "./offset.js";
export type { ParsedOffset } from "./offset.js";
export { decodeBinaryPublication, encodeBinaryPublication, base64ToBytes, BINARY_PUB } from "./binary.js";
export type { BinaryPublication } from "./binary.js";
export { SUBPROTOCOL } from "./protocol.js";
export { EventStreamParser, EventStreamTooLarge, DEFAULT_MAX_BUFFERED } from "./sse.js";
export type { ServerSentEvent } from "./sse.js";
export type * from "./protocol.js";
