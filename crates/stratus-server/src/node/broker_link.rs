//! The node's side of the broker: where the hub sends publishes and requests, and what it
//! reads of the broker's state (each shard up, another node overloaded). The other
//! side is the broker thread (`broker::BrokerTask`, one per shard); they share only the
//! channels and [`BrokerStats`], made by the server.
//!
//! With several shards (`--broker redis://a,redis://b`), each topic lives on the one
//! [`shard_of`] names, and everything about it goes there: its publishes, its
//! subscription, its history reads. What is the node's and not a topic's (presence
//! reports and reads, the node list, user-level control, the control channel) goes to
//! the first shard. Each shard is up or down on its own: a publish is refused only when
//! its own topic's shard is down or behind.
//!
//! Over a Redis Cluster the shards are its masters, and a topic lives on the master that
//! serves its hash slot (the slot map read at start, `broker::cluster`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::{mpsc, oneshot};

use crate::messages::{
    BrokerRequest, Outgoing, PublishDest, PublishError, Published, ReplyTo, Retention,
};
use crate::model::publication::Publication;
use crate::model::shard::{key_slot, shard_of};
use crate::stats::{self, BrokerStats};

/// The node's ends of one shard's broker task.
pub(crate) struct ShardLink {
    publishes: mpsc::UnboundedSender<Outgoing>,
    requests: mpsc::UnboundedSender<BrokerRequest>,
    /// Shared with the shard's task (for the first shard, also the node's: its name on
    /// the control channel, whether another node is overloaded).
    pub(crate) stats: Arc<BrokerStats>,
}

impl ShardLink {
    /// The ends of a shard's task; `stats` are shared with it.
    pub(crate) fn new(
        publishes: mpsc::UnboundedSender<Outgoing>,
        requests: mpsc::UnboundedSender<BrokerRequest>,
        stats: Arc<BrokerStats>,
    ) -> Self {
        Self {
            publishes,
            requests,
            stats,
        }
    }

    /// Whether the shard's task is connected to its Redis.
    pub(crate) fn is_up(&self) -> bool {
        self.stats.up.load(Ordering::Acquire)
    }
}

/// The hub's side of the broker: where publishes and requests go. Never without a shard.
pub(crate) struct BrokerLink {
    shards: Vec<ShardLink>,
    /// A Redis Cluster's slot map: each slot's master, an index into `shards`. `None`:
    /// independent shards, a topic's found by [`shard_of`].
    slots: Option<Box<[u8]>>,
}

impl BrokerLink {
    /// The link over the first shard (which also carries what is node-wide) and the
    /// `others`, in `--broker` order.
    pub(crate) fn new(first: ShardLink, others: Vec<ShardLink>) -> Self {
        let mut shards = Vec::with_capacity(1 + others.len());
        shards.push(first);
        shards.extend(others);
        Self {
            shards,
            slots: None,
        }
    }

    /// The link over a Redis Cluster's masters: a topic goes to the master that `slots`
    /// (indices into the shards, one per hash slot) gives its slot, its channel's and
    /// history key's (see `model::keyspace::Keyspace`).
    pub(crate) fn with_slots(mut self, slots: Box<[u8]>) -> Self {
        self.slots = Some(slots);
        self
    }

    /// Every shard, in `--broker` order (the first carries what is node-wide).
    pub(crate) fn shards(&self) -> &[ShardLink] {
        &self.shards
    }

    /// The shard that carries `topic` (its index in [`BrokerLink::shards`]).
    pub(crate) fn shard_of(&self, topic: &str) -> usize {
        match &self.slots {
            Some(slots) => slots
                .get(usize::from(key_slot(topic.as_bytes())))
                .map_or(0, |&master| usize::from(master))
                .min(self.shards.len() - 1),
            None => shard_of(topic, self.shards.len()),
        }
    }

