//! `churn`: subscribers held on one topic while connections come and go at a fixed rate,
//! each connecting, subscribing, staying a while and closing cleanly. What the churn
//! costs the server: its CPU seconds (`/proc/PID/stat`, every thread) per churned
//! connection, and its core's busy fraction. Run side by side with presence off and on
//! (`compare-presence.sh`), it tells what presence adds to the churn: every subscribe and
//! unsubscribe updates the topic's presence, and the held subscribers get the joins and
//! leaves (or counts) it pushes, which they count by kind.
//!
//! The held subscribers are driven from one ring on this thread ([`Driver`]); the
//! churning ones are tokio-tungstenite tasks on a second thread (they come and go, which a
//! [`Driver`]'s fixed set does not), connecting from another loopback address
//! (`--churn-source`). Both threads share the generator's core.

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use stratus_client::ClientConfig;
use stratus_proto::Message;
use tokio::net::TcpSocket;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;

use crate::driver::{Conn, Driver, Received, connect_many};
use crate::fanout::Protocol;
use crate::pin::{CpuWatch, ProcessCpu};
use crate::progress::Ticker;
use crate::report::{self, round2};

#[derive(Args, Debug, Clone)]
pub(crate) struct ChurnArgs {
    /// The server's WebSocket URL (held subscribers get the topic as `?topic=`).
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// The topic.
    #[arg(long, default_value = "room")]
    topic: String,
    /// Subscribers held on the topic for the whole run (with the churning ones open at a
    /// time, keep under 19,500 per process here: 20,000 file descriptors).
    #[arg(short = 'n', long, default_value_t = 18_500)]
    count: usize,
    /// New connections per second, each closed after `--hold`: the churn.
    #[arg(short, long, default_value_t = 500.0)]
    rate: f64,
    /// Seconds each churning connection stays subscribed before it closes.
    #[arg(long, default_value_t = 1.0)]
    hold: f64,
    /// Seconds to churn.
    #[arg(short, long, default_value_t = 15.0)]
    duration: f64,
    /// Seconds between the held subscribers being connected and the churn starting, for
    /// the server to settle their joins.
    #[arg(long, default_value_t = 2.0)]
    settle: f64,
    /// Most churning connections open at once; a connection due past it is skipped (and
    /// counted), so a stalled server cannot run the generator out of file descriptors.
    #[arg(long, default_value_t = 1000)]
    max_open: usize,
    /// The protocol every connection speaks: v1 (churning connections subscribe with a
    /// command and wait for its reply) or raw (they subscribe in the upgrade URL).
    #[arg(long, value_enum, default_value = "v1")]
    protocol: Protocol,
    /// Held subscribers offer permessage-deflate (churning ones never do).
    #[arg(long)]
    deflate: bool,
    /// The address churning connections come from. Not the held subscribers' (the URL's
    /// host): with thousands of ports taken towards one server address, the kernel's
    /// search for a free port at each connect would cost more than the connect.
    #[arg(long, default_value = "127.0.0.2")]
    churn_source: IpAddr,
    #[command(flatten)]
    pub(crate) common: crate::Common,
}

/// What the churning connections did.
#[derive(Debug, Default)]
struct Tally {
    /// Open now (connecting, held or closing).
    open: Cell<usize>,
    opened: Cell<u64>,
    subscribed: Cell<u64>,
    /// Closed cleanly after their hold: the churned connections.
    closed: Cell<u64>,
    failed: Cell<u64>,
    skipped: Cell<u64>,
    first_error: RefCell<Option<String>>,
    /// Summed over the connections: connect to subscribed, and close to closed.
    subscribing: Cell<Duration>,
    closing: Cell<Duration>,
}

fn bump(cell: &Cell<u64>) {
    cell.set(cell.get() + 1);
}

/// What the churn thread hands back.
struct Churned {
    opened: u64,
    subscribed: u64,
    closed: u64,
    failed: u64,
    skipped: u64,
    first_error: Option<String>,
    /// Mean milliseconds from connect to subscribed, and from close to closed.
    subscribe_ms: f64,
    close_ms: f64,
    /// From the first connection to the last one started.
    elapsed: Duration,
}

/// The pushes the held subscribers got, by kind.
#[derive(Debug, Default)]
struct Pushes {
    presence: u64,
    occupancy: u64,
    other: u64,
    bytes: u64,
}

impl Pushes {
    fn count(&mut self, text: &[u8]) {
        // The kind is near the start: `{"type":"presence",..` or
        // `{"connections":..,"topic":..,"type":"occupancy",..`. A search over a prefix
        // keeps a large presence push cheap to classify.
        let head = &text[..text.len().min(256)];
        let has = |needle: &[u8]| head.windows(needle.len()).any(|w| w == needle);
        if has(b"\"type\":\"presence\"") {
            self.presence += 1;
        } else if has(b"\"type\":\"occupancy\"") {
            self.occupancy += 1;
        } else {
            self.other += 1;
        }
        self.bytes += text.len() as u64;
    }
}

