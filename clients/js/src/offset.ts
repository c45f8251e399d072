/**
 * Offsets (`<ms>-<seq>`, docs/protocol.md section 8): parsed into a pair of 64-bit numbers
 * and ordered as that pair, never as strings (`"9-0"` is before `"10-0"`).
 */

export interface ParsedOffset {
  ms: bigint;
  seq: bigint;
}

const OFFSET = /^(\d{1,20})-(\d{1,20})$/;
const U64_MAX = (1n << 64n) - 1n;

/** The offset as a pair of numbers, or null when it is not an offset. */
export function parseOffset(offset: string): ParsedOffset | null {
  const m = OFFSET.exec(offset);
  if (!m) return null;
  const ms = BigInt(m[1]!);
  const seq = BigInt(m[2]!);
  if (ms > U64_MAX || seq > U64_MAX) return null;
  return { ms, seq };
}

/** Whether the string is an offset the server could have issued. */
export function isOffset(offset: unknown): offset is string {
  return typeof offset === "string" && parseOffset(offset) !== null;
}

/** -1, 0 or 1 as `a` is before, equal to or after `b`. Throws on a malformed offset. */
export function compareOffsets(a: string, b: string): -1 | 0 | 1 {
  const pa = parseOffset(a);
  const pb = parseOffset(b);
  if (!pa || !pb) throw new TypeError(`not an offset: ${JSON.stringify(pa ? b : a)}`);
  if (pa.ms !== pb.ms) return pa.ms < pb.ms ? -1 : 1;
  if (pa.seq !== pb.seq) return pa.seq < pb.seq ? -1 : 1;
  return 0;
}

/**
 * One topic's position: the offset of the last publication delivered (or where the
 * subscription started). A publication at or before it is a duplicate.
 */
export class OffsetTracker {
  #last: string | null = null;
  #parsed: ParsedOffset | null = null;

  constructor(start: string | null = null) {
    if (start !== null) this.reset(start);
  }

  /** The last offset seen, to resume from (`since`); null before any. */
  get last(): string | null {
    return this.#last;
  }

  /**
   * Moves the position to `offset` unconditionally: where the server says a subscription
   * starts (a subscribe reply), which may be before the last one seen when the server's
   * history was reset.
   */
  reset(offset: string | null): void {
    if (offset === null) {
      this.#last = null;
      this.#parsed = null;
      return;
    }
    const p = parseOffset(offset);
    if (!p) throw new TypeError(`not an offset: ${JSON.stringify(offset)}`);
    this.#last = offset;
    this.#parsed = p;
  }

  /**
   * Whether a publication with this offset is new: true (and the position moves to it) when
   * it is after the position; false for a duplicate (at or before it). A publication
   * without an offset (a topic without history) is always new and moves nothing.
   */
  accept(offset: string | null | undefined): boolean {
    if (offset === null || offset === undefined) return true;
    const p = parseOffset(offset);
    if (!p) return true; // not ours to judge; delivered as is
    const last = this.#parsed;
    if (last && (p.ms < last.ms || (p.ms === last.ms && p.seq <= last.seq))) return false;
    this.#last = offset;
    this.#parsed = p;
    return true;
  }
}

/**
 * The offset just before `offset` (the same milliseconds with the sequence one less, or
 * the millisecond before with the largest sequence), or null before `0-0`: a resume
 * point from which a publication with exactly `offset` on another topic is not taken as
 * already received (offsets are unique within a topic only).
 */
export function offsetBefore(offset: string): string | null {
  const p = parseOffset(offset);
  if (!p) throw new TypeError(`not an offset: ${JSON.stringify(offset)}`);
  if (p.seq > 0n) return `${p.ms}-${p.seq - 1n}`;
  if (p.ms > 0n) return `${p.ms - 1n}-${U64_MAX}`;
  return null;
}
