//! The broker thread: one small tokio runtime that keeps the node's session with each
//! Redis shard (connect, serve, lose, reconnect with backoff, each shard on its own),
//! publishes, mirrors the node's interest into Redis subscriptions, reads histories, and
//! hands what Redis sends to the node through [`Node`], never reaching into it.
//!
//! One [`BrokerTask`] per shard, all on the one runtime (a shard's task only ever waits on
//! Redis or on the node, so the tasks interleave without holding each other up). The
//! first shard's task also carries what is the node's rather than a topic's: the control
//! channel (overload signals, user-level control), presence reports and reads, the node
//! list. The other shards' tasks send their own control words (a node overloaded)
//! through the first's publish queue.
//!
//! In a Redis Cluster each master is a shard: its task names channels and keys as
//! [`Keyspace::Cluster`] says and subscribes with `SSUBSCRIBE` (`subscriber`); all else
//! is the same. With NATS there is one task, whose session is NATS's (`nats`): its own
//! connect, publish loop and history reads; the rest (interest, confirmations, the read
//! queue, reconnecting) is this file's.

use std::cell::Cell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use redis::aio::MultiplexedConnection;
use stratus_proto::Message;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::broker::history::fetch_history;
use crate::broker::presence;
use crate::broker::task::subscriber::{Incoming, Messages, Subscriber};
use crate::broker::wire::{self, Keyspace};
use crate::messages::{
    BrokerRequest, HistoryDest, HistoryPage, HistoryRead, Node, NodeFigures, Outgoing,
    PresenceOutcome, PresenceReplyTo, PublishError, Published, ReplyTo, Retention,
};
use crate::model::offset::Offset;
use crate::model::publication::Publication;
use crate::stats::{self, BrokerStats};
pub(crate) use nats::NatsLink;

/// First wait before reconnecting; doubled after each failed attempt up to the maximum.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long Redis has to answer a publish batch or a ping before the node calls it lost.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Every so many presence reports, one carries every topic (renewing the member lists,
/// which expire an hour after they were last written).
const FULL_REPORT_EVERY: u64 = 600;
/// How long a history read may take; past it, its reader gets a gap notice.
const HISTORY_TIMEOUT: Duration = Duration::from_secs(5);
/// History reads in flight at once on a node; more wait in line.
const MAX_FETCHES: usize = 16;
/// History reads that may wait in line; past them, a resume gets a gap notice at once.
const MAX_QUEUED_FETCHES: usize = 1024;
/// How often the pub/sub connection is pinged, to notice a Redis that stopped answering.
const PING_INTERVAL: Duration = Duration::from_secs(1);
/// At most one refused publish is logged per this long per shard (`RefusalLog`).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);
/// Most publishes sent in one pipeline.
const MAX_BATCH: usize = 1024;
/// How often an overloaded node says so again while it stays overloaded.
const OVERLOAD_REPEAT: Duration = Duration::from_millis(100);
/// The gap notice's reason after the node was cut off from Redis.
const CUT_OFF: &str =
    "the node was cut off from the broker; messages published meanwhile may be missing";

/// What a task connects to.
pub(crate) enum Link {
    Redis {
        client: Box<redis::Client>,
        /// In a Redis Cluster: a RESP3 client of the same master, for sharded pub/sub
        /// (`SSUBSCRIBE`, `SPUBLISH`, the cluster's names: [`Keyspace::Cluster`]).
        /// `None`: classic pub/sub on one Redis or an independent shard.
        sharded: Option<Box<redis::Client>>,
    },
    Nats(Box<NatsLink>),
}

impl Link {
    /// One Redis, or an independent shard (or a cluster's master, until
    /// [`BrokerTask::in_cluster`]).
    pub(crate) fn redis(client: redis::Client) -> Self {
        Self::Redis {
            client: Box::new(client),
            sharded: None,
        }
    }
}

/// The broker thread's side of one shard.
pub(crate) struct BrokerTask {
    /// The shard's index in the `--broker` list (0: the first, which also carries what is
    /// node-wide).
    shard: usize,
    link: Link,
    /// Whether any topic keeps a history (the task then reads histories on a
    /// connection of its own).
    reads_history: bool,
    publishes: mpsc::UnboundedReceiver<Outgoing>,
    requests: mpsc::UnboundedReceiver<BrokerRequest>,
    stats: Arc<BrokerStats>,
    /// The way into the first shard's publish queue, for the control channel.
    control: Control,
}

impl BrokerTask {
    /// The task of the first (or only) shard, at `link` (reading histories and presence,
    /// on a connection of its own, if `reads_history`): it takes the publishes and
    /// requests the node's `BrokerLink` sends it, and may add control words to the
    /// publishes itself (through `publish_tx`). `stats` are shared with the link; the
    /// node's name on the control channel is drawn here.
    pub(crate) fn new(
        link: Link,
        reads_history: bool,
        (publish_tx, publishes): (
            mpsc::UnboundedSender<Outgoing>,
            mpsc::UnboundedReceiver<Outgoing>,
        ),
        requests: mpsc::UnboundedReceiver<BrokerRequest>,
        stats: Arc<BrokerStats>,
    ) -> Self {
        let node = {
            use std::hash::{BuildHasher, Hasher};
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u32(std::process::id());
            hasher.finish()
        };
        stats.node.store(node, Ordering::Relaxed);
        let control = Control {
            publishes: publish_tx,
            stats: stats.clone(),
        };
        Self {
            shard: 0,
            link,
            reads_history,
            publishes,
            requests,
            stats,
            control,
        }
    }

