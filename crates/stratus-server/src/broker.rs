//! The Redis backbone that lets several nodes share topics.
//!
//! With a broker, a publish on any node goes to Redis (`PUBLISH stratus:{topic}`) instead
//! of straight to the workers, and each node fans out locally, with the same encode-once
//! path, what Redis hands it. A node subscribes in Redis only to the topics it has local
//! subscribers for: the hub reports a topic's first and last subscriber on the node, in
//! order, and this thread keeps that set and mirrors it into Redis.
//!
//! One thread runs a small tokio runtime with two Redis connections: a multiplexed one
//! that publishes (requests waiting are pipelined in one batch, in arrival order, so one
//! publisher's messages keep their order), and a pub/sub one that receives. Redis passes
//! a channel's messages on in the order it executed the PUBLISHes, so every node sees a
//! topic in one order.
//!
//! With a history (`history`), a publish is an XADD and a PUBLISH in one Lua call, and
//! this thread also fetches the missed messages of connections that resume.
//!
//! When Redis is unreachable the node says so instead of dropping anything: publishes fail
//! with [`PublishError::BrokerUnavailable`] (503), readiness turns false, and the thread
//! reconnects with exponential backoff and resubscribes every topic it still needs.
//! Messages published elsewhere during the outage are not replayed: the node's
//! subscribers of each topic get a gap notice instead (see `commands`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use stratus_proto::Message;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::commands;
use crate::history::{self, HistoryDest, Offset};
use crate::hub::{Hub, PublishError, WorkerMsg};
use crate::metrics;

/// Redis channel names are the topic with this prefix: pub/sub channels are shared by all
/// of a Redis server's databases, so the prefix keeps Stratus's apart from others'.
const CHANNEL_PREFIX: &str = "stratus:";
/// First wait before reconnecting; doubled after each failed attempt up to the maximum.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long Redis has to answer a publish batch or a ping before the node calls it lost.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a history read may take; past it, its reader gets a gap notice.
const HISTORY_TIMEOUT: Duration = Duration::from_secs(5);
/// History reads in flight at once on a node; more wait in line.
const MAX_FETCHES: usize = 16;
/// History reads that may wait in line; past them, a resume gets a gap notice at once.
const MAX_QUEUED_FETCHES: usize = 1024;
/// Entries a recovery reads beyond `--history`, for what `MAXLEN ~` keeps beyond it.
const HISTORY_SLACK: usize = 1000;
/// How often the pub/sub connection is pinged, to notice a Redis that stopped answering.
const PING_INTERVAL: Duration = Duration::from_secs(1);
/// Most publishes sent in one pipeline.
const MAX_BATCH: usize = 1024;
/// The channel on which nodes tell each other they are overloaded. `!` cannot be in a
/// topic, so no topic's channel is this one.
const CONTROL_CHANNEL: &str = "stratus!control";
/// What a node overloaded says there (with its name), and for how long (ms) the others
/// take it to hold.
const OVERLOADED: &str = "overloaded";
const OVERLOAD_HOLD_MS: u64 = 500;
/// How often an overloaded node says so again while it stays overloaded.
const OVERLOAD_REPEAT: Duration = Duration::from_millis(100);
/// The gap notice's reason after the node was cut off from Redis.
const CUT_OFF: &str =
    "the node was cut off from the broker; messages published meanwhile may be missing";
/// The first payload byte says what kind of message follows (in lower case: an offset
/// and a space come before the body).
const TEXT: u8 = b'T';
const BINARY: u8 = b'B';

/// A publish on its way to Redis, and where its answer goes: how many nodes Redis passed
/// it to.
/// Counted in [`BrokerStats::backlog`] from the moment it is made until it is answered or
/// dropped (a session lost mid-batch drops its publishes, and their publishers get 503).
pub(crate) struct Outgoing {
    /// The topic, or empty for a message on the control channel.
    topic: String,
    payload: Vec<u8>,
    reply: Option<oneshot::Sender<Result<usize, PublishError>>>,
    stats: Arc<BrokerStats>,
}

impl Outgoing {
    fn new(
        topic: String,
        payload: Vec<u8>,
        stats: Arc<BrokerStats>,
    ) -> (Self, oneshot::Receiver<Result<usize, PublishError>>) {
        let (reply, rx) = oneshot::channel();
        let outgoing = Self {
            topic,
            payload,
            reply: Some(reply),
            stats,
        };
        let cost = outgoing.cost();
        outgoing.stats.backlog.fetch_add(cost, Ordering::Relaxed);
        (outgoing, rx)
    }

    /// What it holds until answered.
    fn cost(&self) -> u64 {
        (size_of::<Self>() + self.topic.len() + self.payload.len()) as u64
    }

    /// Answers the publisher.
    fn answer(mut self, result: Result<usize, PublishError>) {
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(result);
        }
    }
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        self.stats.backlog.fetch_sub(self.cost(), Ordering::Relaxed);
    }
}

