//! The admin API's `/metrics` page, in the Prometheus text format (version 0.0.4).
//!
//! The hub keeps the publish counters; each worker counts its connections and traffic
//! into a block of its own (cache-line aligned, so workers never write to a shared line
//! on the hot path), and a scrape adds the blocks up.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::hub::Hub;

/// HTTP statuses an upgrade can be refused with, counted one by one.
pub(crate) const REFUSALS: [u16; 9] = [400, 403, 404, 405, 426, 429, 431, 503, 500];

/// What one worker counts.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct WorkerStats {
    pub(crate) opened: AtomicU64,
    pub(crate) closed: AtomicU64,
    pub(crate) handshake_timeouts: AtomicU64,
    pub(crate) tls_errors: AtomicU64,
    refused: [AtomicU64; REFUSALS.len()],
    pub(crate) messages_in: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
}

impl WorkerStats {
    /// Counts an upgrade refused with `status` (an unknown status counts as 500).
    pub(crate) fn refused(&self, status: u16) {
        let at = REFUSALS
            .iter()
            .position(|&s| s == status)
            .unwrap_or(REFUSALS.len() - 1);
        self.refused[at].fetch_add(1, Ordering::Relaxed);
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
    let single: [(&str, &str, &str, u64); 13] = [
        ("stratus_connections", "gauge", "Open WebSocket connections.", load(&stats.connections)),
        ("stratus_connections_opened_total", "counter", "WebSocket connections upgraded.", sum(|w| &w.opened)),
        ("stratus_connections_closed_total", "counter", "WebSocket connections ended.", sum(|w| &w.closed)),
        ("stratus_handshake_timeouts_total", "counter", "Connections closed for not completing the opening handshake in time.", sum(|w| &w.handshake_timeouts)),
        ("stratus_tls_errors_total", "counter", "Connections closed for a failed TLS handshake or a bad TLS record (plain HTTP on the TLS port, say).", sum(|w| &w.tls_errors)),
        ("stratus_messages_received_total", "counter", "Messages received from clients (data and control).", sum(|w| &w.messages_in)),
        ("stratus_received_bytes_total", "counter", "Payload bytes of the messages received from clients.", sum(|w| &w.bytes_in)),
        ("stratus_sent_bytes_total", "counter", "Bytes written to client sockets (frames and HTTP responses).", sum(|w| &w.bytes_out)),
        ("stratus_publishes_total", "counter", "Publishes accepted.", load(&stats.published)),
        ("stratus_deliveries_total", "counter", "Messages queued to subscribers.", load(&stats.delivered)),
        ("stratus_dropped_total", "counter", "Messages skipped for full send queues (drop policy).", load(&stats.dropped)),
        ("stratus_slow_consumer_closes_total", "counter", "Connections closed as slow consumers (close policy).", load(&stats.slow_consumer_closes)),
        ("stratus_topics", "gauge", "Topics with at least one subscriber.", hub.topic_count() as u64),
    ];
    for (name, kind, help, value) in single {
        metric(&mut out, name, kind, help, &[("", value)]);
    }
    let labels: Vec<String> = REFUSALS
        .iter()
        .map(|s| format!("{{status=\"{s}\"}}"))
        .collect();
    let refused: Vec<(&str, u64)> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let n = hub
                .workers
                .iter()
                .map(|w| w.refused[i].load(Ordering::Relaxed))
                .sum();
            (l.as_str(), n)
        })
        .collect();
    metric(
        &mut out,
        "stratus_handshake_refusals_total",
        "counter",
        "Upgrades refused, by HTTP status.",
        &refused,
    );
    out
}
