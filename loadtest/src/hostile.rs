//! `hostile`: honest subscribers on a topic published to at a fixed rate, with or without
//! hostile clients against the same server (or cluster) at the same time: idle sockets
//! that never upgrade, upgrade heads and frames trickled a byte at a time, ping floods
//! that never read, subscription churn on fresh topics, and oversized, malformed and
//! trickled admin requests. It checks that every honest subscriber gets every message in
//! order, and reports their publish-to-receive latency and the servers' peak RSS, so the
//! same run with `--attack none` and `--attack all` shows what the attack costs the
//! honest ones.
//!
//! Every attacker is bounded in count and time and sends only where the URLs point (run
//! it against loopback); each stops by itself at the end of the run.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde_json::json;
use stratus_client::ClientConfig;
use stratus_proto::{Encoder, Message};

use crate::driver::{Driver, Received, connect_many};
use crate::fanout::Publisher;
use crate::pin;
use crate::report::{self, Latency};

#[derive(Args, Debug, Clone)]
pub(crate) struct HostileArgs {
    /// The servers' WebSocket URLs (comma-separated: honest subscribers and attackers are
    /// spread over them).
    #[arg(long, value_delimiter = ',', default_value = "ws://127.0.0.1:8080/ws")]
    url: Vec<String>,
    /// The servers' admin listeners (the first publishes; all are abused).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:9090")]
    admin: Vec<SocketAddr>,
    /// The servers' PIDs, for their peak RSS.
    #[arg(long, value_delimiter = ',')]
    pid: Vec<u32>,
    /// Fail if a server's RSS passes this many bytes.
    #[arg(long)]
    max_rss: Option<u64>,
    /// Honest subscribers.
    #[arg(short = 'n', long, default_value_t = 20)]
    honest: usize,
    /// Publishes per second to the honest topic (0: as fast as they are answered).
    #[arg(short, long, default_value_t = 200.0)]
    rate: f64,
    /// Seconds to publish.
    #[arg(short, long, default_value_t = 20.0)]
    duration: f64,
    /// Run the attacks, or only the honest traffic (the baseline).
    #[arg(long, value_enum, default_value_t = Attack::All)]
    attack: Attack,
    /// Idle sockets that never upgrade (spread over 127.0.1.x source addresses).
    #[arg(long, default_value_t = 2000)]
    idle: usize,
    /// Connections that trickle an upgrade head, a byte a second.
    #[arg(long, default_value_t = 200)]
    head_tricklers: usize,
    /// Upgraded connections that trickle a frame, a byte a second.
    #[arg(long, default_value_t = 200)]
    frame_tricklers: usize,
    /// Upgraded connections that flood empty pings and never read.
    #[arg(long, default_value_t = 20)]
    ping_flooders: usize,
    /// Upgraded connections that subscribe and unsubscribe fresh topics in a loop.
    #[arg(long, default_value_t = 20)]
    churners: usize,
    /// Threads sending oversized, malformed and trickled admin requests.
    #[arg(long, default_value_t = 4)]
    admin_abusers: usize,
    #[command(flatten)]
    pub(crate) common: crate::Common,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Attack {
    None,
    All,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// What the attackers did, counted as they go.
#[derive(Default)]
struct Counts {
    connections: AtomicU64,
    closed_by_server: AtomicU64,
    bytes_sent: AtomicU64,
    admin_requests: AtomicU64,
}

/// The ws:// URL's host and port.
fn addr_of(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url.strip_prefix("ws://").context("ws:// URLs only")?;
    let host = rest.split('/').next().unwrap_or(rest);
    host.parse()
        .with_context(|| format!("{host} is not an address"))
}

fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// A masked client frame.
fn frame(message: &Message) -> Vec<u8> {
    Encoder::client([9; 32]).message(message).to_vec()
}

/// Connects, giving up after a second (so no attacker waits on a full accept queue).
fn connect(addr: SocketAddr) -> Option<TcpStream> {
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()
}

/// Connects and upgrades (reading the 101 byte by byte, so nothing after it is taken).
fn upgraded(addr: SocketAddr, path: &str) -> Option<TcpStream> {
    let mut stream = connect(addr)?;
    stream.write_all(upgrade_request(path).as_bytes()).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).ok()?;
        head.push(byte[0]);
    }
    head.starts_with(b"HTTP/1.1 101").then_some(stream)
}

/// The attacks, each on its own threads until `stop`.
struct Attackers {
    threads: Vec<JoinHandle<()>>,
    counts: Arc<Counts>,
}