    /// The task of another shard (`index` in the `--broker` list, after the first), at
    /// `client`: its topics only (reading their histories on a connection of its own if
    /// `reads_history`). Its control words go through this, the first shard's, publish
    /// queue; `stats` are shared with the link.
    pub(crate) fn shard(
        &self,
        index: usize,
        client: redis::Client,
        reads_history: bool,
        publishes: mpsc::UnboundedReceiver<Outgoing>,
        requests: mpsc::UnboundedReceiver<BrokerRequest>,
        stats: Arc<BrokerStats>,
    ) -> Self {
        let node = self.stats.node.load(Ordering::Relaxed);
        stats.node.store(node, Ordering::Relaxed);
        Self {
            shard: index,
            link: Link::redis(client),
            reads_history,
            publishes,
            requests,
            stats,
            control: self.control.clone(),
        }
    }

    /// The task as one of a Redis Cluster's masters: sharded pub/sub through `resp3` (a
    /// RESP3 client of the same master), and the cluster's names for channels and keys.
    pub(crate) fn in_cluster(mut self, resp3: redis::Client) -> Self {
        if let Link::Redis { sharded, .. } = &mut self.link {
            *sharded = Some(Box::new(resp3));
        }
        self
    }

    /// How the task names channels and keys, and publishes.
    fn keys(&self) -> Keyspace {
        match &self.link {
            Link::Redis {
                sharded: Some(_), ..
            } => Keyspace::Cluster,
            Link::Redis { sharded: None, .. } => Keyspace::Plain,
            Link::Nats(_) => Keyspace::Nats,
        }
    }

    /// Whether this is the first shard's task (the control channel, presence, user-level
    /// control).
    fn is_first(&self) -> bool {
        self.shard == 0
    }

    /// Runs every shard's task on `runtime` until the server stops (each has been sent
    /// [`BrokerRequest::Stop`]).
    pub(crate) fn run(
        tasks: Vec<Self>,
        runtime: tokio::runtime::Runtime,
        node: Arc<dyn Node + Send>,
    ) {
        let node: &dyn Node = &*node;
        runtime.block_on(futures_util::future::join_all(
            tasks.into_iter().map(|task| task.serve_shard(node)),
        ));
    }

