//! `echo`: C connections, each keeping P messages of S bytes in flight against an echo
//! server, for a fixed time. Messages per second, MB/s, and round-trip percentiles.

use std::collections::VecDeque;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use serde_json::json;
use stratus_client::ClientConfig;
use stratus_proto::Message;

use crate::driver::{Conn, Driver, Received, connect_many};
use crate::pin::CpuWatch;
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
    /// How busy the watched (server) CPU and the generator's CPU were, 0 to 1.
    pub(crate) server_busy: Option<f64>,
    pub(crate) client_busy: Option<f64>,
}

pub(crate) fn run(args: EchoArgs) -> anyhow::Result<()> {
    let duration = Duration::try_from_secs_f64(args.duration)?;
    let EchoResult {
        messages,
        hist,
        server_busy,
        client_busy,
    } = measure(&args, &args.url)?;
    let secs = duration.as_secs_f64();
    report::finish(
        "echo",
        json!({"url": args.url, "raw": args.raw, "echo": args.describe()}),
        json!({"messages": messages,
               "msgs_per_s": (messages as f64 / secs).round(),
               "mb_per_s": (messages as f64 * args.size as f64 / secs / 1e6 * 100.0).round() / 100.0,
               "rtt": Latency::of(&hist),
               "server_cpu_busy": server_busy, "client_cpu_busy": client_busy}),
        args.common.out.as_deref(),
    )
}

/// Runs the echo scenario against `url` with `args`.
pub(crate) fn measure(args: &EchoArgs, url: &str) -> anyhow::Result<EchoResult> {
    let duration = Duration::try_from_secs_f64(args.duration)?;
    let mut driver = if args.raw {
        let addr = raw_addr(url)?;
        let sockets = (0..args.connections)
            .map(|_| {
                let socket = TcpStream::connect(addr)?;
                socket.set_nodelay(true)?;
                Ok(socket)
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Driver::raw(sockets)?
    } else {
        let config = ClientConfig {
            deflate: args.deflate,
            ..ClientConfig::default()
        };
        let handoffs = connect_many(url, &config, args.connections)?;
        Driver::new(handoffs)?
    };
    let payload = if args.binary {
        Message::binary(vec![0xA5; args.size])
    } else {
        Message::text("x".repeat(args.size))
    };
    let raw = Bytes::from(vec![0xA5; args.size]);
    let send = |conn: &mut Conn| match args.raw {
        true => conn.send_raw(raw.clone()),
        false => conn.send(&payload),
    };
    // Per connection: when each message in flight went out, and raw bytes not yet a
    // whole message.
    let mut sent: Vec<VecDeque<Instant>> =
        vec![VecDeque::with_capacity(args.in_flight); args.connections];
    let mut partial = vec![0usize; args.connections];
    for (conn, times) in driver.conns().iter_mut().zip(&mut sent) {
        for _ in 0..args.in_flight {
            send(conn);
            times.push_back(Instant::now());
        }
    }
    let count = Arc::new(AtomicU64::new(0));
    let mut hist = report::histogram()?;
    let ticker = Ticker::start(duration, count.clone());
    let watch = |cpu: Option<usize>| cpu.map(CpuWatch::start).transpose();
    let (server_watch, client_watch) = (
        watch(args.common.watch_cpu)?,
        watch(args.common.client_cpu)?,
    );
    let mut messages = 0u64;
    driver.run(Instant::now() + duration, |conn, i, received| {
        let echoed = match received {
            Received::Message(_) | Received::Event(_) => 1,
            Received::Raw(n) => {
                partial[i] += n;
                let whole = partial[i] / args.size;
                partial[i] %= args.size;
                whole
            }
        };
        for _ in 0..echoed {
            let rtt = sent[i]
                .pop_front()
                .map_or(0, |t| t.elapsed().as_micros() as u64);
            let _ = hist.record(rtt.max(1));
            messages += 1;
            send(conn);
            sent[i].push_back(Instant::now());
        }
        count.store(messages, Ordering::Relaxed);
    })?;
    let busy = |w: Option<CpuWatch>| w.map(|w| w.busy()).transpose();
    let (server_busy, client_busy) = (busy(server_watch)?, busy(client_watch)?);
    ticker.finish();
    driver.close_all(Duration::from_secs(2))?;
    Ok(EchoResult {
        messages,
        hist,
        server_busy,
        client_busy,
    })
}

fn raw_addr(url: &str) -> anyhow::Result<std::net::SocketAddr> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.split('/').next().unwrap_or(rest);
    Ok(host.parse()?)
}
