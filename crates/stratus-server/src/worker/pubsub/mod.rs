//! The pub/sub a worker runs, with no ring, no socket and no clock: its topic table (which
//! of its connections listen to what) kept in step with the hub's view, the commands of
//! both protocols (`raw`, `v1`), the subscribe replies waiting for the broker's
//! confirmation, recoveries of missed messages (history pages, the live messages held
//! meanwhile, gap notices), `history` reads and client publishes waiting for their
//! answers, and the fan-out of a broadcast to the topic's local subscribers.
//!
//! It reaches connections through [`Clients`] (the worker's table, or a test's map) and
//! the node through the hub, and takes the time from its [`Context`]: unit tests drive it
//! directly, as quinn-proto's are driven without sockets.

mod hooked;
mod raw;
pub(crate) mod server_side;
mod sse;
mod v1;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use stratus_proto::{CloseCode, Message};

use crate::config::{COMMAND_COST, Config, TopicOptions};
use crate::connection::{Client, Delivered, QueueRules};
use crate::messages::{
    HistoryDest, HistoryPage, HistoryRead, PresenceOutcome, PublishDest, PublishError, Published,
};
use crate::model::broadcast::Broadcast;
use crate::model::conn_id::ConnId;
use crate::model::history::PAGE;
use crate::model::offset::{Offset, Since};
use crate::model::protocol::v1::{CommandId, ErrorCode};
use crate::model::protocol::{Notice, Protocol, raw as raw_protocol, v1 as wire_v1};
use crate::model::recovery::{Phase as RecoveryPhase, Recovery};
use crate::model::topic::{self, TopicError, TopicTable};
use crate::node::hub::{Hub, TopicFull};
use crate::node::presence::Who;
use crate::stats::{self, WorkerStats};
use crate::worker::pending_replies::{PendingReplies, TooManyWaiting, Waiting};
pub(crate) use hooked::ask_upgrade_topics;

/// Entries a recovery reads beyond its topic's history size, for what Redis's
/// approximate trimming (`MAXLEN ~`) keeps beyond it.
const RECOVERY_SLACK: usize = 1000;
/// History commands one connection may have waiting for their pages.
const MAX_HISTORY_READS: usize = 4;
/// Publishes one connection may have waiting for the broker's answer.
const MAX_PUBLISHES_WAITING: u32 = 16;

/// The worker's connections, as the pub/sub part reaches them.
pub(crate) trait Clients {
    /// Connection `id`'s protocol side (and the connection is settled at the end of the
    /// turn), or `None` if it is gone or shut down.
    fn client(&mut self, id: ConnId) -> Option<&mut Client>;
}

/// What a handler needs besides the pub/sub state: the node, the settings, and the time.
#[derive(Clone, Copy)]
pub(crate) struct Context<'a> {
    pub(crate) hub: &'a Hub,
    pub(crate) config: &'a Config,
    /// Now, and the same in milliseconds on the worker's clock (for message budgets).
    pub(crate) now: Instant,
    pub(crate) now_ms: u32,
}

impl Context<'_> {
    /// When a close begun now must be done.
    pub(crate) fn close_deadline(&self) -> Instant {
        self.now + self.config.close_timeout
    }

    /// How broadcasts on a topic with `options` are queued now, compressions counted in
    /// `stats`.
    fn queue_rules<'s>(&self, options: &TopicOptions, stats: &'s WorkerStats) -> QueueRules<'s> {
        QueueRules {
            cap: self.config.max_send_queue,
            policy: options.slow_consumer,
            close_deadline: self.close_deadline(),
            stats,
        }
    }
}

/// Connection `id` of worker `worker`, as presence names it.
fn who(worker: usize, id: ConnId, client: &Client) -> Who<'_> {
    let grant = client.grant();
    Who {
        worker,
        conn: id,
        user: grant.map(|g| g.subject.as_str()),
        info: grant.and_then(|g| g.info.as_ref()),
    }
}

/// Why a subscription command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SubscribeError {
    #[error(transparent)]
    InvalidTopic(#[from] TopicError),
    #[error("the token does not allow this topic")]
    NotAllowed,
    #[error("at most {0} topics per connection")]
    TooManyTopics(usize),
    #[error("the topic has as many subscribers as it may")]
    TopicFull,
    #[error("not subscribed")]
    NotSubscribed,
    #[error("no history is kept for this topic (--history, or its namespace's history)")]
    NoHistory,
    #[error("too many subscribe commands are waiting for this topic")]
    TooManyWaiting,
}

