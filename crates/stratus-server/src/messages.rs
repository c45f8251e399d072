//! The messages between the server's threads, as a leaf every side imports: what the
//! publish path and the broker send a worker ([`WorkerMsg`]), what the hub and the
//! workers ask of the broker ([`BrokerRequest`], [`Outgoing`]), a page of history and
//! where it goes, and the small [`Node`] trait through which the broker reaches the node.
//! Neither side reaches into the other: quinn-proto's `shared.rs` is the model.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::oneshot;

use crate::model::broadcast::Broadcast;
use crate::model::conn_id::ConnId;
pub(crate) use crate::model::history::{HistoryDest, HistoryPage, HistoryRead, Retention};
use crate::model::offset::Offset;
use crate::model::presence::{PresenceAnswer, PresenceReport};
use crate::model::protocol::v1::CommandId;
use crate::model::publication::{PayloadError, Publication};
use crate::model::topic::TopicError;
use crate::model::user_control::{ClusterError, ClusterTally, Tally, UserCommand};
use crate::stats::BrokerStats;

/// What the broker task needs of the node it serves. The hub implements it; the broker's
/// tests implement it with a fake, so the task runs without workers.
pub(crate) trait Node: Sync {
    /// The node's subscription to `topic` (for its `arrival`) is confirmed in the broker:
    /// the subscribe replies waiting for it go out.
    fn confirm(&self, topic: &Arc<str>, arrival: u64);
    /// The connection to broker shard `shard` (its index in the `--broker` list) is lost:
    /// none of the topics that shard carries is confirmed until it is back. Topics on the
    /// other shards are untouched.
    fn unconfirm_shard(&self, shard: usize);
    /// Dispatches a publication from the broker to the node's workers, or says they are
    /// behind.
    fn dispatch(
        &self,
        topic: &str,
        publication: Publication,
        offset: Option<Offset>,
    ) -> Result<(), Overloaded>;
    /// Tells the node's subscribers of `topic` that messages may be missing, and why.
    fn gap(&self, topic: &str, reason: &'static str);
    /// The answer to a connection's publish command.
    fn published(&self, to: PublishDest, topic: Arc<str>, result: Result<Published, PublishError>);
    /// A page of a topic's history for the connection `to` names.
    fn history_page(&self, to: HistoryDest, topic: Arc<str>, page: HistoryPage);
    /// The answer to a connection's presence or occupancy command (`None`: the broker
    /// could not read it).
    fn presence(&self, _to: PublishDest, _topic: Arc<str>, _answer: PresenceOutcome) {}
    /// Takes what changed in the node's presence since the last report (for the
    /// cluster's view in Redis); with `all`, every topic with subscribers.
    fn presence_report(&self, _all: bool) -> PresenceReport {
        PresenceReport::default()
    }
    /// The node's name among the cluster's nodes (its presence lease).
    fn node_id(&self) -> Arc<str> {
        Arc::from("node")
    }
    /// Applies a user-level command (from another node, or this one, through the broker)
    /// to the node's workers: one answer per worker. None by default (a fake node).
    fn user_control(&self, _command: Arc<UserCommand>) -> Vec<oneshot::Receiver<Tally>> {
        Vec::new()
    }
}

/// The node's workers are behind: what is handed to them now waits (see
/// [`PublishError::Overloaded`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Overloaded;

/// Why a publish was refused (nothing was sent anywhere).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The topic name is invalid.
    #[error("invalid topic: {0}")]
    InvalidTopic(#[from] TopicError),
    /// Only text and binary messages can be published.
    #[error("only text and binary messages can be published")]
    NotData,
    /// A JSON publish whose payload is not valid JSON.
    #[error("the payload is not valid JSON")]
    InvalidJson,
    /// A publication key longer than 128 bytes.
    #[error("the key is longer than 128 bytes")]
    KeyTooLong,
    /// The server is shutting down.
    #[error("the server is shutting down")]
    Draining,
    /// The node cannot keep up: publishes it has taken wait for its workers (or its
    /// broker) beyond the publish backlog limit. Try again later.
    #[error("the node is overloaded: too many publishes waiting")]
    Overloaded,
    /// The broker (Redis) is unreachable, or lost the connection before confirming the
    /// publish: it may or may not have gone out. Try again later.
    #[error("the broker is unavailable")]
    BrokerUnavailable,
}

/// How far a publish went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reach {
    /// With the local broker: the subscribers it was queued to.
    Subscribers(usize),
    /// With Redis: the nodes that had subscribers for the topic (each fans it out to its
    /// own).
    Nodes(usize),
    /// With NATS: the broker took it (it does not say how many nodes it went to).
    Broker,
}

