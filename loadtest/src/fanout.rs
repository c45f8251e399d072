//! `fanout`: N subscribers on one topic of a Stratus server (or any server with the same
//! publish API), a publisher posting S-byte messages at a fixed rate or flat out. Each
//! message carries its publish time; subscribers record publish-to-receive latency.
//! Given several nodes of a cluster (sharing topics through a broker), subscribers and
//! publishers are spread over them, so most deliveries cross from one node to another.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::json;
use stratus_client::ClientConfig;
use stratus_proto::Message;

use crate::driver::{Conn, Driver, Received, connect_many};
use crate::pin::CpuWatch;
use crate::progress::Ticker;
use crate::report::{self, Latency};

#[derive(Args, Debug, Clone)]
pub(crate) struct FanoutArgs {
    /// The server's WebSocket URL (the topic is added as `?topic=`); several,
    /// comma-separated, spread the subscribers over the nodes of a cluster in turn.
    #[arg(long, value_delimiter = ',', default_value = "ws://127.0.0.1:8080/ws")]
    url: Vec<String>,
    /// The server's admin listener, for publishing; several, comma-separated, spread
    /// the publishers over them in turn.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:9090")]
    admin: Vec<SocketAddr>,
    /// Subscribers (connections from this process; keep under 19,000 here).
    #[arg(short = 'n', long, default_value_t = 1000)]
    subscribers: usize,
    /// Topic.
    #[arg(long, default_value = "fanout")]
    topic: String,
    /// Message size in bytes (at least 32).
    #[arg(short, long, default_value_t = 64)]
    size: usize,
    /// Publishes per second (all publishers together); 0 publishes flat out.
    #[arg(short, long, default_value_t = 100.0)]
    rate: f64,
    /// Publishers, each with its own connection to the publish API: concurrent publishes,
    /// as from many sources in production.
    #[arg(short = 'P', long, default_value_t = 1)]
    publishers: usize,
    /// Seconds to publish.
    #[arg(short, long, default_value_t = 10.0)]
    duration: f64,
    /// Subscribers offer permessage-deflate.
    #[arg(long)]
    deflate: bool,
    /// The protocol the subscribers speak: raw (messages as published) or v1 (each in an
    /// envelope naming its topic, `Sec-WebSocket-Protocol: stratus.v1`).
    #[arg(long, value_enum, default_value = "raw")]
    protocol: Protocol,
    #[command(flatten)]
    pub(crate) common: crate::Common,
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// A message of `size` bytes starting with its publish time.
fn stamped(size: usize) -> String {
    let mut m = format!("{{\"ts\":{},\"pad\":\"", now_ns());
    let pad = size.saturating_sub(m.len() + 2);
    m.extend(std::iter::repeat_n('x', pad));
    m.push_str("\"}");
    m
}

/// The publish time a message carries: the message itself (raw mode), or the data of its
/// envelope (protocol v1).
fn stamp_of(text: &[u8]) -> Option<u128> {
    const STAMP: &[u8] = b"{\"ts\":";
    let at = text.windows(STAMP.len()).position(|w| w == STAMP)?;
    let rest = &text[at + STAMP.len()..];
    let end = rest.iter().position(|&b| b == b',')?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// The protocol fanout subscribers speak.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Raw,
    V1,
}

impl Protocol {
    /// The subprotocols a connection offers to speak it (`Sec-WebSocket-Protocol`).
    pub(crate) fn offered(self) -> Vec<String> {
        match self {
            Protocol::Raw => Vec::new(),
            Protocol::V1 => vec!["stratus.v1".to_owned()],
        }
    }
}

/// Posts messages over one keep-alive connection to the admin API.
pub(crate) struct Publisher {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    path: String,
}

impl Publisher {
    pub(crate) fn connect(admin: SocketAddr, topic: &str) -> anyhow::Result<Self> {
        let writer = TcpStream::connect(admin).with_context(|| format!("admin API at {admin}"))?;
        writer.set_nodelay(true)?;
        Ok(Self {
            reader: BufReader::new(writer.try_clone()?),
            writer,
            path: format!("/publish/{topic}"),
        })
    }