    /// Serves the shard until the server stops: connect, serve, and on a loss reconnect
    /// with backoff, failing the shard's publishes meanwhile. The other shards are not
    /// told: their topics carry on.
    async fn serve_shard(mut self, node: &dyn Node) {
        let shard = self.shard;
        let mut wanted = Wanted::new();
        let mut backoff = MIN_BACKOFF;
        let mut reported = false;
        // Whether the node has been without Redis (a failed attempt or a lost
        // session) since it was last connected.
        let mut cut_off = false;
        loop {
            if !self.take_changes(&mut wanted, node) {
                return;
            }
            match self.connect(&wanted).await {
                Ok(session) => {
                    self.stats.up.store(true, Ordering::Release);
                    info!(shard, topics = wanted.len(), "connected to the broker");
                    backoff = MIN_BACKOFF;
                    reported = false;
                    for (topic, &arrival) in &wanted {
                        node.confirm(topic, arrival);
                    }
                    if cut_off {
                        for topic in wanted.keys() {
                            node.gap(topic, CUT_OFF);
                        }
                    }
                    let lost = self.serve(session, node, &mut wanted).await;
                    self.stats.up.store(false, Ordering::Release);
                    self.stats.topics.store(0, Ordering::Relaxed);
                    node.unconfirm_shard(shard);
                    match lost {
                        None => return,
                        Some(reason) => {
                            stats::add(&self.stats.disconnects, 1);
                            warn!(shard, %reason, "lost the broker; publishing to its topics answers 503 until it is back");
                        }
                    }
                }
                Err(error) if !reported => {
                    reported = true;
                    warn!(shard, %error, "cannot reach the broker; retrying with backoff");
                }
                Err(_) => {}
            }
            cut_off = true;
            if !self.wait(backoff, &mut wanted, node).await {
                return;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Takes in the interest changes waiting; `false` if the server stopped.
    fn take_changes(&mut self, wanted: &mut Wanted, node: &dyn Node) -> bool {
        loop {
            match self.requests.try_recv() {
                Ok(change) => {
                    if !apply(wanted, change, node) {
                        return false;
                    }
                }
                Err(mpsc::error::TryRecvError::Disconnected) => return false,
                Err(mpsc::error::TryRecvError::Empty) => return true,
            }
        }
    }

    /// Connects the session and subscribes to every topic in `wanted`; the error says
    /// what failed, for the log (no credential in it).
    async fn connect(&self, wanted: &Wanted) -> Result<Session, String> {
        match &self.link {
            Link::Redis { client, sharded } => self
                .connect_redis(client, sharded.as_deref(), wanted)
                .await
                .map_err(|err| crate::config::connect_failure(client, &err)),
            Link::Nats(link) => {
                let session = nats::connect(link, self.keys(), self.is_first(), wanted).await?;
                self.stats
                    .topics
                    .store(wanted.len() as u64, Ordering::Relaxed);
                Ok(Session {
                    publisher: Publisher::Nats(Box::new(session.publisher)),
                    reader: session.reader.map(Reader::Nats),
                    subscriber: Subscriber::Nats(session.subscriptions),
                    messages: session.messages,
                })
            }
        }
    }

    /// Connects the three Redis connections (publishing, history reads, pub/sub) and
    /// subscribes to every topic in `wanted`.
    async fn connect_redis(
        &self,
        client: &redis::Client,
        sharded: Option<&redis::Client>,
        wanted: &Wanted,
    ) -> redis::RedisResult<Session> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(RESPONSE_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let publisher = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        // History reads have a connection of their own: a long read delays neither
        // publishes nor, since Redis answers a connection's requests in order, other
        // connections' requests queued behind it.
        let reader = if self.reads_history {
            let config = config.clone().set_response_timeout(Some(HISTORY_TIMEOUT));
            Some(Reader::Redis(
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?,
            ))
        } else {
            None
        };
        let keys = self.keys();
        let (mut subscriber, messages) = Subscriber::connect(client, sharded, &config).await?;
        let mut channels: Vec<String> = wanted.keys().map(|t| keys.channel(t)).collect();
        if self.is_first() {
            channels.push(keys.control().to_owned());
        }
        for chunk in channels.chunks(MAX_BATCH) {
            let subscribed = match &mut subscriber {
                Subscriber::Classic(sink) => within(sink.subscribe(chunk)).await,
                Subscriber::Sharded(conn) => subscriber::each(conn, "SSUBSCRIBE", chunk).await,
                Subscriber::Nats(_) => Ok(()),
            };
            subscribed?;
        }
        self.stats
            .topics
            .store(wanted.len() as u64, Ordering::Relaxed);
        Ok(Session {
            publisher: Publisher::Redis(publisher),
            reader,
            subscriber,
            messages,
        })
    }

    /// Serves a connected session until it breaks (`Some(reason)`) or the server stops
    /// (`None`).
    async fn serve(
        &mut self,
        session: Session,
        node: &dyn Node,
        wanted: &mut Wanted,
    ) -> Option<String> {
        let Session {
            publisher,
            reader,
            subscriber,
            messages,
        } = session;
        let stats = self.stats.clone();
        let keys = self.keys();
        let receiving = Receiving {
            node,
            control: self.control.clone(),
            stats: &stats,
            keys,
            reader,
            subscriber,
            unsubscribing: HashMap::new(),
            subscribed: HashSet::new(),
            confirmed: HashSet::new(),
            fetches: FuturesUnordered::new(),
            queued: VecDeque::new(),
            users: user_control::UserControl::default(),
            reporting: Rc::new(Cell::new(false)),
            full_report: Rc::new(Cell::new(true)),
            reports: 0,
        };
        // Outside the loop, so that a batch still in flight when the session ends on the
        // receiving side (the ping failed first, say) is refused, not dropped unanswered.
        let mut batch = Vec::new();
        let (publishes, shard) = (&mut self.publishes, self.shard);
        let publishing = async {
            match publisher {
                Publisher::Redis(conn) => {
                    publish_loop(publishes, &mut batch, conn, keys, &stats, node, shard).await
                }
                Publisher::Nats(publisher) => {
                    nats::publish_loop(publishes, &mut batch, *publisher, keys, &stats, node, shard)
                        .await
                }
            }
        };
        let lost = tokio::select! {
            lost = publishing => Some(lost),
            lost = receiving.run(&mut self.requests, wanted, messages) => lost,
        };
        refuse(&mut batch, &stats, node);
        lost
    }

    /// Waits `backoff` while disconnected: publishes that were already queued fail,
    /// interest changes are kept. `false` if the server stopped.
    async fn wait(&mut self, backoff: Duration, wanted: &mut Wanted, node: &dyn Node) -> bool {
        let sleep = tokio::time::sleep(backoff);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return true,
                Some(outgoing) = self.publishes.recv() => {
                    stats::add(&self.stats.publish_errors, u64::from(!outgoing.is_control()));
                    outgoing.answer(Err(PublishError::BrokerUnavailable), node);
                }
                change = self.requests.recv() => {
                    if !change.is_some_and(|change| apply(wanted, change, node)) {
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

/// Takes in a message on the control channel: another node saying it is overloaded holds
/// this node's publishes back for the time it names.
fn on_control(payload: &[u8], stats: &BrokerStats) {
    match wire::parse_overload(payload) {
        Some((node, _)) if node == stats.node.load(Ordering::Relaxed) => {}
        Some((_, hold_ms)) => stats.hold_publishes(hold_ms),
        None => stats::add(&stats.rejected, 1),
    }
}

/// Applies an interest change to the set while disconnected (a history request is
/// answered with a gap at once); `false` for [`BrokerRequest::Stop`].
fn apply(wanted: &mut Wanted, change: BrokerRequest, node: &dyn Node) -> bool {
    match change {
        BrokerRequest::History { topic, read } => HistoryReply::new(node, topic, read.to).send(
            HistoryPage::failed("the history could not be read from the broker"),
        ),
        BrokerRequest::ReadHistory { reply, .. } => {
            let _ = reply.send(HistoryPage::failed("the broker is unreachable"));
        }
        BrokerRequest::Presence {
            topic,
            members,
            reply,
        } => match reply {
            PresenceReplyTo::Caller(reply) => {
                let _ = reply.send(None);
            }
            PresenceReplyTo::Client(to) => {
                let members = members.is_some();
                node.presence(
                    to,
                    topic,
                    PresenceOutcome {
                        members,
                        answer: None,
                    },
                );
            }
            PresenceReplyTo::Push => {}
        },
        // Cut off, the node's lease runs out and the cluster stops counting it; what
        // changes meanwhile is dropped (the first report when back carries everything).
        BrokerRequest::PresenceTick { .. } => {
            node.presence_report(false);
        }
        BrokerRequest::Nodes { reply } => {
            let _ = reply.send(None);
        }
        BrokerRequest::Add(topic, arrival) => {
            wanted.insert(topic, arrival);
        }
        BrokerRequest::Remove(topic) => {
            wanted.remove(&topic);
        }
        BrokerRequest::Stop => return false,
        BrokerRequest::UserControl { reply, .. } => {
            let unavailable = crate::model::user_control::ClusterError::BrokerUnavailable;
            let _ = reply.send(Err(unavailable));
        }
    }
    true
}

/// The topics the node needs from Redis, each with its arrival number.
type Wanted = HashMap<Arc<str>, u64>;

/// A history read being served: if it is dropped unanswered (the session ended while
/// Redis was being asked), the connection still gets its answer, a gap.
struct HistoryReply<'a> {
    node: &'a dyn Node,
    to: Option<(HistoryDest, Arc<str>)>,
}

impl<'a> HistoryReply<'a> {
    fn new(node: &'a dyn Node, topic: Arc<str>, to: HistoryDest) -> Self {
        Self {
            node,
            to: Some((to, topic)),
        }
    }

    fn send(mut self, page: HistoryPage) {
        if let Some((to, topic)) = self.to.take() {
            self.node.history_page(to, topic, page);
        }
    }
}

impl Drop for HistoryReply<'_> {
    fn drop(&mut self) {
        if let Some((to, topic)) = self.to.take() {
            let why = "the history could not be read from the broker";
            Self::new(self.node, topic, to).send(HistoryPage::failed(why));
        }
    }
}

/// A live session with the broker.
struct Session {
    publisher: Publisher,
    /// For history reads (with `--history`) and, on Redis, presence.
    reader: Option<Reader>,
    subscriber: Subscriber,
    messages: Messages,
}

/// A session's publishing side.
enum Publisher {
    Redis(MultiplexedConnection),
    Nats(Box<nats::Publisher>),
}

/// A session's connection for reads (histories; on Redis, presence and the node list).
#[derive(Clone)]
enum Reader {
    Redis(MultiplexedConnection),
    Nats(nats::Reader),
}

impl Reader {
    /// The Redis connection, for what only Redis keeps (presence, the node list).
    fn redis(self) -> Option<MultiplexedConnection> {
        match self {
            Self::Redis(conn) => Some(conn),
            Self::Nats(_) => None,
        }
    }

    /// One page of `topic`'s history.
    async fn history(
        self,
        keys: Keyspace,
        topic: &str,
        read: HistoryRead,
    ) -> Result<HistoryPage, String> {
        match self {
            Self::Redis(mut conn) => fetch_history(&mut conn, keys, topic, read)
                .await
                .map_err(|err| err.to_string()),
            Self::Nats(reader) => reader.history(keys, topic, read).await,
        }
    }
}

/// Sends publishes to Redis in arrival order, as many per pipeline as are waiting, and
/// answers each with the number of nodes subscribed and its offset (where the topic keeps
/// a history). Returns why it stopped. `batch` holds the publishes in flight (empty
/// between round trips).
async fn publish_loop(
    publishes: &mut mpsc::UnboundedReceiver<Outgoing>,
    batch: &mut Vec<Outgoing>,
    mut conn: MultiplexedConnection,
    keys: Keyspace,
    stats: &BrokerStats,
    node: &dyn Node,
    shard: usize,
) -> String {
    let mut refusals = RefusalLog::default();
    loop {
        if !next_batch(publishes, batch).await {
            return "publishing stopped".into();
        }
        let mut pipe = redis::pipe();
        for p in batch.iter() {
            if p.topic.is_empty() {
                pipe.cmd(keys.publish())
                    .arg(keys.control())
                    .arg(&p.publication.payload[..]);
                continue;
            }
            let payload = wire::payload(&p.publication);
            if p.retention.count > 0 {
                let ttl_ms = p.retention.ttl.map_or(0, |t| t.as_millis() as u64);
                pipe.cmd("EVAL")
                    .arg(wire::PUBLISH_SCRIPT)
                    .arg(2)
                    .arg(keys.key(&p.topic))
                    .arg(keys.channel(&p.topic))
                    .arg(p.retention.count)
                    .arg(&payload[..])
                    .arg(ttl_ms)
                    .arg(keys.publish());
            } else {
                pipe.cmd(keys.publish())
                    .arg(keys.channel(&p.topic))
                    .arg(&payload[..]);
            }
        }
        // Each publish gets its own answer: an error reply (out of memory, say) fails that
        // publish only; a broken connection fails the batch and ends the session.
        let answers = pipe
            .ignore_errors()
            .query_async::<Vec<redis::RedisResult<redis::Value>>>(&mut conn);
        let failure = match answers.await {
            Ok(answers) if answers.len() == batch.len() => {
                for (p, answer) in batch.drain(..).zip(answers) {
                    let reply = answer.map_err(|err| err.to_string()).and_then(|value| {
                        wire::published(&value).ok_or_else(|| format!("{value:?}"))
                    });
                    answer_publish(p, reply, &mut refusals, (stats, node, shard));
                }
                continue;
            }
            Ok(_) => "Redis answered a publish batch with the wrong count".to_owned(),
            Err(err) => err.to_string(),
        };
        refuse(batch, stats, node);
        return failure;
    }
}

/// Waits for the next publishes and takes into `batch` (empty) as many as are waiting,
/// up to [`MAX_BATCH`]; `false` once publishing has stopped.
async fn next_batch(
    publishes: &mut mpsc::UnboundedReceiver<Outgoing>,
    batch: &mut Vec<Outgoing>,
) -> bool {
    let Some(first) = publishes.recv().await else {
        return false;
    };
    batch.push(first);
    while batch.len() < MAX_BATCH {
        match publishes.try_recv() {
            Ok(next) => batch.push(next),
            Err(_) => break,
        }
    }
    true
}

/// Answers a publish with what the broker said: its reach and offset, or why it refused
/// it (a 503 for the publisher, logged at most once per [`REFUSAL_LOG_EVERY`] per
/// shard); the node's own control words are not counted.
fn answer_publish(
    p: Outgoing,
    reply: Result<Published, String>,
    refusals: &mut RefusalLog,
    (stats, node, shard): (&BrokerStats, &dyn Node, usize),
) {
    let reply = reply.map_err(|err| {
        if let Some(suppressed) = refusals.note(Instant::now()) {
            warn!(
                shard,
                error = %err,
                suppressed,
                "the broker refused a publish (logged at most once per {}s; `suppressed`: \
                 refusals since the last logged one)",
                REFUSAL_LOG_EVERY.as_secs()
            );
        }
        stats::add(&stats.publish_errors, u64::from(!p.is_control()));
        PublishError::BrokerUnavailable
    });
    if reply.is_ok() {
        stats::add(&stats.published, u64::from(!p.is_control()));
    }
    p.answer(reply, node);
}

/// Whether a `sunsubscribe` of `channel` that came through the stream was asked for:
/// `None` if it answers one of the node's own `SUNSUBSCRIBE`s (counted in
/// `unsubscribing`, which it uses up), else why the session must end.
///
/// An unasked drop (Redis moved the channel's slot to another master) ends the session
/// whatever the channel, the control channel included, for two reasons: the node would
/// otherwise run on without that subscription (a topic's messages, or the control channel
/// with its overload signals and user-level control, silently gone); and the redis crate
/// takes every `sunsubscribe` push for the answer to the request in flight on the
/// connection, so after an unasked one each later answer is matched to the request before
/// it (a `SSUBSCRIBE` "confirmed" before Redis subscribed, and a resume's history read
/// then missing what is published meanwhile). The session ending drops that connection
/// and is logged at warn with this reason; the reconnect resubscribes everything and the
/// topics get their gap notices, but while a moved channel is wanted the old master
/// refuses it (`MOVED`), so the master stays down for the node until it is restarted.
fn unasked_drop(
    unsubscribing: &mut HashMap<Arc<str>, usize>,
    keys: Keyspace,
    channel: &str,
) -> Option<String> {
    if let Some(topic) = keys.topic(channel)
        && let Some(pending) = unsubscribing.get_mut(&*topic)
    {
        *pending -= 1;
        if *pending == 0 {
            unsubscribing.remove(&*topic);
        }
        return None;
    }
    Some(format!(
        "Redis ended the subscription to {channel} unasked: its slot moved to another master \
         (a resharding or a failover; the node keeps the slot map it read at start: restart \
         the nodes to read the cluster's slots again)"
    ))
}

/// The publishes Redis refuses (a moved slot answers every publish of its topics
/// `MOVED`, at the publish rate) are logged at most once per [`REFUSAL_LOG_EVERY`] per
/// shard, each time with how many went unlogged since.
#[derive(Debug, Default)]
struct RefusalLog {
    /// When a refusal was last logged.
    logged: Option<Instant>,
    /// Refusals since, not logged.
    suppressed: u64,
}

impl RefusalLog {
    /// A refusal at `now`: `Some(suppressed)` if it is to be logged (with the count of
    /// those left unlogged before it), `None` if it is counted instead.
    fn note(&mut self, now: Instant) -> Option<u64> {
        match self.logged {
            Some(at) if now.saturating_duration_since(at) < REFUSAL_LOG_EVERY => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.logged = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// Answers every publish of `batch` (left empty) with [`PublishError::BrokerUnavailable`],
/// counting the publishes (not the node's control words) as errors.
fn refuse(batch: &mut Vec<Outgoing>, stats: &BrokerStats, node: &dyn Node) {
    let publishes = batch.iter().filter(|p| !p.is_control()).count();
    stats::add(&stats.publish_errors, publishes as u64);
    for p in batch.drain(..) {
        p.answer(Err(PublishError::BrokerUnavailable), node);
    }
}

/// A change of the node's broker subscriptions on its way: the topics subscribed and
/// unsubscribed in one round trip each.
type Change<'a> = Pin<Box<dyn Future<Output = Result<Vec<Arc<str>>, String>> + 'a>>;

/// A ping of the broker on its way.
type Ping<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + 'a>>;

/// The receiving side of a session: it fans out what Redis sends, mirrors the node's
/// interest into Redis subscriptions, serves history reads, and pings. None of these
/// waits in line with the stream: subscription changes go in batches, one round trip in
/// flight, while the stream is read; history reads run beside it on their own
/// connection, a bounded number at once, each failing on its own (a gap for that reader,
/// never the end of the session). Only the node's own workers, when behind, hold the
/// stream up (and then the node refuses publishes, and tells the other nodes to).
struct Receiving<'a> {
    node: &'a dyn Node,
    control: Control,
    stats: &'a BrokerStats,
    keys: Keyspace,
    /// The connection for history reads (with a history).
    reader: Option<Reader>,
    subscriber: Subscriber,
    /// Sharded pub/sub: the node's own `SUNSUBSCRIBE`s whose answer has not come through
    /// the stream yet, per topic.
    unsubscribing: HashMap<Arc<str>, usize>,
    /// The topics Redis has confirmed, or is confirming, for the node.
    subscribed: HashSet<Arc<str>>,
    /// The topics Redis has confirmed: a history read waits for its topic to be here,
    /// so that whatever is published after the read reaches the node live.
    confirmed: HashSet<Arc<str>>,
    /// History reads in flight.
    fetches: FuturesUnordered<Pin<Box<dyn Future<Output = ()> + 'a>>>,
    /// History reads waiting for one in flight to end.
    queued: VecDeque<(Arc<str>, HistoryRead)>,
    /// User-level commands asked of the cluster, and applied here.
    users: user_control::UserControl,
    /// A presence report is in flight (the next waits: what changed stays marked).
    reporting: Rc<Cell<bool>>,
    /// The next report carries every topic and replaces what Redis has: the session is
    /// new (Redis may have lost the node's presence while it was away), a report failed,
    /// or the node's lease had lapsed.
    full_report: Rc<Cell<bool>>,
    /// Reports made in this session (every [`FULL_REPORT_EVERY`]th is full, which renews
    /// the member lists).
    reports: u64,
}

impl Drop for Receiving<'_> {
    /// The session ended: the reads still in line are answered with a gap (those in flight
    /// answer as they are dropped).
    fn drop(&mut self) {
        for (topic, read) in self.queued.drain(..) {
            let why = "the history could not be read from the broker";
            HistoryReply::new(self.node, topic, read.to).send(HistoryPage::failed(why));
        }
    }
}

impl<'a> Receiving<'a> {
    /// Runs until the session breaks (`Some(reason)`) or the server stops (`None`).
    async fn run(
        mut self,
        requests: &mut mpsc::UnboundedReceiver<BrokerRequest>,
        wanted: &mut Wanted,
        mut messages: Messages,
    ) -> Option<String> {
        self.subscribed = wanted.keys().cloned().collect();
        self.confirmed = self.subscribed.clone();
        let mut change: Option<Change<'a>> = None;
        let mut ping: Option<Ping<'a>> = None;
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
                            self.node.confirm(&topic, arrival);
                        }
                        wanted.insert(topic, arrival);
                    }
                    Some(BrokerRequest::Remove(topic)) => {
                        wanted.remove(&topic);
                    }
                    Some(BrokerRequest::History { topic, read }) => self.queue_fetch(topic, read),
                    Some(BrokerRequest::ReadHistory { topic, read, reply }) => {
                        self.read_for_caller(topic, read, reply);
                    }
                    Some(BrokerRequest::Presence { topic, members, reply }) => {
                        self.read_presence(topic, members, reply);
                    }
                    Some(BrokerRequest::PresenceTick { lease }) => self.report_presence(lease),
                    Some(BrokerRequest::Nodes { reply }) => self.read_nodes(reply),
                    Some(BrokerRequest::Stop) | None => return None,
                    Some(BrokerRequest::UserControl { command, reply }) => {
                        let me = self.stats.node.load(Ordering::Relaxed);
                        self.users.ask(&command, reply, &self.control, me);
                    }
                },
                event = self.users.next(), if self.users.is_busy() => {
                    self.users.handle(event, &self.control);
                }
                incoming = messages.next() => {
                    // The channel, the payload and, from NATS, the offset its header gave.
                    let (channel, payload, offset) = match &incoming {
                        None => return Some("the pub/sub connection closed".into()),
                        Some(Incoming::Message(msg)) => {
                            (msg.get_channel_name(), msg.get_payload_bytes(), None)
                        }
                        Some(Incoming::Nats(msg)) => {
                            (msg.subject.as_str(), &msg.payload[..], Some(nats::offset(msg)))
                        }
                        Some(Incoming::Dropped(channel)) => {
                            if let Some(lost) = self.dropped(channel) {
                                return Some(lost);
                            }
                            continue;
                        }
                        Some(Incoming::Lost(why)) => return Some(why.clone()),
                    };
                    if channel == self.keys.control() {
                        let me = self.stats.node.load(Ordering::Relaxed);
                        if !self.users.on_words(payload, self.node, me) {
                            on_control(payload, self.stats);
                        }
                        continue;
                    }
                    let decoded = match offset {
                        None => wire::decode_in(self.keys, channel, payload),
                        Some(offset) => wire::decode_beside(self.keys, channel, payload, offset),
                    };
                    match decoded {
                        Some((topic, publication, offset)) => {
                            stats::add(&self.stats.received, 1);
                            hand_over(self.node, &self.control, &topic, publication, offset).await;
                        }
                        None => stats::add(&self.stats.rejected, 1),
                    }
                }
                _ = ticks.tick(), if ping.is_none() => {
                    let mut subscriber = self.subscriber.clone();
                    ping = Some(Box::pin(async move { subscriber.ping().await }));
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
            if matches!(self.subscriber, Subscriber::Sharded(_)) {
                *self.unsubscribing.entry(t.clone()).or_default() += 1;
            }
        }
        self.subscribed.extend(add.iter().cloned());
        let mut subscriber = self.subscriber.clone();
        let keys = self.keys;
        Some(Box::pin(async move {
            let names =
                |topics: &[Arc<str>]| topics.iter().map(|t| keys.channel(t)).collect::<Vec<_>>();
            for chunk in remove.chunks(MAX_BATCH) {
                subscriber.unsubscribe(&names(chunk)).await?;
            }
            for chunk in add.chunks(MAX_BATCH) {
                subscriber.subscribe(&names(chunk)).await?;
            }
            Ok(add)
        }))
    }

    /// Redis ended the subscription to `channel` (sharded pub/sub): the answer to the
    /// node's own `SUNSUBSCRIBE`, or Redis's own doing (its slot moved to another
    /// master), which ends the session (`Some(why)`): see [`unasked_drop`].
    fn dropped(&mut self, channel: &str) -> Option<String> {
        unasked_drop(&mut self.unsubscribing, self.keys, channel)
    }

    /// A change came back: the topics it subscribed are confirmed to the workers (each
    /// for its current arrival), or the session is lost.
    fn changed(
        &mut self,
        done: Result<Vec<Arc<str>>, String>,
        wanted: &Wanted,
    ) -> Result<(), String> {
        let added = done?;
        for topic in added {
            if let Some(&arrival) = wanted.get(&topic) {
                self.node.confirm(&topic, arrival);
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
            stats::add(&self.stats.history_refused, 1);
            let why = "too many histories are being read on this node; resume again shortly";
            HistoryReply::new(self.node, topic, read.to).send(HistoryPage::failed(why));
            return;
        }
        self.queued.push_back((topic, read));
    }

    /// Starts the history reads in line that may go (a `history` command's at once, a
    /// resume's once Redis has confirmed its topic), while fewer than [`MAX_FETCHES`] are
    /// in flight; a resume whose topic is no longer subscribed is answered with a gap (its
    /// connection has moved on).
    fn start_fetches(&mut self, wanted: &Wanted) {
        let mut at = 0;
        while self.fetches.len() < MAX_FETCHES && at < self.queued.len() {
            let (topic, read) = &self.queued[at];
            if !read.resumes {
                if let Some((topic, read)) = self.queued.remove(at) {
                    self.start_fetch(topic, read);
                }
            } else if !wanted.contains_key(topic) {
                if let Some((topic, read)) = self.queued.remove(at) {
                    let why = "the topic was unsubscribed before its history was read";
                    HistoryReply::new(self.node, topic, read.to).send(HistoryPage::failed(why));
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

    /// Reads a topic's presence over the cluster, if fewer than [`MAX_FETCHES`] reads are
    /// in flight (else, and if it fails, it is answered with `None`).
    fn read_presence(&mut self, topic: Arc<str>, members: Option<usize>, reply: PresenceReplyTo) {
        let keys = self.keys;
        let node = self.node;
        let conn = self
            .reader
            .clone()
            .and_then(Reader::redis)
            .filter(|_| self.fetches.len() < MAX_FETCHES);
        self.fetches.push(Box::pin(async move {
            let answer = match conn {
                Some(mut conn) => {
                    let read = presence::read(&mut conn, keys, &topic, members);
                    tokio::time::timeout(RESPONSE_TIMEOUT, read)
                        .await
                        .ok()
                        .and_then(Result::ok)
                }
                None => None,
            };
            match reply {
                PresenceReplyTo::Caller(reply) => {
                    let _ = reply.send(answer);
                }
                PresenceReplyTo::Client(to) => {
                    let members = members.is_some();
                    node.presence(to, topic, PresenceOutcome { members, answer });
                }
                PresenceReplyTo::Push => {
                    if let Some(answer) = answer {
                        let push = Publication::event(answer.occupancy.push(&topic));
                        let _ = node.dispatch(&topic, push, None);
                    }
                }
            }
        }));
    }

    /// Reads every live node's figures (`None` if fewer than [`MAX_FETCHES`] reads are
    /// not in flight, or it fails).
    fn read_nodes(&mut self, reply: oneshot::Sender<Option<NodeFigures>>) {
        let keys = self.keys;
        let conn = self
            .reader
            .clone()
            .and_then(Reader::redis)
            .filter(|_| self.fetches.len() < MAX_FETCHES);
        self.fetches.push(Box::pin(async move {
            let nodes = match conn {
                Some(mut conn) => {
                    tokio::time::timeout(RESPONSE_TIMEOUT, presence::nodes(&mut conn, keys))
                        .await
                        .ok()
                        .and_then(Result::ok)
                }
                None => None,
            };
            let _ = reply.send(nodes);
        }));
    }

    /// Reports what changed in the node's presence (everything, on a new session) and
    /// renews its lease, unless the last report is still in flight.
    fn report_presence(&mut self, lease: Duration) {
        let keys = self.keys;
        let Some(mut conn) = self.reader.clone().and_then(Reader::redis) else {
            // Nowhere to report to (NATS keeps no presence): what changed is dropped.
            self.node.presence_report(false);
            return;
        };
        if self.reporting.get() {
            return;
        }
        let full =
            self.full_report.replace(false) || self.reports.is_multiple_of(FULL_REPORT_EVERY);
        self.reports += 1;
        let report = self.node.presence_report(full);
        let (node, reporting, again) = (
            self.node.node_id(),
            self.reporting.clone(),
            self.full_report.clone(),
        );
        let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
        reporting.set(true);
        self.fetches.push(Box::pin(async move {
            let written = presence::report(&mut conn, keys, &node, lease_ms, &report, full);
            match tokio::time::timeout(RESPONSE_TIMEOUT, written).await {
                Ok(Ok(true)) => {}
                // The lease had lapsed: the cluster lost what the node reported before.
                Ok(Ok(false)) => again.set(true),
                Ok(Err(err)) => {
                    warn!(error = %err, "presence report failed");
                    again.set(true);
                }
                Err(_) => {
                    warn!("presence report timed out");
                    again.set(true);
                }
            }
            reporting.set(false);
        }));
    }

    /// Starts a history read for a caller (the admin API), if fewer than [`MAX_FETCHES`]
    /// are in flight (else it answers at once that the node is busy).
    fn read_for_caller(
        &mut self,
        topic: Arc<str>,
        read: HistoryRead,
        reply: oneshot::Sender<HistoryPage>,
    ) {
        let keys = self.keys;
        let Some(reader) = self
            .reader
            .clone()
            .filter(|_| self.fetches.len() < MAX_FETCHES)
        else {
            let why = "the node is reading as many histories as it may; try again shortly";
            let _ = reply.send(HistoryPage::failed(why));
            return;
        };
        self.fetches.push(Box::pin(async move {
            let fetched =
                tokio::time::timeout(HISTORY_TIMEOUT, reader.history(keys, &topic, read)).await;
            let page = match fetched {
                Ok(Ok(page)) => page,
                _ => HistoryPage::failed("the history could not be read from the broker"),
            };
            let _ = reply.send(page);
        }));
    }

    /// Starts a history read; it answers its connection whatever happens.
    fn start_fetch(&mut self, topic: Arc<str>, read: HistoryRead) {
        let keys = self.keys;
        let (node, stats) = (self.node, self.stats);
        let Some(reader) = self.reader.clone() else {
            let why = "no history is kept (the nodes need --broker and --history)";
            HistoryReply::new(node, topic, read.to).send(HistoryPage::failed(why));
            return;
        };
        // Made before the read starts: dropped unpolled, it still answers.
        let reply = HistoryReply::new(node, topic.clone(), read.to);
        self.fetches.push(Box::pin(async move {
            let fetched =
                tokio::time::timeout(HISTORY_TIMEOUT, reader.history(keys, &topic, read)).await;
            match fetched {
                Ok(Ok(recovered)) => reply.send(recovered),
                // A read that fails or takes too long answers its reader with a gap (the
                // reply's drop); the session and every other reader carry on.
                Ok(Err(err)) => {
                    stats::add(&stats.history_errors, 1);
                    warn!(%topic, error = %err, "history read failed");
                }
                Err(_) => {
                    stats::add(&stats.history_errors, 1);
                    warn!(%topic, "history read timed out");
                }
            }
        }));
    }
}

/// Hands a message from Redis to this node's workers, waiting while they are behind
/// rather than dropping it. While it waits, the node tells the cluster it is overloaded
/// (every [`OVERLOAD_REPEAT`], through `control`), so publishers on every node are held
/// back instead of Redis's messages piling up here.
async fn hand_over(
    node: &dyn Node,
    control: &Control,
    topic: &str,
    publication: Publication,
    offset: Option<Offset>,
) {
    let mut signalled: Option<tokio::time::Instant> = None;
    while node.dispatch(topic, publication.clone(), offset).is_err() {
        let now = tokio::time::Instant::now();
        if signalled.is_none_or(|at| now - at >= OVERLOAD_REPEAT) {
            control.signal_overload();
            signalled = Some(now);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Where the broker thread sends its own words on the control channel: into its publish
/// queue, like a publish.
#[derive(Clone)]
struct Control {
    publishes: mpsc::UnboundedSender<Outgoing>,
    stats: Arc<BrokerStats>,
}

impl Control {
    /// Tells every node that this one is overloaded.
    fn signal_overload(&self) {
        let words = wire::overload_signal(self.stats.node.load(Ordering::Relaxed));
        if self.say(words, ReplyTo::Nobody) {
            stats::add(&self.stats.overload_signals, 1);
        }
    }

    /// Says `words` on the control channel; Redis's count of the nodes that heard goes to
    /// `reply`. `false` if the publish queue is gone.
    fn say(&self, words: Vec<u8>, reply: ReplyTo) -> bool {
        let Ok(words) = Publication::from_message(Message::Binary(words.into())) else {
            return false;
        };
        let none = Retention {
            count: 0,
            ttl: None,
        };
        let outgoing = Outgoing::new(String::new(), words, none, reply, self.stats.clone());
        self.publishes.send(outgoing).is_ok()
    }
}

mod nats;
mod subscriber;
#[cfg(test)]
mod tests;
mod user_control;
