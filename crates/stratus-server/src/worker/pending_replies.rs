//! Subscribe replies that wait for the broker: with Redis, a subscribe is answered once
//! the node's subscription to the topic is confirmed, so every publish after the reply
//! reaches the client. A worker keeps, per topic, the connections whose replies wait: a
//! raw-mode connection gets one reply however often it asked, a protocol v1 connection one
//! per command (each names its id).
//!
//! Indexed by topic both ways a worker needs: a confirmation answers one topic's
//! waiters, and a connection that unsubscribes or leaves drops its own entries. Each is a
//! hash lookup, so thousands of subscriptions waiting at once (while Redis is
//! unreachable, say) cost nothing per operation beyond their own entry.

use std::collections::HashMap;
use std::sync::Arc;

use indexmap::IndexMap;

use crate::model::conn_id::ConnId;
use crate::model::protocol::v1::CommandId;

/// Most replies one connection may have waiting for one topic (v1 subscribes repeated
/// while the broker is away); past it, a further subscribe is refused.
pub(crate) const MAX_WAITING: usize = 16;

/// A reply waiting: raw mode's (no id), or a v1 command's.
pub(crate) type Waiting = Option<CommandId>;

/// Per topic, the connections whose subscribe replies wait for its confirmation.
#[derive(Debug, Default)]
pub(crate) struct PendingReplies {
    topics: HashMap<Arc<str>, IndexMap<ConnId, Vec<Waiting>>>,
}

/// A reply that could not wait: the connection already has [`MAX_WAITING`] for the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooManyWaiting;

impl PendingReplies {
    /// Connection `conn`'s reply `reply` waits for `topic` (raw mode's once, however
    /// often it asks).
    pub(crate) fn wait(
        &mut self,
        topic: Arc<str>,
        conn: ConnId,
        reply: Waiting,
    ) -> Result<(), TooManyWaiting> {
        let waiting = self
            .topics
            .entry(topic)
            .or_default()
            .entry(conn)
            .or_default();
        if reply.is_none() && waiting.contains(&None) {
            return Ok(());
        }
        if waiting.len() >= MAX_WAITING {
            return Err(TooManyWaiting);
        }
        waiting.push(reply);
        Ok(())
    }

    /// Connection `conn` no longer waits for `topic` (it unsubscribed, or left): the
    /// replies that were waiting.
    pub(crate) fn forget(&mut self, topic: &str, conn: ConnId) -> Vec<Waiting> {
        let Some(waiting) = self.topics.get_mut(topic) else {
            return Vec::new();
        };
        let replies = waiting.swap_remove(&conn).unwrap_or_default();
        if waiting.is_empty() {
            self.topics.remove(topic);
        }
        replies
    }

    /// The connections waiting for `topic`, with their replies, which no longer wait.
    pub(crate) fn take(&mut self, topic: &str) -> IndexMap<ConnId, Vec<Waiting>> {
        self.topics.remove(topic).unwrap_or_default()
    }

    /// How many replies wait, over all topics.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.topics
            .values()
            .flat_map(IndexMap::values)
            .map(Vec::len)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: usize) -> ConnId {
        ConnId::new(n, 1)
    }

    #[test]
    fn a_confirmation_takes_its_topics_waiters_once() {
        let mut pending = PendingReplies::default();
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let v1 = |n| Some(CommandId::number(n));
        for (topic, conn, reply) in [
            (&a, 1, None),
            (&a, 1, None),
            (&a, 2, v1(7)),
            (&a, 2, v1(8)),
            (&b, 1, None),
        ] {
            pending.wait(topic.clone(), id(conn), reply).expect("room");
        }
        assert_eq!(pending.len(), 4, "raw mode's once, v1's one per command");
        let waiting = pending.take("a");
        assert_eq!(waiting.keys().copied().collect::<Vec<_>>(), [id(1), id(2)]);
        assert_eq!(waiting[&id(2)], [v1(7), v1(8)]);
        assert!(pending.take("a").is_empty(), "answered once");
        assert_eq!(pending.len(), 1);
    }

    #[test]
    fn a_connection_that_unsubscribes_or_leaves_waits_no_more() {
        let mut pending = PendingReplies::default();
        for n in 0..10_000 {
            pending.wait(Arc::from("t"), id(n), None).expect("room");
        }
        for n in 0..9_999 {
            assert_eq!(pending.forget("t", id(n)), [None]);
        }
        assert!(pending.forget("t", id(0)).is_empty(), "once");
        assert!(pending.forget("other", id(1)).is_empty());
        assert_eq!(
            pending.take("t").keys().copied().collect::<Vec<_>>(),
            [id(9_999)]
        );
        assert_eq!(pending.len(), 0);
        assert!(pending.topics.is_empty(), "no empty sets left behind");
    }

    #[test]
    fn replies_waiting_per_connection_and_topic_are_capped() {
        let mut pending = PendingReplies::default();
        for n in 0..MAX_WAITING as u64 {
            pending
                .wait(Arc::from("t"), id(1), Some(CommandId::number(n)))
                .expect("room");
        }
        let more = pending.wait(Arc::from("t"), id(1), Some(CommandId::number(99)));
        assert_eq!(more, Err(TooManyWaiting));
        assert_eq!(pending.len(), MAX_WAITING);
    }
}
