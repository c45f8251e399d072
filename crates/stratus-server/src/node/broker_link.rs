//! The node's side of the broker: where the hub sends publishes and requests, and what it
//! reads of the broker's state (up, history kept, another node overloaded). The other
//! side is the broker thread (`broker::BrokerTask`); they share only the channels and
//! [`BrokerStats`], made by the server.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use stratus_proto::Message;
use tokio::sync::{mpsc, oneshot};

use crate::messages::{BrokerRequest, Outgoing, PublishError};
use crate::stats::{self, BrokerStats};

/// The hub's side of the broker: where publishes and requests go.
pub(crate) struct BrokerLink {
    /// Messages kept per topic in Redis (0: none).
    history: usize,
    publishes: mpsc::UnboundedSender<Outgoing>,
    requests: mpsc::UnboundedSender<BrokerRequest>,
    pub(crate) stats: Arc<BrokerStats>,
}

impl BrokerLink {
    /// The link over the channels to the broker thread, which keeps `history` messages per
    /// topic; `stats` are shared with it.
    pub(crate) fn new(
        history: usize,
        publishes: mpsc::UnboundedSender<Outgoing>,
        requests: mpsc::UnboundedSender<BrokerRequest>,
        stats: Arc<BrokerStats>,
    ) -> Self {
        Self {
            history,
            publishes,
            requests,
            stats,
        }
    }

    /// Whether Redis keeps a history per topic (recovery with `since`).
    pub(crate) fn keeps_history(&self) -> bool {
        self.history > 0
    }

    /// Whether the node is connected to Redis (readiness).
    pub(crate) fn is_up(&self) -> bool {
        self.stats.up.load(Ordering::Acquire)
    }

    /// Sends `message` to Redis for `topic`; the receiver gets how many nodes took it.
    /// While `max_backlog` bytes of publishes already wait for Redis's answer, the node
    /// takes no more ([`PublishError::Overloaded`]).
    pub(crate) fn publish(
        &self,
        topic: &str,
        message: &Message,
        max_backlog: usize,
    ) -> Result<oneshot::Receiver<Result<usize, PublishError>>, PublishError> {
        if !message.is_data() {
            return Err(PublishError::NotData);
        }
        if !self.is_up() {
            stats::add(&self.stats.publish_errors, 1);
            return Err(PublishError::BrokerUnavailable);
        }
        if self.stats.backlog.load(Ordering::Relaxed) >= max_backlog as u64 {
            return Err(PublishError::Overloaded);
        }
        let (outgoing, rx) = Outgoing::new(topic.to_owned(), message.clone(), self.stats.clone());
        self.publishes
            .send(outgoing)
            .map_err(|_| PublishError::BrokerUnavailable)?;
        Ok(rx)
    }

    /// Whether another node of the cluster has said it is overloaded, and not long enough
    /// ago for that to have lapsed (this node knows its own state first hand).
    pub(crate) fn cluster_is_overloaded(&self) -> bool {
        self.stats.is_cluster_overloaded()
    }

    /// Sends `request` to the broker thread, after those sent before it.
    pub(crate) fn request(&self, request: BrokerRequest) {
        let _ = self.requests.send(request);
    }
}
