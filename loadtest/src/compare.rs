//! `compare`: one echo scenario against several running servers in turn, A B A B, so
//! drift on a shared machine hits every server alike; prints each server's rate per round
//! and its ratio to the first. It builds and starts nothing: start the servers (pinned
//! to their own core) first.

use clap::Args;
use serde_json::json;

use crate::echo::{EchoArgs, measure};
use crate::report;

#[derive(Args, Debug, Clone)]
pub(crate) struct CompareArgs {
    /// A server as NAME=URL (repeat; the first is the baseline of the ratios). A name
    /// ending in `-raw` is driven with raw TCP (no WebSocket framing).
    #[arg(long = "target", required = true)]
    targets: Vec<String>,
    /// Rounds (each runs every target once, in order).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    #[command(flatten)]
    echo: EchoArgs,
}

impl CompareArgs {
    pub(crate) fn common(&self) -> &crate::Common {
        &self.echo.common
    }
}

pub(crate) fn run(args: CompareArgs) -> anyhow::Result<()> {
    let targets: Vec<(String, String)> = args
        .targets
        .iter()
        .map(|t| {
            t.split_once('=')
                .map(|(n, u)| (n.to_owned(), u.to_owned()))
                .ok_or_else(|| anyhow::anyhow!("--target {t}: expected NAME=URL"))
        })
        .collect::<Result<_, _>>()?;
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    let mut p50: Vec<Vec<u64>> = vec![Vec::new(); targets.len()];
    let mut p99: Vec<Vec<u64>> = vec![Vec::new(); targets.len()];
    let mut server_busy: Vec<Vec<Option<f64>>> = vec![Vec::new(); targets.len()];
    for round in 0..args.rounds {
        for (i, (name, url)) in targets.iter().enumerate() {
            let mut echo = args.echo.clone();
            echo.set_raw(name.ends_with("-raw"));
            let result = measure(&echo, url)?;
            let rate = result.messages as f64 / echo.seconds();
            let pct = |b: Option<f64>| b.map_or("-".into(), |b| format!("{:.0}%", b * 100.0));
            println!(
                "round {} {name}: {rate:.0} msgs/s (server core {} busy, generator core {})",
                round + 1,
                pct(result.server_busy),
                pct(result.client_busy)
            );
            rates[i].push(rate);
            p50[i].push(result.hist.value_at_quantile(0.5));
            p99[i].push(result.hist.value_at_quantile(0.99));
            server_busy[i].push(result.server_busy);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let base = mean(&rates[0]);
    let mut results = serde_json::Map::new();
    for (i, (name, _)) in targets.iter().enumerate() {
        let m = mean(&rates[i]);
        results.insert(
            name.clone(),
            json!({"msgs_per_s": rates[i], "mean": m.round(), "ratio_to_first": (m / base * 100.0).round() / 100.0,
                   "rtt_p50_us": p50[i], "rtt_p99_us": p99[i], "server_cpu_busy": server_busy[i]}),
        );
    }
    report::finish(
        "compare echo",
        json!({"targets": args.targets, "rounds": args.rounds, "echo": args.echo.describe()}),
        serde_json::Value::Object(results),
        args.echo.common.out.as_deref(),
    )
}
