//! `GET /events?since=<offset>&limit=<n>`: the occupied/vacated events after an offset,
//! oldest first (the Redis stream `stratus:events` with a broker, the node's own log
//! without), and their rows on `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::json;

use super::metrics::metric;
use super::{Admin, Request, Response, error, query, respond};
use crate::model::offset::Offset;
use crate::node::occupancy_events::EventsStats;

/// Most events one read returns.
const MAX_PAGE: usize = 1000;
/// Events one read returns without `limit`.
const DEFAULT_PAGE: usize = 100;

/// Answers `GET /events`: `{"events":[...],"next":"<offset>"}`, where `next` is the
/// `since` of the following page (the last event's offset, or `since` itself when there
/// were none).
pub(super) async fn answer(admin: &Admin, request: &Request) -> Response {
    let Some(events_link) = &admin.hub.events else {
        return error(
            404,
            "occupancy events are off (--occupancy-events or --occupancy-webhook)",
        );
    };
    let since = match query(&request.path, "since") {
        None => Offset::ZERO,
        Some(text) => match Offset::parse(&text) {
            Some(offset) => offset,
            None => return error(400, "since must be an offset such as 1732000000000-0"),
        },
    };
    let limit = match query(&request.path, "limit").map(|l| l.parse::<usize>()) {
        None => DEFAULT_PAGE,
        Some(Ok(n)) if (1..=MAX_PAGE).contains(&n) => n,
        Some(_) => return error(400, "limit must be 1 to 1000"),
    };
    match events_link.read(since, limit).await {
        Ok(events) => {
            let next = events.last().map_or(since, |e| e.offset).to_string();
            let events: Vec<_> = events.iter().map(|e| e.to_json()).collect();
            respond(200, json!({ "events": events, "next": next }))
        }
        Err(why) => Response {
            extra: "Retry-After: 1\r\n",
            ..error(503, &why)
        },
    }
}

/// The occupancy events' rows (only where they are kept).
pub(super) fn metrics(out: &mut String, stats: &EventsStats) {
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    #[rustfmt::skip]
    let rows: [(&str, &str, &str, u64); 8] = [
        ("stratus_occupancy_occupied_total", "counter", "Occupied events this node decided.", load(&stats.occupied)),
        ("stratus_occupancy_vacated_total", "counter", "Vacated events this node decided.", load(&stats.vacated)),
        ("stratus_occupancy_redis_errors_total", "counter", "Redis requests of the occupancy events that failed (each retried).", load(&stats.redis_errors)),
        ("stratus_webhook_sent_total", "counter", "Occupancy webhook posts answered with a 2xx.", load(&stats.sent)),
        ("stratus_webhook_failed_total", "counter", "Occupancy webhook attempts that failed (error status, timeout, unreachable).", load(&stats.failed)),
        ("stratus_webhook_retried_total", "counter", "Occupancy webhook attempts after a failed one.", load(&stats.retried)),
        ("stratus_webhook_dropped_total", "counter", "Occupancy events given up on (every attempt failed, or the node's queue was full).", load(&stats.dropped)),
        ("stratus_webhook_queued", "gauge", "Occupancy events waiting on this node for the webhook.", load(&stats.queued)),
    ];
    for (name, kind, help, value) in rows {
        metric(out, name, kind, help, &[("", value)]);
    }
    let name = "stratus_webhook_latency_seconds_sum";
    let seconds = load(&stats.latency_us) as f64 / 1e6;
    let _ = writeln!(
        out,
        "# HELP {name} Round trips of the successful webhook posts, summed (their count: \
         stratus_webhook_sent_total).\n# TYPE {name} counter\n{name} {seconds}"
    );
}
