//! What the workers share: a channel into each worker, which workers have subscribers
//! for which topic (and how many subscribers the topic has on the node), the counters,
//! the node's history (without a broker), and the publish path.
//!
//! A publish is framed once on the publisher's thread and sent, as one `Arc`, to each
//! worker with subscribers for the topic; each worker fans it out to its own
//! connections. The only lock is taken once per publish (to read the topic's workers),
//! never per recipient; a topic with a history also takes the history's lock, under which
//! the publish gets its offset and goes to the workers, so they see the topic in order.
//! With a broker (Redis), a publish goes there first and comes back to every node's
//! fan-out, this one's included.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime};

use stratus_uring::Wake;
use tokio::sync::{mpsc, oneshot};

use crate::config::{Config, PresenceMode, TopicOptions};
use crate::messages::{
    BrokerRequest, HistoryDest, HistoryPage, HistoryRead, Node, Overloaded, PresenceOutcome,
    PresenceReplyTo, PublishDest, PublishError, Published, Retention, WorkerMsg,
};
use crate::model::broadcast::Broadcast;
use crate::model::offset::Offset;
use crate::model::presence::{Occupancy, PresenceAnswer, PresenceReport};
use crate::model::publication::Publication;
use crate::model::topic;
use crate::node::admission::{Admission, OverCap};
use crate::node::broker_link::BrokerLink;
use crate::node::delivery::Delivery;
use crate::node::history::MemoryHistory;
use crate::node::presence::{Event, Members, PresenceTable, Who, event_json};
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
    pub(crate) fn send(&self, msg: WorkerMsg) -> bool {
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
    /// Subscribers over all workers.
    subscribers: usize,
    /// Which arrival of the topic on the node this is (see `Hub::arrivals`).
    arrival: u64,
    /// Whether publishes anywhere reach the node's subscribers: at once with the local
    /// broker, once Redis confirms the subscription with one.
    confirmed: bool,
}

/// A subscription refused because its topic has as many subscribers as its namespace
/// allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TopicFull;

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
    /// The node's own history, without a broker (when any topic keeps one).
    pub(crate) history: Option<MemoryHistory>,
    draining: AtomicBool,
    config: Arc<Config>,
    /// This node's name among the cluster's nodes (presence, user control): random, fixed
    /// for the life of the process.
    pub(crate) node_id: Arc<str>,
    /// Where a topic's first and last subscriber on the node are reported, for the
    /// occupied/vacated events (`None`: no events kept).
    pub(crate) events: Option<crate::node::occupancy_events::EventsLink>,
    /// Who is subscribed to what on the node (occupancy, members, joins and leaves).
    presence: Mutex<PresenceTable>,
    /// The way to the backend hooks' thread, once started (only with a hook set).
    pub(crate) hooks: std::sync::OnceLock<crate::node::hook_link::HookLink>,
}

/// A fresh random node id (16 hex digits).
fn fresh_node_id() -> Arc<str> {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(now);
    hasher.write_u32(std::process::id());
    Arc::from(format!("{:016x}", hasher.finish()))
}

/// How often a paced publish checks for room.
const PACE_STEP: std::time::Duration = std::time::Duration::from_millis(1);

/// Milliseconds since the Unix epoch (offsets of the node's history).
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// How much of a topic's history `options` keep.
pub(crate) fn retention(options: &TopicOptions) -> Retention {
    Retention {
        count: options.history,
        ttl: options.history_ttl,
    }
}

impl Hub {
    pub(crate) fn new(
        links: Vec<WorkerLink>,
        broker: Option<BrokerLink>,
        config: Arc<Config>,
    ) -> Self {
        let history = (broker.is_none() && config.keeps_history())
            .then(|| MemoryHistory::new(config.history_memory));
        // One name per node: the broker's (on its control channel) where there is one.
        let node_id = match &broker {
            Some(link) => Arc::from(format!("{:016x}", link.node())),
            None => fresh_node_id(),
        };
        let presence = PresenceTable::new(node_id.clone(), broker.is_some());
        Self {
            broker,
            history,
            workers: links.iter().map(|_| WorkerStats::default()).collect(),
            links,
            admission: Admission::default(),
            interest: Mutex::default(),
            arrivals: AtomicU64::new(0),
            stats: Stats::default(),
            draining: AtomicBool::new(false),
            config,
            presence: Mutex::new(presence),
            node_id,
            events: None,
            hooks: std::sync::OnceLock::new(),
        }
    }

