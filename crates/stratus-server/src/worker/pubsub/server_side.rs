//! Subscriptions the server makes or ends on a connection's behalf (user-level control
//! from the admin API), through the same checks and tables as a client's own commands:
//! the token's `topics`, the per-connection cap, the topic's subscriber cap, the hub's
//! interest. Here, inside `pubsub`, because they need its private subscribe path; the
//! worker's `users` module decides which connections and says what it came to.

use std::sync::Arc;

use super::{Context, PubSub, SubscribeError, subscribed};
use crate::connection::Client;
use crate::model::conn_id::ConnId;
use crate::model::protocol::Notice;
use crate::model::topic;

/// The reason an `unsubscribed` notice gives when the server ended a subscription.
pub(crate) const UNSUBSCRIBED_BY_SERVER: &str = "unsubscribed by the server";

/// How a server-side subscribe went on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ServerSubscribe {
    /// Subscribed, and publishes anywhere reach it now.
    Live,
    /// Subscribed; publishes elsewhere reach it once the broker confirms the topic.
    Unconfirmed(Arc<str>),
}

impl SubscribeError {
    /// A short word for it in a user-level command's answer (`refused` counts by it).
    pub(crate) fn word(&self) -> &'static str {
        match self {
            Self::InvalidTopic(_) => "invalid_topic",
            Self::NotAllowed => "not_allowed",
            Self::TooManyTopics(_) => "too_many_topics",
            Self::TopicFull => "topic_full",
            Self::NotSubscribed => "not_subscribed",
            Self::NoHistory => "no_history",
            Self::TooManyWaiting => "too_many_waiting",
        }
    }
}

impl PubSub {
    /// Subscribes connection `id` to `name` for the server, checked as a client's own
    /// subscribe is. A connection already subscribed passes as subscribed (as a repeated
    /// client subscribe does): a caller that must tell them apart checks
    /// [`Client::topics`] first.
    pub(crate) fn subscribe_for_server(
        &mut self,
        ctx: &Context<'_>,
        id: ConnId,
        client: &mut Client,
        name: &str,
    ) -> Result<ServerSubscribe, SubscribeError> {
        Ok(match self.add(ctx, id, client, name)? {
            Some(topic) => ServerSubscribe::Unconfirmed(topic),
            None => ServerSubscribe::Live,
        })
    }

    /// Ends connection `id`'s subscription to `name` for the server: subscribe replies
    /// still waiting for it are answered first, then a v1 connection gets an
    /// `unsubscribed` notice (raw mode has none: its messages on the topic just stop).
    pub(crate) fn unsubscribe_for_server(
        &mut self,
        ctx: &Context<'_>,
        id: ConnId,
        client: &mut Client,
        name: &str,
    ) -> Result<(), SubscribeError> {
        topic::validate(name)?;
        for reply in self.unsubscribe(ctx, id, client, name)? {
            subscribed(ctx, client, name, reply.as_ref(), None);
        }
        let notice = Notice::Unsubscribed {
            topic: name,
            reason: UNSUBSCRIBED_BY_SERVER,
        };
        client.notify(&notice, ctx.close_deadline());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use serde_json::json;

    use super::*;
    use crate::config::Config;
    use crate::model::auth::Grant;
    use crate::model::protocol::Protocol;
    use crate::testing;

    #[test]
    fn the_server_subscribes_and_unsubscribes_within_a_clients_limits() {
        let config = Config {
            max_topics_per_connection: 2,
            ..Config::default()
        };
        let (hub, _inboxes, _) = testing::hub(1, false, config.clone());
        let now = Instant::now();
        let ctx = Context {
            hub: &hub,
            config: &config,
            now,
            now_ms: 0,
        };
        let grant = Grant::new("alice", &["news.*"], u64::MAX);
        let mut client = testing::open_client_speaking(Protocol::V1, &config, now, Some(grant));
        let mut pubsub = PubSub::new(0);
        let id = ConnId::new(0, 1);
        assert_eq!(
            pubsub.subscribe_for_server(&ctx, id, &mut client, "news.a"),
            Ok(ServerSubscribe::Live),
            "confirmed at once without a broker"
        );
        assert_eq!(
            pubsub.subscribe_for_server(&ctx, id, &mut client, "sport"),
            Err(SubscribeError::NotAllowed),
            "the token's topics hold"
        );
        assert_eq!(
            pubsub.subscribe_for_server(&ctx, id, &mut client, "bad topic"),
            Err(SubscribeError::InvalidTopic(
                topic::TopicError::BadCharacter
            ))
        );
        assert!(
            pubsub
                .subscribe_for_server(&ctx, id, &mut client, "news.b")
                .is_ok()
        );
        let over = pubsub.subscribe_for_server(&ctx, id, &mut client, "news.c");
        assert_eq!(over, Err(SubscribeError::TooManyTopics(2)));
        assert_eq!(over.map(drop).unwrap_err().word(), "too_many_topics");
        assert_eq!(hub.topic_count(), 2);
        assert_eq!(
            pubsub.unsubscribe_for_server(&ctx, id, &mut client, "news.a"),
            Ok(())
        );
        assert_eq!(
            pubsub.unsubscribe_for_server(&ctx, id, &mut client, "news.a"),
            Err(SubscribeError::NotSubscribed)
        );
        assert_eq!(hub.topic_count(), 1);
        let sent: Vec<serde_json::Value> = testing::texts_to(&mut client)
            .iter()
            .map(|t| serde_json::from_str(t).expect("JSON"))
            .collect();
        assert_eq!(
            sent,
            [json!({"type": "unsubscribed", "topic": "news.a", "reason": UNSUBSCRIBED_BY_SERVER})]
        );
    }
}