impl SubscribeError {
    /// Its protocol v1 code.
    fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidTopic(_) => ErrorCode::InvalidTopic,
            Self::NotAllowed => ErrorCode::Forbidden,
            Self::TooManyTopics(_) => ErrorCode::TooManyTopics,
            Self::TopicFull => ErrorCode::TopicFull,
            Self::NotSubscribed => ErrorCode::NotSubscribed,
            Self::NoHistory => ErrorCode::NoHistory,
            Self::TooManyWaiting => ErrorCode::RateLimited,
        }
    }
}

impl From<TopicFull> for SubscribeError {
    fn from(_: TopicFull) -> Self {
        Self::TopicFull
    }
}

impl From<TooManyWaiting> for SubscribeError {
    fn from(_: TooManyWaiting) -> Self {
        Self::TooManyWaiting
    }
}

/// How a subscribe goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Subscribed {
    /// Its reply can go now.
    Now,
    /// Its reply goes with the broker's confirmation, or with the first history page.
    Later,
}

/// How many of a topic's local subscribers a broadcast went to, and what happened to
/// the others.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fanout {
    pub(crate) queued: u64,
    pub(crate) dropped: u64,
    pub(crate) closed: u64,
    pub(crate) conflated: u64,
}

/// A protocol v1 `history` command waiting for its page.
#[derive(Debug)]
struct HistoryCommand {
    request: u64,
    command: CommandId,
    /// Whether it asked from an offset (a gap is then worth saying).
    since: bool,
}

/// One worker's pub/sub state.
#[derive(Debug)]
pub(crate) struct PubSub {
    /// The worker's index (its bit in the hub's interest, its inbox for history pages).
    worker: usize,
    topics: TopicTable,
    /// Subscribe replies waiting for the broker's confirmation.
    pending: PendingReplies,
    /// Numbers the worker's history reads (see [`HistoryDest`]).
    next_request: u64,
    /// `history` commands waiting for their pages, per connection.
    history_commands: HashMap<ConnId, Vec<HistoryCommand>>,
    /// Publishes waiting for the broker's answer, per connection.
    publishes: HashMap<ConnId, u32>,
    /// Commands waiting for a subscribe or publish hook's answer, per connection.
    hook_waits: HashMap<ConnId, u32>,
}

impl PubSub {
    pub(crate) fn new(worker: usize) -> Self {
        Self {
            worker,
            topics: TopicTable::default(),
            pending: PendingReplies::default(),
            next_request: 0,
            history_commands: HashMap::new(),
            publishes: HashMap::new(),
            hook_waits: HashMap::new(),
        }
    }