/// What the hub and the workers ask of the broker thread, in order: a change in the
/// topics the node needs from Redis, a history fetch, or the end.
pub(crate) enum BrokerRequest {
    /// The topic's first subscriber on the node, and which arrival of the topic this is
    /// (handed back to [`Hub::confirm`]).
    Add(Arc<str>, u64),
    Remove(Arc<str>),
    /// A page of a connection's missed messages on `topic` (asked for after the
    /// subscription, so nothing falls between history and live).
    History {
        topic: Arc<str>,
        read: HistoryRead,
    },
    /// The server has stopped: end the thread.
    Stop,
}

/// A read of one page of a connection's missed messages.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HistoryRead {
    /// The page starts after this offset.
    pub(crate) after: Offset,
    /// Where the page goes.
    pub(crate) to: HistoryDest,
    /// Bytes of messages the page may hold: what the connection's send queue has room
    /// for (at least one message comes, so the replay always moves on).
    pub(crate) budget: usize,
    /// Entries of the history this recovery has already been sent.
    pub(crate) fetched: usize,
    /// The average payload of the entries sent so far (0 before the first page): the
    /// page is sized from it, so that a read fetches little beyond the budget.
    pub(crate) average: usize,
}

/// The broker's counters and state, for readiness and `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct BrokerStats {
    pub(crate) up: AtomicBool,
    pub(crate) disconnects: AtomicU64,
    pub(crate) published: AtomicU64,
    pub(crate) publish_errors: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) topics: AtomicU64,
    /// Bytes of publishes handed to the broker thread and not yet answered by Redis.
    pub(crate) backlog: AtomicU64,
    /// This node's name on the control channel (its own word there is not taken).
    pub(crate) node: AtomicU64,
    /// Until when (ms since the Unix epoch, on this node's clock) another node of the cluster
    /// is overloaded, by what it last said: publishes are held back on every node
    /// meanwhile.
    pub(crate) cluster_overloaded_until: AtomicU64,
    /// Times this node told the cluster it is overloaded.
    pub(crate) overload_signals: AtomicU64,
    /// History reads answered with a gap because too many were in line.
    pub(crate) history_refused: AtomicU64,
    /// History reads that failed or timed out (each answered with a gap).
    pub(crate) history_errors: AtomicU64,
}

/// The hub's side of the broker: where publishes and requests go.
pub(crate) struct BrokerLink {
    /// Names this node on the control channel (random: nodes need only tell themselves
    /// apart from the others).
    node: u64,
    /// Messages kept per topic in Redis (0: none).
    history: usize,
    publishes: mpsc::UnboundedSender<Outgoing>,
    requests: mpsc::UnboundedSender<BrokerRequest>,
    pub(crate) stats: Arc<BrokerStats>,
}

/// The broker thread's side.
pub(crate) struct BrokerTask {
    client: redis::Client,
    /// Messages kept per topic in Redis for recovery (0: none).
    history: usize,
    publishes: mpsc::UnboundedReceiver<Outgoing>,
    requests: mpsc::UnboundedReceiver<BrokerRequest>,
    stats: Arc<BrokerStats>,
}

/// Checks a broker URL: `redis://host[:port][/db]`.
pub(crate) fn client(url: &str) -> Result<redis::Client, String> {
    if !url.starts_with("redis://") {
        return Err(format!("broker {url:?}: only redis:// URLs are supported"));
    }
    redis::Client::open(url).map_err(|e| format!("broker {url:?}: {e}"))
}

/// The two ends of a broker for `client`, keeping `history` messages per topic.
pub(crate) fn link(client: redis::Client, history: usize) -> (BrokerLink, BrokerTask) {
    let (publish_tx, publish_rx) = mpsc::unbounded_channel();
    let (request_tx, request_rx) = mpsc::unbounded_channel();
    let stats = Arc::new(BrokerStats::default());
    let node = {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        hasher.finish()
    };
    stats.node.store(node, Ordering::Relaxed);
    let link = BrokerLink {
        node,
        history,
        publishes: publish_tx,
        requests: request_tx,
        stats: stats.clone(),
    };
    let task = BrokerTask {
        client,
        history,
        publishes: publish_rx,
        requests: request_rx,
        stats,
    };
    (link, task)
}

impl BrokerLink {
    /// Whether Redis keeps a history per topic (recovery with `since`).
    pub(crate) fn keeps_history(&self) -> bool {
        self.history > 0
    }

    /// Whether the node is connected to Redis (readiness).
    pub(crate) fn is_up(&self) -> bool {
        self.stats.up.load(Ordering::Acquire)
    }

    /// Sends `message` to Redis for `topic`; the receiver gets how many nodes took it.
    /// While `max_backlog` bytes of publishes already wait for Redis's answer, the node
    /// takes no more ([`PublishError::Overloaded`]).
    pub(crate) fn publish(
        &self,
        topic: &str,
        message: &Message,
        max_backlog: usize,
    ) -> Result<oneshot::Receiver<Result<usize, PublishError>>, PublishError> {
        let (kind, body) = match message {
            Message::Text(b) => (TEXT, b),
            Message::Binary(b) => (BINARY, b),
            _ => return Err(PublishError::NotData),
        };
        if !self.is_up() {
            metrics::add(&self.stats.publish_errors, 1);
            return Err(PublishError::BrokerUnavailable);
        }
        if self.stats.backlog.load(Ordering::Relaxed) >= max_backlog as u64 {
            return Err(PublishError::Overloaded);
        }
        let mut payload = Vec::with_capacity(1 + body.len());
        payload.push(kind);
        payload.extend_from_slice(body);
        let (outgoing, rx) = Outgoing::new(topic.to_owned(), payload, self.stats.clone());
        self.publishes
            .send(outgoing)
            .map_err(|_| PublishError::BrokerUnavailable)?;
        Ok(rx)
    }

