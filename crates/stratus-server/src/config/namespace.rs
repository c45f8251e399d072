//! Namespaces: options for the topics whose names start with a prefix (`chat:`), set in
//! the config file, over the server-wide settings that apply to every other topic. A topic
//! takes the namespace with the longest prefix it starts with; an option a namespace does
//! not set is the server-wide one.

use std::time::Duration;

use crate::config::{Config, SlowConsumer};
use crate::model::topic;

/// Who may publish on a topic from a WebSocket connection (protocol v1's `publish`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum ClientPublish {
    /// Nobody: publishing is the backend's (the admin API, the library).
    #[default]
    Off,
    /// Any connection subscribed to the topic (and, with auth on, whose token allows the
    /// topic).
    Subscribers,
    /// Only connections whose token's `publish` claim allows the topic.
    Claim,
}

/// What a topic's presence tracks (protocol v1's `presence` and `occupancy`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum PresenceMode {
    /// Nothing: `presence` and `occupancy` are refused with `no_presence`.
    Off,
    /// Occupancy: how many connections and distinct users (`sub`) are subscribed.
    #[default]
    Counts,
    /// Occupancy, and the list of members (client id, `sub`, the token's `info`) up to
    /// the topic's member cap.
    Members,
}

/// What a namespace sets for its topics; `None`: the server-wide setting.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NamespaceOptions {
    /// Messages kept per topic for recovery and the `history` command (0: none).
    pub history: Option<usize>,
    /// Longest a message is kept in the history.
    pub history_ttl: Option<Duration>,
    /// Whether subscribers may resume with `since` (the history is still readable).
    pub recovery: Option<bool>,
    /// Who may publish from a connection.
    pub publish: Option<ClientPublish>,
    /// Most subscribers per topic on a node (0: no limit).
    pub max_subscribers: Option<usize>,
    /// Largest message a connection may publish, in bytes.
    pub max_message: Option<usize>,
    /// What happens to a subscriber whose send queue is full.
    pub slow_consumer: Option<SlowConsumer>,
    /// What presence tracks.
    pub presence: Option<PresenceMode>,
    /// Most members listed per topic (past it: counts only).
    pub presence_max_members: Option<usize>,
    /// Whether subscribers get the topic's joins and leaves (coalesced per interval).
    pub presence_events: Option<bool>,
    /// How often subscribers get the topic's occupancy (`None` here: the server-wide
    /// setting; `Some(Duration::ZERO)`: never).
    pub occupancy_push: Option<Duration>,
    /// Whether subscribes ask the subscribe hook (needs `Hooks::subscribe`).
    pub subscribe_hook: Option<bool>,
    /// Whether client publishes ask the publish hook (needs `Hooks::publish`).
    pub publish_hook: Option<bool>,
}

/// A namespace: its prefix and its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// The start of the topic names it applies to (`chat:`).
    pub prefix: String,
    /// What it sets.
    pub options: NamespaceOptions,
}

/// The options in force for one topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TopicOptions {
    pub(crate) history: usize,
    pub(crate) history_ttl: Option<Duration>,
    pub(crate) recovery: bool,
    pub(crate) publish: ClientPublish,
    pub(crate) max_subscribers: usize,
    pub(crate) max_message: usize,
    pub(crate) slow_consumer: SlowConsumer,
    pub(crate) presence: PresenceMode,
    pub(crate) presence_max_members: usize,
    pub(crate) presence_events: bool,
    /// `None`: no occupancy push.
    pub(crate) occupancy_push: Option<Duration>,
    /// Subscribes ask the subscribe hook.
    pub(crate) subscribe_hook: bool,
    /// Client publishes ask the publish hook.
    pub(crate) publish_hook: bool,
}

impl TopicOptions {
    /// Whether a subscriber may resume from an offset.
    pub(crate) fn recovers(&self) -> bool {
        self.history > 0 && self.recovery
    }
}