/// How far a publish went, and where it sits in its topic's history.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Published {
    /// How far it went.
    pub reach: Reach,
    /// Its offset in the topic's history (`None`: the topic keeps none).
    pub offset: Option<String>,
}

impl Published {
    /// What Redis answered: the nodes it passed the publish to, and its offset.
    pub(crate) fn by_broker(nodes: usize, offset: Option<Offset>) -> Self {
        Self {
            reach: Reach::Nodes(nodes),
            offset: offset.map(|o| o.to_string()),
        }
    }

    /// What NATS answered: the publish is in, with its offset (a history's).
    pub(crate) fn by_nats(offset: Option<Offset>) -> Self {
        Self {
            reach: Reach::Broker,
            offset: offset.map(|o| o.to_string()),
        }
    }
}

impl From<PayloadError> for PublishError {
    fn from(err: PayloadError) -> Self {
        match err {
            PayloadError::NotData => Self::NotData,
            PayloadError::InvalidJson => Self::InvalidJson,
            PayloadError::KeyTooLong => Self::KeyTooLong,
        }
    }
}

/// Work sent to a worker.
pub(crate) enum WorkerMsg {
    /// Fan a broadcast out to the worker's subscribers of its topic; report how many.
    Publish {
        broadcast: Arc<Broadcast>,
        ack: oneshot::Sender<usize>,
    },
    /// Tell the worker's subscribers of `topic` that messages may be missing, and why.
    Gap {
        topic: Arc<str>,
        reason: &'static str,
    },
    /// The node is now subscribed to `topic` in the broker: answer the subscribe
    /// commands that were waiting for it.
    Confirmed(Arc<str>),
    /// A page of `topic`'s history for a connection's recovery.
    History {
        to: HistoryDest,
        topic: Arc<str>,
        page: HistoryPage,
    },
    /// The answer to a connection's publish command on `topic`.
    Published {
        to: PublishDest,
        topic: Arc<str>,
        result: Result<Published, PublishError>,
    },
    /// Close every connection with 1001 and stop.
    Drain,
    /// Apply a user-level command to the worker's connections of its user; what it came
    /// to goes back on `reply`.
    User {
        command: Arc<UserCommand>,
        reply: oneshot::Sender<Tally>,
    },
    /// A backend hook's answer for one of the worker's connections.
    Hooked {
        to: crate::model::hook::HookDest,
        answer: crate::model::hook::HookAnswer,
    },
    /// The answer to a connection's presence or occupancy command (`None`: the broker
    /// could not read it).
    Presence {
        to: PublishDest,
        topic: Arc<str>,
        answer: PresenceOutcome,
    },
}

/// What a connection's presence read came to: whether members were asked for (the
/// `presence` command, else `occupancy`), and the answer (`None`: the broker could not
/// read it).
#[derive(Debug)]
pub(crate) struct PresenceOutcome {
    pub(crate) members: bool,
    pub(crate) answer: Option<PresenceAnswer>,
}

