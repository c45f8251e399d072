//! How Stratus names its broker channels and keys, and which command publishes: on one
//! Redis or independent shards, on a Redis Cluster, and on NATS (subjects): plain naming,
//! tested without a broker, shared by the broker and the occupied/vacated events (both
//! speak to Redis; neither may reach into the other).

use std::borrow::Cow;

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

/// NATS: a topic's subject is this prefix and the topic, whose dots separate subject
/// tokens as they separate the parts of a name (`chat.room.1` is `stratus.t.chat.room.1`,
/// so a NATS user can subscribe to `stratus.t.chat.>`).
const SUBJECT_PREFIX: &str = "stratus.t.";
/// NATS: the subject a publish that keeps a history goes to (JetStream's stream takes it
/// there and republishes it, with its sequence, on the topic's subject).
const HISTORY_PREFIX: &str = "stratus.h.";
/// NATS: a topic that would make an empty subject token (a leading, trailing or doubled
/// dot) is this marker and the topic in hex instead; `~` cannot start a topic.
const HEX_MARK: char = '~';

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
    /// NATS: subjects for channels (`stratus.t.<topic>`), JetStream subjects for the
    /// histories (`stratus.h.<topic>`); nothing is node-wide but the control subject.
    Nats,
}

impl Keyspace {
    /// A topic's channel.
    pub(crate) fn channel(self, topic: &str) -> String {
        match self {
            Self::Plain => format!("{CHANNEL_PREFIX}{topic}"),
            Self::Cluster => format!("{CHANNEL_PREFIX}{{{topic}}}"),
            Self::Nats => subject(SUBJECT_PREFIX, topic),
        }
    }

    /// The Redis key of a topic's history (NATS: the subject its publishes go to).
    pub(crate) fn key(self, topic: &str) -> String {
        match self {
            Self::Plain => format!("stratus:history:{topic}"),
            Self::Cluster => format!("stratus:history:{{{topic}}}"),
            Self::Nats => subject(HISTORY_PREFIX, topic),
        }
    }

    /// The topic whose channel is `channel`, if it is one.
    pub(crate) fn topic(self, channel: &str) -> Option<Cow<'_, str>> {
        if self == Self::Nats {
            return unsubject(channel.strip_prefix(SUBJECT_PREFIX)?);
        }
        let rest = channel.strip_prefix(CHANNEL_PREFIX)?;
        match self {
            Self::Cluster => rest.strip_prefix('{')?.strip_suffix('}').map(Cow::Borrowed),
            Self::Plain | Self::Nats => Some(Cow::Borrowed(rest)),
        }
    }

    /// The channel on which nodes tell each other they are overloaded (and user-level
    /// control goes).
    pub(crate) fn control(self) -> &'static str {
        match self {
            Self::Plain => CONTROL_CHANNEL,
            Self::Cluster => "{stratus!}control",
            Self::Nats => "stratus.control",
        }
    }

    /// The key of what is node-wide, named `name` (`presence:nodes`, say).
    pub(crate) fn node_key(self, name: &str) -> String {
        match self {
            Self::Plain | Self::Nats => format!("stratus!{name}"),
            Self::Cluster => format!("{NODE_TAG}{name}"),
        }
    }

    /// The command that publishes on a channel.
    pub(crate) fn publish(self) -> &'static str {
        match self {
            Self::Plain | Self::Nats => "PUBLISH",
            Self::Cluster => "SPUBLISH",
        }
    }
}

/// `prefix` and the topic as NATS subject tokens: as it is, or in hex after [`HEX_MARK`]
/// where a dot would make an empty token.
fn subject(prefix: &str, topic: &str) -> String {
    if !topic.is_empty() && topic.split('.').all(|part| !part.is_empty()) {
        return format!("{prefix}{topic}");
    }
    let mut subject = String::with_capacity(prefix.len() + 1 + 2 * topic.len());
    subject.push_str(prefix);
    subject.push(HEX_MARK);
    for byte in topic.bytes() {
        subject.push_str(&format!("{byte:02x}"));
    }
    subject
}

/// The topic of a subject's tokens after the prefix (see [`subject`]).
fn unsubject(tokens: &str) -> Option<Cow<'_, str>> {
    let Some(hex) = tokens.strip_prefix(HEX_MARK) else {
        return Some(Cow::Borrowed(tokens));
    };
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(hex.get(at..at + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok().map(Cow::Owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_subjects_name_topics_both_ways() {
        let nats = Keyspace::Nats;
        for (topic, channel, key) in [
            ("news", "stratus.t.news", "stratus.h.news"),
            (
                "chat.room.1",
                "stratus.t.chat.room.1",
                "stratus.h.chat.room.1",
            ),
            ("a:b/c-d_e", "stratus.t.a:b/c-d_e", "stratus.h.a:b/c-d_e"),
            (".a", "stratus.t.~2e61", "stratus.h.~2e61"),
            ("a..b", "stratus.t.~612e2e62", "stratus.h.~612e2e62"),
            ("a.", "stratus.t.~612e", "stratus.h.~612e"),
        ] {
            assert_eq!(nats.channel(topic), channel);
            assert_eq!(nats.key(topic), key);
            assert_eq!(nats.topic(channel).as_deref(), Some(topic), "{channel}");
        }
        for stranger in [
            "stratus.h.news",
            "other.t.x",
            "stratus.t.~6",
            "stratus.t.~zz",
        ] {
            assert_eq!(nats.topic(stranger), None, "{stranger}");
        }
        assert_eq!(nats.topic(nats.control()), None);
    }
}