    fn counters<'a>(&self, ctx: &Context<'a>) -> &'a WorkerStats {
        &ctx.hub.workers[self.worker]
    }

    // Handlers.

    /// Connection `id` has upgraded asking for `topics` (checked by the upgrade against
    /// the token and the per-connection cap): it is subscribed to them, with no replies.
    /// A topic that cannot take it (at its namespace's `max-subscribers`) closes the
    /// connection with 1013 naming the topic: it asked for every one of them.
    pub(crate) fn on_upgrade(
        &mut self,
        ctx: &Context<'_>,
        id: ConnId,
        client: &mut Client,
        topics: &[String],
    ) {
        self.on_upgrade_with(ctx, id, client, topics, &[]);
    }

    /// [`Self::on_upgrade`], and `chosen`, the connect hook's own choices, subscribed too
    /// with no grant check (the backend chose them).
    pub(crate) fn on_upgrade_with(
        &mut self,
        ctx: &Context<'_>,
        id: ConnId,
        client: &mut Client,
        topics: &[String],
        chosen: &[String],
    ) {
        let asked = topics.iter().map(|t| (t, true));
        for (name, checked) in asked.chain(chosen.iter().map(|t| (t, false))) {
            let added = if checked {
                self.add(ctx, id, client, name)
            } else {
                topic::validate(name)
                    .map_err(SubscribeError::from)
                    .and_then(|()| self.add_granted(ctx, id, client, name))
            };
            if let Err(err) = added {
                let why = format!("cannot subscribe to {name}: {err}");
                client.close(
                    CloseCode::TRY_AGAIN_LATER,
                    &why,
                    ctx.close_deadline(),
                    false,
                );
                return;
            }
        }
    }

    /// A data message from connection `id`: a command in its protocol (text; a binary
    /// message is refused).
    pub(crate) fn on_message(
        &mut self,
        ctx: &Context<'_>,
        id: ConnId,
        client: &mut Client,
        message: &Message,
    ) {
        let text = match message {
            Message::Text(text) => text,
            Message::Binary(_) => {
                let why = "binary messages are not commands";
                let reply = match client.protocol() {
                    Protocol::Raw => raw_protocol::error_reply(None, None, why),
                    Protocol::V1 => wire_v1::error(None, None, None, ErrorCode::BadRequest, why),
                    // An event stream's input is never decoded.
                    Protocol::Sse => return,
                };
                client.send_text(reply, ctx.close_deadline());
                return;
            }
            _ => return,
        };
        match client.protocol() {
            Protocol::Raw => self.on_raw(ctx, id, client, text),
            Protocol::V1 => self.on_v1(ctx, id, client, text),
            Protocol::Sse => {}
        }
    }

    /// Takes COMMAND_COST messages of the connection's budget for a command (it may cost
    /// a broker round trip and a history read); `false` (counted) past it.
    fn spend_command(&self, ctx: &Context<'_>, client: &mut Client) -> bool {
        let ok = client.spend(COMMAND_COST - 1, ctx.now_ms, ctx.config.message_rate);
        if !ok {
            stats::add(&self.counters(ctx).commands_limited, 1);
        }
        ok
    }

    /// The broker confirmed `topic`: answers the subscribe commands that waited for it (a
    /// connection that has left, or unsubscribed meanwhile, gets no reply).
    pub(crate) fn on_confirmed(
        &mut self,
        ctx: &Context<'_>,
        clients: &mut impl Clients,
        topic: &Arc<str>,
    ) {
        // A confirmation from before an outage, or for an earlier arrival of the topic,
        // may still be in the inbox: only the hub's current state counts.
        if !ctx.hub.is_confirmed(topic) {
            return;
        }
        for (id, replies) in self.pending.take(topic) {
            if let Some(client) = clients.client(id) {
                if client.is_streaming() {
                    client.stream_topic_confirmed();
                    continue;
                }
                for reply in replies {
                    subscribed(ctx, client, topic, reply.as_ref(), None);
                }
            }
        }
    }

    /// The node's subscribers of `topic` may have missed messages (the node was cut off
    /// from its broker): each gets a gap notice.
    pub(crate) fn on_gap(
        &mut self,
        ctx: &Context<'_>,
        clients: &mut impl Clients,
        topic: &str,
        reason: &str,
    ) {
        let Some(subscribers) = self.topics.subscribers(topic) else {
            return;
        };
        for &id in subscribers {
            if let Some(client) = clients.client(id) {
                client.notify(&Notice::Gap { topic, reason }, ctx.close_deadline());
            }
        }
    }

    /// A page of a topic's history is in: for a recovery, or for a `history` command (a
    /// reply to an earlier read, since replaced, is dropped).
    pub(crate) fn on_history_page(
        &mut self,
        ctx: &Context<'_>,
        clients: &mut impl Clients,
        to: HistoryDest,
        topic: &Arc<str>,
        page: HistoryPage,
    ) {
        let Some(client) = clients.client(to.conn) else {
            return;
        };
        if let Some(at) = client
            .recoveries()
            .iter()
            .position(|r| r.topic == *topic && r.awaits(to.request))
        {
            self.recovery_page(ctx, to.conn, client, at, page);
            return;
        }
        let Some(commands) = self.history_commands.get_mut(&to.conn) else {
            return;
        };
        let Some(at) = commands.iter().position(|c| c.request == to.request) else {
            return;
        };
        let command = commands.swap_remove(at);
        if commands.is_empty() {
            self.history_commands.remove(&to.conn);
        }
        v1::history_reply(ctx, client, &command, topic, page);
    }

    /// The broker answered connection `to.conn`'s publish on `topic`.
    pub(crate) fn on_published(
        &mut self,
        ctx: &Context<'_>,
        clients: &mut impl Clients,
        to: PublishDest,
        topic: &Arc<str>,
        result: Result<Published, PublishError>,
    ) {
        if let Some(waiting) = self.publishes.get_mut(&to.conn) {
            *waiting -= 1;
            if *waiting == 0 {
                self.publishes.remove(&to.conn);
            }
        }
        if let Some(client) = clients.client(to.conn) {
            v1::published(ctx, client, &to.command, topic, result.map(|p| p.offset));
        }
    }

    /// The broker answered connection `to.conn`'s presence or occupancy command on
    /// `topic`.
    pub(crate) fn on_presence(
        &mut self,
        ctx: &Context<'_>,
        clients: &mut impl Clients,
        to: PublishDest,
        topic: &str,
        outcome: PresenceOutcome,
    ) {
        if let Some(client) = clients.client(to.conn) {
            let PresenceOutcome { members, answer } = outcome;
            v1::presence_reply(ctx, client, &to.command, topic, members, answer);
        }
    }

    /// Connection `id`'s send finished: what the `conflate` policy held goes out as far as
    /// the queue has room, and a recovery paused for room reads its next page.
    pub(crate) fn on_sent(&mut self, ctx: &Context<'_>, id: ConnId, client: &mut Client) {
        if client.is_conflating() {
            let options = ctx.config.options("");
            let released = client.release_conflated(ctx.queue_rules(&options, self.counters(ctx)));
            stats::add(&ctx.hub.stats.delivered, released);
        }
        let paused = client
            .recoveries()
            .iter()
            .any(|r| matches!(r.phase, RecoveryPhase::Paused { .. }));
        if paused {
            self.read_next_pages(ctx, id, client);
        }
    }

    /// Connection `id` is gone: it leaves its topics (the node's last subscriber of one
    /// tells the broker), and its waiting replies and reads are forgotten.
    pub(crate) fn on_left(&mut self, ctx: &Context<'_>, id: ConnId, client: &Client) {
        let who = who(self.worker, id, client);
        for name in client.topics() {
            let _ = self.remove(ctx, id, name, &who);
        }
        self.history_commands.remove(&id);
        self.publishes.remove(&id);
        self.hook_waits.remove(&id);
    }

    // Fan-out.

    /// Fans a broadcast out to this worker's subscribers of its topic (queued on each,
    /// under the topic's slow-consumer policy), and counts the outcome in the node's
    /// counters.
    pub(crate) fn fan_out(
        &self,
        ctx: &Context<'_>,
        clients: &mut impl Clients,
        broadcast: &Arc<Broadcast>,
    ) -> Fanout {
        let mut fanout = Fanout::default();
        let Some(subscribers) = self.topics.subscribers(&broadcast.topic) else {
            return fanout;
        };
        let options = ctx.config.options(&broadcast.topic);
        let rules = ctx.queue_rules(&options, self.counters(ctx));
        for &id in subscribers {
            let Some(client) = clients.client(id) else {
                continue;
            };
            match client.deliver(broadcast, rules) {
                Delivered::Queued => fanout.queued += 1,
                Delivered::Dropped => fanout.dropped += 1,
                Delivered::ClosedSlow => fanout.closed += 1,
                Delivered::Conflated => fanout.conflated += 1,
                Delivered::Skipped => {}
            }
        }
        let node = &ctx.hub.stats;
        stats::add(&node.delivered, fanout.queued);
        stats::add(&node.dropped, fanout.dropped);
        stats::add(&node.slow_consumer_closes, fanout.closed);
        stats::add(&node.conflated, fanout.conflated);
        fanout
    }

    // Subscriptions.

    /// Subscribes connection `id` to `name` (idempotent), or says why not. `reply` is the
    /// reply to send (a v1 command's id; `None` in raw mode). In raw mode `since` asks for
    /// offsets (`$`) and a recovery from an offset; in v1, a topic with a history always
    /// starts with a read of it (from `since`, or where it is now), whose first page
    /// carries the reply with the subscription's starting offset.
    fn subscribe(
        &mut self,
        ctx: &Context<'_>,
        id: ConnId,
        client: &mut Client,
        name: &str,
        since: Option<Since>,
        reply: Waiting,
    ) -> Result<Subscribed, SubscribeError> {
        let options = ctx.config.options(name);
        let v1 = reply.is_some();
        let read = match since {
            Some(Since::After(_)) if !options.recovers() => return Err(SubscribeError::NoHistory),
            Some(Since::Now) if options.history == 0 => return Err(SubscribeError::NoHistory),
            Some(Since::After(after)) => Some(Since::After(after)),
            _ if v1 && options.history > 0 => Some(Since::Now),
            _ => None,
        };
        // Room in the queue for the first page, before the reply takes any.
        let room = ctx
            .config
            .max_send_queue
            .saturating_sub(client.queued_bytes());
        let waiting = self.add(ctx, id, client, name)?;
        if since.is_some() {
            client.ask_offsets();
        }
        let Some(topic) = client.topics().iter().find(|t| &***t == name).cloned() else {
            return Ok(Subscribed::Now);
        };
        if let Some(from) = read {
            let reply = if v1 { reply.clone() } else { None };
            self.recover(ctx, id, client, &options, topic.clone(), from, room, reply);
            if v1 {
                return Ok(Subscribed::Later);
            }
        }
        match waiting {
            Some(topic) => {
                self.pending.wait(topic, id, reply)?;
                Ok(Subscribed::Later)
            }
            None => Ok(Subscribed::Now),
        }
    }

    /// Adds connection `id` to `name`, checked against its token, the per-connection cap
    /// and the topic's subscriber cap. `Ok(Some(name))`: the broker has not confirmed the
    /// topic yet.
    fn add(
        &mut self,
        ctx: &Context<'_>,
        id: ConnId,
        client: &mut Client,
        name: &str,
    ) -> Result<Option<Arc<str>>, SubscribeError> {
        topic::validate(name)?;
        if client.grant().is_some_and(|g| !g.allows(name)) {
            return Err(SubscribeError::NotAllowed);
        }
        self.add_granted(ctx, id, client, name)
    }

    /// [`Self::add`] past the checks of the name and the grant (done, or not wanted for
    /// the connect hook's own choices).
    fn add_granted(
        &mut self,
        ctx: &Context<'_>,
        id: ConnId,
        client: &mut Client,
        name: &str,
    ) -> Result<Option<Arc<str>>, SubscribeError> {
        if let Some(name) = client.topics().iter().find(|t| &***t == name) {
            return Ok((!ctx.hub.is_confirmed(name)).then(|| name.clone()));
        }
        let max = ctx.config.max_topics_per_connection;
        if client.topics().len() >= max {
            return Err(SubscribeError::TooManyTopics(max));
        }
        let max_subscribers = ctx.config.options(name).max_subscribers;
        let (name, first) = self.topics.subscribe(name, id);
        let confirmed = match ctx
            .hub
            .subscribe(&name, self.worker, first, max_subscribers)
        {
            Ok(confirmed) => confirmed,
            Err(full) => {
                self.topics.unsubscribe(&name, id);
                return Err(full.into());
            }
        };
        ctx.hub.joined(&name, &who(self.worker, id, client));
        client.add_topic(name.clone());
        Ok((!confirmed).then_some(name))
    }

    /// Unsubscribes connection `id` from `name` (and ends its recovery of it), or says
    /// why not. Returns the subscribe replies that were still waiting for it (due now,
    /// before this one's).
    fn unsubscribe(
        &mut self,
        ctx: &Context<'_>,
        id: ConnId,
        client: &mut Client,
        name: &str,
    ) -> Result<Vec<Waiting>, SubscribeError> {
        topic::validate(name)?;
        let Some(name) = client.remove_topic(name) else {
            return Err(SubscribeError::NotSubscribed);
        };
        let mut waiting = self.remove(ctx, id, &name, &who(self.worker, id, client));
        let recoveries = client.recoveries_mut();
        if let Some(at) = recoveries.iter().position(|r| r.topic == name) {
            let recovery = recoveries.swap_remove(at);
            waiting.extend(recovery.reply.map(Some));
        }
        Ok(waiting)
    }

    /// Takes connection `id` (`who`) off `name`, and its replies off the waiting ones
    /// (returned).
    fn remove(
        &mut self,
        ctx: &Context<'_>,
        id: ConnId,
        name: &Arc<str>,
        who: &Who<'_>,
    ) -> Vec<Waiting> {
        let waiting = self.pending.forget(name, id);
        let last = self.topics.unsubscribe(name, id);
        ctx.hub.unsubscribe(name, self.worker, last);
        ctx.hub.left(name, who);
        waiting
    }

    // Recoveries.

    /// The destination of connection `id`'s next history read.
    fn next_dest(&mut self, id: ConnId) -> HistoryDest {
        self.next_request += 1;
        HistoryDest {
            worker: self.worker,
            conn: id,
            request: self.next_request,
        }
    }

    /// Starts connection `id`'s recovery of `topic` from `from`, its first page sized to
    /// `room`; `reply`: a v1 subscribe answered with the first page. A recovery of the
    /// topic already under way is replaced (its pending reply answered now): a reply to
    /// its read is stale. The read is asked for after the subscription, so nothing falls
    /// between history and live.
    #[allow(clippy::too_many_arguments)]
    fn recover(
        &mut self,
        ctx: &Context<'_>,
        id: ConnId,
        client: &mut Client,
        options: &TopicOptions,
        topic: Arc<str>,
        from: Since,
        room: usize,
        reply: Option<CommandId>,
    ) {
        let recoveries = client.recoveries_mut();
        let replaced = recoveries
            .iter()
            .position(|r| r.topic == topic)
            .map(|at| recoveries.swap_remove(at));
        if let Some(old) = replaced.and_then(|r| r.reply) {
            subscribed(ctx, client, &topic, Some(&old), None);
        }
        let to = self.next_dest(id);
        let after = match from {
            Since::After(after) => after,
            Since::Now => Offset::ZERO,
        };
        let max_held = ctx.config.max_send_queue;
        let mut recovery = Recovery::new(topic.clone(), (to.request, after), max_held, ctx.now);
        recovery.reply = reply;
        client.recoveries_mut().push(recovery);
        let read = HistoryRead {
            from,
            to,
            budget: room,
            fetched: 0,
            average: 0,
            page: PAGE,
            limit: options.history.saturating_add(RECOVERY_SLACK),
            resumes: true,
            // An event stream's resume point is a moment (see `HistoryRead::shared_start`).
            shared_start: client.is_streaming(),
        };
        ctx.hub.read_history(topic, read);
    }

    /// A page of connection `id`'s recovery `at`: the v1 subscribe reply if it waits, a
    /// gap notice if some is missing, then the missed messages. With more to come, the
    /// next page is read once the connection's queue has room; after the last, the live
    /// messages held meanwhile that the history did not have. A replay that passes the
    /// send-queue cap stops there: with the `close` policy the connection is closed as a
    /// slow consumer, with `drop` it gets a gap notice.
    fn recovery_page(
        &mut self,
        ctx: &Context<'_>,
        id: ConnId,
        client: &mut Client,
        at: usize,
        page: HistoryPage,
    ) {
        let counters = self.counters(ctx);
        let recovery = &mut client.recoveries_mut()[at];
        let topic = recovery.topic.clone();
        // After the first page, the page starts after what was sent: a page that came
        // back empty (a read that failed) must not send any of it again.
        let mut last = match recovery.phase {
            RecoveryPhase::Fetching { after, .. } if recovery.fetched > 0 => page.floor.max(after),
            _ => page.floor,
        };
        let reply = recovery.reply.take();
        let options = ctx.config.options(&topic);
        let rules = ctx.queue_rules(&options, counters);
        if let Some(reply) = reply {
            let recovering = !page.entries.is_empty() || page.more;
            subscribed(
                ctx,
                client,
                &topic,
                Some(&reply),
                Some((page.floor, recovering)),
            );
        }
        if let Some(reason) = page.gap {
            client.notify(
                &Notice::Gap {
                    topic: &topic,
                    reason,
                },
                ctx.close_deadline(),
            );
        }
        let mut cut_short = false;
        // The page was cut to the queue's room when it was asked for; the queue may have
        // filled since. What does not fit under half the cap waits for the next page.
        let mut more = page.more;
        for (offset, publication) in page.entries {
            if offset <= last {
                continue;
            }
            if client.queued_bytes() >= ctx.config.max_send_queue / 2 {
                more = true;
                break;
            }
            last = offset;
            client.recoveries_mut()[at].sent(publication.payload.len());
            let broadcast = Arc::new(Broadcast::new(
                topic.clone(),
                publication,
                Some(offset),
                ctx.now,
            ));
            match client.push_broadcast(&broadcast, rules) {
                Delivered::Queued | Delivered::Skipped | Delivered::Conflated => {}
                Delivered::Dropped => {
                    cut_short = true;
                    break;
                }
                Delivered::ClosedSlow => {
                    client.recoveries_mut().clear();
                    return;
                }
            }
        }
        if more && !cut_short {
            client.recoveries_mut()[at].phase = RecoveryPhase::Paused { after: last };
            self.read_next_pages(ctx, id, client);
            return;
        }
        finish_recovery(ctx, rules, client, at, last, cut_short);
    }

    /// Reads the next page of connection `id`'s paused recoveries, each once its send
    /// queue has half its cap free: the replay goes at the reader's pace.
    fn read_next_pages(&mut self, ctx: &Context<'_>, id: ConnId, client: &mut Client) {
        let cap = ctx.config.max_send_queue;
        let room = cap.saturating_sub(client.queued_bytes());
        if room < cap / 2 {
            return;
        }
        let recoveries = client.recoveries_mut();
        // The room is shared by the recoveries that read a page now.
        let paused = recoveries
            .iter()
            .filter(|r| matches!(r.phase, RecoveryPhase::Paused { .. }))
            .count();
        let budget = room / paused.max(1);
        let mut reads = Vec::new();
        for recovery in recoveries.iter_mut() {
            let RecoveryPhase::Paused { after } = recovery.phase else {
                continue;
            };
            self.next_request += 1;
            let to = HistoryDest {
                worker: self.worker,
                conn: id,
                request: self.next_request,
            };
            recovery.phase = RecoveryPhase::Fetching {
                request: to.request,
                after,
            };
            let read = HistoryRead {
                from: Since::After(after),
                to,
                budget,
                fetched: recovery.fetched,
                average: recovery.average(),
                page: PAGE,
                limit: ctx
                    .config
                    .options(&recovery.topic)
                    .history
                    .saturating_add(RECOVERY_SLACK),
                resumes: true,
                shared_start: false,
            };
            reads.push((recovery.topic.clone(), read));
        }
        for (topic, read) in reads {
            ctx.hub.read_history(topic, read);
        }
    }
}

