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

use crate::messages::{
    BrokerRequest, HistoryDest, HistoryPage, Node, Overloaded, PublishError, WorkerMsg,
};
use crate::model::broadcast::Broadcast;
use crate::model::offset::Offset;
use crate::model::topic;
use crate::node::admission::{Admission, OverCap};
use crate::node::broker_link::BrokerLink;
use crate::stats::{self, Stats, WorkerStats};

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

/// The state every worker and the publish API share.
pub(crate) struct Hub {
    pub(crate) links: Vec<WorkerLink>,
    /// Each worker's own counters, for `/metrics`.
    pub(crate) workers: Vec<WorkerStats>,
    /// Open WebSocket connections per address.
    admission: Admission,
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
            admission: Admission::default(),
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

    /// Counts a new WebSocket connection from `ip` against the caps (`max` over the node,
    /// `per_ip` for one address; 0 is no limit), or says which one it passes.
    pub(crate) fn admit(&self, ip: IpAddr, max: usize, per_ip: usize) -> Result<(), OverCap> {
        self.admission
            .admit(&self.stats.connections, ip, max, per_ip)
    }

    /// A connection [`Hub::admit`] counted has ended.
    pub(crate) fn release(&self, ip: IpAddr, per_ip: usize) {
        self.admission.release(&self.stats.connections, ip, per_ip);
    }

