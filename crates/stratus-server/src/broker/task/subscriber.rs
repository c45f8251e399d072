//! A session's pub/sub connection, classic, sharded or NATS, behind one face: subscribe
//! and unsubscribe channels, ping, and a stream of what arrives.
//!
//! - Classic (one Redis, or independent shards): `SUBSCRIBE` on a RESP2 pub/sub
//!   connection (the redis crate's `PubSub`).
//! - Sharded (Redis Cluster): `SSUBSCRIBE` on a RESP3 connection to one master, whose
//!   messages come as pushes. The redis crate's `PubSub` has no `SSUBSCRIBE`, and its
//!   multiplexed connection takes each subscription confirmation for the answer to one
//!   command, so each channel goes in a command of its own (a pipeline of them: one round
//!   trip, one confirmation each). A `sunsubscribe` Redis sends unasked (the channel's slot
//!   moved to another master) comes out as [`Incoming::Dropped`], and ends the session
//!   (`task::unasked_drop`): the redis crate (1.8) takes every `sunsubscribe` push for the
//!   answer to the request in flight, so after an unasked one the connection's answers
//!   are each matched to the wrong request, and it must not be used again.
//! - NATS: a core subscription per channel (`nats`).

use std::pin::Pin;

use futures_util::{Stream, StreamExt};
use redis::aio::{MultiplexedConnection, PubSubSink};
use redis::{Msg, PushKind, Value};
use tokio::sync::mpsc;

use super::nats::Subscriptions;
use super::within;

/// What a session's pub/sub connection receives.
pub(super) enum Incoming {
    /// A message on a channel the session subscribed.
    Message(Msg),
    /// A message on a NATS subject the session subscribed.
    Nats(async_nats::Message),
    /// Redis ended the session's subscription to this channel (sharded only: a
    /// `sunsubscribe` push, ours or Redis's own).
    Dropped(String),
    /// The connection is lost, for this reason (NATS: its client says so).
    Lost(String),
}

/// The stream of what the session's pub/sub connection receives; it ends with the
/// connection.
pub(super) type Messages = Pin<Box<dyn Stream<Item = Incoming>>>;

/// The subscribing side of a session's pub/sub connection (clones share it).
#[derive(Clone)]
pub(super) enum Subscriber {
    Classic(PubSubSink),
    Sharded(MultiplexedConnection),
    Nats(Subscriptions),
}

impl Subscriber {
    /// Connects the pub/sub connection: classic with `client`, or, given `sharded` (a
    /// RESP3 client of the same master), sharded.
    pub(super) async fn connect(
        client: &redis::Client,
        sharded: Option<&redis::Client>,
        config: &redis::AsyncConnectionConfig,
    ) -> redis::RedisResult<(Self, Messages)> {
        let Some(sharded) = sharded else {
            let (sink, stream) = within(client.get_async_pubsub()).await?.split();
            let messages = stream.map(Incoming::Message);
            return Ok((Self::Classic(sink), Box::pin(messages)));
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let config = config.clone().set_push_sender(tx);
        let conn = sharded
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let pushes = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        // The connection's end is a `Disconnection` push, then the channel closes.
        let messages = pushes
            .take_while(|push| std::future::ready(push.kind != PushKind::Disconnection))
            .filter_map(|push| {
                std::future::ready(match push.kind {
                    PushKind::SUnsubscribe => match push.data.first() {
                        Some(Value::BulkString(name)) => Some(Incoming::Dropped(
                            String::from_utf8_lossy(name).into_owned(),
                        )),
                        _ => None,
                    },
                    _ => Msg::from_push_info(push).map(Incoming::Message),
                })
            });
        Ok((Self::Sharded(conn), Box::pin(messages)))
    }

    /// Subscribes `channels` (classic: `SUBSCRIBE`; sharded: `SSUBSCRIBE`).
    pub(super) async fn subscribe(&mut self, channels: &[String]) -> Result<(), String> {
        match self {
            Self::Classic(sink) => within(sink.subscribe(channels)).await.map_err(text),
            Self::Sharded(conn) => each(conn, "SSUBSCRIBE", channels).await.map_err(text),
            Self::Nats(subscriptions) => subscriptions.subscribe(channels).await,
        }
    }

    /// Unsubscribes `channels` (classic: `UNSUBSCRIBE`; sharded: `SUNSUBSCRIBE`).
    pub(super) async fn unsubscribe(&mut self, channels: &[String]) -> Result<(), String> {
        match self {
            Self::Classic(sink) => within(sink.unsubscribe(channels)).await.map_err(text),
            Self::Sharded(conn) => each(conn, "SUNSUBSCRIBE", channels).await.map_err(text),
            Self::Nats(subscriptions) => {
                subscriptions.unsubscribe(channels);
                Ok(())
            }
        }
    }

    /// Pings the broker on the pub/sub connection.
    pub(super) async fn ping(&mut self) -> Result<(), String> {
        match self {
            // A subscribed connection answers PING with an array: take any value.
            Self::Classic(sink) => within(sink.ping::<Value>()).await.map(drop).map_err(text),
            Self::Sharded(conn) => within(redis::cmd("PING").query_async::<Value>(conn))
                .await
                .map(drop)
                .map_err(text),
            Self::Nats(subscriptions) => subscriptions.ping().await,
        }
    }
}

/// A Redis error as the session's reason for ending.
fn text(err: redis::RedisError) -> String {
    err.to_string()
}

/// Sends `command` for each of `channels`, one channel per command, in one pipeline.
pub(super) async fn each(
    conn: &mut MultiplexedConnection,
    command: &str,
    channels: &[String],
) -> redis::RedisResult<()> {
    if channels.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for channel in channels {
        pipe.cmd(command).arg(channel);
    }
    within(pipe.query_async::<Vec<Value>>(conn)).await.map(drop)
}
