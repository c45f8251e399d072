//! `fanout`: N subscribers on one topic of a Stratus server (or any server with the same
//! publish API), a publisher posting S-byte messages at a fixed rate or flat out. Each
//! message carries its publish time; subscribers record publish-to-receive latency.
//! Given several nodes of a cluster (sharing topics through a broker), subscribers and
//! publishers are spread over them, so most deliveries cross from one node to another.
//! With `--topics N` the subscribers are dealt out over N topics in turn and the
//! publishers go round them, so a load spreads over a broker's shards; what is expected
//! (and so what is missing) is counted per topic: its publishes times its subscribers.
//!
//! Subscribers hold a WebSocket each (`--transport websocket`, raw mode or protocol v1),
//! or a Server-Sent Events stream each (`--transport sse`: `GET /sse?topic=`); an event's
//! data is counted and timed exactly as a text message's payload, and everything else
//! (publishers, pacing, the server's CPU, the report) is the same for both.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::json;
use stratus_client::ClientConfig;

use crate::driver::{Conn, Driver, Received, connect_many, open_streams};
use crate::pin::{CpuWatch, ProcessCpu, process_name};
use crate::progress::Ticker;
use crate::report::{self, Latency, round2};

#[derive(Args, Debug, Clone)]
pub(crate) struct FanoutArgs {
    /// The server's URL for subscribers (the topic is added as `?topic=`): its WebSocket
    /// URL (default ws://127.0.0.1:8080/ws) or, with `--transport sse`, its event-stream
    /// URL (default http://127.0.0.1:8080/sse); several, comma-separated, spread the
    /// subscribers over the nodes of a cluster in turn.
    #[arg(long, value_delimiter = ',')]
    url: Vec<String>,
    /// The server's admin listener, for publishing; several, comma-separated, spread
    /// the publishers over them in turn.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:9090")]
    admin: Vec<SocketAddr>,
    /// Subscribers (connections from this process; keep under 19,000 here).
    #[arg(short = 'n', long, default_value_t = 1000)]
    subscribers: usize,
    /// Topic; with `--topics` above 1, the topics' common prefix (`{topic}-0`,
    /// `{topic}-1`, ...).
    #[arg(long, default_value = "fanout")]
    topic: String,
    /// Topics: subscriber i takes topic i mod N, and the publishers go round the topics
    /// in turn (publisher p's k-th publish goes to topic (p + k * publishers) mod N), so a
    /// sharded broker carries the load on every shard.
    #[arg(long, default_value = "1")]
    topics: NonZeroUsize,
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
    /// How subscribers connect: a WebSocket each, or a Server-Sent Events stream each
    /// (receive only, its own protocol: no `--protocol`, no `--deflate`).
    #[arg(long, value_enum, default_value = "websocket")]
    transport: Transport,
    /// Subscribers offer permessage-deflate (WebSocket only).
    #[arg(long)]
    deflate: bool,
    /// The WebSocket protocol the subscribers speak: raw (messages as published; the
    /// default) or v1 (each in an envelope naming its topic, `Sec-WebSocket-Protocol:
    /// stratus.v1`).
    #[arg(long, value_enum)]
    protocol: Option<Protocol>,
    /// Processes (PIDs, comma-separated: the nodes, the broker's Redis instances) whose
    /// CPU time to report from the first publish to the last delivery, each per publish
    /// and per delivery.
    #[arg(long, value_delimiter = ',')]
    cpu_of: Vec<u32>,
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

/// How fanout subscribers connect.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// A WebSocket each (`--protocol` raw or v1).
    Websocket,
    /// A Server-Sent Events stream each (`GET /sse?topic=`).
    Sse,
}

impl Transport {
    fn default_url(self) -> &'static str {
        match self {
            Transport::Websocket => "ws://127.0.0.1:8080/ws",
            Transport::Sse => "http://127.0.0.1:8080/sse",
        }
    }
}

impl FanoutArgs {
    /// The topics' names: `--topic` itself, or with `--topics` N above 1, `{topic}-0` to
    /// `{topic}-{N-1}`.
    fn topic_names(&self) -> Vec<String> {
        match self.topics.get() {
            1 => vec![self.topic.clone()],
            n => (0..n).map(|i| format!("{}-{i}", self.topic)).collect(),
        }
    }

