//! Reading a topic's history a page at a time: what a read asks for ([`HistoryRead`]),
//! where its answer goes ([`HistoryDest`]), and the page ([`HistoryPage`]), cut the same
//! way from Redis's history and from the node's own: at most what the reader's send queue
//! has room for, the gap (if any) named, and whether more follows.

use std::time::Duration;

use crate::model::conn_id::ConnId;
use crate::model::offset::{Offset, Since};
use crate::model::publication::Publication;

/// Most entries read for one page.
pub(crate) const PAGE: usize = 512;
/// Entries read for a recovery's first page, before their sizes are known.
pub(crate) const FIRST_PAGE: usize = 16;
/// What a replayed entry costs in the reader's send queue beyond its payload: its frame
/// header and offset notice (or envelope), and two queue entries.
pub(crate) const REPLAY_ENTRY_COST: usize = 128 + 2 * stratus_uring::ENTRY_OVERHEAD;

/// How much of a topic's history is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Retention {
    /// Most entries (0: no history).
    pub(crate) count: usize,
    /// Longest an entry is kept (`None`: until the count or the byte cap push it out).
    pub(crate) ttl: Option<Duration>,
}

/// A read of one page of a topic's history.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HistoryRead {
    /// Where the page starts: after an offset, or at the newest entry (an empty page that
    /// says where the history is).
    pub(crate) from: Since,
    /// Where the page goes.
    pub(crate) to: HistoryDest,
    /// Bytes of messages the page may hold: what the connection's send queue has room
    /// for (at least one message comes, so the replay always moves on).
    pub(crate) budget: usize,
    /// Entries this recovery has already been sent.
    pub(crate) fetched: usize,
    /// The average payload of the entries sent so far (0 before the first page): the
    /// page is sized from it, so that a read fetches little beyond the budget.
    pub(crate) average: usize,
    /// Most entries the page may hold.
    pub(crate) page: usize,
    /// Most entries the whole recovery may read (the rest is a gap).
    pub(crate) limit: usize,
    /// The read resumes a subscription: with a broker it waits until the topic's
    /// subscription is confirmed (so nothing falls between history and live), and is
    /// answered with a gap if the topic is unsubscribed first. A `history` command's read
    /// does not wait for anything.
    pub(crate) resumes: bool,
    /// The start is a moment (an event stream's resume point: with one for several
    /// topics, the newest offset it delivered on any of them), not necessarily one of
    /// this topic's offsets: a topic with nothing newer has missed nothing.
    pub(crate) shared_start: bool,
}

impl Retention {
    /// No history (server events, which are never kept).
    pub(crate) const NONE: Self = Self {
        count: 0,
        ttl: None,
    };
}

impl HistoryRead {
    /// How many entries to fetch for the page: a few for the first, then as many as the
    /// budget holds at the average seen.
    pub(crate) fn wanted(&self) -> usize {
        let wanted = match self.average {
            0 => FIRST_PAGE,
            average => self.budget / (average + REPLAY_ENTRY_COST),
        };
        wanted
            .min(self.page)
            .min(self.limit.saturating_sub(self.fetched))
            .max(1)
    }
}

/// Where a history read's page goes: the worker, the connection, and the read (a reply
/// for an earlier read of the same connection is stale).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HistoryDest {
    pub(crate) worker: usize,
    pub(crate) conn: ConnId,
    pub(crate) request: u64,
}

impl HistoryDest {
    /// No connection: a read whose page goes straight back to its caller (the admin API).
    pub(crate) const CALLER: Self = Self {
        worker: usize::MAX,
        conn: ConnId::NONE,
        request: 0,
    };
}

/// A page of a topic's history.
#[derive(Debug)]
pub(crate) struct HistoryPage {
    /// The publications, oldest first, each with its offset.
    pub(crate) entries: Vec<(Offset, Publication)>,
    /// Why some may be missing (`None`: the history reached back).
    pub(crate) gap: Option<&'static str>,
    /// Live messages up to this offset are in `entries` or came before the page: the
    /// offset the page starts after, or the newest in the history if that is older
    /// (`Offset::ZERO` for a read that failed: the worker then keeps to where the page
    /// started).
    pub(crate) floor: Offset,
    /// More of the history follows the page's last entry.
    pub(crate) more: bool,
    /// The history could not be read (the broker is unreachable, the read failed or took
    /// too long, too many reads were waiting): `gap` says why. A resume goes on with live
    /// messages after a gap notice; a `history` command or `GET /history` is refused.
    pub(crate) failed: bool,
}