    /// Connections open now.
    pub(crate) fn connections(&self) -> u64 {
        self.stats.connections.load(Ordering::Relaxed)
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
            Ok(_) => stats::add(&self.stats.published, 1),
            Err(PublishError::Overloaded) => stats::add(&self.stats.overloaded, 1),
            Err(_) => {}
        }
        if paced {
            stats::add(&self.stats.paced, 1);
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
            None => self.dispatch(topic, message, None),
        }
    }

    /// Dispatches a publish to this node's workers: frames `message` (at `offset` in the
    /// topic's history, if kept) once and sends it to every worker with subscribers for
    /// `topic`.
    pub(crate) fn dispatch(
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
        let broadcast = Arc::new(Broadcast::new(message, offset, std::time::Instant::now()));
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

impl Node for Hub {
    fn confirm(&self, topic: &Arc<str>, arrival: u64) {
        Hub::confirm(self, topic, arrival);
    }

    fn unconfirm_all(&self) {
        Hub::unconfirm_all(self);
    }

    fn dispatch(
        &self,
        topic: &str,
        message: Message,
        offset: Option<Offset>,
    ) -> Result<(), Overloaded> {
        match Hub::dispatch(self, topic, message, offset) {
            Err(PublishError::Overloaded) => Err(Overloaded),
            _ => Ok(()),
        }
    }

    fn history_page(&self, to: HistoryDest, topic: Arc<str>, page: HistoryPage) {
        if let Some(link) = self.links.get(to.worker) {
            link.send(WorkerMsg::History { to, topic, page });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;

    fn names(requests: &[BrokerRequest]) -> Vec<String> {
        requests
            .iter()
            .map(|r| match r {
                BrokerRequest::Add(t, arrival) => format!("add {t} {arrival}"),
                BrokerRequest::Remove(t) => format!("remove {t}"),
                BrokerRequest::History { topic, .. } => format!("history {topic}"),
                BrokerRequest::Stop => "stop".into(),
            })
            .collect()
    }

    #[test]
    fn the_broker_hears_of_a_topics_first_and_last_subscriber_on_the_node_in_order() {
        let (hub, mut inboxes, broker) = testing::hub(2, Some(0), 1 << 20);
        let mut broker = broker.expect("a broker");
        let t: Arc<str> = Arc::from("t");
        assert!(
            !hub.set_interest(&t, 0, true),
            "not confirmed before Redis says so"
        );
        assert!(!hub.set_interest(&t, 1, true));
        assert_eq!(names(&broker.requests()), ["add t 0"], "once per node");
        assert!(!hub.is_confirmed("t"));
        hub.confirm(&t, 0);
        assert!(hub.is_confirmed("t"));
        for inbox in &mut inboxes {
            assert!(matches!(inbox.try_recv(), Ok(WorkerMsg::Confirmed(c)) if c == t));
        }
        assert!(
            hub.set_interest(&t, 0, true),
            "a worker's later subscriber: confirmed"
        );
        hub.set_interest(&t, 0, false);
        assert!(
            broker.requests().is_empty(),
            "worker 1 still has subscribers"
        );
        hub.set_interest(&t, 1, false);
        assert_eq!(names(&broker.requests()), ["remove t"]);
        assert_eq!(hub.topic_count(), 0);
        // The topic comes back: a confirmation for its earlier arrival is not taken for
        // this one.
        hub.set_interest(&t, 1, true);
        assert_eq!(names(&broker.requests()), ["add t 1"]);
        hub.confirm(&t, 0);
        assert!(!hub.is_confirmed("t"), "a stale confirmation");
        assert!(inboxes[1].try_recv().is_err());
        hub.confirm(&t, 1);
        assert!(hub.is_confirmed("t"));
        // Redis lost: nothing is confirmed until the broker has resubscribed.
        hub.unconfirm_all();
        assert!(!hub.is_confirmed("t"));
    }

    #[test]
    fn a_publish_is_framed_once_for_the_workers_with_subscribers() {
        let (hub, mut inboxes, _) = testing::hub(3, None, 1 << 20);
        let t: Arc<str> = Arc::from("t");
        assert!(
            hub.set_interest(&t, 0, true),
            "confirmed at once without a broker"
        );
        hub.set_interest(&t, 2, true);
        let delivery = hub.publish("t", Message::text("hi")).expect("published");
        assert_eq!(delivery.workers(), 2);
        let mut frames = Vec::new();
        for w in [0, 2] {
            let Ok(WorkerMsg::Publish { broadcast, .. }) = inboxes[w].try_recv() else {
                panic!("worker {w} gets the publish");
            };
            frames.push(broadcast);
        }
        assert!(
            Arc::ptr_eq(&frames[0], &frames[1]),
            "one broadcast for both"
        );
        assert!(inboxes[1].try_recv().is_err(), "no subscribers on worker 1");
        assert!(hub.backlog() > 0, "waiting in two inboxes");
        for (w, broadcast) in [0, 2].into_iter().zip(frames) {
            hub.taken(w, broadcast.cost());
        }
        assert_eq!(hub.backlog(), 0);
        assert_eq!(hub.stats.published.load(Ordering::Relaxed), 1);
        assert_eq!(
            hub.publish("bad topic", Message::text("x")).err(),
            Some(PublishError::InvalidTopic(topic::TopicError::BadCharacter))
        );
        assert_eq!(
            hub.publish("t", Message::Ping(bytes::Bytes::new())).err(),
            Some(PublishError::NotData)
        );
    }

    #[test]
    fn a_drain_tells_every_worker_and_refuses_publishes() {
        let (hub, mut inboxes, _) = testing::hub(2, None, 1 << 20);
        assert!(hub.is_ready());
        hub.drain();
        assert!(!hub.is_ready());
        for inbox in &mut inboxes {
            assert!(matches!(inbox.try_recv(), Ok(WorkerMsg::Drain)));
        }
        assert_eq!(
            hub.publish("t", Message::text("x")).err(),
            Some(PublishError::Draining)
        );
    }

    #[test]
    fn with_a_broker_a_publish_goes_to_redis_and_what_redis_sends_to_the_workers() {
        let (hub, mut inboxes, broker) = testing::hub(1, Some(0), 1 << 20);
        let mut broker = broker.expect("a broker");
        let delivery = hub
            .publish("t", Message::text("x"))
            .expect("handed to the broker");
        assert_eq!(delivery.workers(), 0, "the workers get it back from Redis");
        let outgoing = broker.publishes.try_recv().expect("on its way to Redis");
        assert_eq!(outgoing.topic, "t");
        assert!(
            inboxes[0].try_recv().is_err(),
            "not straight to the workers"
        );
        outgoing.answer(Ok(3));
        assert_eq!(delivery.wait(), Ok(Reach::Nodes(3)));
        // What Redis hands back is fanned out here, or refused while the worker is behind.
        let t: Arc<str> = Arc::from("t");
        hub.set_interest(&t, 0, true);
        let node: &dyn Node = &hub;
        assert_eq!(node.dispatch("t", Message::text("y"), None), Ok(()));
        assert!(matches!(
            inboxes[0].try_recv(),
            Ok(WorkerMsg::Publish { .. })
        ));
        hub.links[0].backlog.store(1 << 20, Ordering::Relaxed);
        assert_eq!(
            node.dispatch("t", Message::text("z"), None),
            Err(Overloaded)
        );
        assert_eq!(
            hub.publish("t", Message::text("w")).err(),
            Some(PublishError::Overloaded),
            "publishes wait while a worker is behind"
        );
        // Redis unreachable: 503 at once.
        broker.stats.up.store(false, Ordering::Release);
        hub.links[0].backlog.store(0, Ordering::Relaxed);
        assert!(!hub.is_ready());
        assert_eq!(
            hub.publish("t", Message::text("v")).err(),
            Some(PublishError::BrokerUnavailable)
        );
    }

    #[test]
    fn the_publish_backlog_counts_bytes_and_refuses_past_its_limit() {
        let (hub, mut inboxes, _) = testing::hub(1, None, 8 << 20);
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
