//! `echo`: C connections, each keeping P messages of S bytes in flight against an echo
//! server, for a fixed time. Messages per second, MB/s, and round-trip percentiles.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;
use stratus_client::{ClientConfig, connect_with};
use stratus_proto::{CloseCode, Message};

use crate::progress::Ticker;
use crate::report::{self, Latency};

#[derive(Args, Debug, Clone)]
pub(crate) struct EchoArgs {
    /// The echo server's URL.
    #[arg(long, default_value = "ws://127.0.0.1:9001/")]
    url: String,
    /// Connections.
    #[arg(short, long, default_value_t = 100)]
    connections: usize,
    /// Message size in bytes.
    #[arg(short, long, default_value_t = 20)]
    size: usize,
    /// Messages in flight per connection.
    #[arg(short = 'p', long, default_value_t = 1)]
    in_flight: usize,
    /// Seconds to run.
    #[arg(short, long, default_value_t = 10.0)]
    duration: f64,
    /// Binary messages (default: text).
    #[arg(long)]
    binary: bool,
    /// Offer permessage-deflate.
    #[arg(long)]
    deflate: bool,
    #[command(flatten)]
    pub(crate) common: crate::Common,
}

pub(crate) fn run(args: EchoArgs) -> anyhow::Result<()> {
    let duration = Duration::try_from_secs_f64(args.duration)?;
    let payload = if args.binary {
        Message::binary(vec![0xA5; args.size])
    } else {
        Message::text("x".repeat(args.size))
    };
    let config = ClientConfig {
        deflate: args.deflate,
        ..ClientConfig::default()
    };
    let (messages, hist) = stratus_uring::run({
        let args = args.clone();
        async move {
            let mut clients = Vec::with_capacity(args.connections);
            for _ in 0..args.connections {
                clients.push(connect_with(&args.url, config.clone()).await?);
            }
            let count = Rc::new(Cell::new(0u64));
            let hist = Rc::new(RefCell::new(report::histogram()?));
            let deadline = Instant::now() + duration;
            let ticker = Ticker::start(duration, count.clone());
            let tasks: Vec<_> = clients
                .into_iter()
                .map(|mut client| {
                    let (payload, count, hist) = (payload.clone(), count.clone(), hist.clone());
                    stratus_uring::spawn(async move {
                        let mut sent = VecDeque::with_capacity(args.in_flight);
                        for _ in 0..args.in_flight {
                            client.send(&payload).await?;
                            sent.push_back(Instant::now());
                        }
                        while let Some(_echo) = client.recv().await? {
                            let rtt = sent
                                .pop_front()
                                .map_or(0, |t| t.elapsed().as_micros() as u64);
                            let _ = hist.borrow_mut().record(rtt.max(1));
                            count.set(count.get() + 1);
                            if Instant::now() >= deadline {
                                break;
                            }
                            client.send(&payload).await?;
                            sent.push_back(Instant::now());
                        }
                        client.close(CloseCode::NORMAL, "").await?;
                        anyhow::Ok(())
                    })
                })
                .collect();
            for t in tasks {
                t.await??;
            }
            ticker.finish();
            let hist = hist.borrow().clone();
            anyhow::Ok((count.get(), hist))
        }
    })??;
    let secs = duration.as_secs_f64();
    report::finish(
        "echo",
        json!({"url": args.url, "connections": args.connections, "size": args.size,
               "in_flight": args.in_flight, "duration_s": secs, "binary": args.binary,
               "deflate": args.deflate}),
        json!({"messages": messages,
               "msgs_per_s": (messages as f64 / secs).round(),
               "mb_per_s": (messages as f64 * args.size as f64 / secs / 1e6 * 100.0).round() / 100.0,
               "rtt": Latency::of(&hist)}),
        args.common.out.as_deref(),
    )
}
