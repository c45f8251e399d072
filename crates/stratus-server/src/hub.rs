//! What the workers share: a channel into each worker, which workers have subscribers
//! for which topic, the counters, and the publish path.
//!
//! A publish is framed once on the publisher's thread and sent, as one `Arc`, to each
//! worker with subscribers for the topic; each worker fans it out to its own
//! connections. The only lock is taken once per publish (to read the topic's workers),
//! never per recipient. With a broker (Redis), a publish goes there first and comes back
//! to every node's fan-out, this one's included.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use stratus_proto::Message;
use stratus_uring::Wake;
use tokio::sync::{mpsc, oneshot};

use crate::broadcast::Broadcast;
use crate::broker::{BrokerLink, BrokerRequest, Recovered};
use crate::history::Offset;
use crate::metrics::WorkerStats;
use crate::topic::{self, TopicError};

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
    /// What the broker found in `topic`'s history for connection `token`.
    History {
        token: u64,
        topic: Arc<str>,
        recovered: Recovered,
    },
    /// Close every connection with 1001 and stop.
    Drain,
}

/// A worker's inbox, its wake-up, and how many publishes wait in it.
pub(crate) struct WorkerLink {
    pub(crate) tx: mpsc::UnboundedSender<WorkerMsg>,
    pub(crate) wake: Arc<Wake>,
    pub(crate) pending: AtomicUsize,
}

impl WorkerLink {
    /// Sends `msg` and wakes the worker; `false` if the worker is gone.
    fn send(&self, msg: WorkerMsg) -> bool {
        let sent = self.tx.send(msg).is_ok();
        if sent {
            self.wake.wake();
        }
        sent
    }
}

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
    /// A worker has too many publishes waiting: try again later.
    #[error("too many publishes waiting")]
    Overloaded,
    /// The broker (Redis) is unreachable, or lost the connection before confirming the
    /// publish: it may or may not have gone out. Try again later.
    #[error("the broker is unavailable")]
    BrokerUnavailable,
}

/// Counters over the server's life.
#[derive(Debug, Default)]
pub struct Stats {
    /// Publishes accepted.
    pub published: AtomicU64,
    /// Messages queued to subscribers.
    pub delivered: AtomicU64,
    /// Messages skipped for full queues (the `drop` policy).
    pub dropped: AtomicU64,
    /// Connections closed as slow consumers (the `close` policy).
    pub slow_consumer_closes: AtomicU64,
    /// Connections open now.
    pub connections: AtomicU64,
    /// Admin connections refused for the admin connection cap.
    pub admin_refused: AtomicU64,
}

/// A topic with subscribers on this node.
struct TopicState {
    /// Bitmask of the workers with at least one subscriber.
    workers: u64,
    /// Which arrival of the topic on the node this is (see `Hub::arrivals`).
    arrival: u64,
    /// Whether publishes anywhere reach the node's subscribers: at once with the local
    /// broker, once Redis confirms the subscription with one.
    confirmed: bool,
}