    /// Whether another node of the cluster has said it is overloaded, and not long enough
    /// ago for that to have lapsed (this node knows its own state first hand).
    pub(crate) fn cluster_is_overloaded(&self) -> bool {
        now_ms() < self.stats.cluster_overloaded_until.load(Ordering::Relaxed)
    }

    /// Tells every node that this one is overloaded: they hold their publishes back for
    /// a moment (a node fans out what any node publishes, so only the publishers can
    /// relieve it).
    pub(crate) fn signal_overload(&self) {
        let payload = format!("{OVERLOADED} {} {OVERLOAD_HOLD_MS}", self.node).into_bytes();
        let (outgoing, _) = Outgoing::new(String::new(), payload, self.stats.clone());
        if self.publishes.send(outgoing).is_ok() {
            metrics::add(&self.stats.overload_signals, 1);
        }
    }

    /// Sends `request` to the broker thread, after those sent before it.
    pub(crate) fn request(&self, request: BrokerRequest) {
        let _ = self.requests.send(request);
    }
}

/// Decodes a message from Redis (its channel and payload): its topic, message and offset
/// in the topic's history (if kept), or `None` if it is not one a node published.
fn decode<'a>(channel: &'a str, payload: &[u8]) -> Option<(&'a str, Message, Option<Offset>)> {
    let topic = channel.strip_prefix(CHANNEL_PREFIX)?;
    let (&kind, rest) = payload.split_first()?;
    if kind.is_ascii_lowercase() {
        let space = rest.iter().position(|&b| b == b' ')?;
        let offset = Offset::parse(std::str::from_utf8(&rest[..space]).ok()?)?;
        let message = message(kind.to_ascii_uppercase(), &rest[space + 1..])?;
        return Some((topic, message, Some(offset)));
    }
    Some((topic, message(kind, rest)?, None))
}

/// The message of a kind byte and body, or `None` for an unknown kind or text that is not
/// UTF-8.
fn message(kind: u8, body: &[u8]) -> Option<Message> {
    let body = Bytes::copy_from_slice(body);
    match kind {
        TEXT if simdutf8::basic::from_utf8(&body).is_ok() => Some(Message::Text(body)),
        BINARY => Some(Message::Binary(body)),
        _ => None,
    }
}

/// A stream entry as Redis sends it: the id, and the fields and values (`m`, payload).
type RawEntry = (String, Vec<Vec<u8>>);

/// A page of what a connection missed.
pub(crate) struct Recovered {
    /// The missed messages, oldest first.
    pub(crate) entries: Vec<(Offset, Message)>,
    /// Why some may be missing (`None`: the history reached back).
    pub(crate) gap: Option<&'static str>,
    /// Live messages up to this offset are in `entries` or came before the page: the
    /// offset the page starts after, or the newest in the history if that is older
    /// (`Offset::ZERO` for a read that failed: the worker then keeps to where the page
    /// started).
    pub(crate) floor: Offset,
    /// More of the history follows the page's last entry.
    pub(crate) more: bool,
}

impl Recovered {
    /// Nothing could be read: the client gets a gap notice and every live message.
    pub(crate) fn unavailable(why: &'static str) -> Self {
        Self {
            entries: Vec::new(),
            gap: Some(why),
            floor: Offset::ZERO,
            more: false,
        }
    }
}

/// Most entries read for one page (a page is also cut to the reader's send-queue budget).
const PAGE: usize = 512;
/// Entries read for a recovery's first page, before their sizes are known.
const FIRST_PAGE: usize = 16;
/// What a replayed entry costs in the reader's send queue beyond its payload: its frame
/// header and offset notice, and two queue entries.
const REPLAY_ENTRY_COST: usize = 128 + 2 * stratus_uring::ENTRY_OVERHEAD;

