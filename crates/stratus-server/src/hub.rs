//! What the workers share: a channel into each worker, which workers have subscribers
//! for which topic, the counters, and the publish path.
//!
//! A publish is framed once on the publisher's thread and sent, as one `Arc`, to each
//! worker with subscribers for the topic; each worker fans it out to its own
//! connections. The only lock is taken once per publish (to read the topic's workers),
//! never per recipient.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use stratus_proto::Message;
use stratus_uring::Wake;
use tokio::sync::{mpsc, oneshot};

use crate::broadcast::Broadcast;
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
    /// Topic -> bitmask of workers with at least one subscriber.
    interest: Mutex<HashMap<Arc<str>, u64>>,
    pub(crate) stats: Stats,
    draining: AtomicBool,
    max_pending: usize,
}

/// Publishes waiting in one worker's inbox before publishing answers "overloaded".
const MAX_PENDING_PUBLISHES: usize = 1 << 16;

/// The outcome of a publish: how many local subscribers it was queued to, once every
/// worker has fanned it out.
#[derive(Debug)]
pub struct Delivery(Vec<oneshot::Receiver<usize>>);

impl Delivery {
    /// How many workers the publish went to (those with subscribers for the topic).
    pub fn workers(&self) -> usize {
        self.0.len()
    }

    /// Waits for every worker and returns the number of recipients.
    pub async fn recipients(self) -> usize {
        let mut total = 0;
        for rx in self.0 {
            total += rx.await.unwrap_or(0);
        }
        total
    }

    /// As [`Delivery::recipients`], blocking the calling thread (not for async code).
    pub fn wait(self) -> usize {
        self.0
            .into_iter()
            .map(|rx| rx.blocking_recv().unwrap_or(0))
            .sum()
    }
}

impl Hub {
    pub(crate) fn new(links: Vec<WorkerLink>) -> Self {
        Self {
            workers: links.iter().map(|_| WorkerStats::default()).collect(),
            links,
            per_ip: Mutex::default(),
            interest: Mutex::default(),
            stats: Stats::default(),
            draining: AtomicBool::new(false),
            max_pending: MAX_PENDING_PUBLISHES,
        }
    }

    fn interest(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, u64>> {
        self.interest.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that `worker` has (or no longer has) subscribers for `topic`.
    pub(crate) fn set_interest(&self, topic: &Arc<str>, worker: usize, subscribed: bool) {
        let mut interest = self.interest();
        let bit = 1u64 << worker;
        if subscribed {
            *interest.entry(topic.clone()).or_insert(0) |= bit;
        } else if let Some(mask) = interest.get_mut(topic) {
            *mask &= !bit;
            if *mask == 0 {
                interest.remove(topic);
            }
        }
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

    /// Frames `message` once and sends it to every worker with subscribers for `topic`.
    pub(crate) fn publish(&self, topic: &str, message: Message) -> Result<Delivery, PublishError> {
        topic::validate(topic)?;
        if !message.is_data() {
            return Err(PublishError::NotData);
        }
        if self.is_draining() {
            return Err(PublishError::Draining);
        }
        let mask = self.interest().get(topic).copied().unwrap_or(0);
        let workers = (0..self.links.len()).filter(|w| mask & (1 << w) != 0);
        if workers
            .clone()
            .any(|w| self.links[w].pending.load(Ordering::Relaxed) >= self.max_pending)
        {
            return Err(PublishError::Overloaded);
        }
        self.stats.published.fetch_add(1, Ordering::Relaxed);
        let topic: Arc<str> = Arc::from(topic);
        let broadcast = Arc::new(Broadcast::new(message));
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
        Ok(Delivery(acks))
    }
}
