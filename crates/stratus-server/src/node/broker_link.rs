//! The node's side of the broker: where the hub sends publishes and requests, and what it
//! reads of the broker's state (up, another node overloaded). The other
//! side is the broker thread (`broker::BrokerTask`); they share only the channels and
//! [`BrokerStats`], made by the server.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::{mpsc, oneshot};

use crate::messages::{
    BrokerRequest, Outgoing, PublishDest, PublishError, Published, ReplyTo, Retention,
};
use crate::model::publication::Publication;
use crate::stats::{self, BrokerStats};

/// The hub's side of the broker: where publishes and requests go.
pub(crate) struct BrokerLink {
    publishes: mpsc::UnboundedSender<Outgoing>,
    requests: mpsc::UnboundedSender<BrokerRequest>,
    pub(crate) stats: Arc<BrokerStats>,
}

impl BrokerLink {
    /// The link over the channels to the broker thread; `stats` are shared with it.
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

    /// Whether the node is connected to Redis (readiness).
    pub(crate) fn is_up(&self) -> bool {
        self.stats.up.load(Ordering::Acquire)
    }

    /// Sends `publication` to Redis for `topic`, keeping `retention` of its history;
    /// the answer (how many nodes took it, and its offset) goes to `client`'s worker, or
    /// to the receiver returned. While `max_backlog` bytes of publishes already wait for
    /// Redis's answer, the node takes no more ([`PublishError::Overloaded`]).
    pub(crate) fn publish(
        &self,
        topic: &str,
        publication: Publication,
        retention: Retention,
        client: Option<PublishDest>,
        max_backlog: usize,
    ) -> Result<Option<oneshot::Receiver<Result<Published, PublishError>>>, PublishError> {
        if !self.is_up() {
            stats::add(&self.stats.publish_errors, 1);
            return Err(PublishError::BrokerUnavailable);
        }
        if self.stats.backlog.load(Ordering::Relaxed) >= max_backlog as u64 {
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
            self.stats.clone(),
        );
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