impl Attackers {
    fn start(
        args: &HostileArgs,
        addrs: &[SocketAddr],
        stop: &Arc<AtomicBool>,
    ) -> anyhow::Result<Self> {
        type Attack = Box<dyn FnOnce(&AtomicBool, &Counts) + Send>;
        let counts = Arc::new(Counts::default());
        let mut threads = Vec::new();
        let mut spawn = |name: &str, attack: Attack| -> anyhow::Result<()> {
            let (stop, counts) = (stop.clone(), counts.clone());
            let thread = std::thread::Builder::new()
                .name(name.to_owned())
                .spawn(move || attack(&stop, &counts))?;
            threads.push(thread);
            Ok(())
        };
        for (i, &addr) in addrs.iter().enumerate() {
            let share = |n: usize| (n + addrs.len() - 1 - i) / addrs.len();
            let idle = share(args.idle);
            spawn("idle", Box::new(move |s, c| idle_sockets(addr, idle, s, c)))?;
            let heads = share(args.head_tricklers);
            spawn(
                "heads",
                Box::new(move |s, c| trickle_heads(addr, heads, s, c)),
            )?;
            let frames = share(args.frame_tricklers);
            spawn(
                "frames",
                Box::new(move |s, c| trickle_frames(addr, frames, s, c)),
            )?;
            for _ in 0..share(args.ping_flooders) {
                spawn("pings", Box::new(move |s, c| ping_flood(addr, s, c)))?;
            }
            for n in 0..share(args.churners) {
                spawn("churn", Box::new(move |s, c| churn(addr, n, s, c)))?;
            }
        }
        for i in 0..args.admin_abusers {
            let admin = args.admin[i % args.admin.len()];
            spawn("admin", Box::new(move |s, c| abuse_admin(admin, i, s, c)))?;
        }
        Ok(Self { threads, counts })
    }

    /// Waits up to a few seconds for the attackers to notice the stop (one blocked in a
    /// system call is left behind: the process ends with the run).
    fn join(self) -> Arc<Counts> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && !self.threads.iter().all(JoinHandle::is_finished) {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.counts
    }
}

/// Whether the server has closed `stream` (EOF or an error other than a timeout).
fn closed(stream: &mut TcpStream) -> bool {
    let _ = stream.set_nonblocking(true);
    let mut chunk = [0u8; 4096];
    let gone = loop {
        match stream.read(&mut chunk) {
            Ok(0) => break true,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
            Err(_) => break true,
        }
    };
    let _ = stream.set_nonblocking(false);
    gone
}