/// One page of what came after `read.after` in `topic`'s history: at most [`PAGE`]
/// entries, and no more bytes than `read.budget` (but at least one entry), and at most
/// `limit` entries over the whole recovery. Redis trims the oldest entries first, so
/// while the entry at `after` is still there nothing after it was trimmed; once it is
/// gone, some may have been.
async fn fetch_history(
    conn: &mut MultiplexedConnection,
    topic: &str,
    read: HistoryRead,
    limit: usize,
) -> redis::RedisResult<Recovered> {
    let after = read.after;
    let key = history::key(topic);
    // Sized so that what Redis sends is about the budget: a first page of a few entries,
    // then as many as the budget holds at the average seen.
    let wanted = match read.average {
        0 => FIRST_PAGE,
        average => read.budget / (average + REPLAY_ENTRY_COST),
    };
    let count = wanted
        .min(PAGE)
        .min(limit.saturating_sub(read.fetched))
        .max(1);
    let (entries, newest): (Vec<RawEntry>, Vec<RawEntry>) = redis::pipe()
        .cmd("XRANGE")
        .arg(&key)
        .arg(after.to_string())
        .arg("+")
        .arg("COUNT")
        .arg(count + 1)
        .cmd("XREVRANGE")
        .arg(&key)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    let mut entries: Vec<(Offset, Message)> = entries
        .into_iter()
        .filter_map(|(id, fields)| {
            let offset = Offset::parse(&id)?;
            let (&kind, body) = fields.get(1)?.split_first()?;
            Some((offset, message(kind, body)?))
        })
        .collect();
    let Some(newest) = newest.first().and_then(|(id, _)| Offset::parse(id)) else {
        return Ok(Recovered::unavailable(
            "no history is kept for this topic any more",
        ));
    };
    if after > newest {
        return Ok(Recovered {
            entries: Vec::new(),
            gap: Some("the offset is newer than anything in the topic's history"),
            floor: newest,
            more: false,
        });
    }
    let mut gap = match entries.first() {
        Some((first, _)) if *first == after => {
            entries.remove(0);
            None
        }
        _ if read.fetched > 0 => Some("the history was trimmed while it was being replayed"),
        _ => Some("the history no longer reaches back to this offset"),
    };
    entries.truncate(count);
    let mut bytes = 0;
    let within_budget = entries
        .iter()
        .take_while(|(_, m)| {
            bytes += m.payload_len() + REPLAY_ENTRY_COST;
            bytes <= read.budget
        })
        .count();
    entries.truncate(within_budget.max(1));
    let mut more = entries.last().is_some_and(|(last, _)| *last < newest);
    if more && read.fetched + entries.len() >= limit {
        more = false;
        gap = Some("the history holds more than this node fetches (a larger --history elsewhere)");
    }
    Ok(Recovered {
        entries,
        gap,
        floor: after,
        more,
    })
}

impl BrokerTask {
    /// Runs the broker on `runtime` until the server stops: connect, serve, and on a
    /// loss reconnect with backoff, failing publishes meanwhile.
    pub(crate) fn run(mut self, runtime: tokio::runtime::Runtime, hub: Arc<Hub>) {
        runtime.block_on(async move {
            let mut wanted = Wanted::new();
            let mut backoff = MIN_BACKOFF;
            let mut reported = false;
            // Whether the node has been without Redis (a failed attempt or a lost
            // session) since it was last connected.
            let mut cut_off = false;
            loop {
                if !self.take_changes(&mut wanted, &hub) {
                    return;
                }
                match self.connect(&wanted).await {
                    Ok(session) => {
                        self.stats.up.store(true, Ordering::Release);
                        info!(topics = wanted.len(), "connected to the broker");
                        backoff = MIN_BACKOFF;
                        reported = false;
                        for (topic, &arrival) in &wanted {
                            hub.confirm(topic, arrival);
                        }
                        if cut_off {
                            for topic in wanted.keys() {
                                let notice = commands::gap_notice(topic, CUT_OFF);
                                fan_out(&hub, topic, Message::text(notice), None).await;
                            }
                        }
                        let lost = self.serve(session, &hub, &mut wanted).await;
                        self.stats.up.store(false, Ordering::Release);
                        self.stats.topics.store(0, Ordering::Relaxed);
                        hub.unconfirm_all();
                        match lost {
                            None => return,
                            Some(reason) => {
                                metrics::add(&self.stats.disconnects, 1);
                                warn!(%reason, "lost the broker; publishing answers 503 until it is back");
                            }
                        }
                    }
                    Err(err) if !reported => {
                        reported = true;
                        warn!(error = %err, "cannot reach the broker; retrying with backoff");
                    }
                    Err(_) => {}
                }
                cut_off = true;
                if !self.wait(backoff, &mut wanted, &hub).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        });
    }

    /// Takes in the interest changes waiting; `false` if the server stopped.
    fn take_changes(&mut self, wanted: &mut Wanted, hub: &Hub) -> bool {
        loop {
            match self.requests.try_recv() {
                Ok(change) => {
                    if !apply(wanted, change, hub) {
                        return false;
                    }
                }
                Err(mpsc::error::TryRecvError::Disconnected) => return false,
                Err(mpsc::error::TryRecvError::Empty) => return true,
            }
        }
    }

    /// Connects the three connections (publishing, history reads, pub/sub) and
    /// subscribes to every topic in `wanted`.
    async fn connect(&self, wanted: &Wanted) -> redis::RedisResult<Session> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(RESPONSE_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let publisher = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        // History reads have a connection of their own: a long read delays neither
        // publishes nor, since Redis answers a connection's requests in order, other
        // connections' requests queued behind it.
        let reader = if self.history > 0 {
            let config = config.set_response_timeout(Some(HISTORY_TIMEOUT));
            Some(
                self.client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?,
            )
        } else {
            None
        };
        let (mut sink, stream) = within(self.client.get_async_pubsub()).await?.split();
        within(sink.subscribe(CONTROL_CHANNEL)).await?;
        let channels: Vec<String> = wanted.keys().map(|t| channel(t)).collect();
        for chunk in channels.chunks(MAX_BATCH) {
            within(sink.subscribe(chunk)).await?;
        }
        self.stats
            .topics
            .store(wanted.len() as u64, Ordering::Relaxed);
        Ok(Session {
            publisher,
            reader,
            sink,
            stream,
        })
    }

    /// Serves a connected session until it breaks (`Some(reason)`) or the server stops
    /// (`None`).
    async fn serve(&mut self, session: Session, hub: &Hub, wanted: &mut Wanted) -> Option<String> {
        let Session {
            publisher,
            reader,
            sink,
            stream,
        } = session;
        let stats = self.stats.clone();
        let receiving = Receiving {
            hub,
            stats: &stats,
            reader,
            limit: self.history.saturating_add(HISTORY_SLACK),
            sink,
            subscribed: HashSet::new(),
            confirmed: HashSet::new(),
            fetches: FuturesUnordered::new(),
            queued: VecDeque::new(),
        };
        tokio::select! {
            lost = publish_loop(&mut self.publishes, publisher, self.history, &stats) => Some(lost),
            lost = receiving.run(&mut self.requests, wanted, stream) => lost,
        }
    }

    /// Waits `backoff` while disconnected: publishes that were already queued fail,
    /// interest changes are kept. `false` if the server stopped.
    async fn wait(&mut self, backoff: Duration, wanted: &mut Wanted, hub: &Hub) -> bool {
        let sleep = tokio::time::sleep(backoff);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return true,
                Some(outgoing) = self.publishes.recv() => {
                    metrics::add(&self.stats.publish_errors, 1);
                    outgoing.answer(Err(PublishError::BrokerUnavailable));
                }
                change = self.requests.recv() => {
                    if !change.is_some_and(|change| apply(wanted, change, hub)) {
                        return false;
                    }
                }
            }
        }
    }
}

