//! The counters: what every part of the server counts, and nothing else (a leaf every
//! layer may import). The publish path counts into [`Stats`], each worker into a
//! [`WorkerStats`] of its own (cache-line aligned, so workers never write to a shared line
//! on the hot path), the broker into [`BrokerStats`]; `admin::metrics` renders them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use stratus_proto::CloseCode;

/// Counters over the server's life.
#[derive(Debug, Default)]
pub struct Stats {
    /// WebSocket connections open now.
    pub connections: AtomicU64,
    /// Publishes accepted.
    pub published: AtomicU64,
    /// Messages queued to subscribers.
    pub delivered: AtomicU64,
    /// Messages skipped for full queues (the `drop` policy).
    pub dropped: AtomicU64,
    /// Messages held back for full queues, only the newest per key going out once they
    /// drain (the `conflate` policy).
    pub conflated: AtomicU64,
    /// Connections closed as slow consumers (the `close` policy).
    pub slow_consumer_closes: AtomicU64,
    /// Admin connections refused for the admin connection cap.
    pub admin_refused: AtomicU64,
    /// Publishes refused because the node was overloaded (its publish backlog full).
    pub overloaded: AtomicU64,
    /// Publishes that waited for room in the node's publish backlog (admin API).
    pub paced: AtomicU64,
    /// User-level commands taken by the admin API, by action (list, disconnect,
    /// unsubscribe, subscribe).
    pub(crate) user_commands: [AtomicU64; 4],
    /// Presence and occupancy pushes made (each once per topic, however many
    /// subscribers get it).
    pub(crate) presence_events: AtomicU64,
}

/// HTTP statuses an upgrade can be refused with, counted one by one (the last one also
/// counts any other).
pub(crate) const REFUSALS: [u16; 10] = [400, 401, 403, 404, 405, 426, 429, 431, 503, 500];

/// Close codes a connection can end with, counted one by one: the code of the Close the
/// server sent (the peer's own code when it closed first), 1006 when no Close was
/// exchanged (a reset, a FIN without Close, a timeout), and 0 for any other code.
pub(crate) const CLOSE_CODES: [u16; 11] = [
    1000, 1001, 1002, 1003, 1006, 1007, 1008, 1009, 1010, 1011, 0,
];

/// Upper bounds of the publish-to-send latency buckets, in microseconds.
pub(crate) const LATENCY_BOUNDS_US: [u64; 14] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000,
];

/// A latency histogram: a count per bucket (the last one unbounded) and the sum.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    pub(crate) buckets: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
    pub(crate) sum_us: AtomicU64,
}

impl Histogram {
    pub(crate) fn observe(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let at = LATENCY_BOUNDS_US.partition_point(|&bound| bound < us);
        self.buckets[at].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }
}

/// What one worker counts.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct WorkerStats {
    pub(crate) opened: AtomicU64,
    /// Connections ended, by close code (see [`WorkerStats::closed`]).
    pub(crate) closed_by_code: [AtomicU64; CLOSE_CODES.len()],
    pub(crate) handshake_timeouts: AtomicU64,
    /// Times the worker's completion queue overflowed into the kernel's backlog, and
    /// completions the kernel lost (as of the last sweep).
    pub(crate) ring_overflows: AtomicU64,
    pub(crate) ring_lost: AtomicU64,
    /// Sockets that have not finished the upgrade, as of the last sweep.
    pub(crate) unupgraded: AtomicU64,
    /// The oldest of them closed for the cap (`max_unupgraded`).
    pub(crate) unupgraded_shed: AtomicU64,
    /// New sockets closed at once for their address's cap (`max_unupgraded_per_ip`).
    pub(crate) unupgraded_refused: AtomicU64,
    pub(crate) tls_errors: AtomicU64,
    /// Upgrades refused, by status (see [`WorkerStats::refused`]).
    pub(crate) refused_by_status: [AtomicU64; REFUSALS.len()],
    pub(crate) messages_in: AtomicU64,
    /// Commands refused for the per-connection command rate.
    pub(crate) commands_limited: AtomicU64,
    /// Publishes from connections accepted, and refused for their publish budget.
    pub(crate) client_publishes: AtomicU64,
    pub(crate) publishes_limited: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    /// Bytes waiting in this worker's send queues, as of its last sweep.
    pub(crate) queued_bytes: AtomicU64,
    /// Payload bytes compressed for broadcasts, and the compressed frame bytes made.
    pub(crate) deflate_in: AtomicU64,
    pub(crate) deflate_out: AtomicU64,
    /// Messages compressed: a shared-mode broadcast once, however many subscribers take it
    /// (so against `Stats::published`, at most one per publish), a per-connection
    /// (dedicated) compression once per message sent.
    pub(crate) compressions: AtomicU64,
    /// From a publish to the sends for it being submitted, per worker it reached.
    pub(crate) publish_latency: Histogram,
}

/// The index of `value` in `labels`, or of the last label (the catch-all).
fn label_index(labels: &[u16], value: u16) -> usize {
    labels
        .iter()
        .position(|&l| l == value)
        .unwrap_or(labels.len() - 1)
}

impl WorkerStats {
    /// Counts an upgrade refused with `status` (an unknown status counts as 500).
    pub(crate) fn refused(&self, status: u16) {
        add(&self.refused_by_status[label_index(&REFUSALS, status)], 1);
    }

    /// Counts a connection that ended with `code` (`None`: no Close was exchanged).
    pub(crate) fn closed(&self, code: Option<CloseCode>) {
        let code = code.map_or(1006, |c| c.0);
        add(&self.closed_by_code[label_index(&CLOSE_CODES, code)], 1);
    }
}

/// Adds `n` to a counter.
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// The broker's counters and state, for readiness and `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct BrokerStats {
    pub(crate) up: AtomicBool,
    pub(crate) disconnects: AtomicU64,
    pub(crate) published: AtomicU64,
    pub(crate) publish_errors: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) topics: AtomicU64,
    /// Bytes of publishes handed to the broker thread and not yet answered by Redis.
    pub(crate) backlog: AtomicU64,
    /// This node's name on the control channel (its own word there is not taken).
    pub(crate) node: AtomicU64,
    /// Until when (ms since the Unix epoch, on this node's clock) another node of the cluster
    /// is overloaded, by what it last said: publishes are held back on every node
    /// meanwhile.
    pub(crate) cluster_overloaded_until: AtomicU64,
    /// Times this node told the cluster it is overloaded.
    pub(crate) overload_signals: AtomicU64,
    /// History reads answered with a gap because too many were in line.
    pub(crate) history_refused: AtomicU64,
    /// History reads that failed or timed out (each answered with a gap).
    pub(crate) history_errors: AtomicU64,
}

impl BrokerStats {
    /// Another node has said it is overloaded: publishes here are held back for `hold_ms`.
    pub(crate) fn hold_publishes(&self, hold_ms: u64) {
        self.cluster_overloaded_until
            .fetch_max(unix_ms() + hold_ms, Ordering::Relaxed);
    }

    /// Whether publishes are held back for another node (see `hold_publishes`).
    pub(crate) fn is_cluster_overloaded(&self) -> bool {
        unix_ms() < self.cluster_overloaded_until.load(Ordering::Relaxed)
    }
}

/// Milliseconds since the Unix epoch.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