    /// The protocol the subscribers speak (raw unless `--protocol` says otherwise).
    fn protocol(&self) -> Protocol {
        self.protocol.unwrap_or(Protocol::Raw)
    }

    /// The subscribers' URLs, topic included: for each node, one per topic; a flag or URL
    /// the transport does not take is an error that says why.
    fn subscriber_urls(&self) -> anyhow::Result<Vec<Vec<String>>> {
        let is = |schemes: &[&str]| {
            let scheme = |url: &&String| schemes.iter().any(|s| url.starts_with(s));
            self.url.iter().find(scheme).cloned()
        };
        match self.transport {
            Transport::Websocket => {
                if let Some(url) = is(&["http://", "https://"]) {
                    bail!(
                        "{url} is not a WebSocket URL (ws://): for Server-Sent Events \
                         subscribers add --transport sse"
                    );
                }
            }
            Transport::Sse => {
                if self.protocol.is_some() {
                    bail!(
                        "--protocol picks a WebSocket protocol (raw or v1); Server-Sent \
                         Events (--transport sse) is its own protocol: drop --protocol"
                    );
                }
                if self.deflate {
                    bail!(
                        "--deflate offers permessage-deflate, a WebSocket extension; an \
                         event stream (--transport sse) is not compressed: drop --deflate"
                    );
                }
                if let Some(url) = is(&["ws://", "wss://"]) {
                    bail!(
                        "{url} is a WebSocket URL: with --transport sse give the event \
                         stream's URL, http://HOST:PORT/sse"
                    );
                }
            }
        }
        let nodes = if self.url.is_empty() {
            vec![self.transport.default_url().to_owned()]
        } else {
            self.url.clone()
        };
        let topics = self.topic_names();
        Ok(nodes
            .iter()
            .map(|url| topics.iter().map(|t| format!("{url}?topic={t}")).collect())
            .collect())
    }
}

/// Where one subscriber connects: the index of its node (in `--url`) and of its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seat {
    node: usize,
    topic: usize,
}

/// The subscribers' seats, in the order they connect: the nodes take consecutive runs of
/// subscribers, as even as they go (10 over 3 nodes: 4, 3, 3), and subscriber i takes topic
/// i mod `topics`, so every node has subscribers on every topic once it has as many
/// subscribers as there are topics.
fn seats(nodes: usize, topics: usize, subscribers: usize) -> Vec<Seat> {
    let (nodes, topics) = (nodes.max(1), topics.max(1));
    (0..nodes)
        .flat_map(|node| std::iter::repeat_n(node, (subscribers + nodes - 1 - node) / nodes))
        .enumerate()
        .map(|(i, node)| Seat {
            node,
            topic: i % topics,
        })
        .collect()
}

/// Subscribers on each of `topics` topics.
fn subscribers_per_topic(seats: &[Seat], topics: usize) -> Vec<u64> {
    let mut count = vec![0; topics];
    for seat in seats {
        count[seat.topic] += 1;
    }
    count
}

/// For each of `topics` topics, the nodes with subscribers on it: those a publish to it
/// must reach.
fn nodes_per_topic(seats: &[Seat], topics: usize) -> Vec<usize> {
    let mut nodes: Vec<Vec<usize>> = vec![Vec::new(); topics];
    for seat in seats {
        if !nodes[seat.topic].contains(&seat.node) {
            nodes[seat.topic].push(seat.node);
        }
    }
    nodes.iter().map(Vec::len).collect()
}

/// What never arrived: for each topic, its publishes times its subscribers less what its
/// subscribers received (a topic that got more makes up for no other).
fn missing(published: &[u64], subscribers: &[u64], delivered: &[u64]) -> u64 {
    published
        .iter()
        .zip(subscribers)
        .zip(delivered)
        .map(|((p, s), d)| (p * s).saturating_sub(*d))
        .sum()
}

/// Opens a connection at every seat: `open(url, count)` for each run of like seats, the
/// URL `urls[node][topic]`.
fn open_seats<T, E>(
    urls: &[Vec<String>],
    seats: &[Seat],
    mut open: impl FnMut(&str, usize) -> Result<Vec<T>, E>,
) -> Result<Vec<T>, E> {
    let mut opened = Vec::with_capacity(seats.len());
    for run in seats.chunk_by(|a, b| a == b) {
        let seat = run[0];
        opened.extend(open(&urls[seat.node][seat.topic], run.len())?);
    }
    Ok(opened)
}