/// Runs a Redis request, failing it if Redis has not answered within the response timeout.
async fn within<T>(request: impl Future<Output = redis::RedisResult<T>>) -> redis::RedisResult<T> {
    tokio::time::timeout(RESPONSE_TIMEOUT, request)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()))
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Takes in a message on the control channel, `overloaded <node> <ms>`: another node
/// saying it is overloaded holds this node's publishes back for the time it names (at most
/// a few seconds).
fn on_control(payload: &[u8], stats: &BrokerStats) {
    let mut words = std::str::from_utf8(payload).unwrap_or("").split(' ');
    let (Some(OVERLOADED), Some(node), Some(hold)) = (words.next(), words.next(), words.next())
    else {
        metrics::add(&stats.rejected, 1);
        return;
    };
    if node.parse() == Ok(stats.node.load(Ordering::Relaxed)) {
        return;
    }
    let hold = hold.parse::<u64>().unwrap_or(OVERLOAD_HOLD_MS).min(5_000);
    stats
        .cluster_overloaded_until
        .fetch_max(now_ms() + hold, Ordering::Relaxed);
}

fn channel(topic: &str) -> String {
    format!("{CHANNEL_PREFIX}{topic}")
}

/// Applies an interest change to the set while disconnected (a history request is
/// answered with a gap at once); `false` for [`BrokerRequest::Stop`].
fn apply(wanted: &mut Wanted, change: BrokerRequest, hub: &Hub) -> bool {
    match change {
        BrokerRequest::History { topic, read } => HistoryReply::new(hub, topic, read.to).send(
            Recovered::unavailable("the history could not be read from the broker"),
        ),
        BrokerRequest::Add(topic, arrival) => {
            wanted.insert(topic, arrival);
        }
        BrokerRequest::Remove(topic) => {
            wanted.remove(&topic);
        }
        BrokerRequest::Stop => return false,
    }
    true
}

/// The topics the node needs from Redis, each with its arrival number.
type Wanted = HashMap<Arc<str>, u64>;

/// A history read being served: if it is dropped unanswered (the session ended while
/// Redis was being asked), the connection still gets its answer, a gap.
struct HistoryReply<'a> {
    hub: &'a Hub,
    to: Option<(HistoryDest, Arc<str>)>,
}

impl<'a> HistoryReply<'a> {
    fn new(hub: &'a Hub, topic: Arc<str>, to: HistoryDest) -> Self {
        Self {
            hub,
            to: Some((to, topic)),
        }
    }

    fn send(mut self, recovered: Recovered) {
        if let Some((to, topic)) = self.to.take() {
            let msg = WorkerMsg::History {
                to,
                topic,
                recovered,
            };
            self.hub.to_worker(to.worker, msg);
        }
    }
}

impl Drop for HistoryReply<'_> {
    fn drop(&mut self) {
        if let Some((to, topic)) = self.to.take() {
            let why = "the history could not be read from the broker";
            Self::new(self.hub, topic, to).send(Recovered::unavailable(why));
        }
    }
}