impl Config {
    /// The options for `topic`: its namespace's over the server-wide settings.
    pub(crate) fn options(&self, topic: &str) -> TopicOptions {
        let base = TopicOptions {
            history: self.history,
            history_ttl: self.history_ttl,
            recovery: true,
            publish: self.client_publish,
            max_subscribers: 0,
            max_message: self.limits.max_message,
            slow_consumer: self.slow_consumer,
            presence: self.presence,
            presence_max_members: self.presence_max_members,
            presence_events: self.presence_events,
            occupancy_push: self.occupancy_push,
            subscribe_hook: self.hooks.subscribe.is_some(),
            publish_hook: self.hooks.publish.is_some(),
        };
        let Some(ns) = self
            .namespaces
            .iter()
            .filter(|ns| topic.starts_with(&ns.prefix))
            .max_by_key(|ns| ns.prefix.len())
        else {
            return base;
        };
        let o = &ns.options;
        TopicOptions {
            history: o.history.unwrap_or(base.history),
            history_ttl: o.history_ttl.or(base.history_ttl),
            recovery: o.recovery.unwrap_or(base.recovery),
            publish: o.publish.unwrap_or(base.publish),
            max_subscribers: o.max_subscribers.unwrap_or(base.max_subscribers),
            max_message: o.max_message.unwrap_or(base.max_message),
            slow_consumer: o.slow_consumer.unwrap_or(base.slow_consumer),
            presence: o.presence.unwrap_or(base.presence),
            presence_max_members: o.presence_max_members.unwrap_or(base.presence_max_members),
            presence_events: o.presence_events.unwrap_or(base.presence_events),
            occupancy_push: match o.occupancy_push {
                Some(Duration::ZERO) => None,
                Some(every) => Some(every),
                None => base.occupancy_push,
            },
            subscribe_hook: o.subscribe_hook.unwrap_or(base.subscribe_hook),
            publish_hook: o.publish_hook.unwrap_or(base.publish_hook),
        }
    }

    /// Whether any topic's subscribers get occupancy pushes (server-wide or in a
    /// namespace).
    pub(crate) fn pushes_occupancy(&self) -> bool {
        self.occupancy_push.is_some()
            || self
                .namespaces
                .iter()
                .any(|ns| ns.options.occupancy_push.is_some_and(|d| !d.is_zero()))
    }

    /// Whether any topic keeps presence (server-wide or in a namespace).
    pub(crate) fn keeps_presence(&self) -> bool {
        self.presence != PresenceMode::Off
            || self
                .namespaces
                .iter()
                .any(|ns| ns.options.presence.is_some_and(|p| p != PresenceMode::Off))
    }

    /// Whether any topic keeps a history (server-wide or in a namespace).
    pub(crate) fn keeps_history(&self) -> bool {
        self.history > 0
            || self
                .namespaces
                .iter()
                .any(|ns| ns.options.history > Some(0))
    }

    /// Checks the namespaces: prefixes that could start a topic name, each once.
    pub(crate) fn validate_namespaces(&self) -> Result<(), String> {
        let mut seen = std::collections::HashSet::new();
        for ns in &self.namespaces {
            if topic::validate(&ns.prefix).is_err() {
                return Err(format!(
                    "namespace {:?}: a prefix is 1 to 128 bytes of letters, digits and - _ . : /",
                    ns.prefix
                ));
            }
            if !seen.insert(ns.prefix.as_str()) {
                return Err(format!("namespace {:?} is set twice", ns.prefix));
            }
            if ns.options.max_message == Some(0) {
                return Err(format!(
                    "namespace {:?}: max-message must be more than 0",
                    ns.prefix
                ));
            }
            if ns.options.history_ttl == Some(Duration::ZERO) {
                return Err(format!(
                    "namespace {:?}: history-ttl must be more than 0",
                    ns.prefix
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_takes_its_longest_namespace_over_the_server_settings() {
        let chat = NamespaceOptions {
            history: Some(100),
            publish: Some(ClientPublish::Subscribers),
            ..NamespaceOptions::default()
        };
        let rooms = NamespaceOptions {
            slow_consumer: Some(SlowConsumer::Conflate),
            ..NamespaceOptions::default()
        };
        let config = Config {
            history: 5,
            namespaces: vec![
                Namespace {
                    prefix: "chat:".into(),
                    options: chat,
                },
                Namespace {
                    prefix: "chat:rooms/".into(),
                    options: rooms,
                },
            ],
            ..Config::default()
        };
        let plain = config.options("news");
        assert_eq!((plain.history, plain.publish), (5, ClientPublish::Off));
        let lobby = config.options("chat:lobby");
        assert_eq!(
            (lobby.history, lobby.publish),
            (100, ClientPublish::Subscribers)
        );
        let room = config.options("chat:rooms/1");
        assert_eq!(
            room.slow_consumer,
            SlowConsumer::Conflate,
            "the longest prefix"
        );
        assert_eq!(
            room.history, 5,
            "unset in the namespace: the server-wide setting"
        );
        assert!(config.validate_namespaces().is_ok());
        let twice = Config {
            namespaces: vec![config.namespaces[0].clone(), config.namespaces[0].clone()],
            ..Config::default()
        };
        assert!(twice.validate_namespaces().is_err());
    }
}
