//! The `conflate` slow-consumer policy: a subscriber whose queue is too full to take a
//! broadcast keeps, per topic (or per key, when the publish names one), only the newest
//! broadcast, and counts the ones it replaced. When its queue drains, each held broadcast
//! goes out after a notice of what was skipped before it. The subscriber is never closed
//! and never told less than what it missed; a prompt subscriber of the same topic is not
//! touched (this state is the lagging connection's alone).
//!
//! What is held is bounded: its bytes by the send-queue cap and its keys by
//! [`MAX_KEYS`]; past either, a broadcast for a key not yet held is dropped and counted
//! against its topic, and the count is told with the rest.

use std::sync::Arc;

use indexmap::IndexMap;

use crate::model::broadcast::Broadcast;
use crate::model::offset::Offset;

/// Most keys held for one connection.
pub(crate) const MAX_KEYS: usize = 1024;

/// What a conflation holds for one key: the newest broadcast, and what it replaced.
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) broadcast: Option<Arc<Broadcast>>,
    /// Broadcasts skipped (replaced, or dropped past the bounds) before it.
    pub(crate) skipped: u64,
    /// The offsets of the first and the last skipped, where the topic has history.
    pub(crate) first: Option<Offset>,
    pub(crate) last: Option<Offset>,
}

impl Held {
    fn skip(&mut self, broadcast: &Broadcast) {
        self.skipped += 1;
        if self.first.is_none() {
            self.first = broadcast.offset;
        }
        self.last = broadcast.offset.or(self.last);
    }
}

/// The key a broadcast is conflated under: its topic, and its key if it has one.
pub(crate) type Key = (Arc<str>, Option<Arc<str>>);

/// A lagging connection's held broadcasts, oldest key first.
#[derive(Debug, Default)]
pub(crate) struct Conflation {
    held: IndexMap<Key, Held>,
    bytes: usize,
}

impl Conflation {
    /// Takes `broadcast`, replacing what is held for its key; a new key past the bounds
    /// (`max_bytes`, [`MAX_KEYS`]) is counted as skipped under its topic instead.
    pub(crate) fn hold(&mut self, broadcast: &Arc<Broadcast>, max_bytes: usize) {
        let key = (broadcast.topic.clone(), broadcast.publication.key.clone());
        let len = broadcast.len();
        if let Some(held) = self.held.get_mut(&key) {
            if let Some(old) = held.broadcast.replace(broadcast.clone()) {
                self.bytes = self.bytes - old.len() + len;
                held.skip(&old);
            } else {
                self.bytes += len;
            }
            return;
        }
        let full = self.held.len() >= MAX_KEYS || self.bytes + len > max_bytes;
        if !full {
            self.bytes += len;
            self.held.insert(
                key,
                Held {
                    broadcast: Some(broadcast.clone()),
                    skipped: 0,
                    first: None,
                    last: None,
                },
            );
            return;
        }
        // Past the bounds: counted under the topic (no key), told when it drains.
        let topic_key = (broadcast.topic.clone(), None);
        let room = self.held.len() < MAX_KEYS + 64;
        match self.held.entry(topic_key) {
            indexmap::map::Entry::Occupied(mut held) => held.get_mut().skip(broadcast),
            indexmap::map::Entry::Vacant(entry) if room => {
                let mut held = Held {
                    broadcast: None,
                    skipped: 0,
                    first: None,
                    last: None,
                };
                held.skip(broadcast);
                entry.insert(held);
            }
            // Every topic of the connection is counted already (a connection has a
            // bounded number of topics).
            indexmap::map::Entry::Vacant(_) => {}
        }
    }

    /// Whether anything is held.
    pub(crate) fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// The oldest key's held broadcast (and what was skipped before it), if its frame is
    /// `fits` ; it is no longer held.
    pub(crate) fn next_if(&mut self, fits: impl FnOnce(usize) -> bool) -> Option<(Key, Held)> {
        let (_, held) = self.held.first()?;
        let len = held.broadcast.as_ref().map_or(0, |b| b.len());
        if !fits(len) {
            return None;
        }
        self.bytes -= len;
        self.held.shift_remove_index(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::publication::Publication;

    fn keyed(topic: &str, key: &str, offset: u64) -> Arc<Broadcast> {
        let publication = Publication::text("v").with_key(Some(key)).expect("key");
        Arc::new(Broadcast::new(
            Arc::from(topic),
            publication,
            Some(Offset(offset, 0)),
            std::time::Instant::now(),
        ))
    }

    #[test]
    fn the_newest_per_key_is_held_and_what_it_replaced_counted() {
        let mut conflation = Conflation::default();
        for offset in 1..=5 {
            conflation.hold(&keyed("prices", "eur", offset), 1 << 20);
        }
        conflation.hold(&keyed("prices", "usd", 6), 1 << 20);
        let (key, held) = conflation.next_if(|_| true).expect("held");
        assert_eq!(key.1.as_deref(), Some("eur"));
        assert_eq!(held.broadcast.and_then(|b| b.offset), Some(Offset(5, 0)));
        assert_eq!(
            (held.skipped, held.first, held.last),
            (4, Some(Offset(1, 0)), Some(Offset(4, 0)))
        );
        assert!(
            conflation.next_if(|_| false).is_none(),
            "it does not fit: it waits"
        );
        let (key, held) = conflation.next_if(|_| true).expect("held");
        assert_eq!((key.1.as_deref(), held.skipped), (Some("usd"), 0));
        assert!(conflation.is_empty());
    }

    #[test]
    fn keys_past_the_bounds_are_counted_under_their_topic() {
        let mut conflation = Conflation::default();
        let frame = keyed("t", "k0", 0).len();
        conflation.hold(&keyed("t", "k0", 0), frame);
        conflation.hold(&keyed("t", "k1", 1), frame);
        conflation.hold(&keyed("t", "k2", 2), frame);
        let (_, first) = conflation.next_if(|_| true).expect("k0");
        assert_eq!(first.skipped, 0);
        let (key, counted) = conflation.next_if(|_| true).expect("the topic's count");
        assert_eq!(
            (key.1, counted.broadcast.is_none(), counted.skipped),
            (None, true, 2)
        );
    }
}