/// Opens every subscriber at its seat, over the transport asked for.
fn open_subscribers(
    args: &FanoutArgs,
    urls: &[Vec<String>],
    seats: &[Seat],
) -> anyhow::Result<Driver> {
    Ok(match args.transport {
        Transport::Websocket => {
            let config = ClientConfig {
                deflate: args.deflate,
                protocols: args.protocol().offered(),
                ..ClientConfig::default()
            };
            let open = |url: &str, n| connect_many(url, &config, n);
            Driver::new(open_seats(urls, seats, open)?)?
        }
        Transport::Sse => Driver::sse(open_seats(urls, seats, open_streams)?)?,
    })
}

/// Posts messages over one keep-alive connection to the admin API.
pub(crate) struct Publisher {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Publisher {
    pub(crate) fn connect(admin: SocketAddr) -> anyhow::Result<Self> {
        let writer = TcpStream::connect(admin).with_context(|| format!("admin API at {admin}"))?;
        writer.set_nodelay(true)?;
        Ok(Self {
            reader: BufReader::new(writer.try_clone()?),
            writer,
        })
    }

    /// Publishes `body` to `topic`; the answer's JSON body, or `None` when the node
    /// refused it as overloaded (503).
    pub(crate) fn publish(
        &mut self,
        topic: &str,
        body: &str,
    ) -> anyhow::Result<Option<serde_json::Value>> {
        write!(
            self.writer,
            "POST /publish/{topic} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
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
/// publishes unstamped probes to `topic` until every node with subscribers on it (`nodes`)
/// has subscribed. Without one (the answer has no `nodes`) there is nothing to wait for.
fn wait_for_nodes(publisher: &mut Publisher, topic: &str, nodes: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = publisher
            .publish(topic, "{\"probe\":true}")?
            .unwrap_or_default();
        match answer.get("nodes").and_then(serde_json::Value::as_u64) {
            Some(n) if (n as usize) < nodes => {}
            _ => return Ok(()),
        }
        if Instant::now() > deadline {
            bail!("only {answer} of {nodes} nodes subscribed to {topic} within 10 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs the subscribers until each has received a probe (or 5 s pass), so that neither the
/// probes' fan-out (the server's CPU) nor their bytes count in what is measured after.
fn await_probes(driver: &mut Driver, subscribers: usize) -> anyhow::Result<()> {
    let mut probed = vec![false; subscribers];
    let mut left = subscribers;
    let deadline = Instant::now() + Duration::from_secs(5);
    while left > 0 && Instant::now() < deadline {
        let turn = deadline.min(Instant::now() + Duration::from_millis(100));
        driver.run(turn, |_, i, received| {
            if received.text().is_some() && !probed[i] {
                probed[i] = true;
                left -= 1;
            }
        })?;
    }
    Ok(())
}

/// What one publisher did: publishes accepted, per topic, and refused as overloaded.
struct Tally {
    published: Vec<u64>,
    refused: u64,
}

/// Publisher `p` (of `--publishers`): publishes stamped messages to `topics` in turn,
/// starting at topic `p` and stepping by the number of publishers (so together they go
/// round the topics), paced to its share of `--rate`, for `duration`.
fn publish_in_turn(
    args: &FanoutArgs,
    topics: &[String],
    p: usize,
    admin: SocketAddr,
    duration: Duration,
) -> anyhow::Result<Tally> {
    let publishers = args.publishers.max(1);
    let rate = args.rate / publishers as f64;
    let mut publisher = Publisher::connect(admin)?;
    let mut tally = Tally {
        published: vec![0; topics.len()],
        refused: 0,
    };
    let (mut topic, mut sent) = (p % topics.len(), 0u64);
    let started = Instant::now();
    while started.elapsed() < duration {
        if publisher
            .publish(&topics[topic], &stamped(args.size))?
            .is_none()
        {
            // The node is overloaded: come back shortly (the Retry-After of a second is
            // for clients with less at stake than a load test).
            tally.refused += 1;
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        tally.published[topic] += 1;
        topic = (topic + publishers) % topics.len();
        sent += 1;
        if rate > 0.0 {
            let due = Duration::from_secs_f64(sent as f64 / rate);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    Ok(tally)
}

/// A process `--cpu-of` names, and its CPU time since the first publish.
struct Watched {
    name: String,
    cpu: ProcessCpu,
}

impl Watched {
    fn start(pid: u32) -> anyhow::Result<Self> {
        Ok(Self {
            name: process_name(pid)?,
            cpu: ProcessCpu::start(pid)?,
        })
    }

    /// Its CPU time so far, in all and per publish and per delivery.
    fn report(&self, published: u64, deliveries: u64) -> anyhow::Result<serde_json::Value> {
        let s = self.cpu.seconds()?;
        Ok(
            json!({"pid": self.cpu.pid(), "name": self.name, "cpu_s": round2(s),
                  "us_per_publish": round2(s * 1e6 / published.max(1) as f64),
                  "us_per_delivery": round2(s * 1e6 / deliveries.max(1) as f64)}),
        )
    }
}

pub(crate) fn run(args: FanoutArgs) -> anyhow::Result<()> {
    let duration = Duration::try_from_secs_f64(args.duration)?;
    let urls = args.subscriber_urls()?;
    let topics = args.topic_names();
    let seats = seats(urls.len(), topics.len(), args.subscribers);
    let subscribers = subscribers_per_topic(&seats, topics.len());
    let admins = args.admin.clone();
    let Some(&first) = admins.first() else {
        bail!("--admin needs at least one address");
    };
    let mut driver = open_subscribers(&args, &urls, &seats)?;
    let mut probe = Publisher::connect(first)?;
    for (topic, nodes) in topics.iter().zip(nodes_per_topic(&seats, topics.len())) {
        wait_for_nodes(&mut probe, topic, nodes)?;
    }
    await_probes(&mut driver, seats.len())?;
    let count = Arc::new(AtomicU64::new(0));
    let mut hist = report::histogram()?;
    let mut deliveries = 0u64;
    let mut delivered = vec![0u64; topics.len()];
    let mut on = |_: &mut Conn, i: usize, received: Received| {
        if let Some(ts) = received.text().and_then(stamp_of) {
            let us = (now_ns().saturating_sub(ts) / 1000) as u64;
            let _ = hist.record(us.max(1));
            deliveries += 1;
            delivered[seats[i].topic] += 1;
            count.store(deliveries, Ordering::Relaxed);
        }
    };
    let ticker = Ticker::start(duration, count.clone());
    let server_watch = args.common.watch_cpu.map(CpuWatch::start).transpose()?;
    let server_cpu = args.common.server_pid.map(ProcessCpu::start).transpose()?;
    let watched: Vec<Watched> = args
        .cpu_of
        .iter()
        .map(|&pid| Watched::start(pid))
        .collect::<anyhow::Result<_>>()?;
    let own_cpu = ProcessCpu::start(std::process::id())?;
    let bytes_before = driver.bytes_received();
    let publishers: Vec<_> = (0..args.publishers.max(1))
        .map(|p| {
            let (args, topics) = (args.clone(), topics.clone());
            let admin = admins[p % admins.len()];
            std::thread::spawn(move || publish_in_turn(&args, &topics, p, admin, duration))
        })
        .collect();
    while !publishers.iter().all(|p| p.is_finished()) {
        driver.run(Instant::now() + Duration::from_millis(100), &mut on)?;
    }
    let server_busy = server_watch.map(|w| w.busy()).transpose()?;
    // Throughput counts what arrived while publishing.
    let in_window = count.load(Ordering::Relaxed);
    let (mut published, mut refused) = (vec![0u64; topics.len()], 0);
    for publisher in publishers {
        let tally = publisher
            .join()
            .map_err(|_| anyhow::anyhow!("publisher panicked"))??;
        for (total, sent) in published.iter_mut().zip(tally.published) {
            *total += sent;
        }
        refused += tally.refused;
    }
    let expected: u64 = published.iter().zip(&subscribers).map(|(p, s)| p * s).sum();
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
    // Bytes on the wire per delivery: a plain frame of S bytes is S + 2 (S < 126), a
    // compressed one less, so this shows whether the server compressed what it sent.
    let wire = (driver.bytes_received() - bytes_before) as f64 / deliveries.max(1) as f64;
    // The server's CPU from the first publish to the last delivery, over the deliveries;
    // and this process's (subscribers and publishers), to show it is not what sets the pace.
    let per_delivery = |s: f64| round2(s * 1e6 / deliveries.max(1) as f64);
    let server_cpu_s = server_cpu.map(|c| c.seconds()).transpose()?;
    let published_all: u64 = published.iter().sum();
    let processes = watched
        .iter()
        .map(|w| w.report(published_all, deliveries))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let client_cpu_s = own_cpu.seconds()?;
    // Subscribers the server closed (as slow consumers, say) before the end.
    let closed = driver.conns().iter().filter(|c| c.is_done()).count();
    ticker.finish();
    driver.close_all(Duration::from_secs(2))?;
    let secs = duration.as_secs_f64();
    let protocol = args.protocol();
    report::finish(
        "fanout",
        json!({"url": args.url, "admin": args.admin, "subscribers": args.subscribers, "size": args.size,
               "rate": args.rate, "publishers": args.publishers, "duration_s": secs, "deflate": args.deflate,
               "topics": topics.len(), "subscribers_per_topic": subscribers,
               "transport": format!("{:?}", args.transport).to_lowercase(),
               "protocol": (args.transport == Transport::Websocket)
                   .then(|| format!("{protocol:?}").to_lowercase())}),
        json!({"published": published_all,
               "published_per_topic": published,
               "refused": refused,
               "subscribers_closed": closed,
               "deliveries": deliveries,
               "missing": missing(&published, &subscribers, &delivered),
               "drain_s": round2(drain_s),
               "wire_bytes_per_delivery": round2(wire),
               "deliveries_per_s": (in_window as f64 / secs).round(),
               "latency": Latency::of(&hist),
               "server_cpu_busy": server_busy,
               "server_cpu_s": server_cpu_s.map(round2),
               "server_cpu_us_per_delivery": server_cpu_s.map(per_delivery),
               "processes": processes,
               "client_cpu_s": round2(client_cpu_s),
               "client_cpu_us_per_delivery": per_delivery(client_cpu_s)}),
        args.common.out.as_deref(),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        fanout: FanoutArgs,
    }

    fn parse(args: &[&str]) -> anyhow::Result<FanoutArgs> {
        let cli = Cli::try_parse_from(std::iter::once("fanout").chain(args.iter().copied()))?;
        Ok(cli.fanout)
    }

    fn urls(args: &[&str]) -> anyhow::Result<Vec<Vec<String>>> {
        parse(args)?.subscriber_urls()
    }

    fn refusal(args: &[&str]) -> String {
        urls(args).unwrap_err().to_string()
    }

    #[test]
    fn each_transport_has_its_own_default_url() {
        assert_eq!(
            urls(&[]).unwrap(),
            [["ws://127.0.0.1:8080/ws?topic=fanout"]]
        );
        assert_eq!(
            urls(&["--transport", "sse", "--topic", "t"]).unwrap(),
            [["http://127.0.0.1:8080/sse?topic=t"]]
        );
        assert_eq!(
            urls(&[
                "--transport",
                "sse",
                "--url",
                "http://a:1/sse,http://b:2/sse"
            ])
            .unwrap(),
            [
                ["http://a:1/sse?topic=fanout"],
                ["http://b:2/sse?topic=fanout"]
            ]
        );
    }

    #[test]
    fn websocket_flags_with_sse_are_refused_saying_why() {
        for protocol in ["raw", "v1"] {
            let why = refusal(&["--transport", "sse", "--protocol", protocol]);
            assert!(why.contains("its own protocol: drop --protocol"), "{why}");
        }
        let why = refusal(&["--transport", "sse", "--deflate"]);
        assert!(why.contains("drop --deflate"), "{why}");
        let why = refusal(&["--transport", "sse", "--url", "ws://127.0.0.1:8080/ws"]);
        assert!(why.contains("http://HOST:PORT/sse"), "{why}");
    }

    #[test]
    fn an_http_url_for_websocket_subscribers_points_to_sse() {
        let why = refusal(&["--url", "http://127.0.0.1:8080/sse"]);
        assert!(why.contains("add --transport sse"), "{why}");
        assert!(urls(&["--protocol", "v1", "--deflate"]).is_ok());
    }

    #[test]
    fn subscribers_spread_over_the_nodes_in_turn() {
        let nodes = [
            vec!["a".to_owned()],
            vec!["b".to_owned()],
            vec!["c".to_owned()],
        ];
        let mut asked = Vec::new();
        let opened = open_seats(&nodes, &seats(3, 1, 10), |url, n| {
            asked.push((url.to_owned(), n));
            Ok::<_, ()>(vec![0; n])
        })
        .unwrap();
        assert_eq!(opened.len(), 10);
        assert_eq!(asked, [("a".into(), 4), ("b".into(), 3), ("c".into(), 3)]);
    }

    #[test]
    fn one_topic_keeps_its_name_and_several_are_numbered() {
        assert_eq!(parse(&["--topic", "t"]).unwrap().topic_names(), ["t"]);
        let names = parse(&["--topic", "t", "--topics", "3"])
            .unwrap()
            .topic_names();
        assert_eq!(names, ["t-0", "t-1", "t-2"]);
        assert_eq!(
            urls(&["--url", "ws://a/ws,ws://b/ws", "--topics", "2"]).unwrap(),
            [
                ["ws://a/ws?topic=fanout-0", "ws://a/ws?topic=fanout-1"],
                ["ws://b/ws?topic=fanout-0", "ws://b/ws?topic=fanout-1"]
            ]
        );
        assert!(parse(&["--topics", "0"]).is_err());
    }

    #[test]
    fn subscribers_are_dealt_over_the_topics_on_every_node() {
        // 7 subscribers over 2 nodes (4 and 3) and 3 topics: 0 1 2 0 | 1 2 0.
        let dealt = seats(2, 3, 7);
        let at = |node, topic| Seat { node, topic };
        assert_eq!(
            dealt,
            [
                at(0, 0),
                at(0, 1),
                at(0, 2),
                at(0, 0),
                at(1, 1),
                at(1, 2),
                at(1, 0)
            ]
        );
        assert_eq!(subscribers_per_topic(&dealt, 3), [3, 2, 2]);
        assert_eq!(nodes_per_topic(&dealt, 3), [2, 2, 2]);
        // Fewer subscribers than topics: the rest have none, and no node to wait for.
        let few = seats(2, 5, 3);
        assert_eq!(subscribers_per_topic(&few, 5), [1, 1, 1, 0, 0]);
        assert_eq!(nodes_per_topic(&few, 5), [1, 1, 1, 0, 0]);
        // Each seat opens at its own node's URL for its topic.
        let urls: Vec<Vec<String>> = (0..2)
            .map(|n| (0..3).map(|t| format!("{n}/{t}")).collect())
            .collect();
        let mut asked = Vec::new();
        open_seats(&urls, &dealt, |url, n| {
            asked.push(url.to_owned());
            Ok::<_, ()>(vec![0; n])
        })
        .unwrap();
        assert_eq!(asked, ["0/0", "0/1", "0/2", "0/0", "1/1", "1/2", "1/0"]);
    }

    #[test]
    fn missing_is_counted_per_topic() {
        // Topic 0: 10 publishes x 3 subscribers, 30 arrived; topic 1: 4 x 2, 5 arrived.
        assert_eq!(missing(&[10, 4], &[3, 2], &[30, 5]), 3);
        // A topic that received more (a duplicate) does not hide another's loss.
        assert_eq!(missing(&[10, 4], &[3, 2], &[33, 5]), 3);
        assert_eq!(missing(&[10, 4], &[3, 2], &[30, 8]), 0);
    }

    #[test]
    fn an_events_data_carries_the_stamp_a_message_does() {
        let message = stamped(64);
        assert_eq!(message.len(), 64);
        let sent = stamp_of(message.as_bytes()).unwrap();
        let event = Received::Event(crate::sse::Event {
            kind: bytes::Bytes::from_static(b"fanout"),
            id: bytes::Bytes::new(),
            data: bytes::Bytes::from(message.clone()),
        });
        let text = Received::Message(stratus_proto::Message::text(message));
        assert_eq!(event.text().and_then(stamp_of), Some(sent));
        assert_eq!(text.text().and_then(stamp_of), Some(sent));
    }
}
