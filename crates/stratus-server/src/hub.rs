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
use crate::history::{HistoryDest, Offset};
use crate::metrics::{self, WorkerStats};
use crate::topic::{self, TopicError};
use crate::unupgraded::address_key;

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
        recovered: Recovered,
    },
    /// Close every connection with 1001 and stop.
    Drain,
}

/// A worker's inbox, its wake-up, and what the publishes waiting in it hold.
pub(crate) struct WorkerLink {
    pub(crate) tx: mpsc::UnboundedSender<WorkerMsg>,
    pub(crate) wake: Arc<Wake>,
    /// Bytes of the publishes waiting in the inbox ([`Broadcast::cost`] each).
    pub(crate) backlog: AtomicUsize,
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
    /// The node cannot keep up: publishes it has taken wait for its workers (or its
    /// broker) beyond the publish backlog limit. Try again later.
    #[error("the node is overloaded: too many publishes waiting")]
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
    /// Publishes refused because the node was overloaded (its publish backlog full).
    pub overloaded: AtomicU64,
    /// Publishes that waited for room in the node's publish backlog (admin API).
    pub paced: AtomicU64,
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
    /// Bytes of publishes that may wait in one worker's inbox before publishing answers
    /// "overloaded".
    max_backlog: usize,
}

/// How often a paced publish checks for room.
const PACE_STEP: std::time::Duration = std::time::Duration::from_millis(1);

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
    pub(crate) fn new(
        links: Vec<WorkerLink>,
        broker: Option<BrokerLink>,
        max_backlog: usize,
    ) -> Self {
        Self {
            broker,
            workers: links.iter().map(|_| WorkerStats::default()).collect(),
            links,
            per_ip: Mutex::default(),
            interest: Mutex::default(),
            arrivals: AtomicU64::new(0),
            stats: Stats::default(),
            draining: AtomicBool::new(false),
            max_backlog,
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
            let count = counts.entry(address_key(ip)).or_insert(0);
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
            let key = address_key(ip);
            if let Some(count) = counts.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(&key);
                }
            }
        }
    }

    /// Whether worker `w`'s inbox holds the publish backlog limit or more.
    fn is_behind(&self, w: usize) -> bool {
        self.links[w].backlog.load(Ordering::Relaxed) >= self.max_backlog
    }

    /// Bytes of publishes waiting in the workers' inboxes.
    pub(crate) fn backlog(&self) -> usize {
        self.links
            .iter()
            .map(|l| l.backlog.load(Ordering::Relaxed))
            .sum()
    }

    /// Whether any worker is behind (see [`Hub::is_behind`]).
    pub(crate) fn is_overloaded(&self) -> bool {
        (0..self.links.len()).any(|w| self.is_behind(w))
    }

    /// Worker `w` has taken a publish of `cost` bytes from its inbox.
    pub(crate) fn taken(&self, w: usize, cost: usize) {
        self.links[w].backlog.fetch_sub(cost, Ordering::Relaxed);
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
    /// straight to this node's workers. While the node is overloaded (its publish backlog
    /// full) it is refused at once with [`PublishError::Overloaded`].
    pub(crate) fn publish(&self, topic: &str, message: Message) -> Result<Delivery, PublishError> {
        let delivery = self.offer(topic, message);
        self.count(&delivery, false);
        delivery
    }

    /// As [`Hub::publish`], but while the node is overloaded the publish waits for room,
    /// up to `patience`, before it is refused: a publisher flat out is paced by what the
    /// node can fan out.
    pub(crate) async fn publish_paced(
        &self,
        topic: &str,
        message: Message,
        patience: std::time::Duration,
    ) -> Result<Delivery, PublishError> {
        let until = tokio::time::Instant::now() + patience;
        let mut paced = false;
        loop {
            match self.offer(topic, message.clone()) {
                Err(PublishError::Overloaded) if tokio::time::Instant::now() < until => {
                    paced = true;
                    tokio::time::sleep(PACE_STEP).await;
                }
                delivery => {
                    self.count(&delivery, paced);
                    return delivery;
                }
            }
        }
    }

    /// Counts a publish's outcome (and whether it waited for room).
    fn count(&self, delivery: &Result<Delivery, PublishError>, paced: bool) {
        match delivery {
            Ok(_) => metrics::add(&self.stats.published, 1),
            Err(PublishError::Overloaded) => metrics::add(&self.stats.overloaded, 1),
            Err(_) => {}
        }
        if paced {
            metrics::add(&self.stats.paced, 1);
        }
    }

    /// Hands a publish on, or says why not.
    fn offer(&self, topic: &str, message: Message) -> Result<Delivery, PublishError> {
        topic::validate(topic)?;
        if !message.is_data() {
            return Err(PublishError::NotData);
        }
        if self.is_draining() {
            return Err(PublishError::Draining);
        }
        match &self.broker {
            // Every publish from Redis reaches this node's workers through one stream:
            // while any of them is behind, or another node has said it is, the node takes
            // no more (the publisher waits or is told to come back, and no prompt
            // subscriber is closed).
            Some(broker) if self.is_overloaded() || broker.cluster_is_overloaded() => {
                Err(PublishError::Overloaded)
            }
            Some(broker) => broker
                .publish(topic, &message, self.max_backlog)
                .map(|rx| Delivery(Pending::Broker(rx))),
            None => self.fan_out(topic, message, None),
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
        if workers.clone().any(|w| self.is_behind(w)) {
            return Err(PublishError::Overloaded);
        }
        let topic: Arc<str> = Arc::from(topic);
        let broadcast = Arc::new(Broadcast::new(message, offset));
        let cost = broadcast.cost();
        let mut acks = Vec::new();
        for w in workers {
            let (ack, rx) = oneshot::channel();
            let link = &self.links[w];
            link.backlog.fetch_add(cost, Ordering::Relaxed);
            let msg = WorkerMsg::Publish {
                topic: topic.clone(),
                broadcast: broadcast.clone(),
                ack,
            };
            if link.send(msg) {
                acks.push(rx);
            } else {
                link.backlog.fetch_sub(cost, Ordering::Relaxed);
            }
        }
        Ok(Delivery(Pending::Local(acks)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hub over `workers` inboxes that nobody reads, and those inboxes.
    fn hub(workers: usize, max_backlog: usize) -> (Hub, Vec<mpsc::UnboundedReceiver<WorkerMsg>>) {
        let (links, inboxes) = (0..workers)
            .map(|_| {
                let (tx, rx) = mpsc::unbounded_channel();
                let wake = Arc::new(Wake::new().expect("eventfd"));
                let backlog = AtomicUsize::new(0);
                (WorkerLink { tx, wake, backlog }, rx)
            })
            .unzip();
        (Hub::new(links, None, max_backlog), inboxes)
    }

    #[test]
    fn the_publish_backlog_counts_bytes_and_refuses_past_its_limit() {
        let (hub, mut inboxes) = hub(1, 8 << 20);
        let topic: Arc<str> = Arc::from("t");
        hub.set_interest(&topic, 0, true);
        let big = Message::Binary(bytes::Bytes::from(vec![0u8; 1 << 20]));
        let mut accepted = 0;
        while hub.publish("t", big.clone()).is_ok() {
            accepted += 1;
            assert!(accepted < 100, "never refused");
        }
        // Each waiting publish holds its payload and its frame: 2 MiB, so four fit.
        assert_eq!(accepted, 4);
        assert_eq!(
            hub.publish("t", big.clone()).err(),
            Some(PublishError::Overloaded)
        );
        assert_eq!(hub.stats.overloaded.load(Ordering::Relaxed), 2);
        assert!(hub.backlog() >= 8 << 20);
        // The worker takes one: there is room again.
        let Ok(WorkerMsg::Publish { broadcast, .. }) = inboxes[0].try_recv() else {
            panic!("a publish waits");
        };
        hub.taken(0, broadcast.cost());
        assert!(hub.publish("t", big).is_ok());
        // A topic whose workers are not behind is not held back by one that is.
        let small = hub.publish("elsewhere", Message::text("x"));
        assert!(small.is_ok(), "no subscribers, nothing waits: {small:?}");
    }
}
