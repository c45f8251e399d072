//! The admin API's `/metrics` page, in the Prometheus text format (version 0.0.4).
//!
//! The hub keeps the publish counters; each worker counts its connections and traffic
//! into a block of its own (cache-line aligned, so workers never write to a shared line
//! on the hot path), and a scrape adds the blocks up.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::node::broker_link::{BrokerLink, ShardLink};
use crate::node::hub::Hub;
use crate::stats::{BrokerStats, CLOSE_CODES, LATENCY_BOUNDS_US, REFUSALS, WorkerStats};

pub(super) fn metric(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: &[(&str, u64)],
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

/// A metric's samples: labels and value.
type Samples<'a> = Vec<(&'a str, u64)>;

/// The broker's rows (only on a node with a broker): the node's, summed over its shards
/// (`stratus_broker_up` is 1 only while every shard is), then each shard's own, labelled
/// with its index in the `--broker` list.
fn broker_metrics(out: &mut String, broker: &BrokerLink) {
    let shards = broker.shards();
    let sum = |f: fn(&BrokerStats) -> &AtomicU64| -> u64 {
        shards
            .iter()
            .map(|s| f(&s.stats).load(Ordering::Relaxed))
            .sum()
    };
    let all_up = broker.all_up();
    #[rustfmt::skip]
    let rows: [(&str, &str, &str, u64); 11] = [
        ("stratus_broker_up", "gauge", "1 while connected to every Redis shard of the broker (publishing to a shard that is down answers 503).", u64::from(all_up)),
        ("stratus_broker_disconnects_total", "counter", "Connections to the broker lost (over all shards).", sum(|s| &s.disconnects)),
        ("stratus_broker_topics", "gauge", "Topics this node is subscribed to in the broker (over all shards).", sum(|s| &s.topics)),
        ("stratus_broker_published_total", "counter", "Publishes the broker confirmed.", sum(|s| &s.published)),
        ("stratus_broker_publish_errors_total", "counter", "Publishes refused (503) because the topic's shard was unreachable or did not confirm.", sum(|s| &s.publish_errors)),
        ("stratus_broker_received_total", "counter", "Messages received from the broker and fanned out here.", sum(|s| &s.received)),
        ("stratus_broker_publish_backlog_bytes", "gauge", "Bytes of publishes sent to the broker and not yet answered (each shard holds at most --max-publish-backlog).", sum(|s| &s.backlog)),
        ("stratus_broker_overload_signals_total", "counter", "Times this node told the cluster it is overloaded (every node holds publishes back for 500 ms).", sum(|s| &s.overload_signals)),
        ("stratus_broker_history_errors_total", "counter", "History reads that failed or timed out (each answered with a gap notice).", sum(|s| &s.history_errors)),
        ("stratus_broker_history_refused_total", "counter", "History reads answered with a gap at once because too many were waiting.", sum(|s| &s.history_refused)),
        ("stratus_broker_rejected_total", "counter", "Messages from the broker that were not Stratus messages (ignored).", sum(|s| &s.rejected)),
    ];
    for (name, kind, help, value) in rows {
        metric(out, name, kind, help, &[("", value)]);
    }
    let labels: Vec<String> = (0..shards.len())
        .map(|i| format!("{{shard=\"{i}\"}}"))
        .collect();
    let per_shard = |f: &dyn Fn(&ShardLink) -> u64| -> Samples<'_> {
        labels
            .iter()
            .map(String::as_str)
            .zip(shards.iter().map(f))
            .collect()
    };
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    #[rustfmt::skip]
    let rows: [(&str, &str, &str, Samples<'_>); 5] = [
        ("stratus_broker_shard_up", "gauge", "1 while connected to this Redis shard (its topics' publishes answer 503 otherwise).", per_shard(&|s| u64::from(s.is_up()))),
        ("stratus_broker_shard_disconnects_total", "counter", "Connections to this shard lost.", per_shard(&|s| load(&s.stats.disconnects))),
        ("stratus_broker_shard_topics", "gauge", "Topics this node is subscribed to on this shard.", per_shard(&|s| load(&s.stats.topics))),
        ("stratus_broker_shard_publish_errors_total", "counter", "Publishes to this shard's topics refused (503).", per_shard(&|s| load(&s.stats.publish_errors))),
        ("stratus_broker_shard_publish_backlog_bytes", "gauge", "Bytes of publishes sent to this shard and not yet answered.", per_shard(&|s| load(&s.stats.backlog))),
    ];
    for (name, kind, help, samples) in rows {
        metric(out, name, kind, help, &samples);
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
    let single: [(&str, &str, &str, u64); 30] = [
        ("stratus_ready", "gauge", "1 while the node takes publishes (not draining, at least one shard of its broker reachable), else 0 (as /readyz).", u64::from(hub.is_ready())),
        ("stratus_connections", "gauge", "Open WebSocket connections.", hub.connections()),
        ("stratus_connections_opened_total", "counter", "WebSocket connections upgraded.", sum(|w| &w.opened)),
        ("stratus_handshake_timeouts_total", "counter", "Connections closed for not completing the opening handshake in time.", sum(|w| &w.handshake_timeouts)),
        ("stratus_unupgraded", "gauge", "Sockets that have not finished the WebSocket upgrade (as of each worker's last sweep).", sum(|w| &w.unupgraded)),
        ("stratus_unupgraded_shed_total", "counter", "Sockets mid-upgrade closed, oldest first, for --max-unupgraded.", sum(|w| &w.unupgraded_shed)),
        ("stratus_unupgraded_refused_total", "counter", "New sockets closed at once for --max-unupgraded-per-ip.", sum(|w| &w.unupgraded_refused)),
        ("stratus_ring_cq_overflows_total", "counter", "Times a worker's io_uring completion queue overflowed into the kernel's backlog (nothing lost; as of each worker's last sweep).", sum(|w| &w.ring_overflows)),
        ("stratus_ring_completions_lost_total", "counter", "io_uring completions the kernel could not keep (as of each worker's last sweep).", sum(|w| &w.ring_lost)),
        ("stratus_tls_errors_total", "counter", "Connections closed for a failed TLS handshake or a bad TLS record (plain HTTP on the TLS port, say).", sum(|w| &w.tls_errors)),
        ("stratus_messages_received_total", "counter", "Messages received from clients (data and control).", sum(|w| &w.messages_in)),
        ("stratus_client_publishes_total", "counter", "Publishes from protocol v1 connections accepted.", sum(|w| &w.client_publishes)),
        ("stratus_client_publishes_limited_total", "counter", "Publishes from connections refused for their publish budget (--client-publish-rate) or too many waiting for the broker.", sum(|w| &w.publishes_limited)),
        ("stratus_conflated_total", "counter", "Messages held back for full queues under the conflate policy (only the newest per key goes out).", load(&stats.conflated)),
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
        ("stratus_deflate_compressions_total", "counter", "Outgoing messages compressed: a shared-mode broadcast once for all its subscribers, a dedicated-mode message once per connection.", sum(|w| &w.compressions)),
        ("stratus_publish_backlog_bytes", "gauge", "Bytes of publishes waiting for the workers to fan them out.", hub.backlog() as u64),
        ("stratus_publishes_overloaded_total", "counter", "Publishes refused with 503 because the node's publish backlog was full (--max-publish-backlog).", load(&stats.overloaded)),
        ("stratus_publishes_paced_total", "counter", "Admin API publishes that waited for room in the node's publish backlog.", load(&stats.paced)),
        ("stratus_admin_refused_total", "counter", "Admin API connections refused (503) for the admin connection cap.", load(&stats.admin_refused)),
    ];
    for (name, kind, help, value) in single {
        metric(&mut out, name, kind, help, &[("", value)]);
    }
    quotient(
        &mut out,
        "stratus_deflate_ratio",
        "Bytes in per byte out over all outgoing compression (0 before any).",
        (sum(|w| &w.deflate_in), sum(|w| &w.deflate_out)),
    );
    quotient(
        &mut out,
        "stratus_deflate_compressions_per_publish",
        "Compressions per publish accepted here (0 before any): \
         with shared-mode deflate a publish is compressed once for all its subscribers, so 1 at most \
         (less for publishes under the threshold or with no deflate subscriber; presence events and \
         other nodes' publishes arriving through the broker add compressions, not publishes).",
        (sum(|w| &w.compressions), load(&stats.published)),
    );
    labelled(
        &mut out,
        hub,
        "stratus_connections_closed_total",
        "WebSocket connections ended, by the close code exchanged (1006: none; 0: another code).",
        ("code", &CLOSE_CODES),
        |w| &w.closed_by_code,
    );
    labelled(
        &mut out,
        hub,
        "stratus_handshake_refusals_total",
        "Upgrades refused, by HTTP status.",
        ("status", &REFUSALS),
        |w| &w.refused_by_status,
    );
    histogram(&mut out, hub);
    user_commands(&mut out, stats);
    let (presence_topics, members) = hub.presence_usage();
    #[rustfmt::skip]
    let rows = [
        ("stratus_presence_topics", "gauge", "Topics whose presence the node keeps.", presence_topics as u64),
        ("stratus_presence_members", "gauge", "Members listed over those topics (namespaces with presence = members).", members as u64),
        ("stratus_presence_events_total", "counter", "Presence and occupancy pushes made (each once per topic and interval, for all its subscribers).", load(&stats.presence_events)),
    ];
    for (name, kind, help, value) in rows {
        metric(&mut out, name, kind, help, &[("", value)]);
    }
    if let Some(history) = &hub.history {
        let (bytes, topics) = history.usage();
        #[rustfmt::skip]
        let rows = [
            ("stratus_history_bytes", "Bytes the node's history holds (without a broker; capped by --history-memory).", bytes),
            ("stratus_history_topics", "Topics with a history on this node (without a broker).", topics),
        ];
        for (name, help, value) in rows {
            metric(&mut out, name, "gauge", help, &[("", value as u64)]);
        }
    }
    if let Some(broker) = &hub.broker {
        broker_metrics(&mut out, broker);
    }
    if let Some(hooks) = hub.hooks.get() {
        super::hook_metrics::render(&mut out, hooks);
    }
    if let Some(events) = &hub.events {
        super::events::metrics(&mut out, &events.shared.stats);
    }
    out
}

/// User-level commands the admin API took, by action.
fn user_commands(out: &mut String, stats: &crate::stats::Stats) {
    use crate::model::user_control::ACTIONS;
    let samples: Vec<(String, u64)> = ACTIONS
        .iter()
        .zip(&stats.user_commands)
        .map(|(action, n)| {
            (
                format!("{{action=\"{action}\"}}"),
                n.load(Ordering::Relaxed),
            )
        })
        .collect();
    let samples: Vec<(&str, u64)> = samples.iter().map(|(l, n)| (l.as_str(), *n)).collect();
    let help = "User-level commands taken by the admin API (/users/...), by action.";
    metric(
        out,
        "stratus_user_commands_total",
        "counter",
        help,
        &samples,
    );
}

/// Writes gauge `name`: `over.0` divided by `over.1`, 0 while `over.1` is 0.
fn quotient(out: &mut String, name: &str, help: &str, over: (u64, u64)) {
    let value = match over {
        (_, 0) => 0.0,
        (top, bottom) => top as f64 / bottom as f64,
    };
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value:.3}"
    );
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
