//! The events thread: occupied/vacated events for the application. It takes the hub's
//! reports of each topic's first and last subscriber on the node (coalesced, see
//! `node::occupancy`), decides the events, keeps them readable by offset, and posts them to
//! the webhook, on a small tokio runtime of its own (never a worker's ring).
//!
//! - Alone (no broker): the node-local machine (`model::occupancy_events::LocalOccupancy`) with
//!   the grace, and a bounded in-memory log ([`LOG_CAP`] events) for `GET /events`.
//! - With Redis (`cluster`): the cluster's state in Redis, changed only by Lua scripts
//!   (`scripts`), so each transition is decided once however many nodes race; node
//!   leases, so a crashed node's topics are vacated once, after its lease and the grace;
//!   the events in the `stratus:events` stream; the webhook delivered through a consumer
//!   group, so each event is posted by one node, and one left pending by a node that died
//!   is claimed by another.
//!
//! The thread ends when the hub is gone (its read channel closes).

mod cluster;
mod consumers;
mod scripts;
mod webhook;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::config::Config;
use crate::model::keyspace::Keyspace;
use crate::model::occupancy_events::{EventKind, EventLog, LocalOccupancy, OccupancyEvent};
use crate::node::occupancy_events::{EventsInbox, EventsShared};
use crate::stats;
use webhook::{Outcome, Webhook};

/// Events the node keeps in memory without a broker (the oldest go first past it).
const LOG_CAP: usize = 10_000;
/// Events that may wait on a node for the webhook without a broker; past it an event is
/// dropped (counted) rather than held.
const MAX_QUEUE: usize = 1024;

/// A delivery in flight: the webhook's outcome.
type Sending = Pin<Box<dyn Future<Output = Outcome>>>;

/// The events thread's side of the node, and its settings.
pub(crate) struct EventsTask {
    inbox: EventsInbox,
    node_id: Arc<str>,
    grace: Duration,
    lease: Duration,
    interval: Duration,
    webhook: Option<Arc<Webhook>>,
    /// The client of the shard that carries what is node-wide, and how it names keys.
    redis: Option<(redis::Client, Keyspace)>,
}

impl EventsTask {
    /// The thread for `config`'s events, on `node_id`, with Redis if `redis` (the client
    /// of the shard that carries what is node-wide, and how it names keys).
    pub(crate) fn new(
        inbox: EventsInbox,
        node_id: Arc<str>,
        config: &Config,
        redis: Option<(redis::Client, Keyspace)>,
    ) -> Result<Self, String> {
        let webhook = config
            .occupancy_webhook
            .clone()
            .map(|url| Webhook::new(url, config.webhook_secret.clone()).map(Arc::new))
            .transpose()?;
        Ok(Self {
            inbox,
            node_id,
            grace: config.vacate_grace,
            lease: config.presence_lease,
            interval: config.presence_interval,
            webhook,
            redis,
        })
    }

    /// Starts the thread (it ends on its own once the hub is gone).
    pub(crate) fn spawn(self) -> std::io::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("stratus-events".into())
            .spawn(move || self.run(runtime))?;
        Ok(())
    }

    /// Runs on `runtime` until the hub is gone.
    fn run(mut self, runtime: tokio::runtime::Runtime) {
        runtime.block_on(async move {
            match self.redis.take() {
                Some((client, keys)) => cluster::run(self, client, keys).await,
                None => self.run_local().await,
            }
        });
    }

    /// Without a broker: the node decides alone.
    async fn run_local(mut self) {
        let shared = self.inbox.shared.clone();
        let mut machine = LocalOccupancy::new(self.grace);
        let mut log = EventLog::new(LOG_CAP);
        let mut queue: VecDeque<OccupancyEvent> = VecDeque::new();
        let mut sending: Option<Sending> = None;
        loop {
            if sending.is_none()
                && let Some(event) = queue.pop_front()
            {
                sending = self.send(event);
            }
            set_queued(&shared, queue.len() + usize::from(sending.is_some()));
            let next = machine.poll_timeout().map_or_else(
                || Instant::now() + Duration::from_secs(3600),
                Instant::from_std,
            );
            let mut decided = Vec::new();
            tokio::select! {
                () = shared.wake.notified() => {
                    let now = std::time::Instant::now();
                    for (topic, present) in shared.take_changes() {
                        if let Some(kind) = machine.handle_present(&topic, present, now) {
                            decided.push((kind, topic));
                        }
                    }
                }
                () = tokio::time::sleep_until(next) => {
                    while let Some(topic) = machine.poll_vacated(std::time::Instant::now()) {
                        decided.push((EventKind::Vacated, topic));
                    }
                }
                read = self.inbox.reads.recv() => match read {
                    Some(read) => {
                        let _ = read.reply.send(Ok(log.read(read.since, read.limit)));
                    }
                    None => return,
                },
                Some(_) = async { Some(sending.as_mut()?.await) }, if sending.is_some() => {
                    sending = None;
                }
            }
            for (kind, topic) in decided {
                count(&shared, kind);
                let event = log.append(kind, topic, unix_ms());
                if self.webhook.is_none() {
                    continue;
                }
                if queue.len() >= MAX_QUEUE {
                    stats::add(&shared.stats.dropped, 1);
                } else {
                    queue.push_back(event);
                }
            }
        }
    }

    /// Starts posting `event` to the webhook, if there is one.
    fn send(&self, event: OccupancyEvent) -> Option<Sending> {
        let webhook = self.webhook.clone()?;
        let shared = self.inbox.shared.clone();
        Some(Box::pin(async move {
            webhook.deliver(&event, &shared.stats).await
        }))
    }
}

/// Counts an event this node decided.
fn count(shared: &EventsShared, kind: EventKind) {
    let counter = match kind {
        EventKind::Occupied => &shared.stats.occupied,
        EventKind::Vacated => &shared.stats.vacated,
    };
    stats::add(counter, 1);
}

fn set_queued(shared: &EventsShared, n: usize) {
    shared.stats.queued.store(n as u64, Ordering::Relaxed);
}

/// Milliseconds since the Unix epoch.
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
