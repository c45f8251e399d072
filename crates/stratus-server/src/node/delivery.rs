//! What a publisher gets back ([`Delivery`]): the publish has been handed on, and can be
//! waited for to learn how far it went ([`Reach`]) and where it sits in its topic's
//! history ([`Published`]).

use tokio::sync::oneshot;

use crate::messages::{PublishError, Published, Reach};
use crate::model::offset::Offset;

/// The outcome of a publish, once it has been handed on.
#[derive(Debug)]
pub struct Delivery {
    pending: Pending,
    /// Its offset in the topic's history, when the node assigned one (the local broker).
    offset: Option<Offset>,
}

#[derive(Debug)]
enum Pending {
    /// The local broker: one answer per worker with subscribers.
    Local(Vec<oneshot::Receiver<usize>>),
    /// Redis: how far it went, and its offset.
    Broker(oneshot::Receiver<Result<Published, PublishError>>),
    /// Redis, with the answer going to a connection's worker instead.
    Forwarded,
}

impl Delivery {
    /// Handed to this node's workers (one answer per worker), at `offset` in the history.
    pub(crate) fn local(acks: Vec<oneshot::Receiver<usize>>, offset: Option<Offset>) -> Self {
        Self {
            pending: Pending::Local(acks),
            offset,
        }
    }

    /// Handed to the broker, which answers on `rx`.
    pub(crate) fn broker(rx: oneshot::Receiver<Result<Published, PublishError>>) -> Self {
        Self {
            pending: Pending::Broker(rx),
            offset: None,
        }
    }

    /// Handed to the broker, whose answer goes to a connection's worker.
    pub(crate) fn forwarded() -> Self {
        Self {
            pending: Pending::Forwarded,
            offset: None,
        }
    }

    /// Whether the answer goes to a connection's worker, not to this `Delivery`.
    pub(crate) fn is_forwarded(&self) -> bool {
        matches!(self.pending, Pending::Forwarded)
    }

    /// How many of this node's workers the publish went to (with a broker: 0, the
    /// workers get it from the broker).
    pub fn workers(&self) -> usize {
        match &self.pending {
            Pending::Local(acks) => acks.len(),
            Pending::Broker(_) | Pending::Forwarded => 0,
        }
    }

    /// Its offset, if the node assigned it at once (the local broker with a history).
    pub(crate) fn offset(&self) -> Option<Offset> {
        self.offset
    }

    /// Waits until the publish has been fanned out by every worker (local broker) or
    /// confirmed by Redis, and says how far it went (a forwarded publish's answer is not
    /// here: `BrokerUnavailable`).
    pub async fn reach(self) -> Result<Reach, PublishError> {
        self.published().await.map(|p| p.reach)
    }

    /// As [`Delivery::reach`], with the publish's offset.
    pub async fn published(self) -> Result<Published, PublishError> {
        match self.pending {
            Pending::Local(acks) => {
                let mut total = 0;
                for rx in acks {
                    total += rx.await.unwrap_or(0);
                }
                Ok(local(total, self.offset))
            }
            Pending::Broker(rx) => rx.await.unwrap_or(Err(PublishError::BrokerUnavailable)),
            Pending::Forwarded => Err(PublishError::BrokerUnavailable),
        }
    }

    /// As [`Delivery::reach`], blocking the calling thread (not for async code).
    pub fn wait(self) -> Result<Reach, PublishError> {
        match self.pending {
            Pending::Local(acks) => {
                let total = acks
                    .into_iter()
                    .map(|rx| rx.blocking_recv().unwrap_or(0))
                    .sum();
                Ok(local(total, self.offset).reach)
            }
            Pending::Broker(rx) => rx
                .blocking_recv()
                .unwrap_or(Err(PublishError::BrokerUnavailable))
                .map(|p| p.reach),
            Pending::Forwarded => Err(PublishError::BrokerUnavailable),
        }
    }
}

fn local(subscribers: usize, offset: Option<Offset>) -> Published {
    Published {
        reach: Reach::Subscribers(subscribers),
        offset: offset.map(|o| o.to_string()),
    }
}