/// Drives the held subscribers until `deadline` (with none held, waits).
fn pump(
    driver: &mut Driver,
    deadline: Instant,
    on: impl FnMut(&mut Conn, usize, Received),
) -> std::io::Result<()> {
    if driver.conns().is_empty() {
        std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
        return Ok(());
    }
    driver.run(deadline, on)
}

/// A [`Driver`] callback counting what the held subscribers get into `pushes`.
fn counting(pushes: &mut Pushes) -> impl FnMut(&mut Conn, usize, Received) + '_ {
    |_, _, received| {
        if let Received::Message(Message::Text(t)) = received {
            pushes.count(&t);
        }
    }
}

/// Where churning connections go, and how they subscribe.
struct Target {
    /// The server's address (from the URL's host and port).
    server: SocketAddr,
    /// The address they connect from, port chosen by the kernel.
    source: IpAddr,
    request: Request,
    /// The v1 subscribe command (raw mode subscribes in the URL).
    subscribe: Option<String>,
}

impl Target {
    fn of(args: &ChurnArgs) -> anyhow::Result<Self> {
        let (url, subscribe) = match args.protocol {
            Protocol::V1 => {
                let command = json!({"id": 1, "op": "subscribe", "topic": args.topic});
                (args.url.clone(), Some(command.to_string()))
            }
            Protocol::Raw => (format!("{}?topic={}", args.url, args.topic), None),
        };
        let mut request = url.as_str().into_client_request()?;
        for protocol in args.protocol.offered() {
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", protocol.parse()?);
        }
        let uri = request.uri();
        let host = uri.host().context("no host in --url")?;
        let server = format!("{}:{}", host, uri.port_u16().unwrap_or(80))
            .parse()
            .context("--url must name an IP address")?;
        Ok(Self {
            server,
            source: args.churn_source,
            request,
            subscribe,
        })
    }
}

/// The subscribe command's reply (or error), skipping pushes that come before it.
async fn await_reply<S>(ws: &mut WebSocketStream<S>) -> anyhow::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(message) = ws.next().await {
        let WsMessage::Text(text) = message? else {
            continue;
        };
        let value: serde_json::Value = serde_json::from_str(&text)?;
        if value.get("id") == Some(&json!(1)) {
            if value.get("type") == Some(&json!("reply")) {
                return Ok(());
            }
            bail!("subscribe refused: {value}");
        }
    }
    bail!("closed before the subscribe reply")
}