/// Why an upgrade was refused for the connection caps: the HTTP status and the reason.
pub(crate) type OverCap = (u16, &'static str);

/// The state every worker and the publish API share.
pub(crate) struct Hub {
    pub(crate) links: Vec<WorkerLink>,
    /// Each worker's own counters, for `/metrics`.
    pub(crate) workers: Vec<WorkerStats>,
    /// Open WebSocket connections per client address (kept only with a per-IP cap).
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Topic -> which workers have subscribers, and whether the broker has it.
    interest: Mutex<HashMap<Arc<str>, TopicState>>,
    /// Numbers each topic's arrival on the node, so a broker confirmation meant for an
    /// earlier arrival (since left and come back) is not taken for the current one.
    arrivals: AtomicU64,
    pub(crate) stats: Stats,
    /// The Redis broker, when nodes share topics through one.
    pub(crate) broker: Option<BrokerLink>,
    draining: AtomicBool,
    max_pending: usize,
}

/// Publishes waiting in one worker's inbox before publishing answers "overloaded".
const MAX_PENDING_PUBLISHES: usize = 1 << 16;

/// The outcome of a publish, once it has been handed on.
#[derive(Debug)]
pub struct Delivery(Pending);

#[derive(Debug)]
enum Pending {
    /// The local broker: one answer per worker with subscribers.
    Local(Vec<oneshot::Receiver<usize>>),
    /// Redis: the count of nodes it passed the message to.
    Broker(oneshot::Receiver<Result<usize, PublishError>>),
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
}

impl Delivery {
    /// How many of this node's workers the publish went to (with a broker: 0, the
    /// workers get it from the broker).
    pub fn workers(&self) -> usize {
        match &self.0 {
            Pending::Local(acks) => acks.len(),
            Pending::Broker(_) => 0,
        }
    }

    /// Waits until the publish has been fanned out by every worker (local broker) or
    /// confirmed by Redis, and says how far it went.
    pub async fn reach(self) -> Result<Reach, PublishError> {
        match self.0 {
            Pending::Local(acks) => {
                let mut total = 0;
                for rx in acks {
                    total += rx.await.unwrap_or(0);
                }
                Ok(Reach::Subscribers(total))
            }
            Pending::Broker(rx) => rx
                .await
                .unwrap_or(Err(PublishError::BrokerUnavailable))
                .map(Reach::Nodes),
        }
    }

    /// As [`Delivery::reach`], blocking the calling thread (not for async code).
    pub fn wait(self) -> Result<Reach, PublishError> {
        match self.0 {
            Pending::Local(acks) => Ok(Reach::Subscribers(
                acks.into_iter()
                    .map(|rx| rx.blocking_recv().unwrap_or(0))
                    .sum(),
            )),
            Pending::Broker(rx) => rx
                .blocking_recv()
                .unwrap_or(Err(PublishError::BrokerUnavailable))
                .map(Reach::Nodes),
        }
    }
}

impl Hub {
    pub(crate) fn new(links: Vec<WorkerLink>, broker: Option<BrokerLink>) -> Self {
        Self {
            broker,
            workers: links.iter().map(|_| WorkerStats::default()).collect(),
            links,
            per_ip: Mutex::default(),
            interest: Mutex::default(),
            arrivals: AtomicU64::new(0),
            stats: Stats::default(),
            draining: AtomicBool::new(false),
            max_pending: MAX_PENDING_PUBLISHES,
        }
    }

    fn interest(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, TopicState>> {
        self.interest.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that `worker` has (or no longer has) subscribers for `topic`, and tells
    /// the broker when the node's first subscriber comes or its last one leaves (under
    /// the lock, so the broker sees the changes in order). For a subscribe, returns
    /// whether the topic is confirmed (see [`Hub::is_confirmed`]); an unsubscribe returns
    /// `false`.
    pub(crate) fn set_interest(&self, topic: &Arc<str>, worker: usize, subscribed: bool) -> bool {
        let mut interest = self.interest();
        let bit = 1u64 << worker;
        if subscribed {
            let state = interest.entry(topic.clone()).or_insert_with(|| {
                let arrival = self.arrivals.fetch_add(1, Ordering::Relaxed);
                if let Some(broker) = &self.broker {
                    broker.request(BrokerRequest::Add(topic.clone(), arrival));
                }
                TopicState {
                    workers: 0,
                    arrival,
                    confirmed: self.broker.is_none(),
                }
            });
            state.workers |= bit;
            return state.confirmed;
        }
        if let Some(state) = interest.get_mut(topic) {
            state.workers &= !bit;
            if state.workers == 0 {
                interest.remove(topic);
                if let Some(broker) = &self.broker {
                    broker.request(BrokerRequest::Remove(topic.clone()));
                }
            }
        }
        false
    }

    /// Whether a publish anywhere now reaches this node's subscribers of `topic`: always
    /// with the local broker; with Redis, once it has confirmed the node's subscription.
    pub(crate) fn is_confirmed(&self, topic: &str) -> bool {
        self.interest().get(topic).is_some_and(|s| s.confirmed)
    }

    /// The broker has subscribed the node to `topic` for its `arrival`: the workers with
    /// subscribers answer the subscribe commands waiting for it.
    pub(crate) fn confirm(&self, topic: &Arc<str>, arrival: u64) {
        let mut interest = self.interest();
        let Some(state) = interest.get_mut(topic) else {
            return;
        };
        if state.arrival != arrival || state.confirmed {
            return;
        }
        state.confirmed = true;
        for (w, link) in self.links.iter().enumerate() {
            if state.workers & (1 << w) != 0 {
                link.send(WorkerMsg::Confirmed(topic.clone()));
            }
        }
    }

    /// Sends `msg` to worker `worker`.
    pub(crate) fn to_worker(&self, worker: usize, msg: WorkerMsg) {
        if let Some(link) = self.links.get(worker) {
            link.send(msg);
        }
    }

    /// The broker lost Redis: no topic is confirmed until it has resubscribed.
    pub(crate) fn unconfirm_all(&self) {
        for state in self.interest().values_mut() {
            state.confirmed = false;
        }
    }

    /// Whether the node can publish: not draining, and connected to its broker if it has
    /// one.
    pub(crate) fn is_ready(&self) -> bool {
        !self.is_draining() && self.broker.as_ref().is_none_or(BrokerLink::is_up)
    }

    /// Counts a new WebSocket connection from `ip` against the caps (`max` over all
    /// workers, `per_ip` for one address; 0 is no limit), or says which one it passes.
    pub(crate) fn admit(&self, ip: IpAddr, max: usize, per_ip: usize) -> Result<(), OverCap> {
        let open = self.stats.connections.fetch_add(1, Ordering::AcqRel) + 1;
        if max > 0 && open > max as u64 {
            self.stats.connections.fetch_sub(1, Ordering::AcqRel);
            return Err((503, "the server is at its connection limit"));
        }
        if per_ip > 0 {
            let mut counts = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
            let count = counts.entry(ip).or_insert(0);
            if *count >= per_ip {
                drop(counts);
                self.stats.connections.fetch_sub(1, Ordering::AcqRel);
                return Err((429, "too many connections from this address"));
            }
            *count += 1;
        }
        Ok(())
    }

    /// Releases what [`Hub::admit`] counted.
    pub(crate) fn release(&self, ip: IpAddr, per_ip: usize) {
        self.stats.connections.fetch_sub(1, Ordering::AcqRel);
        if per_ip > 0 {
            let mut counts = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(count) = counts.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(&ip);
                }
            }
        }
    }

    /// Topics with subscribers anywhere.
    pub(crate) fn topic_count(&self) -> usize {
        self.interest().len()
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Starts a shutdown: publishes are refused from now on, every worker drains.
    pub(crate) fn drain(&self) {
        self.draining.store(true, Ordering::Release);
        for link in &self.links {
            link.send(WorkerMsg::Drain);
        }
    }

    /// Publishes `message` to `topic`: through the broker when there is one, else
    /// straight to this node's workers.
    pub(crate) fn publish(&self, topic: &str, message: Message) -> Result<Delivery, PublishError> {
        topic::validate(topic)?;
        if !message.is_data() {
            return Err(PublishError::NotData);
        }
        if self.is_draining() {
            return Err(PublishError::Draining);
        }
        match &self.broker {
            Some(broker) => {
                let rx = broker.publish(topic, &message)?;
                self.stats.published.fetch_add(1, Ordering::Relaxed);
                Ok(Delivery(Pending::Broker(rx)))
            }
            None => {
                let delivery = self.fan_out(topic, message, None)?;
                self.stats.published.fetch_add(1, Ordering::Relaxed);
                Ok(delivery)
            }
        }
    }

    /// Frames `message` (at `offset` in the topic's history, if kept) once and sends it to
    /// every worker with subscribers for `topic`.
    pub(crate) fn fan_out(
        &self,
        topic: &str,
        message: Message,
        offset: Option<Offset>,
    ) -> Result<Delivery, PublishError> {
        if self.is_draining() {
            return Err(PublishError::Draining);
        }
        let mask = self.interest().get(topic).map_or(0, |s| s.workers);
        let workers = (0..self.links.len()).filter(|w| mask & (1 << w) != 0);
        if workers
            .clone()
            .any(|w| self.links[w].pending.load(Ordering::Relaxed) >= self.max_pending)
        {
            return Err(PublishError::Overloaded);
        }
        let topic: Arc<str> = Arc::from(topic);
        let broadcast = Arc::new(Broadcast::new(message, offset));
        let mut acks = Vec::new();
        for w in workers {
            let (ack, rx) = oneshot::channel();
            let link = &self.links[w];
            link.pending.fetch_add(1, Ordering::Relaxed);
            let msg = WorkerMsg::Publish {
                topic: topic.clone(),
                broadcast: broadcast.clone(),
                ack,
            };
            if link.send(msg) {
                acks.push(rx);
            } else {
                link.pending.fetch_sub(1, Ordering::Relaxed);
            }
        }
        Ok(Delivery(Pending::Local(acks)))
    }
}
