//! The admin API's `/metrics` page, in the Prometheus text format (version 0.0.4).
//!
//! The hub keeps the publish counters; each worker counts its connections and traffic
//! into a block of its own (cache-line aligned, so workers never write to a shared line
//! on the hot path), and a scrape adds the blocks up.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use stratus_proto::CloseCode;

use crate::broker::BrokerStats;
use crate::hub::Hub;

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
const LATENCY_BOUNDS_US: [u64; 14] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000,
];

/// A latency histogram: a count per bucket (the last one unbounded) and the sum.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    buckets: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
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
    closed: [AtomicU64; CLOSE_CODES.len()],
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
    refused: [AtomicU64; REFUSALS.len()],
    pub(crate) messages_in: AtomicU64,
    /// Commands refused for the per-connection command rate.
    pub(crate) commands_limited: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    /// Bytes waiting in this worker's send queues, as of its last sweep.
    pub(crate) queued_bytes: AtomicU64,
    /// Payload bytes compressed for broadcasts, and the compressed frame bytes made.
    pub(crate) deflate_in: AtomicU64,
    pub(crate) deflate_out: AtomicU64,
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
        add(&self.refused[label_index(&REFUSALS, status)], 1);
    }

    /// Counts a connection that ended with `code` (`None`: no Close was exchanged).
    pub(crate) fn closed(&self, code: Option<CloseCode>) {
        let code = code.map_or(1006, |c| c.0);
        add(&self.closed[label_index(&CLOSE_CODES, code)], 1);
    }
}

/// Adds `n` to a counter.
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

/// The broker's rows (only on a node with a broker).
fn broker_metrics(out: &mut String, stats: &BrokerStats) {
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    #[rustfmt::skip]
    let rows: [(&str, &str, &str, u64); 11] = [
        ("stratus_broker_up", "gauge", "1 while connected to the Redis broker (publishing answers 503 otherwise).", u64::from(stats.up.load(Ordering::Relaxed))),
        ("stratus_broker_disconnects_total", "counter", "Connections to the broker lost.", load(&stats.disconnects)),
        ("stratus_broker_topics", "gauge", "Topics this node is subscribed to in the broker.", load(&stats.topics)),
        ("stratus_broker_published_total", "counter", "Publishes the broker confirmed.", load(&stats.published)),
        ("stratus_broker_publish_errors_total", "counter", "Publishes refused (503) because the broker was unreachable or did not confirm.", load(&stats.publish_errors)),
        ("stratus_broker_received_total", "counter", "Messages received from the broker and fanned out here.", load(&stats.received)),
        ("stratus_broker_publish_backlog_bytes", "gauge", "Bytes of publishes sent to the broker and not yet answered.", load(&stats.backlog)),
        ("stratus_broker_overload_signals_total", "counter", "Times this node told the cluster it is overloaded (every node holds publishes back for 500 ms).", load(&stats.overload_signals)),
        ("stratus_broker_history_errors_total", "counter", "History reads that failed or timed out (each answered with a gap notice).", load(&stats.history_errors)),
        ("stratus_broker_history_refused_total", "counter", "History reads answered with a gap at once because too many were waiting.", load(&stats.history_refused)),
        ("stratus_broker_rejected_total", "counter", "Messages from the broker that were not Stratus messages (ignored).", load(&stats.rejected)),
    ];
    for (name, kind, help, value) in rows {
        metric(out, name, kind, help, &[("", value)]);
    }
}