    /// Publishes `body`; the answer's JSON body, or `None` when the node refused it as
    /// overloaded (503).
    pub(crate) fn publish(&mut self, body: &str) -> anyhow::Result<Option<serde_json::Value>> {
        write!(
            self.writer,
            "POST {} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.path,
            body.len()
        )?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let refused = line.starts_with("HTTP/1.1 503");
        if !refused && !line.starts_with("HTTP/1.1 200") {
            bail!("publish answered {}", line.trim());
        }
        let mut length = 0;
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse()?;
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        if refused {
            return Ok(None);
        }
        Ok(Some(serde_json::from_slice(&body)?))
    }
}

/// With a broker, a node subscribes in Redis shortly after its first subscriber arrives:
/// publishes unstamped probes until every node with subscribers (`nodes`) has subscribed.
/// Without one (the answer has no `nodes`) there is nothing to wait for.
fn wait_for_nodes(publisher: &mut Publisher, nodes: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = publisher.publish("{\"probe\":true}")?.unwrap_or_default();
        match answer.get("nodes").and_then(serde_json::Value::as_u64) {
            Some(n) if (n as usize) < nodes => {}
            _ => return Ok(()),
        }
        if Instant::now() > deadline {
            bail!("only {answer} of {nodes} nodes subscribed within 10 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub(crate) fn run(args: FanoutArgs) -> anyhow::Result<()> {
    let duration = Duration::try_from_secs_f64(args.duration)?;
    let config = ClientConfig {
        deflate: args.deflate,
        protocols: args.protocol.offered(),
        ..ClientConfig::default()
    };
    let mut handoffs = Vec::with_capacity(args.subscribers);
    for (i, url) in args.url.iter().enumerate() {
        let count = (args.subscribers + args.url.len() - 1 - i) / args.url.len();
        let url = format!("{url}?topic={}", args.topic);
        handoffs.extend(connect_many(&url, &config, count)?);
    }
    let admins = args.admin.clone();
    let Some(&first) = admins.first() else {
        bail!("--admin needs at least one address");
    };
    wait_for_nodes(&mut Publisher::connect(first, &args.topic)?, args.url.len())?;
    let mut driver = Driver::new(handoffs)?;
    let count = Arc::new(AtomicU64::new(0));
    let mut hist = report::histogram()?;
    let mut deliveries = 0u64;
    let mut on = |_: &mut Conn, _: usize, received: Received| {
        if let Received::Message(Message::Text(t)) = received
            && let Some(ts) = stamp_of(&t)
        {
            let us = (now_ns().saturating_sub(ts) / 1000) as u64;
            let _ = hist.record(us.max(1));
            deliveries += 1;
            count.store(deliveries, Ordering::Relaxed);
        }
    };
    let ticker = Ticker::start(duration, count.clone());
    let server_watch = args.common.watch_cpu.map(CpuWatch::start).transpose()?;
    let publishers: Vec<_> = (0..args.publishers.max(1))
        .map(|i| {
            let args = args.clone();
            let admin = admins[i % admins.len()];
            let rate = args.rate / args.publishers.max(1) as f64;
            std::thread::spawn(move || -> anyhow::Result<(u64, u64)> {
                let mut publisher = Publisher::connect(admin, &args.topic)?;
                let started = Instant::now();
                let (mut sent, mut refused) = (0u64, 0u64);
                while started.elapsed() < duration {
                    if publisher.publish(&stamped(args.size))?.is_none() {
                        // The node is overloaded: come back shortly (the Retry-After of a
                        // second is for clients with less at stake than a load test).
                        refused += 1;
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    sent += 1;
                    if rate > 0.0 {
                        let due = Duration::from_secs_f64(sent as f64 / rate);
                        if let Some(wait) = due.checked_sub(started.elapsed()) {
                            std::thread::sleep(wait);
                        }
                    }
                }
                Ok((sent, refused))
            })
        })
        .collect();
    while !publishers.iter().all(|p| p.is_finished()) {
        driver.run(Instant::now() + Duration::from_millis(100), &mut on)?;
    }
    let server_busy = server_watch.map(|w| w.busy()).transpose()?;
    // Throughput counts what arrived while publishing.
    let in_window = count.load(Ordering::Relaxed);
    let (mut published, mut refused) = (0, 0);
    for publisher in publishers {
        let (sent, overloaded) = publisher
            .join()
            .map_err(|_| anyhow::anyhow!("publisher panicked"))??;
        published += sent;
        refused += overloaded;
    }
    let expected = published * args.subscribers as u64;
    // Then the rest arrives (a node may hold a backlog it has accepted): until every
    // message has, or a second passes with none arriving. What never arrives is missing.
    let drain_started = Instant::now();
    let mut last = (count.load(Ordering::Relaxed), Instant::now());
    while count.load(Ordering::Relaxed) < expected && last.1.elapsed() < Duration::from_secs(1) {
        driver.run(Instant::now() + Duration::from_millis(100), &mut on)?;
        let now = count.load(Ordering::Relaxed);
        if now > last.0 {
            last = (now, Instant::now());
        }
    }
    let drain_s = drain_started.elapsed().as_secs_f64();
    // Subscribers the server closed (as slow consumers, say) before the end.
    let closed = driver.conns().iter().filter(|c| c.is_done()).count();
    ticker.finish();
    driver.close_all(Duration::from_secs(2))?;
    let secs = duration.as_secs_f64();
    report::finish(
        "fanout",
        json!({"url": args.url, "admin": args.admin, "subscribers": args.subscribers, "size": args.size,
               "rate": args.rate, "publishers": args.publishers, "duration_s": secs, "deflate": args.deflate,
               "protocol": format!("{:?}", args.protocol).to_lowercase()}),
        json!({"published": published,
               "refused": refused,
               "subscribers_closed": closed,
               "deliveries": deliveries,
               "missing": expected.saturating_sub(deliveries),
               "drain_s": (drain_s * 100.0).round() / 100.0,
               "deliveries_per_s": (in_window as f64 / secs).round(),
               "latency": Latency::of(&hist),
               "server_cpu_busy": server_busy}),
        args.common.out.as_deref(),
    )
}
