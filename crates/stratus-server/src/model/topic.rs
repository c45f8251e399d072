//! Topic names and each worker's table of who listens to what.
//!
//! A worker owns its connections, so its table needs no lock: a publish reaches the
//! worker as one message and the worker walks its own subscriber set.
//!
//! A topic's subscribers are a plain hash set: 9 bytes a bucket (an id and a control
//! byte). An `IndexSet`, which kept subscription order, adds a 16-byte entry to each
//! subscriber, both with spare room: 53 bytes per subscriber against 21, measured at
//! 2,000 (`tests/idle_memory.rs`). Nothing needs that order: a fan-out queues on every
//! subscriber within one turn either way.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::model::conn_id::ConnId;

/// Longest topic name, in bytes.
pub const MAX_TOPIC_LEN: usize = 128;

/// Why a topic name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Empty name.
    #[error("topic is empty")]
    Empty,
    /// Longer than [`MAX_TOPIC_LEN`].
    #[error("topic is longer than {MAX_TOPIC_LEN} bytes")]
    TooLong,
    /// A character outside `A-Z a-z 0-9 - _ . : /`.
    #[error("topic has a character other than letters, digits and - _ . : /")]
    BadCharacter,
}

/// Checks a topic name: 1 to 128 bytes of ASCII letters, digits and `- _ . : /`.
pub fn validate(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    if !topic
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b))
    {
        return Err(TopicError::BadCharacter);
    }
    Ok(())
}

/// One worker's subscriptions: topic -> connections.
#[derive(Debug, Default)]
pub(crate) struct TopicTable {
    topics: HashMap<Arc<str>, HashSet<ConnId>>,
}

impl TopicTable {
    /// Adds `conn` to `topic`. Returns the table's copy of the name (every subscriber
    /// shares it) and `true` if `conn` is the topic's first subscriber here.
    pub(crate) fn subscribe(&mut self, topic: &str, conn: ConnId) -> (Arc<str>, bool) {
        if let Some(name) = self.topics.get_key_value(topic).map(|(k, _)| k.clone()) {
            self.topics.entry(name.clone()).or_default().insert(conn);
            return (name, false);
        }
        let name: Arc<str> = Arc::from(topic);
        self.topics.insert(name.clone(), HashSet::from([conn]));
        (name, true)
    }

    /// Removes `conn` from `topic`; `true` if the topic has no subscriber left here.
    pub(crate) fn unsubscribe(&mut self, topic: &str, conn: ConnId) -> bool {
        let Some(set) = self.topics.get_mut(topic) else {
            return false;
        };
        set.remove(&conn);
        if set.is_empty() {
            self.topics.remove(topic);
            return true;
        }
        false
    }

    /// The connections subscribed to `topic`.
    pub(crate) fn subscribers(&self, topic: &str) -> Option<&HashSet<ConnId>> {
        self.topics.get(topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_are_validated() {
        assert_eq!(validate("prices.eur-usd:v1/tick_2"), Ok(()));
        assert_eq!(validate(""), Err(TopicError::Empty));
        assert_eq!(validate(&"a".repeat(129)), Err(TopicError::TooLong));
        assert_eq!(validate(&"a".repeat(128)), Ok(()));
        for bad in ["with space", "é", "a*b", "a?b", "a\"b", "a\nb"] {
            assert_eq!(validate(bad), Err(TopicError::BadCharacter), "{bad:?}");
        }
    }

    #[test]
    fn first_and_last_subscriber_are_reported() {
        let mut table = TopicTable::default();
        let [c1, c2] = [ConnId::new(1, 1), ConnId::new(2, 1)];
        let (first, is_first) = table.subscribe("t", c1);
        assert!(is_first);
        let (second, is_first) = table.subscribe("t", c2);
        assert!(!is_first);
        assert!(Arc::ptr_eq(&first, &second), "subscribers share one name");
        assert!(
            !table.subscribe("t", c2).1,
            "subscribing twice is idempotent"
        );
        assert_eq!(table.subscribers("t").map(HashSet::len), Some(2));
        assert!(!table.unsubscribe("t", c1));
        assert!(table.unsubscribe("t", c2));
        assert!(table.subscribers("t").is_none());
        assert!(!table.unsubscribe("t", c2));
    }
}
