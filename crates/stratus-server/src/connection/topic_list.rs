//! The topics one connection is subscribed to ([`TopicList`]), in subscription order as
//! a `Vec` would keep them (a removal swaps the last one into its place).
//!
//! Nearly every connection has one topic or none, and a `Vec` of one topic is a heap
//! allocation of four (64 bytes, more than the rest of an idle connection's membership):
//! here none and one are held inline, in the 24 bytes a `Vec` takes anyway, and only a
//! second topic makes a vector.

use std::sync::Arc;

/// A connection's topics (the worker's topic table's names, shared).
#[derive(Debug, Default)]
pub(crate) enum TopicList {
    #[default]
    Empty,
    One(Arc<str>),
    /// Two topics or more (never fewer: removal goes back to `One`).
    Many(Vec<Arc<str>>),
}

impl TopicList {
    /// The topics, in order.
    pub(crate) fn as_slice(&self) -> &[Arc<str>] {
        match self {
            Self::Empty => &[],
            Self::One(topic) => std::slice::from_ref(topic),
            Self::Many(topics) => topics,
        }
    }

    /// Adds `topic` at the end (the caller checks it is not there already).
    pub(crate) fn push(&mut self, topic: Arc<str>) {
        *self = match std::mem::take(self) {
            Self::Empty => Self::One(topic),
            Self::One(first) => Self::Many(vec![first, topic]),
            Self::Many(mut topics) => {
                topics.push(topic);
                Self::Many(topics)
            }
        };
    }

    /// Takes `name` out (the last topic takes its place), returning the list's copy of
    /// it; `None` if it is not there.
    pub(crate) fn remove(&mut self, name: &str) -> Option<Arc<str>> {
        let at = self.as_slice().iter().position(|t| &**t == name)?;
        match std::mem::take(self) {
            Self::Empty => None,
            Self::One(topic) => Some(topic),
            Self::Many(mut topics) => {
                let removed = topics.swap_remove(at);
                *self = match topics.len() {
                    1 => topics.pop().map_or(Self::Empty, Self::One),
                    _ => Self::Many(topics),
                };
                Some(removed)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &TopicList) -> Vec<&str> {
        list.as_slice().iter().map(|t| &**t).collect()
    }

    #[test]
    fn topics_keep_a_vectors_order_and_one_topic_is_inline() {
        let mut list = TopicList::default();
        assert!(list.as_slice().is_empty());
        list.push("a".into());
        assert!(matches!(list, TopicList::One(_)), "one topic: no vector");
        for t in ["b", "c", "d"] {
            list.push(t.into());
        }
        assert_eq!(names(&list), ["a", "b", "c", "d"]);
        assert_eq!(list.remove("b").as_deref(), Some("b"));
        assert_eq!(names(&list), ["a", "d", "c"], "the last takes its place");
        assert_eq!(list.remove("x"), None);
        assert_eq!(list.remove("a").as_deref(), Some("a"));
        assert_eq!(list.remove("d").as_deref(), Some("d"));
        assert!(matches!(list, TopicList::One(_)), "back to inline");
        assert_eq!(names(&list), ["c"]);
        assert_eq!(list.remove("c").as_deref(), Some("c"));
        assert!(matches!(list, TopicList::Empty));
    }

    #[test]
    fn a_topic_list_takes_no_more_than_a_vector() {
        assert!(
            size_of::<TopicList>() <= size_of::<Vec<Arc<str>>>(),
            "a topic list is {} bytes: it sits in every connection",
            size_of::<TopicList>()
        );
    }
}
