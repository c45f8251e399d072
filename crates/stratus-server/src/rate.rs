//! A token bucket small enough to live in every connection (8 bytes): how many commands
//! a client may send per second, with bursts up to the same number. Time is passed in as
//! milliseconds on the worker's clock, so the bucket is a plain value, tested without one.

/// Tokens are counted in thousandths, so a rate below one per millisecond still refills.
const MILLI: u64 = 1000;

/// Commands allowed now, refilled at a rate per second up to a burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TokenBucket {
    /// Tokens left, in thousandths.
    milli_tokens: u32,
    /// When it was last refilled (ms on the worker's clock, wrapping).
    at_ms: u32,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens at `now_ms`.
    pub(crate) fn full(burst: u32, now_ms: u32) -> Self {
        Self {
            milli_tokens: burst.saturating_mul(MILLI as u32),
            at_ms: now_ms,
        }
    }

    /// Takes a token at `now_ms` if there is one, after refilling `rate` per second up to
    /// `burst`; `false` when the bucket is empty.
    pub(crate) fn take(&mut self, now_ms: u32, rate: u32, burst: u32) -> bool {
        let elapsed = u64::from(now_ms.wrapping_sub(self.at_ms));
        let cap = u64::from(burst) * MILLI;
        let refilled = (u64::from(self.milli_tokens) + elapsed * u64::from(rate)).min(cap);
        self.at_ms = now_ms;
        if refilled < MILLI {
            self.milli_tokens = refilled as u32;
            return false;
        }
        self.milli_tokens = (refilled - MILLI) as u32;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let mut bucket = TokenBucket::full(3, 0);
        assert!((0..3).all(|_| bucket.take(0, 10, 3)), "the burst");
        assert!(!bucket.take(0, 10, 3), "then empty");
        assert!(!bucket.take(99, 10, 3), "10 per second: one per 100 ms");
        assert!(bucket.take(100, 10, 3));
        assert!(!bucket.take(100, 10, 3));
        // A long pause refills to the burst, not beyond.
        assert!((0..3).all(|_| bucket.take(60_000, 10, 3)));
        assert!(!bucket.take(60_000, 10, 3));
    }

    #[test]
    fn the_clock_may_wrap() {
        let mut bucket = TokenBucket::full(1, u32::MAX - 5);
        assert!(bucket.take(u32::MAX - 5, 100, 1));
        assert!(!bucket.take(u32::MAX, 100, 1), "5 ms later: half a token");
        assert!(bucket.take(4, 100, 1), "10 ms later, across the wrap");
    }

    #[test]
    fn a_rate_of_zero_allows_only_the_burst() {
        let mut bucket = TokenBucket::full(2, 0);
        assert!(bucket.take(0, 0, 2) && bucket.take(1_000_000, 0, 2));
        assert!(!bucket.take(2_000_000, 0, 2));
    }
}