/// One churning connection: connect, subscribe, hold, close (Close, then the server's
/// Close and FIN).
async fn churner(target: Rc<Target>, hold: Duration, tally: Rc<Tally>) {
    let add = |sum: &Cell<Duration>, since: Instant| sum.set(sum.get() + since.elapsed());
    let result = async {
        let start = Instant::now();
        let socket = match target.source {
            IpAddr::V4(_) => TcpSocket::new_v4()?,
            IpAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.bind(SocketAddr::new(target.source, 0))?;
        let open = async {
            let stream = socket.connect(target.server).await?;
            stream.set_nodelay(true)?;
            let request = target.request.clone();
            anyhow::Ok(tokio_tungstenite::client_async(request, stream).await?)
        };
        let (mut ws, response) = tokio::time::timeout(CONNECT_TIMEOUT, open)
            .await
            .context("no connection within 10 s")??;
        bump(&tally.opened);
        if let Some(command) = &target.subscribe {
            if response.headers().get("Sec-WebSocket-Protocol").is_none() {
                bail!("the server did not take protocol v1");
            }
            ws.send(WsMessage::text(command.as_str())).await?;
            tokio::time::timeout(REPLY_TIMEOUT, await_reply(&mut ws))
                .await
                .context("no subscribe reply within 5 s")??;
        }
        bump(&tally.subscribed);
        add(&tally.subscribing, start);
        tokio::time::sleep(hold).await;
        let start = Instant::now();
        ws.close(None).await?;
        let closed = async { while let Some(Ok(_)) = ws.next().await {} };
        tokio::time::timeout(CLOSE_TIMEOUT, closed)
            .await
            .context("the server did not close within 3 s")?;
        add(&tally.closing, start);
        anyhow::Ok(())
    }
    .await;
    match result {
        Ok(()) => bump(&tally.closed),
        Err(e) => {
            bump(&tally.failed);
            tally.first_error.borrow_mut().get_or_insert(e.to_string());
        }
    }
    tally.open.set(tally.open.get() - 1);
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// Churns on a current-thread runtime on this thread: `rate` new connections a second
/// for `duration`, then waits for the last ones to close. `progress` counts closes.
fn churn(args: &ChurnArgs, progress: Arc<AtomicU64>) -> anyhow::Result<Churned> {
    let target = Rc::new(Target::of(args)?);
    let hold = Duration::try_from_secs_f64(args.hold)?;
    let total = (args.rate * args.duration).round() as u64;
    let (rate, max_open) = (args.rate, args.max_open);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    tokio::task::LocalSet::new().block_on(&runtime, async move {
        let tally = Rc::new(Tally::default());
        let started = Instant::now();
        for i in 0..total {
            if tally.open.get() >= max_open {
                bump(&tally.skipped);
            } else {
                tally.open.set(tally.open.get() + 1);
                tokio::task::spawn_local(churner(target.clone(), hold, tally.clone()));
            }
            progress.store(tally.closed.get(), Ordering::Relaxed);
            let due = Duration::from_secs_f64((i + 1) as f64 / rate);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        let elapsed = started.elapsed();
        // The last ones: their hold, then the close handshake (bounded by the timeouts:
        // connect 10 s, reply 5 s, close 3 s).
        let limit = Instant::now() + hold + Duration::from_secs(20);
        while tally.open.get() > 0 && Instant::now() < limit {
            progress.store(tally.closed.get(), Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if tally.open.get() > 0 {
            bail!(
                "{} churning connections still open 20 s after their hold",
                tally.open.get()
            );
        }
        Ok(Churned {
            opened: tally.opened.get(),
            subscribed: tally.subscribed.get(),
            closed: tally.closed.get(),
            failed: tally.failed.get(),
            skipped: tally.skipped.get(),
            first_error: tally.first_error.take(),
            subscribe_ms: tally.subscribing.get().as_secs_f64() * 1e3
                / tally.subscribed.get().max(1) as f64,
            close_ms: tally.closing.get().as_secs_f64() * 1e3 / tally.closed.get().max(1) as f64,
            elapsed,
        })
    })
}

pub(crate) fn run(args: ChurnArgs) -> anyhow::Result<()> {
    if args.rate <= 0.0 || args.duration <= 0.0 {
        bail!("--rate and --duration must be above 0");
    }
    let config = ClientConfig {
        deflate: args.deflate,
        protocols: args.protocol.offered(),
        ..ClientConfig::default()
    };
    let held_url = format!("{}?topic={}", args.url, args.topic);
    let mut driver = Driver::new(connect_many(&held_url, &config, args.count)?)?;
    let settle = Instant::now() + Duration::try_from_secs_f64(args.settle)?;
    let mut before = Pushes::default();
    pump(&mut driver, settle, counting(&mut before))?;
    let mut pushes = Pushes::default();
    let mut on = counting(&mut pushes);

    let progress = Arc::new(AtomicU64::new(0));
    let ticker = Ticker::start(
        Duration::try_from_secs_f64(args.duration)?,
        progress.clone(),
    );
    let server_watch = args.common.watch_cpu.map(CpuWatch::start).transpose()?;
    let server_cpu = args.common.server_pid.map(ProcessCpu::start).transpose()?;
    let window = Instant::now();
    let churner = std::thread::Builder::new().name("churn".into()).spawn({
        let (args, progress) = (args.clone(), progress.clone());
        move || churn(&args, progress)
    })?;
    while !churner.is_finished() {
        pump(
            &mut driver,
            Instant::now() + Duration::from_millis(100),
            &mut on,
        )?;
    }
    drop(on);
    let window = window.elapsed();
    let server_cpu_s = server_cpu.as_ref().map(|c| c.seconds()).transpose()?;
    let server_user_s = server_cpu.as_ref().map(|c| c.user_seconds()).transpose()?;
    let server_busy = server_watch.map(|w| w.busy()).transpose()?;
    let churned = churner
        .join()
        .map_err(|_| anyhow::anyhow!("the churn thread panicked"))??;
    ticker.finish();
    let held_closed = driver.conns().iter().filter(|c| c.is_done()).count();
    driver.close_all(Duration::from_secs(5))?;

    let churn_s = churned.elapsed.as_secs_f64();
    let per_churned_us = |s: f64| (s * 1e6 / churned.closed.max(1) as f64 * 10.0).round() / 10.0;
    report::finish(
        "churn",
        json!({"url": args.url, "topic": args.topic, "held": args.count, "rate": args.rate,
               "hold_s": args.hold, "duration_s": args.duration, "max_open": args.max_open,
               "protocol": format!("{:?}", args.protocol).to_lowercase(), "deflate": args.deflate}),
        json!({"opened": churned.opened,
               "subscribed": churned.subscribed,
               "churned": churned.closed,
               "failed": churned.failed,
               "first_error": churned.first_error,
               "skipped": churned.skipped,
               "mean_subscribe_ms": round2(churned.subscribe_ms),
               "mean_close_ms": round2(churned.close_ms),
               "opened_per_s": (churned.opened as f64 / churn_s).round(),
               "closed_per_s": (churned.closed as f64 / churn_s).round(),
               "window_s": round2(window.as_secs_f64()),
               "held_closed_by_server": held_closed,
               "held_messages_before_churn": before.presence + before.occupancy + before.other,
               "held_presence_pushes": pushes.presence,
               "held_occupancy_pushes": pushes.occupancy,
               "held_other_messages": pushes.other,
               "held_bytes_received": pushes.bytes,
               "server_cpu_s": server_cpu_s.map(round2),
               "server_cpu_us_per_churned": server_cpu_s.map(per_churned_us),
               "server_user_s": server_user_s.map(round2),
               "server_user_us_per_churned": server_user_s.map(per_churned_us),
               "server_cpu_busy": server_busy}),
        args.common.out.as_deref(),
    )
}
