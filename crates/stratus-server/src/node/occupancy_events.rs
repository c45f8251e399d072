//! The node's side of occupied/vacated events: the hub reports here, under its interest
//! lock, when a topic gets its first subscriber on the node or loses its last; the events
//! thread (`events`) takes those reports, decides the events (alone, or with the cluster
//! through Redis) and posts them to the webhook. The admin API reads events and counters
//! through here too.
//!
//! The reports are coalesced: what waits is each topic's latest state on the node (a map
//! bounded by the node's topics), not a queue of every change, so a client that flaps
//! faster than the events thread runs costs nothing downstream, and a hub that reports
//! never blocks or allocates per change beyond the map's entry. The thread is woken with
//! a [`Notify`].

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{Notify, mpsc, oneshot};

use crate::model::occupancy_events::OccupancyEvent;
use crate::model::offset::Offset;

/// The counters of occupied/vacated events and their webhook, for `/metrics`.
#[derive(Default)]
pub(crate) struct EventsStats {
    /// Events this node decided (with Redis: whose script this node ran).
    pub(crate) occupied: AtomicU64,
    pub(crate) vacated: AtomicU64,
    /// Webhook posts answered with a 2xx.
    pub(crate) sent: AtomicU64,
    /// Webhook attempts that failed (an error status, a timeout, no connection).
    pub(crate) failed: AtomicU64,
    /// Attempts after a failed one.
    pub(crate) retried: AtomicU64,
    /// Events given up on after the last attempt, or not queued because the queue was full.
    pub(crate) dropped: AtomicU64,
    /// Events waiting on this node for the webhook (gauge).
    pub(crate) queued: AtomicU64,
    /// Sum and count of the successful posts' round trips, in microseconds.
    pub(crate) latency_us: AtomicU64,
    /// Redis requests of the events thread that failed (each is retried).
    pub(crate) redis_errors: AtomicU64,
}

/// A read of the event stream for the admin API: at most `limit` events after `since`.
pub(crate) struct EventsRead {
    pub(crate) since: Offset,
    pub(crate) limit: usize,
    pub(crate) reply: oneshot::Sender<Result<Vec<OccupancyEvent>, String>>,
}

/// What the hub and the events thread share.
pub(crate) struct EventsShared {
    /// Each topic's latest state on the node (`true`: it has subscribers) not yet taken by
    /// the events thread.
    changes: Mutex<HashMap<Arc<str>, bool>>,
    /// Wakes the events thread when a change arrives.
    pub(crate) wake: Notify,
    pub(crate) stats: EventsStats,
}

/// The hub's side.
pub(crate) struct EventsLink {
    pub(crate) shared: Arc<EventsShared>,
    reads: mpsc::UnboundedSender<EventsRead>,
}

/// The events thread's side.
pub(crate) struct EventsInbox {
    pub(crate) shared: Arc<EventsShared>,
    /// Reads of the event stream; closed when the hub is gone (the thread ends then).
    pub(crate) reads: mpsc::UnboundedReceiver<EventsRead>,
}

impl EventsLink {
    /// The two ends.
    pub(crate) fn new() -> (Self, EventsInbox) {
        let shared = Arc::new(EventsShared {
            changes: Mutex::default(),
            wake: Notify::new(),
            stats: EventsStats::default(),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let link = Self {
            shared: shared.clone(),
            reads: tx,
        };
        (link, EventsInbox { shared, reads: rx })
    }

    /// `topic` now has (`present`) or no longer has subscribers on this node.
    pub(crate) fn changed(&self, topic: &Arc<str>, present: bool) {
        self.shared
            .changes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(topic.clone(), present);
        self.shared.wake.notify_one();
    }

    /// At most `limit` events after `since`, oldest first (from Redis with a broker).
    pub(crate) async fn read(
        &self,
        since: Offset,
        limit: usize,
    ) -> Result<Vec<OccupancyEvent>, String> {
        let (reply, rx) = oneshot::channel();
        let read = EventsRead {
            since,
            limit,
            reply,
        };
        if self.reads.send(read).is_err() {
            return Err("the events thread has stopped".into());
        }
        rx.await
            .unwrap_or_else(|_| Err("the events thread has stopped".into()))
    }
}

impl EventsShared {
    /// Takes the changes waiting.
    pub(crate) fn take_changes(&self) -> HashMap<Arc<str>, bool> {
        std::mem::take(&mut *self.changes.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_coalesced_to_each_topics_latest_state() {
        let (link, inbox) = EventsLink::new();
        let t: Arc<str> = Arc::from("t");
        let u: Arc<str> = Arc::from("u");
        link.changed(&t, true);
        link.changed(&u, true);
        link.changed(&t, false);
        link.changed(&t, true);
        let changes = inbox.shared.take_changes();
        assert_eq!(changes.len(), 2);
        assert_eq!(changes.get(&t), Some(&true));
        assert!(inbox.shared.take_changes().is_empty(), "taken");
    }

    #[test]
    fn the_hub_reports_a_topics_first_and_last_subscriber_on_the_node() {
        let (hub, _inboxes, _) = crate::testing::hub(2, false, crate::config::Config::default());
        let (link, inbox) = EventsLink::new();
        let hub = hub.with_events(Some(link));
        let t: Arc<str> = Arc::from("t");
        let _ = hub.subscribe(&t, 0, true, 0);
        let _ = hub.subscribe(&t, 1, true, 0);
        let _ = hub.subscribe(&t, 1, false, 0);
        assert_eq!(
            inbox.shared.take_changes(),
            HashMap::from([(t.clone(), true)])
        );
        hub.unsubscribe(&t, 0, true);
        hub.unsubscribe(&t, 1, false);
        assert!(
            inbox.shared.take_changes().is_empty(),
            "worker 1 still has one"
        );
        hub.unsubscribe(&t, 1, true);
        assert_eq!(inbox.shared.take_changes(), HashMap::from([(t, false)]));
    }
}