/// A live connection to Redis.
struct Session {
    publisher: MultiplexedConnection,
    /// For history reads (with `--history`).
    reader: Option<MultiplexedConnection>,
    sink: PubSubSink,
    stream: PubSubStream,
}

/// Sends publishes to Redis in arrival order, as many per pipeline as are waiting, and
/// answers each with the number of nodes subscribed. Returns why it stopped.
async fn publish_loop(
    publishes: &mut mpsc::UnboundedReceiver<Outgoing>,
    mut conn: MultiplexedConnection,
    history: usize,
    stats: &BrokerStats,
) -> String {
    let mut batch = Vec::new();
    loop {
        let Some(first) = publishes.recv().await else {
            return "publishing stopped".into();
        };
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match publishes.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let mut pipe = redis::pipe();
        for p in &batch {
            if p.topic.is_empty() {
                pipe.cmd("PUBLISH").arg(CONTROL_CHANNEL).arg(&p.payload[..]);
            } else if history > 0 {
                pipe.cmd("EVAL")
                    .arg(history::PUBLISH_SCRIPT)
                    .arg(2)
                    .arg(history::key(&p.topic))
                    .arg(channel(&p.topic))
                    .arg(history)
                    .arg(&p.payload[..]);
            } else {
                pipe.cmd("PUBLISH")
                    .arg(channel(&p.topic))
                    .arg(&p.payload[..]);
            }
        }
        // Each publish gets its own answer: an error reply (out of memory, say) fails that
        // publish only; a broken connection fails the batch and ends the session.
        let answers = pipe
            .ignore_errors()
            .query_async::<Vec<redis::RedisResult<usize>>>(&mut conn);
        let failure = match answers.await {
            Ok(answers) if answers.len() == batch.len() => {
                for (p, answer) in batch.drain(..).zip(answers) {
                    let reply = answer.map_err(|err| {
                        warn!(error = %err, "Redis refused a publish");
                        metrics::add(&stats.publish_errors, 1);
                        PublishError::BrokerUnavailable
                    });
                    if reply.is_ok() {
                        metrics::add(&stats.published, 1);
                    }
                    p.answer(reply);
                }
                continue;
            }
            Ok(_) => "Redis answered a publish batch with the wrong count".to_owned(),
            Err(err) => err.to_string(),
        };
        metrics::add(&stats.publish_errors, batch.len() as u64);
        for p in batch.drain(..) {
            p.answer(Err(PublishError::BrokerUnavailable));
        }
        return failure;
    }
}

/// A change of the node's Redis subscriptions on its way: the topics subscribed and
/// unsubscribed in one round trip each.
type Change<'a> = Pin<Box<dyn Future<Output = redis::RedisResult<Vec<Arc<str>>>> + 'a>>;

/// The receiving side of a session: it fans out what Redis sends, mirrors the node's
/// interest into Redis subscriptions, serves history reads, and pings. None of these
/// waits in line with the stream: subscription changes go in batches, one round trip in
/// flight, while the stream is read; history reads run beside it on their own
/// connection, a bounded number at once, each failing on its own (a gap for that reader,
/// never the end of the session). Only the node's own workers, when behind, hold the
/// stream up (and then the node refuses publishes: see `Hub::publish`).
struct Receiving<'a> {
    hub: &'a Hub,
    stats: &'a BrokerStats,
    /// The connection for history reads (with a history).
    reader: Option<MultiplexedConnection>,
    /// Most history entries one recovery reads.
    limit: usize,
    sink: PubSubSink,
    /// The topics Redis has confirmed, or is confirming, for the node.
    subscribed: HashSet<Arc<str>>,
    /// The topics Redis has confirmed: a history read waits for its topic to be here,
    /// so that whatever is published after the read reaches the node live.
    confirmed: HashSet<Arc<str>>,
    /// History reads in flight.
    fetches: FuturesUnordered<Pin<Box<dyn Future<Output = ()> + 'a>>>,
    /// History reads waiting for one in flight to end.
    queued: VecDeque<(Arc<str>, HistoryRead)>,
}

impl Drop for Receiving<'_> {
    /// The session ended: the reads still in line are answered with a gap (those in flight
    /// answer as they are dropped).
    fn drop(&mut self) {
        for (topic, read) in self.queued.drain(..) {
            let why = "the history could not be read from the broker";
            HistoryReply::new(self.hub, topic, read.to).send(Recovered::unavailable(why));
        }
    }
}

