//! What presence says about a topic, as the node, the broker and the protocol pass it
//! around: a member (client id, user, the token's `info`), a topic's occupancy, and an
//! answer to a presence or occupancy question.

use std::fmt::Write as _;
use std::sync::Arc;

/// A member as presence lists it: the client id (node, worker, connection), the user
/// and the token's `info` (JSON text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Member {
    pub(crate) client: Arc<str>,
    pub(crate) user: Option<Arc<str>>,
    pub(crate) info: Option<Arc<str>>,
}

impl Member {
    /// As JSON: `{"client":..,"user":..,"info":..}` (`info` embedded as given).
    pub(crate) fn write_json(&self, out: &mut String) {
        let quote = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "null".into());
        let _ = write!(out, "{{\"client\":{}", quote(&self.client));
        match &self.user {
            Some(user) => {
                let _ = write!(out, ",\"user\":{}", quote(user));
            }
            None => out.push_str(",\"user\":null"),
        }
        let _ = write!(
            out,
            ",\"info\":{}}}",
            self.info.as_deref().unwrap_or("null")
        );
    }
}

/// Writes `members` as a JSON array.
pub(crate) fn members_json(members: &[Member], out: &mut String) {
    out.push('[');
    for (i, member) in members.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        member.write_json(out);
    }
    out.push(']');
}

/// A topic's occupancy: connections subscribed, and distinct users among them
/// (connections without a user count as none).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Occupancy {
    pub(crate) connections: u64,
    pub(crate) users: u64,
}

impl Occupancy {
    /// As its v1 push: `{"type":"occupancy","topic":..,"connections":..,"users":..}`.
    pub(crate) fn push(self, topic: &str) -> String {
        serde_json::json!({
            "type": "occupancy",
            "topic": topic,
            "connections": self.connections,
            "users": self.users,
        })
        .to_string()
    }
}

/// An answer to a presence or occupancy question: the counts, and the members when they
/// were asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PresenceAnswer {
    pub(crate) occupancy: Occupancy,
    /// The members listed and whether that is all of them (`None`: not asked for).
    pub(crate) members: Option<(Vec<Member>, bool)>,
}

impl PresenceAnswer {
    /// The answer's fields as JSON: `connections`, `users`, and `members` and `complete`
    /// when members were asked for.
    pub(crate) fn fields(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut fields = serde_json::Map::new();
        fields.insert("connections".into(), self.occupancy.connections.into());
        fields.insert("users".into(), self.occupancy.users.into());
        if let Some((list, complete)) = &self.members {
            let mut json = String::new();
            members_json(list, &mut json);
            let members = serde_json::from_str(&json).unwrap_or_default();
            fields.insert("members".into(), members);
            fields.insert("complete".into(), (*complete).into());
        }
        fields
    }
}

/// What a node tells the cluster about its presence: per topic changed (or, on a full
/// report, per topic with subscribers), its occupancy on the node and, where the topic
/// lists members and has no more than its cap, the members.
#[derive(Debug, Default)]
pub(crate) struct PresenceReport {
    pub(crate) topics: Vec<TopicReport>,
    /// The node's own figures, for `GET /nodes` (name, value).
    pub(crate) node: Vec<(&'static str, u64)>,
}

/// One topic in a [`PresenceReport`].
#[derive(Debug)]
pub(crate) struct TopicReport {
    pub(crate) topic: Arc<str>,
    pub(crate) occupancy: Occupancy,
    /// The members (`None`: the topic lists none, or has more than its cap).
    pub(crate) members: Option<Vec<Member>>,
}
