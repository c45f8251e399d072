//! The messages between the server's threads, as a leaf every side imports: what the
//! publish path and the broker send a worker ([`WorkerMsg`]), what the hub and the
//! workers ask of the broker ([`BrokerRequest`], [`Outgoing`]), a page of history and
//! where it goes, and the small [`Node`] trait through which the broker reaches the node.
//! Neither side reaches into the other: quinn-proto's `shared.rs` is the model.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use stratus_proto::Message;
use tokio::sync::oneshot;

use crate::model::broadcast::Broadcast;
use crate::model::conn_id::ConnId;
use crate::model::offset::Offset;
use crate::model::topic::TopicError;
use crate::stats::BrokerStats;

/// What the broker task needs of the node it serves. The hub implements it; the broker's
/// tests implement it with a fake, so the task runs without workers.
pub(crate) trait Node: Sync {
    /// The node's subscription to `topic` (for its `arrival`) is confirmed in the broker:
    /// the subscribe replies waiting for it go out.
    fn confirm(&self, topic: &Arc<str>, arrival: u64);
    /// The broker connection is lost: no topic is confirmed until it is back.
    fn unconfirm_all(&self);
    /// Dispatches a message from the broker to the node's workers, or says they are
    /// behind.
    fn dispatch(
        &self,
        topic: &str,
        message: Message,
        offset: Option<Offset>,
    ) -> Result<(), Overloaded>;
    /// A page of a topic's history for the connection `to` names.
    fn history_page(&self, to: HistoryDest, topic: Arc<str>, page: HistoryPage);
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

/// Work sent to a worker.
pub(crate) enum WorkerMsg {
    /// Fan a broadcast out to the worker's subscribers of `topic`; report how many.
    Publish {
        topic: Arc<str>,
        broadcast: Arc<Broadcast>,
        ack: oneshot::Sender<usize>,
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
    /// Close every connection with 1001 and stop.
    Drain,
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
    /// The server has stopped: end the thread.
    Stop,
}

/// A read of one page of a connection's missed messages.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HistoryRead {
    /// The page starts after this offset.
    pub(crate) after: Offset,
    /// Where the page goes.
    pub(crate) to: HistoryDest,
    /// Bytes of messages the page may hold: what the connection's send queue has room
    /// for (at least one message comes, so the replay always moves on).
    pub(crate) budget: usize,
    /// Entries of the history this recovery has already been sent.
    pub(crate) fetched: usize,
    /// The average payload of the entries sent so far (0 before the first page): the
    /// page is sized from it, so that a read fetches little beyond the budget.
    pub(crate) average: usize,
}

/// Where a connection's history read is going back to: the worker, the connection, and
/// the read (a reply for an earlier read of the same connection is stale).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HistoryDest {
    pub(crate) worker: usize,
    pub(crate) conn: ConnId,
    pub(crate) request: u64,
}

/// A page of what a connection missed.
pub(crate) struct HistoryPage {
    /// The missed messages, oldest first.
    pub(crate) entries: Vec<(Offset, Message)>,
    /// Why some may be missing (`None`: the history reached back).
    pub(crate) gap: Option<&'static str>,
    /// Live messages up to this offset are in `entries` or came before the page: the
    /// offset the page starts after, or the newest in the history if that is older
    /// (`Offset::ZERO` for a read that failed: the worker then keeps to where the page
    /// started).
    pub(crate) floor: Offset,
    /// More of the history follows the page's last entry.
    pub(crate) more: bool,
}

impl HistoryPage {
    /// Nothing could be read: the client gets a gap notice and every live message.
    pub(crate) fn unavailable(why: &'static str) -> Self {
        Self {
            entries: Vec::new(),
            gap: Some(why),
            floor: Offset::ZERO,
            more: false,
        }
    }
}

/// A publish on its way to Redis, and where its answer goes: how many nodes Redis passed
/// it to.
/// Counted in [`BrokerStats::backlog`] from the moment it is made until it is answered or
/// dropped (a session lost mid-batch drops its publishes, and their publishers get 503).
pub(crate) struct Outgoing {
    /// The topic, or empty for a message on the control channel.
    pub(crate) topic: String,
    pub(crate) message: Message,
    reply: Option<oneshot::Sender<Result<usize, PublishError>>>,
    stats: Arc<BrokerStats>,
}

impl Outgoing {
    pub(crate) fn new(
        topic: String,
        message: Message,
        stats: Arc<BrokerStats>,
    ) -> (Self, oneshot::Receiver<Result<usize, PublishError>>) {
        let (reply, rx) = oneshot::channel();
        let outgoing = Self {
            topic,
            message,
            reply: Some(reply),
            stats,
        };
        let cost = outgoing.cost();
        outgoing.stats.backlog.fetch_add(cost, Ordering::Relaxed);
        (outgoing, rx)
    }

    /// What it holds until answered.
    fn cost(&self) -> u64 {
        (size_of::<Self>() + self.topic.len() + self.message.payload_len()) as u64
    }

    /// Answers the publisher, once it no longer counts in the backlog (a publisher that
    /// publishes again at once finds the room this one held).
    pub(crate) fn answer(mut self, result: Result<usize, PublishError>) {
        let reply = self.reply.take();
        drop(self);
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
    }
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        self.stats.backlog.fetch_sub(self.cost(), Ordering::Relaxed);
    }
}