impl<'a> Receiving<'a> {
    /// Runs until the session breaks (`Some(reason)`) or the server stops (`None`).
    async fn run(
        mut self,
        requests: &mut mpsc::UnboundedReceiver<BrokerRequest>,
        wanted: &mut Wanted,
        mut stream: PubSubStream,
    ) -> Option<String> {
        self.subscribed = wanted.keys().cloned().collect();
        self.confirmed = self.subscribed.clone();
        let mut change: Option<Change<'a>> = None;
        let mut ping: Option<Pin<Box<dyn Future<Output = redis::RedisResult<()>> + 'a>>> = None;
        let mut ticks = tokio::time::interval(PING_INTERVAL);
        loop {
            // A subscription confirmed goes to the workers before the stream is read
            // again: they hear of it before any message on the topic.
            if let Some(done) = change.as_mut().and_then(|c| c.as_mut().now_or_never()) {
                change = None;
                if let Err(lost) = self.changed(done, wanted) {
                    return Some(lost);
                }
            }
            if change.is_none() {
                change = self.next_change(wanted);
            }
            self.start_fetches(wanted);
            tokio::select! {
                Some(done) = async { change.as_mut()?.await.into() }, if change.is_some() => {
                    change = None;
                    if let Err(lost) = self.changed(done, wanted) {
                        return Some(lost);
                    }
                }
                Some(()) = self.fetches.next(), if !self.fetches.is_empty() => {}
                request = requests.recv() => match request {
                    Some(BrokerRequest::Add(topic, arrival)) => {
                        // Still subscribed in Redis (its removal had not gone out yet):
                        // this arrival is confirmed as it is.
                        if self.confirmed.contains(&topic) {
                            self.hub.confirm(&topic, arrival);
                        }
                        wanted.insert(topic, arrival);
                    }
                    Some(BrokerRequest::Remove(topic)) => {
                        wanted.remove(&topic);
                    }
                    Some(BrokerRequest::History { topic, read }) => self.queue_fetch(topic, read),
                    Some(BrokerRequest::Stop) | None => return None,
                },
                msg = stream.next() => {
                    let Some(msg) = msg else {
                        return Some("the pub/sub connection closed".into());
                    };
                    if msg.get_channel_name() == CONTROL_CHANNEL {
                        on_control(msg.get_payload_bytes(), self.stats);
                        continue;
                    }
                    match decode(msg.get_channel_name(), msg.get_payload_bytes()) {
                        Some((topic, message, offset)) => {
                            metrics::add(&self.stats.received, 1);
                            fan_out(self.hub, topic, message, offset).await;
                        }
                        None => metrics::add(&self.stats.rejected, 1),
                    }
                }
                _ = ticks.tick(), if ping.is_none() => {
                    let mut sink = self.sink.clone();
                    // A subscribed connection answers PING with an array: take any value.
                    ping = Some(Box::pin(async move {
                        within(sink.ping::<redis::Value>()).await.map(drop)
                    }));
                }
                Some(pinged) = async { ping.as_mut()?.await.into() }, if ping.is_some() => {
                    ping = None;
                    if let Err(err) = pinged {
                        return Some(format!("ping: {err}"));
                    }
                }
            }
        }
    }