/// Holds `count` sockets that never send a byte, from 127.0.1.x, reopening those the
/// server closes.
fn idle_sockets(addr: SocketAddr, count: usize, stop: &AtomicBool, counts: &Counts) {
    let open = |i: usize| -> Option<TcpStream> {
        let local = SocketAddr::from(([127, 0, 1, (i % 250) as u8 + 1], 0));
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
        socket.bind(&local.into()).ok()?;
        socket
            .connect_timeout(&addr.into(), Duration::from_secs(1))
            .ok()?;
        counts.connections.fetch_add(1, Ordering::Relaxed);
        Some(socket.into())
    };
    let mut sockets: Vec<Option<TcpStream>> = (0..count).map(open).collect();
    while !stop.load(Ordering::Relaxed) {
        for (i, socket) in sockets.iter_mut().enumerate() {
            if socket.as_mut().is_none_or(closed) {
                if socket.is_some() {
                    counts.closed_by_server.fetch_add(1, Ordering::Relaxed);
                }
                *socket = open(i);
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Sends each of `count` streams the next byte of `bytes` once a second, reconnecting
/// (with `connect`) those the server closes.
fn trickle(
    count: usize,
    bytes: &[u8],
    connect: impl Fn() -> Option<TcpStream>,
    stop: &AtomicBool,
    counts: &Counts,
) {
    let mut streams: Vec<(Option<TcpStream>, usize)> = (0..count).map(|_| (connect(), 0)).collect();
    while !stop.load(Ordering::Relaxed) {
        for (stream, at) in &mut streams {
            let alive = match stream {
                Some(s) => !closed(s) && s.write_all(&bytes[*at..=*at]).is_ok(),
                None => false,
            };
            if alive {
                counts.bytes_sent.fetch_add(1, Ordering::Relaxed);
                *at = (*at + 1) % bytes.len();
            } else {
                if stream.is_some() {
                    counts.closed_by_server.fetch_add(1, Ordering::Relaxed);
                }
                *stream = connect();
                *at = 0;
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn trickle_heads(addr: SocketAddr, count: usize, stop: &AtomicBool, counts: &Counts) {
    let head = upgrade_request("/ws?topic=slow");
    let open = || {
        counts.connections.fetch_add(1, Ordering::Relaxed);
        connect(addr)
    };
    trickle(count, head.as_bytes(), open, stop, counts);
}

fn trickle_frames(addr: SocketAddr, count: usize, stop: &AtomicBool, counts: &Counts) {
    let payload = frame(&Message::text("x".repeat(4000)));
    let connect = || {
        counts.connections.fetch_add(1, Ordering::Relaxed);
        upgraded(addr, "/ws")
    };
    trickle(count, &payload, connect, stop, counts);
}

/// Floods empty pings on one connection that never reads (its receive buffer as small as
/// the kernel allows), reconnecting when the server closes it.
fn ping_flood(addr: SocketAddr, stop: &AtomicBool, counts: &Counts) {
    let pings = frame(&Message::Ping(bytes::Bytes::new())).repeat(10_000);
    while !stop.load(Ordering::Relaxed) {
        counts.connections.fetch_add(1, Ordering::Relaxed);
        let Some(stream) = upgraded(addr, "/ws") else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let socket = socket2::Socket::from(stream);
        let _ = socket.set_recv_buffer_size(4096);
        let mut stream: TcpStream = socket.into();
        let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
        let mut at = 0;
        while !stop.load(Ordering::Relaxed) {
            match stream.write(&pings[at..]) {
                Ok(0) => break,
                Ok(n) => {
                    counts.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
                    at = (at + n) % pings.len();
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
        counts.closed_by_server.fetch_add(1, Ordering::Relaxed);
    }
}

/// Subscribes to and unsubscribes from fresh topics as fast as the server takes them
/// (bursts of 50 of each, written as the socket takes them; what comes back is read and
/// dropped).
fn churn(addr: SocketAddr, id: usize, stop: &AtomicBool, counts: &Counts) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        counts.connections.fetch_add(1, Ordering::Relaxed);
        let Some(mut stream) = upgraded(addr, "/ws") else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
        let (mut burst, mut at) = (Vec::new(), 0);
        while !stop.load(Ordering::Relaxed) {
            if at == burst.len() {
                burst.clear();
                at = 0;
                for _ in 0..50 {
                    n += 1;
                    let topic = format!("churn-{id}-{n}");
                    for op in ["subscribe", "unsubscribe"] {
                        let command = format!(r#"{{"op":"{op}","topic":"{topic}"}}"#);
                        burst.extend(frame(&Message::text(command)));
                    }
                }
            }
            match stream.write(&burst[at..]) {
                Ok(0) => break,
                Ok(written) => {
                    at += written;
                    counts
                        .bytes_sent
                        .fetch_add(written as u64, Ordering::Relaxed);
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
            if closed(&mut stream) {
                break;
            }
        }
        counts.closed_by_server.fetch_add(1, Ordering::Relaxed);
    }
}

/// Oversized, malformed and trickled admin requests, in turn.
fn abuse_admin(admin: SocketAddr, id: usize, stop: &AtomicBool, counts: &Counts) {
    let requests: [&[u8]; 5] = [
        b"POST /publish/t HTTP/1.1\r\nContent-Length: 100000000\r\n\r\n",
        b"POST /publish/t HTTP/1.1\r\nContent-Length: +5\r\n\r\nhello",
        b"POST /publish/t HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"GARBAGE\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nX: ",
    ];
    let mut turn = id;
    while !stop.load(Ordering::Relaxed) {
        turn += 1;
        let Some(mut stream) = connect(admin) else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        counts.admin_requests.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(15)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
        let request = requests[turn % requests.len()];
        if turn.is_multiple_of(7) {
            // A head trickled a byte every 100 ms: the request deadline ends it.
            for &byte in request.iter().cycle().take(300) {
                if stop.load(Ordering::Relaxed) || stream.write_all(&[byte]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        } else {
            let _ = stream.write_all(request);
        }
        let _ = stream.read(&mut [0u8; 512]);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Samples the servers' RSS until `stop`; the peak of each.
fn watch_rss(pids: Vec<u32>, stop: Arc<AtomicBool>) -> JoinHandle<Vec<u64>> {
    std::thread::spawn(move || {
        let mut peak = vec![0; pids.len()];
        while !stop.load(Ordering::Relaxed) {
            for (pid, peak) in pids.iter().zip(&mut peak) {
                if let Ok(rss) = pin::rss(*pid) {
                    *peak = (*peak).max(rss);
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        peak
    })
}

pub(crate) fn run(args: HostileArgs) -> anyhow::Result<()> {
    let duration = Duration::try_from_secs_f64(args.duration)?;
    let addrs: Vec<SocketAddr> = args
        .url
        .iter()
        .map(|u| addr_of(u))
        .collect::<anyhow::Result<_>>()?;
    let Some(&publish_to) = args.admin.first() else {
        bail!("--admin needs at least one address");
    };
    let stop = Arc::new(AtomicBool::new(false));
    let rss = watch_rss(args.pid.clone(), stop.clone());
    let attackers = match args.attack {
        Attack::All => Some(Attackers::start(&args, &addrs, &stop)?),
        Attack::None => None,
    };
    // Honest subscribers, spread over the nodes.
    let mut handoffs = Vec::new();
    for i in 0..args.honest {
        let url = format!("{}?topic=honest", args.url[i % args.url.len()]);
        handoffs.extend(connect_many(&url, &ClientConfig::default(), 1)?);
    }
    let mut driver = Driver::new(handoffs)?;
    // Let every node subscribe in its broker before the first publish counts.
    std::thread::sleep(Duration::from_millis(500));
    let rate = args.rate;
    let publisher = std::thread::spawn(move || -> anyhow::Result<(u64, u64)> {
        let mut publisher = Publisher::connect(publish_to)?;
        let started = Instant::now();
        // Every attempt has its own number: a refused one (which may yet have gone out, if
        // the broker did not confirm it in time) is never reused.
        let (mut attempts, mut accepted, mut refused) = (0u64, 0u64, 0u64);
        while started.elapsed() < duration {
            let body = format!("{{\"seq\":{attempts},\"ts\":{}}}", now_us());
            attempts += 1;
            if publisher.publish("honest", &body)?.is_some() {
                accepted += 1;
            } else {
                refused += 1;
            }
            if rate > 0.0 {
                let due = Duration::from_secs_f64(attempts as f64 / rate);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
        Ok((accepted, refused))
    });
    let mut hist = report::histogram()?;
    let mut next = vec![0u64; args.honest];
    let (mut deliveries, mut out_of_order) = (0u64, 0u64);
    let mut on = |_: &mut crate::driver::Conn, i: usize, received: Received| {
        let Received::Message(Message::Text(text)) = received else {
            return;
        };
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(&text) else {
            return;
        };
        let (Some(seq), Some(ts)) = (value["seq"].as_u64(), value["ts"].as_u64()) else {
            return;
        };
        // Numbers only grow: a smaller one is late or twice (a refused number may be
        // missing).
        if seq < next[i] {
            out_of_order += 1;
        }
        next[i] = seq + 1;
        deliveries += 1;
        let _ = hist.record(now_us().saturating_sub(ts).max(1));
    };
    while !publisher.is_finished() {
        driver.run(Instant::now() + Duration::from_millis(100), &mut on)?;
    }
    driver.run(Instant::now() + Duration::from_millis(1000), &mut on)?;
    let closed_honest = driver.conns().iter().filter(|c| c.is_done()).count();
    stop.store(true, Ordering::Relaxed);
    let (published, refused) = publisher
        .join()
        .map_err(|_| anyhow::anyhow!("publisher panicked"))??;
    let counts = attackers.map(Attackers::join);
    let peak_rss = rss
        .join()
        .map_err(|_| anyhow::anyhow!("RSS watch panicked"))?;
    let expected = published * args.honest as u64;
    let counted =
        |f: fn(&Counts) -> &AtomicU64| counts.as_ref().map_or(0, |c| f(c).load(Ordering::Relaxed));
    let result = json!({
        "published": published,
        "refused": refused,
        "deliveries": deliveries,
        "missing": expected.saturating_sub(deliveries),
        "out_of_order": out_of_order,
        "honest_closed": closed_honest,
        "latency": Latency::of(&hist),
        "peak_rss": peak_rss,
        "attack": {
            "connections": counted(|c| &c.connections),
            "closed_by_server": counted(|c| &c.closed_by_server),
            "bytes_sent": counted(|c| &c.bytes_sent),
            "admin_requests": counted(|c| &c.admin_requests),
        },
    });
    report::finish(
        "hostile",
        json!({"url": args.url, "honest": args.honest, "rate": args.rate,
               "duration_s": args.duration, "attack": format!("{:?}", args.attack).to_lowercase(),
               "idle": args.idle, "head_tricklers": args.head_tricklers,
               "frame_tricklers": args.frame_tricklers, "ping_flooders": args.ping_flooders,
               "churners": args.churners, "admin_abusers": args.admin_abusers,
               "max_rss": args.max_rss}),
        result,
        args.common.out.as_deref(),
    )?;
    if deliveries < expected || out_of_order > 0 || closed_honest > 0 {
        bail!(
            "honest subscribers: {deliveries} of {expected} delivered, {out_of_order} out of \
             order, {closed_honest} closed"
        );
    }
    if let Some(max) = args.max_rss
        && let Some(&worst) = peak_rss.iter().max()
        && worst > max
    {
        bail!("a server's RSS reached {worst} bytes, past the bound of {max}");
    }
    Ok(())
}
