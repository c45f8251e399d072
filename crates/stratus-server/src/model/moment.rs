//! [`Moment`]: a point in time to the millisecond in 4 bytes, for what every connection
//! keeps (when it was last heard from, when its deadline falls) where an `Instant` takes
//! 16. Callers keep passing `Instant`s; a connection converts on the way in.
//!
//! Milliseconds from a process-wide epoch, wrapping: two moments compare correctly while
//! they are less than 24 days apart (half of `u32::MAX` ms), and a connection's moments
//! are never further from now than its longest timeout.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The longest two moments can be apart and still compare right (about 24.8 days): a
/// timeout a connection keeps as a moment must be shorter (`Config::validate` checks).
pub(crate) const LONGEST: Duration = Duration::from_millis(i32::MAX as u64);

/// Where moments count from: the first time one is made.
static EPOCH: OnceLock<Instant> = OnceLock::new();

/// A point in time, to the millisecond (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Moment(u32);

impl Moment {
    /// The moment `at` is (an instant before the epoch counts back from it).
    pub(crate) fn of(at: Instant) -> Self {
        let epoch = *EPOCH.get_or_init(Instant::now);
        // Truncation to u32 is the wrapping this clock is made of.
        let ms = |d: Duration| d.as_millis() as u32;
        Self(match at.checked_duration_since(epoch) {
            Some(after) => ms(after),
            // Rounded down as after the epoch: minus the milliseconds rounded up.
            None => {
                let before = epoch - at;
                let part = !before.subsec_nanos().is_multiple_of(1_000_000);
                ms(before).wrapping_add(u32::from(part)).wrapping_neg()
            }
        })
    }

    /// Milliseconds from `earlier` to this moment, negative if `earlier` is later.
    fn minus(self, earlier: Self) -> i32 {
        // The wrapping difference read as signed: right within 24 days either way.
        self.0.wrapping_sub(earlier.0) as i32
    }

    /// Whether `self` has come by `now`.
    pub(crate) fn is_reached(self, now: Self) -> bool {
        now.minus(self) >= 0
    }

    /// The earlier of the two.
    pub(crate) fn earliest(self, other: Self) -> Self {
        if self.minus(other) <= 0 { self } else { other }
    }

    /// The time from `earlier` to `self`, zero if `earlier` is later.
    pub(crate) fn since(self, earlier: Self) -> Duration {
        Duration::from_millis(u64::try_from(self.minus(earlier)).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_order_and_measure_like_their_instants_on_both_sides_of_the_epoch() {
        let now = Instant::now();
        let at = |ms: u64| Moment::of(now + Duration::from_millis(ms));
        let before = now.checked_sub(Duration::from_secs(5)).map(Moment::of);
        assert!(at(30_000).is_reached(at(30_000)));
        assert!(!at(30_000).is_reached(at(29_999)));
        assert_eq!(at(30_000).since(at(1_000)), Duration::from_secs(29));
        assert_eq!(
            at(1_000).since(at(30_000)),
            Duration::ZERO,
            "never negative"
        );
        assert_eq!(at(3_000).earliest(at(2_000)), at(2_000));
        assert_eq!(at(2_000).earliest(at(3_000)), at(2_000));
        if let Some(before) = before {
            assert_eq!(at(0).since(before), Duration::from_secs(5));
            assert!(before.is_reached(at(0)) && !at(0).is_reached(before));
        }
        // Across the wrap of the u32 it counts in.
        let (last, first) = (Moment(u32::MAX), Moment(1));
        assert_eq!(first.since(last), Duration::from_millis(2));
        assert!(last.is_reached(first) && last.earliest(first) == last);
    }

    #[test]
    fn a_moment_is_four_bytes() {
        assert_eq!(
            size_of::<Moment>(),
            4,
            "every connection keeps two (the idle-memory budget)"
        );
    }
}
