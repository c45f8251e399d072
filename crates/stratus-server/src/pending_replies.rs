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

/// Per topic, the connections (tokens) whose subscribe reply waits for its confirmation.
#[derive(Debug, Default)]
pub(crate) struct PendingReplies {
    topics: HashMap<Arc<str>, IndexSet<u64>>,
}

impl PendingReplies {
    /// Connection `token` waits for `topic` (once, however often it asks).
    pub(crate) fn wait(&mut self, topic: Arc<str>, token: u64) {
        self.topics.entry(topic).or_default().insert(token);
    }

    /// Connection `token` no longer waits for `topic` (it unsubscribed, or left);
    /// `true` if it was waiting.
    pub(crate) fn forget(&mut self, topic: &str, token: u64) -> bool {
        let Some(waiting) = self.topics.get_mut(topic) else {
            return false;
        };
        let was = waiting.swap_remove(&token);
        if waiting.is_empty() {
            self.topics.remove(topic);
        }
        was
    }

    /// The connections waiting for `topic`, which no longer wait.
    pub(crate) fn take(&mut self, topic: &str) -> IndexSet<u64> {
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

    #[test]
    fn a_confirmation_takes_its_topics_waiters_once() {
        let mut pending = PendingReplies::default();
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        pending.wait(a.clone(), 1);
        pending.wait(a.clone(), 1);
        pending.wait(a.clone(), 2);
        pending.wait(b.clone(), 1);
        assert_eq!(pending.len(), 3, "one reply per connection and topic");
        let waiting: Vec<u64> = pending.take("a").into_iter().collect();
        assert_eq!(waiting, [1, 2]);
        assert!(pending.take("a").is_empty(), "answered once");
        assert_eq!(pending.len(), 1);
    }

    #[test]
    fn a_connection_that_unsubscribes_or_leaves_waits_no_more() {
        let mut pending = PendingReplies::default();
        for token in 0..10_000 {
            pending.wait(Arc::from("t"), token);
        }
        for token in 0..9_999 {
            assert!(pending.forget("t", token));
        }
        assert!(!pending.forget("t", 0), "once");
        assert!(!pending.forget("other", 1));
        assert_eq!(pending.take("t").into_iter().collect::<Vec<_>>(), [9_999]);
        pending.wait(Arc::from("u"), 3);
        assert!(pending.forget("u", 3));
        assert_eq!(pending.len(), 0);
        assert!(pending.topics.is_empty(), "no empty sets left behind");
    }
}
