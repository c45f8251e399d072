//! The node's own history, for the embedded default (no broker): per topic, the newest
//! publications with their offsets, bounded by count, age and bytes per topic, and by
//! bytes over all topics, so a single node resumes clients with the same offsets, `since`
//! and gap semantics as the Redis history.
//!
//! Offsets are `<unix ms>-<sequence>`, like Redis stream ids, and only grow within a
//! topic (a clock that steps back keeps the last millisecond and counts on). A publish
//! appends and hands the publication to the workers under one lock, so the workers see a
//! topic's publications in offset order. Expired entries go when their topic is next
//! appended to or read; past the node-wide byte cap, the oldest entries of any topic go
//! first.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use crate::model::history::{Extent, HistoryPage, HistoryRead, Retention};
use crate::model::offset::{Offset, Since};
use crate::model::publication::Publication;

/// What an entry costs beyond its payload: the entry, its key, and its place in the
/// node-wide order.
const ENTRY_OVERHEAD: usize = 96;
/// What a topic costs beyond its entries.
const TOPIC_OVERHEAD: usize = 128;

/// One topic's kept publications.
#[derive(Debug, Default)]
struct Log {
    entries: VecDeque<(Offset, Publication)>,
    bytes: usize,
    /// The newest offset given, kept when the entries are gone.
    last: Option<Offset>,
    /// Every entry removed so far is at or below this.
    removed_up_to: Option<Offset>,
}

impl Log {
    fn cost(publication: &Publication) -> usize {
        publication.payload.len() + ENTRY_OVERHEAD
    }

    /// The offset after the last one, at `now_ms`.
    fn next_offset(&self, now_ms: u64) -> Offset {
        match self.last {
            Some(last) if last.0 >= now_ms => Offset(last.0, last.1 + 1),
            _ => Offset(now_ms, 0),
        }
    }

    /// Removes the oldest entry; its bytes.
    fn pop(&mut self) -> usize {
        let Some((offset, publication)) = self.entries.pop_front() else {
            return 0;
        };
        self.removed_up_to = Some(offset);
        let cost = Self::cost(&publication);
        self.bytes -= cost;
        cost
    }

    /// Removes entries past `retention` at `now_ms`; the bytes freed.
    fn trim(&mut self, retention: Retention, now_ms: u64) -> usize {
        let mut freed = 0;
        while self.entries.len() > retention.count {
            freed += self.pop();
        }
        if let Some(ttl) = retention.ttl {
            let oldest_kept = now_ms.saturating_sub(ttl.as_millis() as u64);
            while self.entries.front().is_some_and(|(o, _)| o.0 < oldest_kept) {
                freed += self.pop();
            }
        }
        freed
    }
}

#[derive(Debug, Default)]
struct Inner {
    topics: HashMap<Arc<str>, Log>,
    /// Every entry kept, oldest first, over all topics: what goes first past the cap.
    order: VecDeque<(Arc<str>, Offset)>,
    bytes: usize,
    /// The first offset this node gave (on any topic): from there on every topic's
    /// publications are in its log (a topic without one has had none), while what came
    /// before (a previous run of the node) is unknown.
    began: Option<Offset>,
}

/// The node's history of every topic whose options keep one.
#[derive(Debug)]
pub(crate) struct MemoryHistory {
    inner: Mutex<Inner>,
    /// Most bytes over all topics.
    max_bytes: usize,
}