/// What a history holds, for cutting a page from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Extent {
    /// The newest entry's offset (`None`: no history, or none kept any more).
    pub(crate) newest: Option<Offset>,
    /// Every entry removed so far (trimmed or expired), or given before the history
    /// began (a node's previous run), is at or below this offset, when that is known: a
    /// read from at or after it misses nothing even if its own entry is gone.
    pub(crate) removed_up_to: Option<Offset>,
    /// An entry kept at or before the read's start, if one is known (the oldest, or any
    /// such): entries go oldest first, so a read from at or after it misses nothing
    /// either.
    pub(crate) oldest: Option<Offset>,
}

impl HistoryPage {
    /// Nothing could be read: the client gets a gap notice and every live message.
    pub(crate) fn unavailable(why: &'static str) -> Self {
        Self {
            entries: Vec::new(),
            gap: Some(why),
            floor: Offset::ZERO,
            more: false,
            failed: false,
        }
    }

    /// The answer to a read that could not be made, and why.
    pub(crate) fn failed(why: &'static str) -> Self {
        Self {
            failed: true,
            ..Self::unavailable(why)
        }
    }

    /// The page for `read` from `entries`: the history's entries from the read's start
    /// offset on (that entry itself first, if still kept), oldest first, at least
    /// [`HistoryRead::wanted`] + 1 of them when there are that many.
    pub(crate) fn cut(
        read: &HistoryRead,
        mut entries: Vec<(Offset, Publication)>,
        extent: Extent,
    ) -> Self {
        let after = match read.from {
            Since::Now => {
                // Where the history is now: nothing to send, and live messages up to
                // the newest are older than the subscription.
                return Self {
                    entries: Vec::new(),
                    gap: None,
                    floor: extent.newest.unwrap_or(Offset::ZERO),
                    more: false,
                    failed: false,
                };
            }
            Since::After(after) => after,
        };
        let complete = extent.removed_up_to.is_some_and(|removed| after >= removed)
            || extent.oldest.is_some_and(|oldest| oldest <= after);
        let Some(newest) = extent.newest else {
            if complete {
                // Nothing was ever published on it after that offset.
                return Self {
                    entries: Vec::new(),
                    gap: None,
                    floor: after,
                    more: false,
                    failed: false,
                };
            }
            return Self::unavailable("no history is kept for this topic any more");
        };
        if after > newest && read.shared_start {
            // Nothing on this topic since that moment: live messages from its newest on.
            return Self {
                entries: Vec::new(),
                gap: None,
                floor: newest,
                more: false,
                failed: false,
            };
        }
        if after > newest {
            return Self {
                entries: Vec::new(),
                gap: Some("the offset is newer than anything in the topic's history"),
                floor: newest,
                more: false,
                failed: false,
            };
        }
        let mut gap = match entries.first() {
            Some((first, _)) if *first == after => {
                entries.remove(0);
                None
            }
            _ if complete => None,
            _ if read.fetched > 0 => Some("the history was trimmed while it was being replayed"),
            _ => Some("the history no longer reaches back to this offset"),
        };
        let count = read.wanted();
        entries.truncate(count);
        let mut bytes = 0;
        let within_budget = entries
            .iter()
            .take_while(|(_, p)| {
                bytes += p.payload.len() + REPLAY_ENTRY_COST;
                bytes <= read.budget
            })
            .count();
        entries.truncate(within_budget.max(1));
        let mut more = entries.last().is_some_and(|(last, _)| *last < newest);
        if more && read.fetched + entries.len() >= read.limit {
            more = false;
            gap = Some("the history holds more than this node reads for one recovery");
        }
        Self {
            entries,
            gap,
            floor: after,
            more,
            failed: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(from: Since, budget: usize) -> HistoryRead {
        crate::testing::history_read(from, budget)
    }

    fn entries(range: std::ops::RangeInclusive<u64>) -> Vec<(Offset, Publication)> {
        range
            .map(|ms| (Offset(ms, 0), Publication::text("x")))
            .collect()
    }

    fn extent(newest: u64, removed: Option<u64>) -> Extent {
        Extent {
            newest: Some(Offset(newest, 0)),
            removed_up_to: removed.map(|ms| Offset(ms, 0)),
            oldest: None,
        }
    }

    #[test]
    fn a_read_from_a_moment_between_entries_misses_nothing_if_the_oldest_is_before_it() {
        // An event stream's resume point is another topic's offset: not one of these.
        let kept = Extent {
            oldest: Some(Offset(1, 0)),
            ..extent(6, None)
        };
        let shared = HistoryRead {
            shared_start: true,
            ..read(Since::After(Offset(4, 5)), 1 << 20)
        };
        let page = HistoryPage::cut(&shared, entries(5..=6), kept);
        let offsets: Vec<u64> = page.entries.iter().map(|(o, _)| o.0).collect();
        assert_eq!((offsets, page.gap), (vec![5, 6], None));
        let own = HistoryPage::cut(
            &read(Since::After(Offset(4, 5)), 1 << 20),
            entries(5..=6),
            kept,
        );
        assert_eq!(own.gap, None, "everything after the oldest kept is kept");
        let trimmed = Extent {
            oldest: Some(Offset(5, 0)),
            ..kept
        };
        let page = HistoryPage::cut(&shared, entries(5..=6), trimmed);
        assert!(
            page.gap.is_some(),
            "entries before 5 are gone: some may be missed"
        );
        // Nothing on this topic since that moment: no gap, live from its newest on.
        let later = HistoryRead {
            shared_start: true,
            ..read(Since::After(Offset(9, 0)), 1 << 20)
        };
        let page = HistoryPage::cut(&later, Vec::new(), kept);
        assert_eq!(
            (page.gap, page.floor, page.entries.len()),
            (None, Offset(6, 0), 0)
        );
    }

    #[test]
    fn a_page_starts_after_its_offset_and_names_a_gap_when_that_is_gone() {
        let page = HistoryPage::cut(
            &read(Since::After(Offset(3, 0)), 1 << 20),
            entries(3..=5),
            extent(5, None),
        );
        let offsets: Vec<u64> = page.entries.iter().map(|(o, _)| o.0).collect();
        assert_eq!((offsets, page.gap, page.more), (vec![4, 5], None, false));
        let trimmed = HistoryPage::cut(
            &read(Since::After(Offset(1, 0)), 1 << 20),
            entries(3..=5),
            extent(5, Some(2)),
        );
        assert!(
            trimmed.gap.is_some(),
            "entries up to 2 were removed: 2 may be missed"
        );
        let known = HistoryPage::cut(
            &read(Since::After(Offset(2, 0)), 1 << 20),
            entries(3..=5),
            extent(5, Some(2)),
        );
        assert_eq!(known.gap, None, "everything after 2 is kept");
        let newer = HistoryPage::cut(
            &read(Since::After(Offset(9, 0)), 1 << 20),
            Vec::new(),
            extent(5, None),
        );
        assert!(newer.gap.is_some() && newer.floor == Offset(5, 0));
    }

    #[test]
    fn a_page_is_cut_to_the_budget_but_always_moves_on() {
        let page = HistoryPage::cut(
            &read(Since::After(Offset(0, 0)), 1),
            entries(1..=5),
            extent(5, Some(0)),
        );
        assert_eq!(page.entries.len(), 1, "one entry even past the budget");
        assert!(page.more);
    }

    #[test]
    fn a_read_from_now_says_where_the_history_is() {
        let page = HistoryPage::cut(&read(Since::Now, 1 << 20), Vec::new(), extent(7, None));
        assert_eq!(
            (page.floor, page.gap, page.entries.len()),
            (Offset(7, 0), None, 0)
        );
        let empty = Extent {
            newest: None,
            removed_up_to: None,
            oldest: None,
        };
        let page = HistoryPage::cut(&read(Since::Now, 1 << 20), Vec::new(), empty);
        assert_eq!(
            (page.floor, page.gap),
            (Offset::ZERO, None),
            "an empty history is no gap"
        );
    }
}
