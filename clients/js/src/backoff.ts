/**
 * Reconnect delays: exponential, capped, with jitter. A pure function of the attempt
 * number and a random source, so it is tested without clocks or sockets.
 */

export interface BackoffOptions {
  /** Delay before the first retry, in ms (before jitter). Default 500. */
  initial?: number;
  /** Largest delay, in ms. Default 30000. */
  max?: number;
  /** Growth per attempt. Default 2. */
  factor?: number;
  /**
   * Share of the delay that is random, 0 to 1: the delay is drawn uniformly from
   * `[base * (1 - jitter), base]`. Default 0.5. 0 gives fixed delays.
   */
  jitter?: number;
}

export type ResolvedBackoff = Required<BackoffOptions>;

export const DEFAULT_BACKOFF: ResolvedBackoff = { initial: 500, max: 30_000, factor: 2, jitter: 0.5 };

/** Fills in defaults and checks the values (a RangeError for nonsense such as a negative max). */
export function resolveBackoff(options: BackoffOptions = {}): ResolvedBackoff {
  const b = { ...DEFAULT_BACKOFF, ...stripUndefined(options) };
  if (!(Number.isFinite(b.initial) && b.initial >= 0)) throw new RangeError("backoff.initial must be a finite number >= 0");
  if (!(Number.isFinite(b.max) && b.max >= b.initial)) throw new RangeError("backoff.max must be a finite number >= backoff.initial");
  if (!(Number.isFinite(b.factor) && b.factor >= 1)) throw new RangeError("backoff.factor must be a finite number >= 1");
  if (!(b.jitter >= 0 && b.jitter <= 1)) throw new RangeError("backoff.jitter must be between 0 and 1");
  return b;
}

/**
 * The delay in ms before retry number `attempt` (0 for the first retry):
 * `base = min(max, initial * factor^attempt)`, then `base * (1 - jitter * random())`.
 * Always within `[0, max]`; `random` returns values in [0, 1) like `Math.random`.
 */
export function backoffDelay(attempt: number, options: ResolvedBackoff, random: () => number = Math.random): number {
  const n = Math.max(0, Math.floor(attempt));
  // factor^n overflows to Infinity for large n, and min() takes care of that.
  const base = Math.min(options.max, options.initial * Math.pow(options.factor, n));
  let r = random();
  if (!(r >= 0)) r = 0;
  if (r > 1) r = 1;
  return Math.max(0, Math.min(options.max, base * (1 - options.jitter * r)));
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  const out: Partial<T> = {};
  for (const [k, v] of Object.entries(o)) if (v !== undefined) (out as Record<string, unknown>)[k] = v;
  return out;
}