    /// The shard that carries `topic`.
    fn shard_for(&self, topic: &str) -> &ShardLink {
        &self.shards[self.shard_of(topic)]
    }

    /// The first shard: presence, the node list, user-level control, the control channel.
    fn first(&self) -> &ShardLink {
        &self.shards[0]
    }

    /// Whether every shard is connected.
    pub(crate) fn all_up(&self) -> bool {
        self.shards.iter().all(ShardLink::is_up)
    }

    /// Whether any shard is connected (readiness: the node serves the topics of the
    /// shards it reaches).
    pub(crate) fn any_up(&self) -> bool {
        self.shards.iter().any(ShardLink::is_up)
    }

    /// Whether the first shard, which carries what is node-wide, is connected.
    pub(crate) fn first_is_up(&self) -> bool {
        self.first().is_up()
    }

    /// The node's name on the control channel (drawn by the first shard's task).
    pub(crate) fn node(&self) -> u64 {
        self.first().stats.node.load(Ordering::Relaxed)
    }

    /// Sends `publication` to the Redis shard of `topic`, keeping `retention` of its
    /// history; the answer (how many nodes took it, and its offset) goes to `client`'s
    /// worker, or to the receiver returned. While that shard is down the publish is
    /// refused ([`PublishError::BrokerUnavailable`]); while `max_backlog` bytes of
    /// publishes already wait for its answer, the node takes no more for it
    /// ([`PublishError::Overloaded`]). The other shards' topics are not held up by it.
    pub(crate) fn publish(
        &self,
        topic: &str,
        publication: Publication,
        retention: Retention,
        client: Option<PublishDest>,
        max_backlog: usize,
    ) -> Result<Option<oneshot::Receiver<Result<Published, PublishError>>>, PublishError> {
        let shard = self.shard_for(topic);
        if !shard.is_up() {
            stats::add(&shard.stats.publish_errors, 1);
            return Err(PublishError::BrokerUnavailable);
        }
        if shard.stats.backlog.load(Ordering::Relaxed) >= max_backlog as u64 {
            return Err(PublishError::Overloaded);
        }
        let (reply, rx) = match client {
            Some(to) => (ReplyTo::Client(to), None),
            None => {
                let (tx, rx) = oneshot::channel();
                (ReplyTo::Caller(tx), Some(rx))
            }
        };
        let outgoing = Outgoing::new(
            topic.to_owned(),
            publication,
            retention,
            reply,
            shard.stats.clone(),
        );
        shard
            .publishes
            .send(outgoing)
            .map_err(|_| PublishError::BrokerUnavailable)?;
        Ok(rx)
    }

    /// Whether another node of the cluster has said it is overloaded, and not long enough
    /// ago for that to have lapsed (this node knows its own state first hand). Heard on
    /// the first shard's control channel.
    pub(crate) fn cluster_is_overloaded(&self) -> bool {
        self.first().stats.is_cluster_overloaded()
    }

    /// Sends `request` to the shard task it concerns, after those sent to it before: a
    /// topic's to the topic's shard, the node's to the first shard, the end to every
    /// shard.
    pub(crate) fn request(&self, request: BrokerRequest) {
        let shard = match &request {
            BrokerRequest::Add(topic, _)
            | BrokerRequest::Remove(topic)
            | BrokerRequest::History { topic, .. }
            | BrokerRequest::ReadHistory { topic, .. } => self.shard_for(topic),
            BrokerRequest::Stop => {
                for shard in &self.shards {
                    let _ = shard.requests.send(BrokerRequest::Stop);
                }
                return;
            }
            // A topic's presence is the node's business, not the topic's shard's: every
            // node reports it, and it is read, on the first shard.
            BrokerRequest::Presence { .. }
            | BrokerRequest::PresenceTick { .. }
            | BrokerRequest::Nodes { .. }
            | BrokerRequest::UserControl { .. } => self.first(),
        };
        let _ = shard.requests.send(request);
    }
}