impl MemoryHistory {
    pub(crate) fn new(max_bytes: usize) -> Self {
        Self {
            inner: Mutex::default(),
            max_bytes,
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `publication` to `topic`'s history at `now_ms` (unix ms), keeping what
    /// `retention` allows, and runs `then` with its offset before another publish on any
    /// topic can append (so the workers get a topic's publications in offset order).
    pub(crate) fn append<R>(
        &self,
        topic: &str,
        publication: &Publication,
        retention: Retention,
        now_ms: u64,
        then: impl FnOnce(Offset) -> R,
    ) -> R {
        let mut inner = self.inner();
        let inner = &mut *inner;
        if !inner.topics.contains_key(topic) {
            inner.bytes += TOPIC_OVERHEAD + topic.len();
        }
        let name = match inner.topics.get_key_value(topic) {
            Some((name, _)) => name.clone(),
            None => Arc::from(topic),
        };
        let log = inner.topics.entry(name.clone()).or_default();
        let offset = log.next_offset(now_ms);
        log.last = Some(offset);
        inner.began.get_or_insert(offset);
        let cost = Log::cost(publication);
        log.entries.push_back((offset, publication.clone()));
        log.bytes += cost;
        inner.bytes += cost;
        inner.bytes -= log.trim(retention, now_ms);
        inner.order.push_back((name, offset));
        while inner.bytes > self.max_bytes {
            let Some((name, offset)) = inner.order.pop_front() else {
                break;
            };
            // The entry may have gone already (the topic's own bounds).
            if let Some(log) = inner.topics.get_mut(&name)
                && log.entries.front().is_some_and(|(o, _)| *o == offset)
            {
                inner.bytes -= log.pop();
            }
        }
        // The order keeps entries that went by their topic's bounds until they reach its
        // front: compact it when they are most of it.
        let kept: usize = inner.topics.values().map(|l| l.entries.len()).sum();
        if inner.order.len() > 2 * kept + 1024 {
            let topics = &inner.topics;
            inner.order.retain(|(name, offset)| {
                topics
                    .get(name)
                    .is_some_and(|l| l.entries.front().is_some_and(|(o, _)| o <= offset))
            });
        }
        then(offset)
    }

    /// A page of `topic`'s history for `read` at `now_ms`, keeping to `retention`.
    pub(crate) fn read(
        &self,
        topic: &str,
        read: &HistoryRead,
        retention: Retention,
        now_ms: u64,
    ) -> HistoryPage {
        let mut inner = self.inner();
        let inner = &mut *inner;
        let Some(log) = inner.topics.get_mut(topic) else {
            // Nothing published on it since the node began.
            let extent = Extent {
                newest: None,
                removed_up_to: inner.began,
                oldest: None,
            };
            return HistoryPage::cut(read, Vec::new(), extent);
        };
        inner.bytes -= log.trim(retention, now_ms);
        let entries = match read.from {
            Since::Now => Vec::new(),
            Since::After(after) => {
                let start = log.entries.partition_point(|(o, _)| *o < after);
                log.entries
                    .range(start..)
                    .take(read.wanted() + 1)
                    .cloned()
                    .collect()
            }
        };
        let extent = Extent {
            newest: log.entries.back().map(|(o, _)| *o).or(log.last),
            // None removed: the log holds everything since the node began.
            removed_up_to: log.removed_up_to.or(inner.began),
            oldest: log.entries.front().map(|(o, _)| *o),
        };
        HistoryPage::cut(read, entries, extent)
    }

    /// The newest offset of `topic` (`None`: nothing published with a history).
    #[cfg(test)]
    pub(crate) fn newest(&self, topic: &str) -> Option<Offset> {
        self.inner().topics.get(topic).and_then(|l| l.last)
    }

    /// Bytes held now, and topics.
    pub(crate) fn usage(&self) -> (usize, usize) {
        let inner = self.inner();
        (inner.bytes, inner.topics.len())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const KEEP: Retention = Retention {
        count: 100,
        ttl: None,
    };

    fn read(from: Since) -> HistoryRead {
        crate::testing::history_read(from, 1 << 20)
    }

    fn publish(history: &MemoryHistory, topic: &str, now_ms: u64, retention: Retention) -> Offset {
        history.append(topic, &Publication::text("m"), retention, now_ms, |o| o)
    }

    #[test]
    fn offsets_grow_within_a_topic_even_when_the_clock_steps_back() {
        let history = MemoryHistory::new(1 << 20);
        assert_eq!(publish(&history, "t", 100, KEEP), Offset(100, 0));
        assert_eq!(publish(&history, "t", 100, KEEP), Offset(100, 1));
        assert_eq!(
            publish(&history, "t", 90, KEEP),
            Offset(100, 2),
            "the clock stepped back"
        );
        assert_eq!(publish(&history, "t", 101, KEEP), Offset(101, 0));
        assert_eq!(publish(&history, "u", 50, KEEP), Offset(50, 0), "per topic");
        assert_eq!(history.newest("t"), Some(Offset(101, 0)));
    }

    #[test]
    fn a_resume_gets_what_came_after_its_offset_and_a_gap_past_the_bounds() {
        let history = MemoryHistory::new(1 << 20);
        let three = Retention {
            count: 3,
            ttl: None,
        };
        let offsets: Vec<Offset> = (0..5)
            .map(|i| publish(&history, "t", 10 + i, three))
            .collect();
        let page = history.read("t", &read(Since::After(offsets[2])), three, 20);
        let got: Vec<Offset> = page.entries.iter().map(|(o, _)| *o).collect();
        assert_eq!((got, page.gap), (offsets[3..].to_vec(), None));
        let page = history.read("t", &read(Since::After(offsets[0])), three, 20);
        assert!(page.gap.is_some(), "offset 1 was trimmed by the count");
        let page = history.read("t", &read(Since::After(offsets[1])), three, 20);
        assert_eq!(page.gap, None, "everything after 1 is still kept");
        // Past the age: what is older goes, and a resume from before it gets a gap.
        let aged = Retention {
            count: 3,
            ttl: Some(Duration::from_millis(5)),
        };
        let page = history.read("t", &read(Since::After(offsets[2])), aged, 100);
        assert!(
            page.gap.is_some() && page.entries.is_empty(),
            "3 and 4 expired: {page:?}"
        );
        assert_eq!(
            history.newest("t"),
            Some(offsets[4]),
            "the position outlives the entries"
        );
        let now = history.read("t", &read(Since::Now), aged, 100);
        assert_eq!((now.floor, now.gap), (offsets[4], None));
    }

    #[test]
    fn the_node_knows_what_it_holds_since_it_began_and_nothing_before() {
        let history = MemoryHistory::new(1 << 20);
        let before = Offset(5, 0);
        let nothing = history.read("a", &read(Since::After(before)), KEEP, 10);
        assert!(
            nothing.gap.is_some(),
            "nothing given yet: a previous run's offset"
        );
        let began = publish(&history, "a", 10, KEEP);
        let b1 = publish(&history, "b", 20, KEEP);
        // A moment between entries of another topic: b has all since the node began.
        let page = history.read("b", &read(Since::After(began)), KEEP, 30);
        let got: Vec<Offset> = page.entries.iter().map(|(o, _)| *o).collect();
        assert_eq!((got, page.gap), (vec![b1], None));
        // A topic never published on: nothing missed since the node began.
        let quiet = history.read("c", &read(Since::After(began)), KEEP, 30);
        assert_eq!((quiet.gap, quiet.entries.len()), (None, 0));
        // From before the node began (its previous run): unknown, a gap.
        let earlier = history.read("b", &read(Since::After(before)), KEEP, 30);
        assert!(earlier.gap.is_some());
        let earlier = history.read("c", &read(Since::After(before)), KEEP, 30);
        assert!(earlier.gap.is_some());
    }

    #[test]
    fn the_node_wide_cap_removes_the_oldest_entries_of_any_topic() {
        let cap = 10 * (1 + ENTRY_OVERHEAD) + 2 * (TOPIC_OVERHEAD + 1);
        let history = MemoryHistory::new(cap);
        for i in 0..10 {
            publish(&history, "a", i, KEEP);
        }
        for i in 10..15 {
            publish(&history, "b", i, KEEP);
        }
        let (bytes, topics) = history.usage();
        assert!(bytes <= cap && topics == 2, "{bytes} > {cap}");
        let a = history.read("a", &read(Since::After(Offset::ZERO)), KEEP, 20);
        assert_eq!(a.entries.len(), 5, "a's five oldest went first");
        let b = history.read("b", &read(Since::After(Offset::ZERO)), KEEP, 20);
        assert_eq!(b.entries.len(), 5);
    }
}
