//! `connections`: opens N idle connections at a bounded rate; handshakes per second, and
//! the server's memory per connection from its RSS (`/proc/PID/status`) before and after.

use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;
use stratus_client::{ClientConfig, connect_with};

use crate::pin::rss;
use crate::report;

#[derive(Args, Debug, Clone)]
pub(crate) struct ConnectionsArgs {
    /// The server's WebSocket URL.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws?topic=idle")]
    url: String,
    /// Connections to open (keep under 19,000 per process here).
    #[arg(short = 'n', long, default_value_t = 10_000)]
    count: usize,
    /// Most new connections per second.
    #[arg(short, long, default_value_t = 2000.0)]
    rate: f64,
    /// Seconds to hold them once open.
    #[arg(long, default_value_t = 3.0)]
    hold: f64,
    /// The server's PID, to read its memory.
    #[arg(long)]
    pid: Option<u32>,
    /// Offer permessage-deflate.
    #[arg(long)]
    deflate: bool,
    #[command(flatten)]
    pub(crate) common: crate::Common,
}

pub(crate) fn run(args: ConnectionsArgs) -> anyhow::Result<()> {
    let before = args.pid.map(rss).transpose()?;
    let config = ClientConfig {
        deflate: args.deflate,
        ..ClientConfig::default()
    };
    let (opened, elapsed, after) = stratus_uring::run({
        let args = args.clone();
        async move {
            let started = Instant::now();
            let mut clients = Vec::with_capacity(args.count);
            for i in 0..args.count {
                clients.push(connect_with(&args.url, config.clone()).await?);
                let due = Duration::from_secs_f64((i + 1) as f64 / args.rate);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
            let elapsed = started.elapsed();
            tokio::time::sleep(Duration::from_secs(1)).await;
            let after = args.pid.map(rss).transpose()?;
            tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
            anyhow::Ok((clients.len(), elapsed, after))
        }
    })??;
    let per_connection = match (before, after) {
        (Some(b), Some(a)) => json!(a.saturating_sub(b) / opened as u64),
        _ => json!(null),
    };
    report::finish(
        "connections",
        json!({"url": args.url, "count": args.count, "rate": args.rate, "deflate": args.deflate}),
        json!({"opened": opened,
               "handshakes_per_s": (opened as f64 / elapsed.as_secs_f64()).round(),
               "server_rss_before": before,
               "server_rss_after": after,
               "server_bytes_per_connection": per_connection}),
        args.common.out.as_deref(),
    )
}
