/**
 * A `text/event-stream` parser (the WHATWG HTML "event stream interpretation"), fed text
 * as it arrives, in chunks cut anywhere. Pure: no IO, no timers, so it is tested by
 * splitting a stream at every position.
 *
 * What it keeps, and the bound on it: the line not yet ended and the `data:` lines of the
 * event not yet dispatched, together at most `maxBuffered` characters; past it `push`
 * throws an {@link EventStreamTooLarge} and the parser is done. Nothing else grows.
 *
 * Deliberate differences from `EventSource`: `id` is the event's own `id:` line (not the
 * last one seen on the stream), `retry:` is ignored (the client schedules its own
 * reconnects), and comments are counted, not dispatched.
 */

/** One dispatched event. */
export interface ServerSentEvent {
  /** The `event:` field; `"message"` when the event has none. */
  type: string;
  /** The `data:` lines joined with `"\n"`. */
  data: string;
  /** The event's own `id:` line; undefined when it has none. */
  id: string | undefined;
}

/** Default cap on what the parser holds: 16 MiB of text. */
export const DEFAULT_MAX_BUFFERED = 16 * 1024 * 1024;

/** A line, or an event's data, longer than the parser may hold. */
export class EventStreamTooLarge extends RangeError {
  constructor(limit: number) {
    super(`an event stream line or event is longer than ${limit} characters`);
    this.name = "EventStreamTooLarge";
  }
}

const LF = 0x0a;
const CR = 0x0d;

export class EventStreamParser {
  readonly maxBuffered: number;
  /** The line not yet ended. */
  #line = "";
  /** The previous chunk ended in CR: an LF that starts the next one belongs to it. */
  #afterCR = false;
  /** Whether the first character (a BOM, maybe) has been seen. */
  #started = false;
  #failed = false;
  #type = "";
  #id: string | undefined = undefined;
  #data: string[] = [];
  #dataLength = 0;
  #hasData = false;
  /** Comment lines seen (`: heartbeat`), for liveness and tests. */
  comments = 0;

  constructor(maxBuffered: number = DEFAULT_MAX_BUFFERED) {
    if (!(Number.isInteger(maxBuffered) && maxBuffered > 0)) throw new RangeError("maxBuffered must be an integer > 0");
    this.maxBuffered = maxBuffered;
  }

  /**
   * Feeds decoded text; returns the events it completed, in order. Throws
   * {@link EventStreamTooLarge} past the cap (and on every call after that).
   */
  push(chunk: string): ServerSentEvent[] {
    if (this.#failed) throw new EventStreamTooLarge(this.maxBuffered);
    const events: ServerSentEvent[] = [];
    let text = chunk;
    if (text.length === 0) return events;
    if (!this.#started) {
      this.#started = true;
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    }
    let start = 0;
    if (this.#afterCR) {
      this.#afterCR = false;
      if (text.charCodeAt(0) === LF) start = 1;
    }
    for (let i = start; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if (c !== LF && c !== CR) continue;
      const line = this.#line.length === 0 ? text.slice(start, i) : this.#line + text.slice(start, i);
      this.#line = "";
      this.#checkSize(line.length);
      this.#takeLine(line, events);
      if (c === CR) {
        if (i + 1 < text.length) {
          if (text.charCodeAt(i + 1) === LF) i++;
        } else {
          this.#afterCR = true;
        }
      }
      start = i + 1;
    }
    if (start < text.length) {
      const rest = text.length - start;
      this.#checkSize(this.#line.length + rest);
      this.#line += text.slice(start);
    }
    return events;
  }

  /** What is held now (the unfinished line and the pending event's data), in characters. */
  get buffered(): number {
    return this.#line.length + this.#dataLength;
  }

  #checkSize(lineLength: number): void {
    if (lineLength + this.#dataLength > this.maxBuffered) {
      this.#failed = true;
      this.#line = "";
      this.#data = [];
      this.#dataLength = 0;
      throw new EventStreamTooLarge(this.maxBuffered);
    }
  }

  #takeLine(line: string, events: ServerSentEvent[]): void {
    if (line.length === 0) {
      this.#dispatch(events);
      return;
    }
    if (line.charCodeAt(0) === 0x3a /* : */) {
      this.comments++;
      return;
    }
    const colon = line.indexOf(":");
    let field: string;
    let value: string;
    if (colon < 0) {
      field = line;
      value = "";
    } else {
      field = line.slice(0, colon);
      value = line.slice(colon + 1);
      if (value.charCodeAt(0) === 0x20) value = value.slice(1);
    }
    switch (field) {
      case "event":
        this.#type = value;
        return;
      case "data":
        this.#data.push(value);
        this.#dataLength += value.length + 1;
        this.#hasData = true;
        return;
      case "id":
        if (!value.includes("\u0000")) this.#id = value;
        return;
      default:
        return; // `retry` and unknown fields: ignored
    }
  }

  #dispatch(events: ServerSentEvent[]): void {
    if (this.#hasData) {
      events.push({ type: this.#type === "" ? "message" : this.#type, data: this.#data.join("\n"), id: this.#id });
    }
    this.#type = "";
    this.#id = undefined;
    this.#data = [];
    this.#dataLength = 0;
    this.#hasData = false;
  }
}
