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
    /// Raw TCP, no WebSocket framing (against `stratus-load peer uring-tcp`): the
    /// physical-limit reference. The URL's host and port are used.
    #[arg(long)]
    raw: bool,
    #[command(flatten)]
    pub(crate) common: crate::Common,
}

impl EchoArgs {
    /// Drive raw TCP instead of WebSocket.
    pub(crate) fn set_raw(&mut self, raw: bool) {
        self.raw = raw;
    }

    /// The measured duration in seconds.
    pub(crate) fn seconds(&self) -> f64 {
        self.duration
    }

    /// The parameters, for reports.
    pub(crate) fn describe(&self) -> serde_json::Value {
        json!({"connections": self.connections, "size": self.size, "in_flight": self.in_flight,
               "duration_s": self.duration, "binary": self.binary, "deflate": self.deflate})
    }
}

/// What one echo run measured.
pub(crate) struct EchoResult {
    pub(crate) messages: u64,
    pub(crate) hist: hdrhistogram::Histogram<u64>,
}

pub(crate) fn run(args: EchoArgs) -> anyhow::Result<()> {
    let duration = Duration::try_from_secs_f64(args.duration)?;
    let EchoResult { messages, hist } = measure(&args, &args.url)?;
    let secs = duration.as_secs_f64();
    report::finish(
        "echo",
        json!({"url": args.url, "raw": args.raw, "echo": args.describe()}),
        json!({"messages": messages,
               "msgs_per_s": (messages as f64 / secs).round(),
               "mb_per_s": (messages as f64 * args.size as f64 / secs / 1e6 * 100.0).round() / 100.0,
               "rtt": Latency::of(&hist)}),
        args.common.out.as_deref(),
    )
}

/// Runs the echo scenario against `url` with `args`.
pub(crate) fn measure(args: &EchoArgs, url: &str) -> anyhow::Result<EchoResult> {
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
    let (args, url) = (args.clone(), url.to_owned());
    stratus_uring::run(async move {
        let count = Rc::new(Cell::new(0u64));
        let hist = Rc::new(RefCell::new(report::histogram()?));
        let mut tasks = Vec::with_capacity(args.connections);
        if args.raw {
            let addr = raw_addr(&url)?;
            let mut streams = Vec::with_capacity(args.connections);
            for _ in 0..args.connections {
                streams.push(stratus_uring::Stream::connect(addr).await?);
            }
            let ticker = Ticker::start(duration, count.clone());
            let deadline = Instant::now() + duration;
            for stream in streams {
                let (count, hist) = (count.clone(), hist.clone());
                let (size, in_flight) = (args.size, args.in_flight);
                tasks.push(stratus_uring::spawn(async move {
                    raw_echo(stream, size, in_flight, deadline, &count, &hist).await
                }));
            }
            for t in tasks {
                t.await??;
            }
            ticker.finish();
        } else {
            let mut clients = Vec::with_capacity(args.connections);
            for _ in 0..args.connections {
                clients.push(connect_with(&url, config.clone()).await?);
            }
            let ticker = Ticker::start(duration, count.clone());
            let deadline = Instant::now() + duration;
            for mut client in clients {
                let (payload, count, hist) = (payload.clone(), count.clone(), hist.clone());
                let in_flight = args.in_flight;
                tasks.push(stratus_uring::spawn(async move {
                    let mut sent = VecDeque::with_capacity(in_flight);
                    for _ in 0..in_flight {
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
                }));
            }
            for t in tasks {
                t.await??;
            }
            ticker.finish();
        }
        let hist = hist.borrow().clone();
        anyhow::Ok(EchoResult {
            messages: count.get(),
            hist,
        })
    })?
}

fn raw_addr(url: &str) -> anyhow::Result<std::net::SocketAddr> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.split('/').next().unwrap_or(rest);
    Ok(host.parse()?)
}

/// One raw TCP connection: `in_flight` messages of `size` bytes out, each echo read back
/// in full before the next goes.
async fn raw_echo(
    stream: stratus_uring::Stream,
    size: usize,
    in_flight: usize,
    deadline: Instant,
    count: &Cell<u64>,
    hist: &RefCell<hdrhistogram::Histogram<u64>>,
) -> anyhow::Result<()> {
    let message = bytes::Bytes::from(vec![0xA5; size]);
    let mut sent = VecDeque::with_capacity(in_flight);
    for _ in 0..in_flight {
        stream.writev_all(vec![message.clone()]).await.0?;
        sent.push_back(Instant::now());
    }
    let mut buf = bytes::BytesMut::with_capacity(size.max(4096));
    let mut pending = 0usize;
    while Instant::now() < deadline {
        let (result, returned) = stream.read_into(buf, size.max(4096)).await;
        buf = returned;
        let n = result?;
        anyhow::ensure!(n > 0, "the server closed");
        pending += n;
        buf.clear();
        while pending >= size {
            pending -= size;
            let rtt = sent
                .pop_front()
                .map_or(0, |t| t.elapsed().as_micros() as u64);
            let _ = hist.borrow_mut().record(rtt.max(1));
            count.set(count.get() + 1);
            stream.writev_all(vec![message.clone()]).await.0?;
            sent.push_back(Instant::now());
        }
    }
    Ok(())
}
