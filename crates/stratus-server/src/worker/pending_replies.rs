//! Subscribe replies that wait for the broker: with Redis, a subscribe is answered once
//! the node's subscription to the topic is confirmed, so every publish after the reply
//! reaches the client. A worker keeps, per topic, the connections whose reply waits.
//!
//! Indexed by topic both ways a worker needs: a confirmation answers one topic's
//! waiters, and a connection that unsubscribes or leaves drops its own entries. Each is a
//! hash lookup, so thousands of subscriptions waiting at once (while Redis is
//! unreachable, say) cost nothing per operation beyond their own entry.

use std::collections::HashMap;
use std::sync::Arc;

use indexmap::IndexSet;

use crate::model::conn_id::ConnId;

/// Per topic, the connections whose subscribe reply waits for its confirmation.
#[derive(Debug, Default)]
pub(crate) struct PendingReplies {
    topics: HashMap<Arc<str>, IndexSet<ConnId>>,
}

impl PendingReplies {
    /// Connection `conn` waits for `topic` (once, however often it asks).
    pub(crate) fn wait(&mut self, topic: Arc<str>, conn: ConnId) {
        self.topics.entry(topic).or_default().insert(conn);
    }

    /// Connection `conn` no longer waits for `topic` (it unsubscribed, or left);
    /// `true` if it was waiting.
    pub(crate) fn forget(&mut self, topic: &str, conn: ConnId) -> bool {
        let Some(waiting) = self.topics.get_mut(topic) else {
            return false;
        };
        let was = waiting.swap_remove(&conn);
        if waiting.is_empty() {
            self.topics.remove(topic);
        }
        was
    }

    /// The connections waiting for `topic`, which no longer wait.
    pub(crate) fn take(&mut self, topic: &str) -> IndexSet<ConnId> {
        self.topics.remove(topic).unwrap_or_default()
    }

    /// How many replies wait, over all topics.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.topics.values().map(IndexSet::len).sum()
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
        pending.wait(a.clone(), id(1));
        pending.wait(a.clone(), id(1));
        pending.wait(a.clone(), id(2));
        pending.wait(b.clone(), id(1));
        assert_eq!(pending.len(), 3, "one reply per connection and topic");
        let waiting: Vec<ConnId> = pending.take("a").into_iter().collect();
        assert_eq!(waiting, [id(1), id(2)]);
        assert!(pending.take("a").is_empty(), "answered once");
        assert_eq!(pending.len(), 1);
    }

    #[test]
    fn a_connection_that_unsubscribes_or_leaves_waits_no_more() {
        let mut pending = PendingReplies::default();
        for n in 0..10_000 {
            pending.wait(Arc::from("t"), id(n));
        }
        for n in 0..9_999 {
            assert!(pending.forget("t", id(n)));
        }
        assert!(!pending.forget("t", id(0)), "once");
        assert!(!pending.forget("other", id(1)));
        assert_eq!(
            pending.take("t").into_iter().collect::<Vec<_>>(),
            [id(9_999)]
        );
        pending.wait(Arc::from("u"), id(3));
        assert!(pending.forget("u", id(3)));
        assert_eq!(pending.len(), 0);
        assert!(pending.topics.is_empty(), "no empty sets left behind");
    }
}
