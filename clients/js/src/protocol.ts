/**
 * The shapes of protocol v1 (`stratus.v1`, docs/protocol.md) as the SDK hands them out.
 * Fields a newer server adds pass through untouched on the reply objects.
 */

/** The subprotocol the SDK offers and requires. */
export const SUBPROTOCOL = "stratus.v1";

/** Fields every reply has. */
export interface ReplyBase {
  type: "reply";
  id: number | string;
  op: string;
  [field: string]: unknown;
}

/** The reply to `subscribe` (docs/protocol.md 5.1). */
export interface SubscribeReply extends ReplyBase {
  op: "subscribe";
  topic: string;
  /** Where the subscription starts; null when the topic keeps no history. */
  offset: string | null;
  /** Whether publications from the history follow. */
  recovering: boolean;
}

/** The reply to `unsubscribe`. */
export interface UnsubscribeReply extends ReplyBase {
  op: "unsubscribe";
  topic: string;
}

/** The reply to `publish`: the publication's offset, or null when the topic keeps no history. */
export interface PublishReply extends ReplyBase {
  op: "publish";
  topic: string;
  offset: string | null;
}

/** The reply to `refresh`: the new token's `exp` (seconds since the epoch). */
export interface RefreshReply extends ReplyBase {
  op: "refresh";
  expires: number;
}

/** The reply to `ping`, with the round trip the SDK measured. */
export interface PingReply extends ReplyBase {
  op: "ping";
  /** Milliseconds from sending the ping to its reply. */
  rtt: number;
}

/** A page of history (docs/protocol.md 5.4), binary payloads decoded to bytes. */
export interface HistoryPage extends ReplyBase {
  op: "history";
  topic: string;
  /** Oldest first. */
  publications: Publication[];
  /** Why publications between `since` and the first returned may be missing; null without `since`. */
  gap: string | null;
  /** More follow: ask again with `since` = the last publication's offset. */
  more: boolean;
}

/** A member of a topic's presence. */
export interface PresenceMember {
  client: string;
  user: string | null;
  info: unknown | null;
}

/** The reply to `presence`. */
export interface PresenceReply extends ReplyBase {
  op: "presence";
  topic: string;
  connections: number;
  users: number;
  /** Capped by the server: `complete` is false when the list is not all of them. */
  members: PresenceMember[];
  complete: boolean;
}

/** The reply to `occupancy`. */
export interface OccupancyReply extends ReplyBase {
  op: "occupancy";
  topic: string;
  connections: number;
  users: number;
}

/** A publication: a live push or an entry of a history page. */
export interface Publication {
  topic: string;
  /**
   * A JSON publication's value, a text publication's string, or a binary publication's
   * bytes (then `binary` is true).
   */
  data: unknown;
  /** The publication's offset; null when the topic keeps no history. */
  offset: string | null;
  /** The publication's key; null when it has none. */
  key: string | null;
  /** Whether `data` is a `Uint8Array` of a binary publication. */
  binary: boolean;
}

/** `{"type":"gap"}`: publications may be missing (docs/protocol.md 6.2). */
export interface GapNotice {
  type: "gap";
  topic: string;
  reason: string;
  [field: string]: unknown;
}

/** `{"type":"skip"}`: the conflate policy skipped publications (docs/protocol.md 6.3). */
export interface SkipNotice {
  type: "skip";
  topic: string;
  key: string | null;
  skipped: number;
  from: string | null;
  to: string | null;
  [field: string]: unknown;
}

/** `{"type":"unsubscribed"}`: the server ended a subscription (docs/protocol.md 6.4). */
export interface UnsubscribedNotice {
  type: "unsubscribed";
  topic: string;
  reason: string;
  [field: string]: unknown;
}

/** `{"type":"refresh"}`: the token expires soon (docs/protocol.md 6.5). */
export interface RefreshNotice {
  type: "refresh";
  expires: number;
  [field: string]: unknown;
}

/** `{"type":"presence"}`: members joined or left a topic. */
export interface PresenceNotice {
  type: "presence";
  topic: string;
  joins: PresenceMember[];
  leaves: PresenceMember[];
  [field: string]: unknown;
}

/** `{"type":"occupancy"}`: how many connections and users a topic has. */
export interface OccupancyNotice {
  type: "occupancy";
  topic: string;
  connections: number;
  users: number;
  [field: string]: unknown;
}

/** What to publish: a JSON value (`{data}`) or a text (`{text}`), exactly one. */
export type PublishBody = { data: unknown; text?: undefined } | { text: string; data?: undefined };
