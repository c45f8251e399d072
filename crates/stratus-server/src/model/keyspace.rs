//! How Stratus names its Redis channels and keys, and which command publishes, on one
//! Redis or independent shards and on a Redis Cluster: plain naming, tested without a
//! Redis, shared by the broker and the occupied/vacated events (both speak to Redis;
//! neither may reach into the other).

/// Redis channel names are the topic with this prefix: pub/sub channels are shared by all
/// of a Redis server's databases, so the prefix keeps Stratus's apart from others'.
const CHANNEL_PREFIX: &str = "stratus:";
/// The channel on which nodes tell each other they are overloaded. `!` cannot be in a
/// topic, so no topic's channel is this one.
const CONTROL_CHANNEL: &str = "stratus!control";

/// The hash tag of what is the node's rather than a topic's in a Redis Cluster (the
/// control channel, presence): one slot, so one master holds it all and a multi-key
/// command or script over it never crosses slots. `!` cannot be in a topic, so no topic's
/// tag is this one.
const NODE_TAG: &str = "{stratus!}";

/// How Stratus names its channels and keys, and publishes: on one Redis or independent
/// shards (`Plain`: `PUBLISH`, channels and keys as they have always been), or on a Redis
/// Cluster (`Cluster`: sharded pub/sub, `SPUBLISH`/`SSUBSCRIBE`).
///
/// In a cluster a topic's channel `stratus:{topic}` and its history key
/// `stratus:history:{topic}` carry the topic as their hash tag, so both hash to the one
/// slot (`model::shard::key_slot` of the topic) and the publish script, which declares
/// both, runs on the master that serves it. A topic is letters, digits and `-_.:/`
/// (`model::topic`), never a brace, so the tag is the whole topic; and for any name
/// whatever the two share a tag (what follows the `{` is the same text), so they share a
/// slot whenever it is not empty. What is node-wide carries [`NODE_TAG`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Keyspace {
    /// One Redis, or independent shards.
    #[default]
    Plain,
    /// A Redis Cluster (7 or later), with sharded pub/sub.
    Cluster,
}

impl Keyspace {
    /// A topic's channel.
    pub(crate) fn channel(self, topic: &str) -> String {
        match self {
            Self::Plain => format!("{CHANNEL_PREFIX}{topic}"),
            Self::Cluster => format!("{CHANNEL_PREFIX}{{{topic}}}"),
        }
    }

    /// The Redis key of a topic's history.
    pub(crate) fn key(self, topic: &str) -> String {
        match self {
            Self::Plain => format!("stratus:history:{topic}"),
            Self::Cluster => format!("stratus:history:{{{topic}}}"),
        }
    }

    /// The topic whose channel is `channel`, if it is one.
    pub(crate) fn topic(self, channel: &str) -> Option<&str> {
        let rest = channel.strip_prefix(CHANNEL_PREFIX)?;
        match self {
            Self::Plain => Some(rest),
            Self::Cluster => rest.strip_prefix('{')?.strip_suffix('}'),
        }
    }

    /// The channel on which nodes tell each other they are overloaded (and user-level
    /// control goes).
    pub(crate) fn control(self) -> &'static str {
        match self {
            Self::Plain => CONTROL_CHANNEL,
            Self::Cluster => "{stratus!}control",
        }
    }

    /// The key of what is node-wide, named `name` (`presence:nodes`, say).
    pub(crate) fn node_key(self, name: &str) -> String {
        match self {
            Self::Plain => format!("stratus!{name}"),
            Self::Cluster => format!("{NODE_TAG}{name}"),
        }
    }

    /// The command that publishes on a channel.
    pub(crate) fn publish(self) -> &'static str {
        match self {
            Self::Plain => "PUBLISH",
            Self::Cluster => "SPUBLISH",
        }
    }
}
