//! The backend hooks' rows of `/metrics` (only on a node with a hook set): answers per
//! hook and outcome, the latency from the ask to the answer per hook, and what is in
//! flight and in line now.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use super::metrics::metric;
use crate::model::hook::{HookKind, OUTCOMES};
use crate::node::hook_link::HookLink;
use crate::stats::{Histogram, LATENCY_BOUNDS_US};

/// Writes the hooks' rows into `out`.
pub(super) fn render(out: &mut String, link: &HookLink) {
    let stats = &link.stats;
    let mut samples = Vec::new();
    for kind in HookKind::ALL {
        for (i, outcome) in OUTCOMES.iter().enumerate() {
            let n = stats.outcomes[kind.index()][i].load(Ordering::Relaxed);
            let labels = format!("{{hook=\"{}\",outcome=\"{outcome}\"}}", kind.name());
            samples.push((labels, n));
        }
    }
    let samples: Vec<(&str, u64)> = samples.iter().map(|(l, n)| (l.as_str(), *n)).collect();
    metric(
        out,
        "stratus_hook_requests_total",
        "counter",
        "Backend hook requests by hook and outcome (allowed, refused, timeout, unavailable, \
         busy: refused at once past --hook-concurrency and its line, malformed).",
        &samples,
    );
    let gauges = [
        (
            "stratus_hook_in_flight",
            "Hook requests sent and not yet answered.",
            stats.in_flight.load(Ordering::Relaxed),
        ),
        (
            "stratus_hook_queued",
            "Hook requests waiting in line for a free slot (past --hook-concurrency).",
            link.queued() as u64,
        ),
    ];
    for (name, help, value) in gauges {
        metric(out, name, "gauge", help, &[("", value)]);
    }
    let name = "stratus_hook_latency_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} From a hook being asked to its answer (waiting in line included).\n\
         # TYPE {name} histogram"
    );
    for kind in HookKind::ALL {
        histogram_rows(out, name, kind.name(), &stats.latency[kind.index()]);
    }
}

/// One hook's buckets, sum and count.
fn histogram_rows(out: &mut String, name: &str, hook: &str, histogram: &Histogram) {
    let mut cumulative = 0;
    for (i, bucket) in histogram.buckets.iter().enumerate() {
        cumulative += bucket.load(Ordering::Relaxed);
        let le = LATENCY_BOUNDS_US
            .get(i)
            .map_or("+Inf".to_owned(), |&us| format!("{}", us as f64 / 1e6));
        let _ = writeln!(
            out,
            "{name}_bucket{{hook=\"{hook}\",le=\"{le}\"}} {cumulative}"
        );
    }
    let sum = histogram.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
    let _ = writeln!(out, "{name}_sum{{hook=\"{hook}\"}} {sum}");
    let _ = writeln!(out, "{name}_count{{hook=\"{hook}\"}} {cumulative}");
}