    /// The round trip that brings Redis's subscriptions to `wanted`, if they differ:
    /// everything wanted and not subscribed in one SUBSCRIBE, everything subscribed and
    /// no longer wanted in one UNSUBSCRIBE (each in chunks). However fast topics come and
    /// go, one change is in flight and the next one takes all that came meanwhile.
    fn next_change(&mut self, wanted: &Wanted) -> Option<Change<'a>> {
        let add: Vec<Arc<str>> = wanted
            .keys()
            .filter(|t| !self.subscribed.contains(*t))
            .cloned()
            .collect();
        let remove: Vec<Arc<str>> = self
            .subscribed
            .iter()
            .filter(|t| !wanted.contains_key(*t))
            .cloned()
            .collect();
        if add.is_empty() && remove.is_empty() {
            return None;
        }
        for t in &remove {
            self.subscribed.remove(t);
            self.confirmed.remove(t);
        }
        self.subscribed.extend(add.iter().cloned());
        let mut sink = self.sink.clone();
        Some(Box::pin(async move {
            let names = |topics: &[Arc<str>]| topics.iter().map(|t| channel(t)).collect::<Vec<_>>();
            for chunk in remove.chunks(MAX_BATCH) {
                within(sink.unsubscribe(names(chunk))).await?;
            }
            for chunk in add.chunks(MAX_BATCH) {
                within(sink.subscribe(names(chunk))).await?;
            }
            Ok(add)
        }))
    }

    /// A change came back: the topics it subscribed are confirmed to the workers (each
    /// for its current arrival), or the session is lost.
    fn changed(
        &mut self,
        done: redis::RedisResult<Vec<Arc<str>>>,
        wanted: &Wanted,
    ) -> Result<(), String> {
        let added = done.map_err(|err| err.to_string())?;
        for topic in added {
            if let Some(&arrival) = wanted.get(&topic) {
                self.hub.confirm(&topic, arrival);
            }
            self.confirmed.insert(topic);
        }
        self.stats
            .topics
            .store(self.subscribed.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Puts a history read in line (or answers it with a gap if the line is full).
    fn queue_fetch(&mut self, topic: Arc<str>, read: HistoryRead) {
        if self.queued.len() >= MAX_QUEUED_FETCHES {
            metrics::add(&self.stats.history_refused, 1);
            let why = "too many histories are being read on this node; resume again shortly";
            HistoryReply::new(self.hub, topic, read.to).send(Recovered::unavailable(why));
            return;
        }
        self.queued.push_back((topic, read));
    }

    /// Starts the history reads in line whose topics Redis has confirmed, while fewer
    /// than [`MAX_FETCHES`] are in flight; a read whose topic is no longer subscribed is
    /// answered with a gap (its connection has moved on).
    fn start_fetches(&mut self, wanted: &Wanted) {
        let mut at = 0;
        while self.fetches.len() < MAX_FETCHES && at < self.queued.len() {
            let topic = &self.queued[at].0;
            if !wanted.contains_key(topic) {
                if let Some((topic, read)) = self.queued.remove(at) {
                    let why = "the topic was unsubscribed before its history was read";
                    HistoryReply::new(self.hub, topic, read.to).send(Recovered::unavailable(why));
                }
            } else if self.confirmed.contains(topic) {
                if let Some((topic, read)) = self.queued.remove(at) {
                    self.start_fetch(topic, read);
                }
            } else {
                at += 1;
            }
        }
    }

    /// Starts a history read; it answers its connection whatever happens.
    fn start_fetch(&mut self, topic: Arc<str>, read: HistoryRead) {
        let (hub, stats, limit) = (self.hub, self.stats, self.limit);
        let Some(mut conn) = self.reader.clone() else {
            let why = "no history is kept (the nodes need --broker and --history)";
            HistoryReply::new(hub, topic, read.to).send(Recovered::unavailable(why));
            return;
        };
        // Made before the read starts: dropped unpolled, it still answers.
        let reply = HistoryReply::new(hub, topic.clone(), read.to);
        self.fetches.push(Box::pin(async move {
            let fetched = tokio::time::timeout(
                HISTORY_TIMEOUT,
                fetch_history(&mut conn, &topic, read, limit),
            )
            .await;
            match fetched {
                Ok(Ok(recovered)) => reply.send(recovered),
                // A read that fails or takes too long answers its reader with a gap (the
                // reply's drop); the session and every other reader carry on.
                Ok(Err(err)) => {
                    metrics::add(&stats.history_errors, 1);
                    warn!(%topic, error = %err, "history read failed");
                }
                Err(_) => {
                    metrics::add(&stats.history_errors, 1);
                    warn!(%topic, "history read timed out");
                }
            }
        }));
    }
}

/// Hands a message from Redis to this node's workers, waiting while a worker's inbox is
/// full rather than dropping it. While it waits, the node tells the cluster it is
/// overloaded (every [`OVERLOAD_REPEAT`]), so publishers on every node are held back
/// instead of Redis's messages piling up here.
async fn fan_out(hub: &Hub, topic: &str, message: Message, offset: Option<Offset>) {
    let mut signalled: Option<tokio::time::Instant> = None;
    loop {
        match hub.fan_out(topic, message.clone(), offset) {
            Err(PublishError::Overloaded) => {
                let now = tokio::time::Instant::now();
                if signalled.is_none_or(|at| now - at >= OVERLOAD_REPEAT)
                    && let Some(broker) = &hub.broker
                {
                    broker.signal_overload();
                    signalled = Some(now);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_redis_urls_are_accepted() {
        assert!(client("redis://127.0.0.1:6379/0").is_ok());
        assert!(client("http://127.0.0.1:6379").is_err());
        assert!(client("rediss://127.0.0.1:6379").is_err());
    }

    #[test]
    fn another_nodes_overload_holds_publishes_back_and_this_nodes_own_does_not() {
        let stats = BrokerStats::default();
        stats.node.store(7, Ordering::Relaxed);
        on_control(b"overloaded 7 500", &stats);
        assert_eq!(
            stats.cluster_overloaded_until.load(Ordering::Relaxed),
            0,
            "its own"
        );
        on_control(b"overloaded 8 500", &stats);
        let until = stats.cluster_overloaded_until.load(Ordering::Relaxed);
        assert!(until > now_ms() && until <= now_ms() + 500);
        on_control(b"overloaded 8 999999", &stats);
        assert!(
            stats.cluster_overloaded_until.load(Ordering::Relaxed) <= now_ms() + 5_000,
            "capped"
        );
        for junk in [&b"overloaded"[..], b"hello 1 2", b"", b"\xff"] {
            on_control(junk, &stats);
        }
        assert_eq!(stats.rejected.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn messages_from_redis_are_decoded_or_rejected() {
        assert_eq!(
            decode("stratus:a/b", b"Thi"),
            Some(("a/b", Message::text("hi"), None))
        );
        assert_eq!(
            decode("stratus:t", b"B\xff\x00"),
            Some(("t", Message::Binary(Bytes::from_static(b"\xff\x00")), None))
        );
        assert_eq!(
            decode("stratus:t", b"t17-2 hi there"),
            Some(("t", Message::text("hi there"), Offset::parse("17-2")))
        );
        assert_eq!(
            decode("stratus:t", b"t17-2hi"),
            None,
            "no space after the offset"
        );
        assert_eq!(decode("stratus:t", b"tx-2 hi"), None, "not an offset");
        assert_eq!(decode("stratus:t", b"T\xff"), None, "text must be UTF-8");
        assert_eq!(decode("stratus:t", b"Xhi"), None, "unknown kind");
        assert_eq!(decode("stratus:t", b""), None, "no kind byte");
        assert_eq!(decode("other:t", b"Thi"), None, "not our channel");
    }
}
