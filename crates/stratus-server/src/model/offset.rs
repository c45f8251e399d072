//! Offsets: where a message sits in its topic's history, and where a resuming subscriber
//! starts (`since`). An offset is a Redis stream entry id, `<milliseconds>-<sequence>`,
//! compared as the pair of numbers.

use std::fmt;

/// A Redis stream entry id, `<milliseconds>-<sequence>`: a message's offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Offset(pub(crate) u64, pub(crate) u64);

impl Offset {
    /// Before every entry.
    pub(crate) const ZERO: Self = Self(0, 0);

    /// Parses `<ms>-<seq>`.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let (ms, seq) = text.split_once('-')?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return None;
        }
        Some(Self(ms.parse().ok()?, seq.parse().ok()?))
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// Where an event stream's topics resume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resume {
    /// Every topic from one point: `Last-Event-ID`, or a single `since`.
    All(Since),
    /// Each topic from its own point: a `since` for every `topic`, paired in order.
    Each(Vec<(String, Since)>),
}

impl Resume {
    /// Where `topic` resumes (`None`: it starts live, with no notice).
    pub(crate) fn of(&self, topic: &str) -> Option<Since> {
        match self {
            Self::All(since) => Some(*since),
            Self::Each(each) => each.iter().find(|(t, _)| t == topic).map(|(_, s)| *s),
        }
    }
}

/// Where a subscription with offsets starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Since {
    /// Offsets from now on, nothing replayed (`"$"`).
    Now,
    /// Replay what came after this offset first.
    After(Offset),
}

impl Since {
    pub(crate) fn parse(text: &str) -> Option<Self> {
        if text == "$" {
            return Some(Self::Now);
        }
        Offset::parse(text).map(Self::After)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_parse_and_order_as_stream_ids() {
        let a = Offset::parse("1732000000000-0").unwrap();
        let b = Offset::parse("1732000000000-12").unwrap();
        let c = Offset::parse("1732000000001-0").unwrap();
        assert!(a < b && b < c, "ordered by milliseconds, then sequence");
        assert_eq!(b.to_string(), "1732000000000-12");
        for bad in [
            "",
            "1",
            "1-",
            "-1",
            "a-1",
            "1-1-1",
            "1 -1",
            "+1-0",
            "99999999999999999999-0",
        ] {
            assert_eq!(Offset::parse(bad), None, "{bad:?}");
        }
        assert_eq!(Since::parse("$"), Some(Since::Now));
        assert_eq!(Since::parse("5-1"), Some(Since::After(Offset(5, 1))));
    }
}