/// The whole page.
pub(crate) fn render(hub: &Hub) -> String {
    let sum = |f: fn(&WorkerStats) -> &AtomicU64| -> u64 {
        hub.workers
            .iter()
            .map(|w| f(w).load(Ordering::Relaxed))
            .sum()
    };
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let stats = &hub.stats;
    let mut out = String::with_capacity(4096);
    // One row per metric: name, type, help, value.
    #[rustfmt::skip]
    let single: [(&str, &str, &str, u64); 25] = [
        ("stratus_connections", "gauge", "Open WebSocket connections.", load(&stats.connections)),
        ("stratus_connections_opened_total", "counter", "WebSocket connections upgraded.", sum(|w| &w.opened)),
        ("stratus_handshake_timeouts_total", "counter", "Connections closed for not completing the opening handshake in time.", sum(|w| &w.handshake_timeouts)),
        ("stratus_unupgraded", "gauge", "Sockets that have not finished the WebSocket upgrade (as of each worker's last sweep).", sum(|w| &w.unupgraded)),
        ("stratus_unupgraded_shed_total", "counter", "Sockets mid-upgrade closed, oldest first, for --max-unupgraded.", sum(|w| &w.unupgraded_shed)),
        ("stratus_unupgraded_refused_total", "counter", "New sockets closed at once for --max-unupgraded-per-ip.", sum(|w| &w.unupgraded_refused)),
        ("stratus_ring_cq_overflows_total", "counter", "Times a worker's io_uring completion queue overflowed into the kernel's backlog (nothing lost; as of each worker's last sweep).", sum(|w| &w.ring_overflows)),
        ("stratus_ring_completions_lost_total", "counter", "io_uring completions the kernel could not keep (as of each worker's last sweep).", sum(|w| &w.ring_lost)),
        ("stratus_tls_errors_total", "counter", "Connections closed for a failed TLS handshake or a bad TLS record (plain HTTP on the TLS port, say).", sum(|w| &w.tls_errors)),
        ("stratus_messages_received_total", "counter", "Messages received from clients (data and control).", sum(|w| &w.messages_in)),
        ("stratus_commands_limited_total", "counter", "Subscribe and unsubscribe commands refused for the connection's message budget (--message-rate).", sum(|w| &w.commands_limited)),
        ("stratus_received_bytes_total", "counter", "Payload bytes of the messages received from clients.", sum(|w| &w.bytes_in)),
        ("stratus_sent_bytes_total", "counter", "Bytes written to client sockets (frames and HTTP responses).", sum(|w| &w.bytes_out)),
        ("stratus_publishes_total", "counter", "Publishes accepted.", load(&stats.published)),
        ("stratus_deliveries_total", "counter", "Messages queued to subscribers.", load(&stats.delivered)),
        ("stratus_dropped_total", "counter", "Messages skipped for full send queues (drop policy).", load(&stats.dropped)),
        ("stratus_slow_consumer_closes_total", "counter", "Connections closed as slow consumers (close policy).", load(&stats.slow_consumer_closes)),
        ("stratus_topics", "gauge", "Topics with at least one subscriber.", hub.topic_count() as u64),
        ("stratus_send_queue_bytes", "gauge", "Bytes waiting in send queues (as of each worker's last sweep, at most a second old).", sum(|w| &w.queued_bytes)),
        ("stratus_deflate_in_bytes_total", "counter", "Payload bytes of outgoing messages compressed (a shared broadcast counts once).", sum(|w| &w.deflate_in)),
        ("stratus_deflate_out_bytes_total", "counter", "Frame bytes those compressions made.", sum(|w| &w.deflate_out)),
        ("stratus_publish_backlog_bytes", "gauge", "Bytes of publishes waiting for the workers to fan them out.", hub.backlog() as u64),
        ("stratus_publishes_overloaded_total", "counter", "Publishes refused with 503 because the node's publish backlog was full (--max-publish-backlog).", load(&stats.overloaded)),
        ("stratus_publishes_paced_total", "counter", "Admin API publishes that waited for room in the node's publish backlog.", load(&stats.paced)),
        ("stratus_admin_refused_total", "counter", "Admin API connections refused (503) for the admin connection cap.", load(&stats.admin_refused)),
    ];
    for (name, kind, help, value) in single {
        metric(&mut out, name, kind, help, &[("", value)]);
    }
    let (deflate_in, deflate_out) = (sum(|w| &w.deflate_in), sum(|w| &w.deflate_out));
    let ratio = if deflate_out == 0 {
        0.0
    } else {
        deflate_in as f64 / deflate_out as f64
    };
    let _ = writeln!(
        out,
        "# HELP stratus_deflate_ratio Bytes in per byte out over all outgoing compression (0 before any).\n\
         # TYPE stratus_deflate_ratio gauge\nstratus_deflate_ratio {ratio:.3}"
    );
    labelled(
        &mut out,
        hub,
        "stratus_connections_closed_total",
        "WebSocket connections ended, by the close code exchanged (1006: none; 0: another code).",
        ("code", &CLOSE_CODES),
        |w| &w.closed,
    );
    labelled(
        &mut out,
        hub,
        "stratus_handshake_refusals_total",
        "Upgrades refused, by HTTP status.",
        ("status", &REFUSALS),
        |w| &w.refused,
    );
    histogram(&mut out, hub);
    if let Some(broker) = &hub.broker {
        broker_metrics(&mut out, &broker.stats);
    }
    out
}

/// A counter with one label, one sample per value, summed over the workers.
fn labelled(
    out: &mut String,
    hub: &Hub,
    name: &str,
    help: &str,
    (label, values): (&str, &[u16]),
    counters: fn(&WorkerStats) -> &[AtomicU64],
) {
    let samples: Vec<(String, u64)> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let n = hub
                .workers
                .iter()
                .map(|w| counters(w)[i].load(Ordering::Relaxed))
                .sum();
            (format!("{{{label}=\"{v}\"}}"), n)
        })
        .collect();
    let samples: Vec<(&str, u64)> = samples.iter().map(|(l, n)| (l.as_str(), *n)).collect();
    metric(out, name, "counter", help, &samples);
}

/// The publish-to-send latency histogram, buckets summed over the workers.
fn histogram(out: &mut String, hub: &Hub) {
    let name = "stratus_publish_to_send_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} From a publish to the sends for it being submitted, per worker it reached.\n\
         # TYPE {name} histogram"
    );
    let mut cumulative = 0;
    for i in 0..=LATENCY_BOUNDS_US.len() {
        cumulative += hub
            .workers
            .iter()
            .map(|w| w.publish_latency.buckets[i].load(Ordering::Relaxed))
            .sum::<u64>();
        let le = LATENCY_BOUNDS_US
            .get(i)
            .map_or("+Inf".to_owned(), |&us| format!("{}", us as f64 / 1e6));
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
    }
    let sum_us: u64 = hub
        .workers
        .iter()
        .map(|w| w.publish_latency.sum_us.load(Ordering::Relaxed))
        .sum();
    let _ = writeln!(out, "{name}_sum {}", sum_us as f64 / 1e6);
    let _ = writeln!(out, "{name}_count {cumulative}");
}