    /// The hub, reporting its topics' first and last subscribers to `events`.
    pub(crate) fn with_events(
        mut self,
        events: Option<crate::node::occupancy_events::EventsLink>,
    ) -> Self {
        self.events = events;
        self
    }

    fn presence(&self) -> std::sync::MutexGuard<'_, PresenceTable> {
        self.presence.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `who` has subscribed to `topic` (after [`Hub::subscribe`] took it).
    pub(crate) fn joined(&self, topic: &Arc<str>, who: &Who<'_>) {
        let options = self.config.options(topic);
        self.presence().join(topic, who, &options);
    }

    /// `who` has left `topic` (after [`Hub::unsubscribe`]).
    pub(crate) fn left(&self, topic: &str, who: &Who<'_>) {
        let options = self.config.options(topic);
        self.presence().leave(topic, who, &options);
    }

    /// The node's figures for `GET /nodes`: connections, topics with subscribers, and the
    /// publishes and deliveries counted since it started.
    pub(crate) fn figures(&self) -> Vec<(&'static str, u64)> {
        let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("connections", self.connections()),
            ("topics", self.topic_count() as u64),
            ("published", count(&self.stats.published)),
            ("delivered", count(&self.stats.delivered)),
        ]
    }

    /// Every live node's figures (this node's alone without a broker); `None` when the
    /// broker cannot read them now.
    pub(crate) async fn nodes(&self) -> Option<Vec<(String, Vec<(String, u64)>)>> {
        let Some(broker) = &self.broker else {
            let own = self.figures().into_iter().map(|(k, v)| (k.to_owned(), v));
            return Some(vec![(self.node_id.to_string(), own.collect())]);
        };
        let (reply, rx) = oneshot::channel();
        broker.request(BrokerRequest::Nodes { reply });
        rx.await.ok().flatten()
    }

    /// A connection's presence (`members`) or occupancy command on `topic`: over the
    /// cluster through the broker (the answer goes to the connection's worker), else
    /// answered now from this node.
    pub(crate) fn ask_presence(
        &self,
        topic: &str,
        members: bool,
        to: PublishDest,
    ) -> Option<PresenceAnswer> {
        let Some(broker) = &self.broker else {
            return Some(self.local_presence(topic, members));
        };
        let cap = self.config.options(topic).presence_max_members;
        broker.request(BrokerRequest::Presence {
            topic: Arc::from(topic),
            members: members.then_some(cap),
            reply: PresenceReplyTo::Client(to),
        });
        None
    }

    /// `topic`'s presence (`members`) or occupancy over the cluster (this node's without
    /// a broker); `None` when the broker cannot read it now.
    pub(crate) async fn cluster_presence(
        &self,
        topic: &str,
        members: bool,
    ) -> Option<PresenceAnswer> {
        let Some(broker) = &self.broker else {
            return Some(self.local_presence(topic, members));
        };
        let cap = self.config.options(topic).presence_max_members;
        let (reply, rx) = oneshot::channel();
        broker.request(BrokerRequest::Presence {
            topic: Arc::from(topic),
            members: members.then_some(cap),
            reply: PresenceReplyTo::Caller(reply),
        });
        rx.await.ok().flatten()
    }

    /// `topic`'s presence on this node: its occupancy, and its members (at most its
    /// namespace's cap) if `members`.
    pub(crate) fn local_presence(&self, topic: &str, members: bool) -> PresenceAnswer {
        let cap = self.config.options(topic).presence_max_members;
        let presence = self.presence();
        if !members {
            return PresenceAnswer {
                occupancy: presence.occupancy(topic),
                members: None,
            };
        }
        let Members {
            occupancy,
            list,
            complete,
        } = presence.members(topic, cap);
        PresenceAnswer {
            occupancy,
            members: Some((list, complete)),
        }
    }

    /// Topics in the node's presence, and members listed over them.
    pub(crate) fn presence_usage(&self) -> (usize, usize) {
        self.presence().usage()
    }

    /// The node's busiest topics (most connections first), at most `limit`.
    pub(crate) fn busiest_topics(&self, limit: usize) -> Vec<(Arc<str>, Occupancy)> {
        self.presence().busiest(limit)
    }

    /// The end of presence interval `tick` (counted from 1): the interval's joins and
    /// leaves go out, occupancy pushes that are due go out (with the cluster's counts
    /// where there is a broker, read by the broker without holding this thread), and the
    /// broker reports the node's presence to Redis.
    pub(crate) fn presence_tick(&self, tick: u64) {
        let cap = |topic: &str| self.config.options(topic).presence_max_members;
        let events = self.presence().take_events(tick, cap);
        stats::add(&self.stats.presence_events, events.len() as u64);
        for (topic, event) in events {
            match event {
                // Past the cap: the topic's counts, the cluster's where there is one.
                Event::Counts(local) => self.push_occupancy(&topic, local),
                changes => self.send_event(&topic, event_json(&topic, &changes)),
            }
        }
        if let Some(broker) = &self.broker {
            broker.request(BrokerRequest::PresenceTick {
                lease: self.config.presence_lease,
            });
        }
        if !self.config.pushes_occupancy() {
            return;
        }
        let interval = self.config.presence_interval.as_secs_f64().max(0.001);
        let topics = self.presence().busiest(usize::MAX);
        for (topic, local) in topics {
            let due = self
                .config
                .options(&topic)
                .occupancy_push
                .is_some_and(|every| {
                    let every = (every.as_secs_f64() / interval).round().max(1.0) as u64;
                    tick.is_multiple_of(every)
                });
            if due {
                stats::add(&self.stats.presence_events, 1);
                self.push_occupancy(&topic, local);
            }
        }
    }

    /// Pushes `topic`'s occupancy to its v1 subscribers on this node: the cluster's, read
    /// by the broker, where there is one, else `local`.
    fn push_occupancy(&self, topic: &str, local: Occupancy) {
        match &self.broker {
            Some(broker) => broker.request(BrokerRequest::Presence {
                topic: Arc::from(topic),
                members: None,
                reply: PresenceReplyTo::Push,
            }),
            None => {
                let _ = self.dispatch(topic, Publication::event(local.push(topic)), None);
            }
        }
    }

    /// Sends `text` (a whole v1 push) to `topic`'s v1 subscribers: through the broker (no
    /// history) when there is one, else to this node's workers.
    pub(crate) fn send_event(&self, topic: &str, text: String) {
        let event = Publication::event(text);
        let _ = match &self.broker {
            Some(broker) => broker
                .publish(
                    topic,
                    event,
                    Retention::NONE,
                    None,
                    self.config.max_publish_backlog,
                )
                .map(|_| ()),
            None => self.dispatch(topic, event, None).map(|_| ()),
        };
    }

    fn interest(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, TopicState>> {
        self.interest.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A subscriber of `topic` on `worker` (its first there if `first_on_worker`): counted
    /// against `max_subscribers` (0: no limit), and the broker told when it is the node's
    /// first (under the lock, so the broker sees the changes in order). Returns whether
    /// the topic is confirmed (see [`Hub::is_confirmed`]).
    pub(crate) fn subscribe(
        &self,
        topic: &Arc<str>,
        worker: usize,
        first_on_worker: bool,
        max_subscribers: usize,
    ) -> Result<bool, TopicFull> {
        let mut interest = self.interest();
        if max_subscribers > 0
            && interest
                .get(topic)
                .is_some_and(|s| s.subscribers >= max_subscribers)
        {
            return Err(TopicFull);
        }
        let state = interest.entry(topic.clone()).or_insert_with(|| {
            let arrival = self.arrivals.fetch_add(1, Ordering::Relaxed);
            if let Some(broker) = &self.broker {
                broker.request(BrokerRequest::Add(topic.clone(), arrival));
            }
            if let Some(events) = &self.events {
                events.changed(topic, true);
            }
            TopicState {
                workers: 0,
                subscribers: 0,
                arrival,
                confirmed: self.broker.is_none(),
            }
        });
        if first_on_worker {
            state.workers |= 1 << worker;
        }
        state.subscribers += 1;
        Ok(state.confirmed)
    }

    /// A subscriber of `topic` on `worker` has gone (its last there if `last_on_worker`);
    /// the broker is told when it was the node's last.
    pub(crate) fn unsubscribe(&self, topic: &Arc<str>, worker: usize, last_on_worker: bool) {
        let mut interest = self.interest();
        let Some(state) = interest.get_mut(topic) else {
            return;
        };
        state.subscribers = state.subscribers.saturating_sub(1);
        if last_on_worker {
            state.workers &= !(1 << worker);
        }
        if state.workers == 0 {
            interest.remove(topic);
            if let Some(broker) = &self.broker {
                broker.request(BrokerRequest::Remove(topic.clone()));
            }
            if let Some(events) = &self.events {
                events.changed(topic, false);
            }
        }
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

    /// The broker lost Redis shard `shard`: none of the topics it carries is confirmed
    /// until it has resubscribed them; the other shards' topics stay as they are.
    pub(crate) fn unconfirm_shard(&self, shard: usize) {
        let Some(broker) = &self.broker else {
            return;
        };
        for (topic, state) in self.interest().iter_mut() {
            if broker.shard_of(topic) == shard {
                state.confirmed = false;
            }
        }
    }

    /// Whether the node can publish: not draining, and, if it has a broker, connected to
    /// at least one of its shards. A shard that is down fails only its own topics (503
    /// for their publishes); every node shares the shards, so turning unready for one
    /// would take every node out of a load balancer's rotation at once, and with them the
    /// topics of the shards that are up (see `stratus_broker_shard_up` for each shard).
    pub(crate) fn is_ready(&self) -> bool {
        !self.is_draining() && self.broker.as_ref().is_none_or(BrokerLink::any_up)
    }

    /// Whether worker `w`'s inbox holds the publish backlog limit or more.
    fn is_behind(&self, w: usize) -> bool {
        self.links[w].backlog.load(Ordering::Relaxed) >= self.config.max_publish_backlog
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

    /// Publishes `publication` on `topic`: through the broker when there is one, else
    /// straight to this node's workers (after the node's history, where the topic keeps
    /// one). While the node is overloaded (its publish backlog full) it is refused at
    /// once with [`PublishError::Overloaded`].
    pub(crate) fn publish(
        &self,
        topic: &str,
        publication: Publication,
    ) -> Result<Delivery, PublishError> {
        let delivery = self.offer(topic, publication, None);
        self.count(&delivery, false);
        delivery
    }

    /// A connection's publish, as [`Hub::publish`]; with a broker the answer goes to the
    /// connection's worker (`to`) when Redis has answered, else the [`Delivery`] has it.
    pub(crate) fn publish_for(
        &self,
        to: PublishDest,
        topic: &str,
        publication: Publication,
    ) -> Result<Delivery, PublishError> {
        let delivery = self.offer(topic, publication, Some(to));
        self.count(&delivery, false);
        delivery
    }

    /// As [`Hub::publish`], but while the node is overloaded the publish waits for room,
    /// up to `patience`, before it is refused: a publisher flat out is paced by what the
    /// node can fan out.
    pub(crate) async fn publish_paced(
        &self,
        topic: &str,
        publication: Publication,
        patience: std::time::Duration,
    ) -> Result<Delivery, PublishError> {
        let until = tokio::time::Instant::now() + patience;
        let mut paced = false;
        loop {
            match self.offer(topic, publication.clone(), None) {
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

    /// Hands a publish on, or says why not; with a broker, its answer goes to `client`'s
    /// worker if given.
    fn offer(
        &self,
        topic: &str,
        publication: Publication,
        client: Option<PublishDest>,
    ) -> Result<Delivery, PublishError> {
        topic::validate(topic)?;
        if self.is_draining() {
            return Err(PublishError::Draining);
        }
        let options = self.config.options(topic);
        match &self.broker {
            // Every publish from Redis reaches this node's workers through one stream:
            // while any of them is behind, or another node has said it is, the node takes
            // no more (the publisher waits or is told to come back, and no prompt
            // subscriber is closed).
            Some(broker) if self.is_overloaded() || broker.cluster_is_overloaded() => {
                Err(PublishError::Overloaded)
            }
            Some(broker) => broker
                .publish(
                    topic,
                    publication,
                    retention(&options),
                    client,
                    self.config.max_publish_backlog,
                )
                .map(|rx| rx.map_or_else(Delivery::forwarded, Delivery::broker)),
            None => match &self.history {
                Some(history) if options.history > 0 => {
                    let workers = self.ready_workers(topic)?;
                    let retention = retention(&options);
                    let kept = publication.clone();
                    history.append(topic, &kept, retention, unix_ms(), |offset| {
                        Ok(self.send(workers, topic, publication, Some(offset)))
                    })
                }
                _ => self.dispatch(topic, publication, None),
            },
        }
    }

    /// The workers with subscribers for `topic`, as a mask, unless one of them is behind.
    fn ready_workers(&self, topic: &str) -> Result<u64, PublishError> {
        if self.is_draining() {
            return Err(PublishError::Draining);
        }
        let mask = self.interest().get(topic).map_or(0, |s| s.workers);
        if (0..self.links.len()).any(|w| mask & (1 << w) != 0 && self.is_behind(w)) {
            return Err(PublishError::Overloaded);
        }
        Ok(mask)
    }

    /// Dispatches a publish to this node's workers: frames `publication` (at `offset` in
    /// the topic's history, if kept) once and sends it to every worker with subscribers
    /// for `topic`.
    pub(crate) fn dispatch(
        &self,
        topic: &str,
        publication: Publication,
        offset: Option<Offset>,
    ) -> Result<Delivery, PublishError> {
        let workers = self.ready_workers(topic)?;
        Ok(self.send(workers, topic, publication, offset))
    }

    /// Frames `publication` once and sends it to the `workers` (a mask).
    fn send(
        &self,
        workers: u64,
        topic: &str,
        publication: Publication,
        offset: Option<Offset>,
    ) -> Delivery {
        let broadcast = Arc::new(Broadcast::new(
            Arc::from(topic),
            publication,
            offset,
            Instant::now(),
        ));
        let cost = broadcast.cost();
        let mut acks = Vec::new();
        for (w, link) in self.links.iter().enumerate() {
            if workers & (1 << w) == 0 {
                continue;
            }
            let (ack, rx) = oneshot::channel();
            link.backlog.fetch_add(cost, Ordering::Relaxed);
            let msg = WorkerMsg::Publish {
                broadcast: broadcast.clone(),
                ack,
            };
            if link.send(msg) {
                acks.push(rx);
            } else {
                link.backlog.fetch_sub(cost, Ordering::Relaxed);
            }
        }
        Delivery::local(acks, offset)
    }

    /// Reads a page of `topic`'s history for `read`; the page goes to the reader's worker
    /// (at once from the node's history, from Redis when it answers).
    pub(crate) fn read_history(&self, topic: Arc<str>, read: HistoryRead) {
        let options = self.config.options(&topic);
        if let Some(broker) = &self.broker {
            broker.request(BrokerRequest::History { topic, read });
            return;
        }
        let page = match &self.history {
            Some(history) if options.history > 0 => {
                history.read(&topic, &read, retention(&options), unix_ms())
            }
            _ => HistoryPage::unavailable("no history is kept for this topic"),
        };
        self.history_page(read.to, topic, page);
    }

    /// A page of `topic`'s history for a caller (the admin API): `read`'s start, limit and
    /// budget; `None` if the topic keeps no history.
    pub(crate) async fn history(&self, topic: &str, read: HistoryRead) -> Option<HistoryPage> {
        let options = self.config.options(topic);
        if options.history == 0 {
            return None;
        }
        if let Some(broker) = &self.broker {
            let (reply, rx) = oneshot::channel();
            let topic = Arc::from(topic);
            broker.request(BrokerRequest::ReadHistory { topic, read, reply });
            let gone = || HistoryPage::failed("the broker is unreachable");
            return Some(rx.await.unwrap_or_else(|_| gone()));
        }
        let history = self.history.as_ref()?;
        Some(history.read(topic, &read, retention(&options), unix_ms()))
    }

    /// Sends `msg` to the workers with subscribers for `topic`.
    fn tell_subscribers(&self, topic: &str, msg: impl Fn() -> WorkerMsg) {
        let mask = self.interest().get(topic).map_or(0, |s| s.workers);
        for (w, link) in self.links.iter().enumerate() {
            if mask & (1 << w) != 0 {
                link.send(msg());
            }
        }
    }

    /// Sends `msg` to worker `w`.
    pub(crate) fn tell(&self, w: usize, msg: WorkerMsg) {
        if let Some(link) = self.links.get(w) {
            link.send(msg);
        }
    }
}

impl Node for Hub {
    fn confirm(&self, topic: &Arc<str>, arrival: u64) {
        Hub::confirm(self, topic, arrival);
    }

    fn unconfirm_shard(&self, shard: usize) {
        Hub::unconfirm_shard(self, shard);
    }

    fn dispatch(
        &self,
        topic: &str,
        publication: Publication,
        offset: Option<Offset>,
    ) -> Result<(), Overloaded> {
        match Hub::dispatch(self, topic, publication, offset) {
            Err(PublishError::Overloaded) => Err(Overloaded),
            _ => Ok(()),
        }
    }

    fn gap(&self, topic: &str, reason: &'static str) {
        let name: Arc<str> = Arc::from(topic);
        self.tell_subscribers(topic, || WorkerMsg::Gap {
            topic: name.clone(),
            reason,
        });
    }

    fn history_page(&self, to: HistoryDest, topic: Arc<str>, page: HistoryPage) {
        self.tell(to.worker, WorkerMsg::History { to, topic, page });
    }

    fn presence(&self, to: PublishDest, topic: Arc<str>, answer: PresenceOutcome) {
        self.tell(to.worker, WorkerMsg::Presence { to, topic, answer });
    }

    fn node_id(&self) -> Arc<str> {
        self.node_id.clone()
    }

    fn presence_report(&self, all: bool) -> PresenceReport {
        let listed = |topic: &str| {
            let options = self.config.options(topic);
            (options.presence == PresenceMode::Members).then_some(options.presence_max_members)
        };
        PresenceReport {
            topics: self.presence().report(all, listed),
            node: self.figures(),
        }
    }

    fn published(&self, to: PublishDest, topic: Arc<str>, result: Result<Published, PublishError>) {
        self.tell(to.worker, WorkerMsg::Published { to, topic, result });
    }

    fn user_control(
        &self,
        command: Arc<crate::model::user_control::UserCommand>,
    ) -> Vec<oneshot::Receiver<crate::model::user_control::Tally>> {
        self.ask_workers(&command)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::Reach;
    use crate::model::offset::Since;
    use crate::testing;
    use futures_util::FutureExt;
    use stratus_proto::Message;

    fn text(text: &str) -> Publication {
        Publication::text(text)
    }

    fn names(requests: &[BrokerRequest]) -> Vec<String> {
        requests
            .iter()
            .map(|r| match r {
                BrokerRequest::Add(t, arrival) => format!("add {t} {arrival}"),
                BrokerRequest::Remove(t) => format!("remove {t}"),
                BrokerRequest::History { topic, .. } => format!("history {topic}"),
                BrokerRequest::ReadHistory { topic, .. } => format!("read {topic}"),
                BrokerRequest::Stop => "stop".into(),
                BrokerRequest::UserControl { .. } => "user".into(),
                BrokerRequest::Presence { topic, .. } => format!("presence {topic}"),
                BrokerRequest::PresenceTick { .. } => "presence tick".into(),
                BrokerRequest::Nodes { .. } => "nodes".into(),
            })
            .collect()
    }

    #[test]
    fn the_broker_hears_of_a_topics_first_and_last_subscriber_on_the_node_in_order() {
        let (hub, mut inboxes, broker) = testing::hub(2, true, Config::default());
        let mut broker = broker.expect("a broker");
        let t: Arc<str> = Arc::from("t");
        assert!(
            hub.subscribe(&t, 0, true, 0) == Ok(false),
            "not confirmed before Redis says so"
        );
        assert!(hub.subscribe(&t, 1, true, 0) == Ok(false));
        assert_eq!(names(&broker.requests()), ["add t 0"], "once per node");
        assert!(!hub.is_confirmed("t"));
        hub.confirm(&t, 0);
        assert!(hub.is_confirmed("t"));
        for inbox in &mut inboxes {
            assert!(matches!(inbox.try_recv(), Ok(WorkerMsg::Confirmed(c)) if c == t));
        }
        assert!(
            hub.subscribe(&t, 0, true, 0) == Ok(true),
            "a worker's later subscriber: confirmed"
        );
        hub.unsubscribe(&t, 0, true);
        assert!(
            broker.requests().is_empty(),
            "worker 1 still has subscribers"
        );
        hub.unsubscribe(&t, 1, true);
        assert_eq!(names(&broker.requests()), ["remove t"]);
        assert_eq!(hub.topic_count(), 0);
        // The topic comes back: a confirmation for its earlier arrival is not taken for
        // this one.
        let _ = hub.subscribe(&t, 1, true, 0);
        assert_eq!(names(&broker.requests()), ["add t 1"]);
        hub.confirm(&t, 0);
        assert!(!hub.is_confirmed("t"), "a stale confirmation");
        assert!(inboxes[1].try_recv().is_err());
        hub.confirm(&t, 1);
        assert!(hub.is_confirmed("t"));
        // Redis lost: nothing is confirmed until the broker has resubscribed.
        hub.unconfirm_shard(0);
        assert!(!hub.is_confirmed("t"));
    }

    #[test]
    fn with_shards_a_topic_goes_to_its_own_and_a_shard_down_fails_only_its_topics() {
        // With two shards, "news" lives on the first and "chat:1" on the second
        // (`model::shard` pins these).
        let (hub, _inboxes, mut shards) = testing::sharded_hub(1, 2, Config::default());
        let (news, chat): (Arc<str>, Arc<str>) = (Arc::from("news"), Arc::from("chat:1"));
        let _ = hub.subscribe(&news, 0, true, 0);
        let _ = hub.subscribe(&chat, 0, true, 0);
        assert_eq!(names(&shards[0].requests()), ["add news 0"]);
        assert_eq!(names(&shards[1].requests()), ["add chat:1 1"]);
        hub.confirm(&news, 0);
        hub.confirm(&chat, 1);
        // The second shard lost its Redis: only its topics wait for it again.
        hub.unconfirm_shard(1);
        assert!(hub.is_confirmed("news") && !hub.is_confirmed("chat:1"));
        shards[1].stats.up.store(false, Ordering::Release);
        assert_eq!(
            hub.publish("chat:1", text("x")).err(),
            Some(PublishError::BrokerUnavailable)
        );
        assert!(
            hub.publish("news", text("y")).is_ok(),
            "the other shard's topic"
        );
        let outgoing = shards[0].publishes.try_recv().expect("to the first shard");
        assert_eq!(outgoing.topic, "news");
        assert!(shards[1].publishes.try_recv().is_err());
        assert!(hub.is_ready(), "ready while any shard is up");
        // A shard's backlog holds back its own topics only.
        shards[1].stats.up.store(true, Ordering::Release);
        shards[1]
            .stats
            .backlog
            .store(u64::MAX / 2, Ordering::Relaxed);
        assert_eq!(
            hub.publish("chat:1", text("z")).err(),
            Some(PublishError::Overloaded)
        );
        assert!(hub.publish("news", text("w")).is_ok());
        // A topic's history is read on its shard; what is the node's goes to the first.
        hub.read_history(chat.clone(), testing::history_read(Since::Now, 1 << 20));
        hub.presence_tick(1);
        let _ = hub.cluster_presence("chat:1", false).now_or_never();
        assert_eq!(names(&shards[1].requests()), ["history chat:1"]);
        assert_eq!(
            names(&shards[0].requests()),
            ["presence tick", "presence chat:1"]
        );
        hub.broker
            .as_ref()
            .expect("a broker")
            .request(BrokerRequest::Stop);
        for shard in &mut shards {
            assert_eq!(names(&shard.requests()), ["stop"], "every shard stops");
        }
        shards[0].stats.up.store(false, Ordering::Release);
        shards[1].stats.up.store(false, Ordering::Release);
        assert!(!hub.is_ready(), "no shard up");
    }

    #[test]
    fn a_publish_is_framed_once_for_the_workers_with_subscribers() {
        let (hub, mut inboxes, _) = testing::hub(3, false, Config::default());
        let t: Arc<str> = Arc::from("t");
        assert!(
            hub.subscribe(&t, 0, true, 0) == Ok(true),
            "confirmed at once without a broker"
        );
        let _ = hub.subscribe(&t, 2, true, 0);
        let delivery = hub.publish("t", text("hi")).expect("published");
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
            hub.publish("bad topic", text("x")).err(),
            Some(PublishError::InvalidTopic(topic::TopicError::BadCharacter))
        );
    }

    #[test]
    fn a_drain_tells_every_worker_and_refuses_publishes() {
        let (hub, mut inboxes, _) = testing::hub(2, false, Config::default());
        assert!(hub.is_ready());
        hub.drain();
        assert!(!hub.is_ready());
        for inbox in &mut inboxes {
            assert!(matches!(inbox.try_recv(), Ok(WorkerMsg::Drain)));
        }
        assert_eq!(
            hub.publish("t", text("x")).err(),
            Some(PublishError::Draining)
        );
    }

    #[test]
    fn with_a_broker_a_publish_goes_to_redis_and_what_redis_sends_to_the_workers() {
        let (hub, mut inboxes, broker) = testing::hub(1, true, Config::default());
        let mut broker = broker.expect("a broker");
        let delivery = hub.publish("t", text("x")).expect("handed to the broker");
        assert_eq!(delivery.workers(), 0, "the workers get it back from Redis");
        let outgoing = broker.publishes.try_recv().expect("on its way to Redis");
        assert_eq!(outgoing.topic, "t");
        assert!(
            inboxes[0].try_recv().is_err(),
            "not straight to the workers"
        );
        outgoing.answer(Ok(Published::by_broker(3, None)), &hub);
        assert_eq!(delivery.wait(), Ok(Reach::Nodes(3)));
        // What Redis hands back is fanned out here, or refused while the worker is behind.
        let t: Arc<str> = Arc::from("t");
        let _ = hub.subscribe(&t, 0, true, 0);
        let node: &dyn Node = &hub;
        assert_eq!(node.dispatch("t", text("y"), None), Ok(()));
        assert!(matches!(
            inboxes[0].try_recv(),
            Ok(WorkerMsg::Publish { .. })
        ));
        hub.links[0].backlog.store(1 << 20, Ordering::Relaxed);
        assert_eq!(node.dispatch("t", text("z"), None), Err(Overloaded));
        assert_eq!(
            hub.publish("t", text("w")).err(),
            Some(PublishError::Overloaded),
            "publishes wait while a worker is behind"
        );
        // Redis unreachable: 503 at once.
        broker.stats.up.store(false, Ordering::Release);
        hub.links[0].backlog.store(0, Ordering::Relaxed);
        assert!(!hub.is_ready());
        assert_eq!(
            hub.publish("t", text("v")).err(),
            Some(PublishError::BrokerUnavailable)
        );
    }

    #[test]
    fn a_topic_takes_no_more_subscribers_than_its_cap_on_the_node() {
        let (hub, _inboxes, _) = testing::hub(2, false, Config::default());
        let t: Arc<str> = Arc::from("t");
        assert_eq!(hub.subscribe(&t, 0, true, 2), Ok(true));
        assert_eq!(hub.subscribe(&t, 1, true, 2), Ok(true));
        assert_eq!(
            hub.subscribe(&t, 1, false, 2),
            Err(TopicFull),
            "over both workers"
        );
        hub.unsubscribe(&t, 0, true);
        assert_eq!(hub.subscribe(&t, 1, false, 2), Ok(true), "room again");
    }

    #[test]
    fn without_a_broker_the_node_keeps_the_history_and_publishes_in_offset_order() {
        let config = Config {
            history: 3,
            ..Config::default()
        };
        let (hub, mut inboxes, _) = testing::hub(1, false, config);
        let t: Arc<str> = Arc::from("t");
        let _ = hub.subscribe(&t, 0, true, 0);
        let offsets: Vec<Offset> = (0..5)
            .map(|i| {
                let delivery = hub.publish("t", text(&i.to_string())).expect("published");
                delivery
                    .offset()
                    .expect("an offset from the node's history")
            })
            .collect();
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");
        for offset in &offsets {
            let Ok(WorkerMsg::Publish { broadcast, .. }) = inboxes[0].try_recv() else {
                panic!("published");
            };
            assert_eq!(
                broadcast.offset,
                Some(*offset),
                "the workers see the offset order"
            );
        }
        // A resume reads it: the page goes to the reader's worker.
        let to = HistoryDest {
            worker: 0,
            conn: crate::model::conn_id::ConnId::new(1, 1),
            request: 7,
        };
        let read = HistoryRead {
            from: crate::model::offset::Since::After(offsets[2]),
            to,
            budget: 1 << 20,
            fetched: 0,
            average: 0,
            page: crate::model::history::PAGE,
            limit: 10,
            resumes: true,
            shared_start: false,
        };
        hub.read_history(t.clone(), read);
        let Ok(WorkerMsg::History { page, .. }) = inboxes[0].try_recv() else {
            panic!("a page");
        };
        let got: Vec<Offset> = page.entries.iter().map(|(o, _)| *o).collect();
        assert_eq!((got, page.gap), (offsets[3..].to_vec(), None));
        // A topic without a history publishes without offsets.
        let plain = Config::default();
        let (hub, _, _) = testing::hub(1, false, plain);
        assert_eq!(
            hub.publish("t", text("x")).expect("published").offset(),
            None
        );
    }

    #[test]
    fn the_publish_backlog_counts_bytes_and_refuses_past_its_limit() {
        let (hub, mut inboxes, _) = testing::hub(
            1,
            false,
            Config {
                max_publish_backlog: 8 << 20,
                ..Config::default()
            },
        );
        let topic: Arc<str> = Arc::from("t");
        assert_eq!(hub.subscribe(&topic, 0, true, 0), Ok(true));
        let big =
            Publication::from_message(Message::Binary(bytes::Bytes::from(vec![0u8; 1 << 20])))
                .expect("binary");
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
        let small = hub.publish("elsewhere", text("x"));
        assert!(small.is_ok(), "no subscribers, nothing waits: {small:?}");
    }
}