/// Answers a subscribe to `topic` (raw mode's, or v1 command `reply`'s): for v1, with
/// where the subscription starts and whether history follows, when known.
fn subscribed(
    ctx: &Context<'_>,
    client: &mut Client,
    topic: &str,
    reply: Option<&CommandId>,
    start: Option<(Offset, bool)>,
) {
    let text = match reply {
        None => raw_protocol::ok_reply("subscribe", topic),
        Some(id) => {
            let mut fields = serde_json::Map::new();
            fields.insert("offset".into(), start.map(|(o, _)| o.to_string()).into());
            fields.insert("recovering".into(), start.is_some_and(|(_, r)| r).into());
            wire_v1::reply(id, "subscribe", Some(topic), fields)
        }
    };
    client.send_text(text, ctx.close_deadline());
}

/// Ends `client`'s recovery `at` once the history is sent up to `last` (or cut short):
/// the held live messages the history did not have go out, each once, as far as the
/// queue has room (what does not fit, or did not fit in the hold, is dropped and a gap
/// notice says so: a prompt reader is not closed for the size of its backlog), and live
/// messages up to `last` are skipped from now on.
fn finish_recovery(
    ctx: &Context<'_>,
    rules: QueueRules<'_>,
    client: &mut Client,
    at: usize,
    mut last: Offset,
    cut_short: bool,
) {
    let recovery = &mut client.recoveries_mut()[at];
    let held = recovery.take_held();
    let mut overflowed = recovery.overflowed || cut_short;
    let topic = recovery.topic.clone();
    if !cut_short {
        for broadcast in held {
            match broadcast.offset {
                Some(offset) if offset <= last => continue,
                Some(offset) => last = offset,
                None => {}
            }
            if !client.has_room_for(broadcast.len(), ctx.config.max_send_queue) {
                overflowed = true;
                break;
            }
            if client.push_broadcast(&broadcast, rules) == Delivered::ClosedSlow {
                client.recoveries_mut().clear();
                return;
            }
        }
    }
    client.recoveries_mut()[at].phase = RecoveryPhase::Live { sent_to: last };
    if overflowed {
        let reason = "more came during the recovery than can be held or queued";
        client.notify(
            &Notice::Gap {
                topic: &topic,
                reason,
            },
            ctx.close_deadline(),
        );
    }
}

#[cfg(test)]
mod tests;