/// What the hub and the workers ask of the broker thread, in order: a change in the
/// topics the node needs from Redis, a history fetch, or the end.
pub(crate) enum BrokerRequest {
    /// The topic's first subscriber on the node, and which arrival of the topic this is
    /// (handed back to [`Node::confirm`]).
    Add(Arc<str>, u64),
    Remove(Arc<str>),
    /// A page of a connection's missed messages on `topic` (asked for after the
    /// subscription, so nothing falls between history and live).
    History {
        topic: Arc<str>,
        read: HistoryRead,
    },
    /// A page of `topic`'s history for a caller (the admin API), answered on `reply`.
    ReadHistory {
        topic: Arc<str>,
        read: HistoryRead,
        reply: oneshot::Sender<HistoryPage>,
    },
    /// The server has stopped: end the thread.
    Stop,
    /// A user-level command for every node: sent on the control channel, answered on
    /// `reply` with the sum of the nodes' answers (see `broker::user_control`).
    UserControl {
        command: Arc<UserCommand>,
        reply: oneshot::Sender<Result<ClusterTally, ClusterError>>,
    },
    /// A topic's presence over the cluster (`members`: at most this many listed; `None`:
    /// counts only), for a connection or a caller.
    Presence {
        topic: Arc<str>,
        members: Option<usize>,
        reply: PresenceReplyTo,
    },
    /// The presence interval is over: report the node's presence to Redis and renew
    /// its lease of `lease`.
    PresenceTick {
        lease: std::time::Duration,
    },
    /// Every live node's figures (its id, and name/value pairs), as each last reported
    /// them; `None` when Redis cannot be read.
    Nodes {
        reply: oneshot::Sender<Option<NodeFigures>>,
    },
}

/// Every live node's id and figures.
pub(crate) type NodeFigures = Vec<(String, Vec<(String, u64)>)>;

/// Who a presence read answers.
#[derive(Debug)]
pub(crate) enum PresenceReplyTo {
    /// A caller waiting on a channel (the admin API); `None`: not readable now.
    Caller(oneshot::Sender<Option<PresenceAnswer>>),
    /// A connection's command: the answer goes to its worker through the node.
    Client(PublishDest),
    /// An occupancy push: the cluster's counts go to the node's v1 subscribers of the
    /// topic (nothing, if they cannot be read).
    Push,
}

/// Where a connection's publish command is answered: its worker, the connection, and the
/// command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PublishDest {
    pub(crate) worker: usize,
    pub(crate) conn: ConnId,
    pub(crate) command: CommandId,
}

/// Who a publish sent to Redis answers.
#[derive(Debug)]
pub(crate) enum ReplyTo {
    /// A caller waiting on a channel (the admin API, the library).
    Caller(oneshot::Sender<Result<Published, PublishError>>),
    /// A connection's publish command: the answer goes to its worker through the node.
    Client(PublishDest),
    /// Nobody (the broker's own words on the control channel).
    Nobody,
}

/// A publish on its way to Redis, and who its answer goes to: how many nodes Redis passed
/// it to, and its offset.
/// Counted in [`BrokerStats::backlog`] from the moment it is made until it is answered or
/// dropped (a session lost mid-batch drops its publishes, and their publishers get 503).
pub(crate) struct Outgoing {
    /// The topic, or empty for a message on the control channel.
    pub(crate) topic: String,
    pub(crate) publication: Publication,
    /// How much of the topic's history Redis keeps.
    pub(crate) retention: Retention,
    reply: ReplyTo,
    /// What it holds until answered, as counted in the backlog.
    cost: u64,
    stats: Arc<BrokerStats>,
}

impl Outgoing {
    pub(crate) fn new(
        topic: String,
        publication: Publication,
        retention: Retention,
        reply: ReplyTo,
        stats: Arc<BrokerStats>,
    ) -> Self {
        let cost = (size_of::<Self>() + topic.len() + publication.payload.len()) as u64;
        stats.backlog.fetch_add(cost, Ordering::Relaxed);
        Self {
            topic,
            publication,
            retention,
            reply,
            cost,
            stats,
        }
    }

    /// Whether this is the node's own word on the control channel (an overload signal, a
    /// user-control request), not a publish: it is not counted among the publishes.
    pub(crate) fn is_control(&self) -> bool {
        self.topic.is_empty()
    }

    /// Answers the publisher (a connection through `node`), once it no longer counts in
    /// the backlog (a publisher that publishes again at once finds the room this one
    /// held).
    pub(crate) fn answer(mut self, result: Result<Published, PublishError>, node: &dyn Node) {
        let reply = std::mem::replace(&mut self.reply, ReplyTo::Nobody);
        let topic = std::mem::take(&mut self.topic);
        drop(self);
        match reply {
            ReplyTo::Caller(tx) => {
                let _ = tx.send(result);
            }
            ReplyTo::Client(to) => node.published(to, Arc::from(topic), result),
            ReplyTo::Nobody => {}
        }
    }
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        self.stats.backlog.fetch_sub(self.cost, Ordering::Relaxed);
    }
}
