//! A scenario's result: a summary table on stdout and a JSON file for plots and
//! comparisons.

use std::path::Path;

use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{Value, json};

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Latency {
    pub(crate) p50_us: u64,
    pub(crate) p99_us: u64,
    pub(crate) p999_us: u64,
    pub(crate) max_us: u64,
    pub(crate) samples: u64,
}

impl Latency {
    pub(crate) fn of(h: &Histogram<u64>) -> Self {
        Self {
            p50_us: h.value_at_quantile(0.50),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            samples: h.len(),
        }
    }
}

/// `x` to two decimals, for the report.
pub(crate) fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// A histogram of microseconds, 1 µs to 100 s at 3 significant digits.
pub(crate) fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 100_000_000, 3)?)
}

/// Prints `results` as a two-column table and writes the whole report as JSON.
pub(crate) fn finish(
    scenario: &str,
    params: Value,
    results: Value,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    println!("\n{scenario}");
    let rows = results.as_object().cloned().unwrap_or_default();
    let width = rows.keys().map(String::len).max().unwrap_or(0);
    for (key, value) in &rows {
        println!("  {key:<width$}  {value}");
    }
    if let Some(path) = out {
        let report = json!({ "scenario": scenario, "params": params, "results": results });
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
        println!("  written to {}", path.display());
    }
    Ok(())
}
