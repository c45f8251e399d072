//! A token bucket small enough to live in every connection (8 bytes): how many messages
//! a client may send per second, with bursts up to the same number. Time is passed in as
//! milliseconds on the worker's clock, so the bucket is a plain value, tested without one.
//! A rate of 0 means no limit.

/// Tokens are counted in thousandths, so a rate below one per millisecond still refills.
const MILLI: u64 = 1000;

/// Messages allowed now, refilled at a rate per second up to a burst as large.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TokenBucket {
    /// Tokens left, in thousandths, as of `at_ms`.
    milli_tokens: u32,
    /// When it was last refilled (ms on the worker's clock, wrapping).
    at_ms: u32,
}

impl TokenBucket {
    /// A full bucket for `rate` a second at `now_ms`.
    pub(crate) fn full(rate: u32, now_ms: u32) -> Self {
        Self {
            milli_tokens: u32::try_from(u64::from(rate) * MILLI).unwrap_or(u32::MAX),
            at_ms: now_ms,
        }
    }

    /// Tokens (in thousandths) at `now_ms`, refilled at `rate` a second up to `rate`.
    fn refilled(&self, now_ms: u32, rate: u32) -> u64 {
        // A time before the last refill (callers read the clock at slightly different
        // moments) wraps to a huge difference: it counts as no time at all.
        let elapsed = match now_ms.wrapping_sub(self.at_ms) {
            wrapped if wrapped > u32::MAX / 2 => 0,
            elapsed => u64::from(elapsed),
        };
        let cap = (u64::from(rate) * MILLI).min(u64::from(u32::MAX));
        (u64::from(self.milli_tokens) + elapsed * u64::from(rate)).min(cap)
    }

    /// Whether a token is there at `now_ms`.
    pub(crate) fn is_ready(&self, now_ms: u32, rate: u32) -> bool {
        rate == 0 || self.refilled(now_ms, rate) >= MILLI
    }

    /// Whether less than half the burst is left at `now_ms` (never, with no limit).
    pub(crate) fn is_low(&self, now_ms: u32, rate: u32) -> bool {
        rate != 0 && self.refilled(now_ms, rate) < u64::from(rate) * MILLI / 2
    }

    /// Takes `n` tokens at `now_ms` if there are that many; `false` (taking none) when
    /// there are not.
    pub(crate) fn take(&mut self, n: u32, now_ms: u32, rate: u32) -> bool {
        if rate == 0 {
            return true;
        }
        let refilled = self.refilled(now_ms, rate);
        self.at_ms = now_ms;
        let wanted = u64::from(n) * MILLI;
        let enough = refilled >= wanted;
        let left = if enough { refilled - wanted } else { refilled };
        self.milli_tokens = u32::try_from(left).unwrap_or(u32::MAX);
        enough
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let mut bucket = TokenBucket::full(3, 0);
        assert!((0..3).all(|_| bucket.take(1, 0, 3)), "the burst");
        assert!(
            !bucket.take(1, 0, 3) && !bucket.is_ready(0, 3),
            "then empty"
        );
        assert!(!bucket.is_ready(333, 3), "3 per second: one per 333 ms");
        assert!(bucket.is_ready(334, 3) && bucket.take(1, 334, 3));
        assert!(!bucket.take(1, 334, 3));
        // A long pause refills to the burst, not beyond.
        assert!((0..3).all(|_| bucket.take(1, 60_000, 3)));
        assert!(!bucket.take(1, 60_000, 3));
    }

    #[test]
    fn low_below_half_the_burst() {
        let mut bucket = TokenBucket::full(10, 0);
        assert!(!bucket.is_low(0, 10));
        assert!(bucket.take(5, 0, 10) && !bucket.is_low(0, 10));
        assert!(bucket.take(1, 0, 10) && bucket.is_low(0, 10));
        assert!(!bucket.is_low(100, 10), "refilled to half again");
        assert!(!TokenBucket::full(0, 0).is_low(0, 0), "no limit");
    }

    #[test]
    fn several_tokens_at_once_or_none() {
        let mut bucket = TokenBucket::full(10, 0);
        assert!(bucket.take(9, 0, 10));
        assert!(!bucket.take(9, 0, 10), "one left: none taken");
        assert!(bucket.take(1, 0, 10));
        assert!(!bucket.is_ready(0, 10));
    }

    #[test]
    fn the_clock_may_wrap() {
        let mut bucket = TokenBucket::full(1, u32::MAX - 5);
        assert!(bucket.take(1, u32::MAX - 5, 100));
        assert!(!bucket.take(1, u32::MAX, 100), "5 ms later: half a token");
        assert!(bucket.take(1, 4, 100), "10 ms later, across the wrap");
    }

    #[test]
    fn a_time_before_the_last_refill_refills_nothing() {
        let mut bucket = TokenBucket::full(10, 1000);
        assert!(bucket.take(10, 1000, 10));
        assert!(!bucket.take(1, 999, 10), "the clock read a moment earlier");
        assert!(!bucket.is_ready(999, 10));
    }

    #[test]
    fn a_rate_of_zero_is_no_limit() {
        let mut bucket = TokenBucket::full(0, 0);
        assert!((0..1000).all(|_| bucket.take(10, 0, 0)));
        assert!(bucket.is_ready(0, 0));
    }
}
