//! Opens N idle connections subscribed to a topic and holds them, to measure what an
//! idle connection costs the server (compare its RSS before and after).
//!
//! `cargo run --release -p stratus-client --example idle -- ws://127.0.0.1:8080/ws?topic=t 10000 30`
//! (URL, connections, seconds to hold; connections are opened 1,000 per second at most).

use std::time::{Duration, Instant};

use stratus_client::connect;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:8080/ws?topic=idle".into());
    let count: usize = args.next().map_or(Ok(10_000), |a| a.parse())?;
    let hold: u64 = args.next().map_or(Ok(30), |a| a.parse())?;
    stratus_uring::run(async move {
        let started = Instant::now();
        let mut clients = Vec::with_capacity(count);
        for i in 0..count {
            clients.push(connect(&url).await?);
            if i % 1000 == 999 {
                let due = Duration::from_secs((i as u64 + 1) / 1000);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
        }
        println!(
            "{count} connections open after {:.1?}; holding {hold} s",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_secs(hold)).await;
        println!("done");
        anyhow::Ok(())
    })?
}
