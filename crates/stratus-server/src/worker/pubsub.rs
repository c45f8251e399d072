//! The pub/sub a worker runs, with no ring, no socket and no clock: its topic table (which
//! of its connections listen to what) kept in step with the hub's view, subscribe and
//! unsubscribe commands, the subscribe replies waiting for the broker's confirmation,
//! recoveries of missed messages (history pages, the live messages held meanwhile, gap
//! notices), and the delivery of a broadcast to the topic's local subscribers.
//!
//! It reaches connections through [`Clients`] (the worker's table, or a test's map) and
//! the node through the hub, and takes the time from its [`Context`]: unit tests drive it
//! directly, as quinn-proto's are driven without sockets.

use std::sync::Arc;
use std::time::Instant;

use stratus_proto::Message;

use crate::config::{COMMAND_COST, Config};
use crate::connection::{Client, Delivered, QueueRules};
use crate::messages::{BrokerRequest, HistoryDest, HistoryPage, HistoryRead};
use crate::model::broadcast::Broadcast;
use crate::model::commands::{self, Command};
use crate::model::conn_id::ConnId;
use crate::model::offset::{Offset, Since};
use crate::model::recovery::{Phase as RecoveryPhase, Recovery};
use crate::model::topic::{self, TopicError, TopicTable};
use crate::node::hub::Hub;
use crate::stats::{self, WorkerStats};
use crate::worker::pending_replies::PendingReplies;

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

    /// How broadcasts are queued now, compressions counted in `stats`.
    fn queue_rules<'s>(&self, stats: &'s WorkerStats) -> QueueRules<'s> {
        QueueRules {
            cap: self.config.max_send_queue,
            policy: self.config.slow_consumer,
            close_deadline: self.close_deadline(),
            stats,
        }
    }
}

/// Why a subscription command was refused (the error reply says it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SubscribeError {
    #[error(transparent)]
    InvalidTopic(#[from] TopicError),
    #[error("the token does not allow this topic")]
    NotAllowed,
    #[error("at most {0} topics per connection")]
    TooManyTopics(usize),
    #[error("not subscribed")]
    NotSubscribed,
    #[error("no history is kept (the nodes need --broker and --history)")]
    NoHistory,
}

/// How many of a topic's local subscribers a broadcast went to, and what happened to
/// the others.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fanout {
    pub(crate) queued: u64,
    pub(crate) dropped: u64,
    pub(crate) closed: u64,
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
}

impl PubSub {
    pub(crate) fn new(worker: usize) -> Self {
        Self {
            worker,
            topics: TopicTable::default(),
            pending: PendingReplies::default(),
            next_request: 0,
        }
    }

    fn counters<'a>(&self, ctx: &Context<'a>) -> &'a WorkerStats {
        &ctx.hub.workers[self.worker]
    }

    // Handlers.

    /// Connection `id` has upgraded asking for `topics` (checked by the upgrade against
    /// the token and the per-connection cap): it is subscribed to them, with no replies.
    pub(crate) fn on_upgrade(
        &mut self,
        ctx: &Context<'_>,
        id: ConnId,
        client: &mut Client,
        topics: &[String],
    ) {
        for name in topics {
            let _ = self.add(ctx, id, client, name);
        }
    }

    /// A data message from connection `id`: a subscription command, answered (a
    /// subscribe once the broker has confirmed the topic), or refused with an error
    /// reply.
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
                let reply = commands::error_reply(None, None, "binary messages are not commands");
                client.send_text(reply, ctx.close_deadline());
                return;
            }
            _ => return,
        };
        let reply = match commands::parse(text) {
            Err(reply) => reply,
            // Each command may cost a broker round trip and a history read: it counts as
            // COMMAND_COST messages of the connection's budget, and past it is refused.
            Ok(command) if !client.spend(COMMAND_COST - 1, ctx.now_ms, ctx.config.message_rate) => {
                stats::add(&self.counters(ctx).commands_limited, 1);
                let (op, topic) = match &command {
                    Command::Subscribe { topic, .. } => ("subscribe", topic),
                    Command::Unsubscribe(topic) => ("unsubscribe", topic),
                };
                let why = format!(
                    "rate limited: at most {} commands a second",
                    ctx.config.message_rate / COMMAND_COST
                );
                commands::error_reply(Some(op), Some(topic), &why)
            }
            Ok(Command::Subscribe { topic, since }) => {
                match self.subscribe(ctx, id, client, &topic, since) {
                    Ok(None) => commands::ok_reply("subscribe", &topic),
                    Ok(Some(waiting)) => {
                        self.pending.wait(waiting, id);
                        return;
                    }
                    Err(e) => {
                        commands::error_reply(Some("subscribe"), Some(&topic), &e.to_string())
                    }
                }
            }
            Ok(Command::Unsubscribe(topic)) => match self.unsubscribe(ctx, id, client, &topic) {
                Ok(waited) => {
                    // Every command gets its reply: a subscribe still waiting for the
                    // broker is answered first (it held until this unsubscribe).
                    if waited {
                        client.send_text(
                            commands::ok_reply("subscribe", &topic),
                            ctx.close_deadline(),
                        );
                    }
                    commands::ok_reply("unsubscribe", &topic)
                }
                Err(e) => commands::error_reply(Some("unsubscribe"), Some(&topic), &e.to_string()),
            },
        };
        client.send_text(reply, ctx.close_deadline());
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
        for id in self.pending.take(topic) {
            if let Some(client) = clients.client(id) {
                client.send_text(commands::ok_reply("subscribe", topic), ctx.close_deadline());
            }
        }
    }

    /// A page of a connection's history is in (a reply to an earlier read, since
    /// replaced, is dropped): a gap notice if some is missing, then the missed messages.
    /// With more to come, the next page is read once the connection's queue has room;
    /// after the last, the live messages held meanwhile that the history did not have. A
    /// replay that passes the send-queue cap stops there: with the `close` policy the
    /// connection is closed as a slow consumer, with `drop` it gets a gap notice.
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
        let Some(at) = client
            .recoveries_mut()
            .iter()
            .position(|r| r.topic == *topic && r.awaits(to.request))
        else {
            return;
        };
        let deadline = ctx.close_deadline();
        let counters = self.counters(ctx);
        if let Some(reason) = page.gap {
            client.send_text(commands::gap_notice(topic, reason), deadline);
        }
        // After the first page, the page starts after what was sent: a page that came
        // back empty (a read that failed) must not send any of it again.
        let recovery = &client.recoveries_mut()[at];
        let mut last = match recovery.phase {
            RecoveryPhase::Fetching { after, .. } if recovery.fetched > 0 => page.floor.max(after),
            _ => page.floor,
        };
        let mut cut_short = false;
        // The page was cut to the queue's room when it was asked for; the queue may have
        // filled since. What does not fit under half the cap waits for the next page.
        let mut more = page.more;
        for (offset, message) in page.entries {
            if offset <= last {
                continue;
            }
            if client.queued_bytes() >= ctx.config.max_send_queue / 2 {
                more = true;
                break;
            }
            last = offset;
            client.recoveries_mut()[at].sent(message.payload_len());
            let broadcast = Arc::new(Broadcast::new(message, Some(offset), ctx.now));
            match client.push_broadcast(topic, &broadcast, ctx.queue_rules(counters)) {
                Delivered::Queued | Delivered::Skipped => {}
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
            self.read_next_pages(ctx, to.conn, client);
            return;
        }
        finish_recovery(ctx, counters, client, at, last, cut_short);
    }

    /// Connection `id`'s send finished: a recovery paused for room reads its next page.
    pub(crate) fn on_sent(&mut self, ctx: &Context<'_>, id: ConnId, client: &mut Client) {
        let paused = client
            .recoveries_mut()
            .iter()
            .any(|r| matches!(r.phase, RecoveryPhase::Paused { .. }));
        if paused {
            self.read_next_pages(ctx, id, client);
        }
    }

    /// Connection `id` is gone: it leaves its topics (the node's last subscriber of one
    /// tells the broker) and its subscribe replies no longer wait.
    pub(crate) fn on_left(&mut self, ctx: &Context<'_>, id: ConnId, client: &Client) {
        for name in client.topics() {
            let _ = self.remove(ctx, id, name);
        }
    }

    // Delivery.

    /// Fans a broadcast out to this worker's subscribers of `topic` (queued on each), and
    /// counts the outcome in the node's counters.
    pub(crate) fn fan_out(
        &self,
        ctx: &Context<'_>,
        clients: &mut impl Clients,
        topic: &str,
        broadcast: &Arc<Broadcast>,
    ) -> Fanout {
        let mut fanout = Fanout::default();
        let Some(subscribers) = self.topics.subscribers(topic) else {
            return fanout;
        };
        let rules = ctx.queue_rules(self.counters(ctx));
        for &id in subscribers {
            let Some(client) = clients.client(id) else {
                continue;
            };
            match client.deliver(topic, broadcast, rules) {
                Delivered::Queued => fanout.queued += 1,
                Delivered::Dropped => fanout.dropped += 1,
                Delivered::ClosedSlow => fanout.closed += 1,
                Delivered::Skipped => {}
            }
        }
        let node = &ctx.hub.stats;
        stats::add(&node.delivered, fanout.queued);
        stats::add(&node.dropped, fanout.dropped);
        stats::add(&node.slow_consumer_closes, fanout.closed);
        fanout
    }

    // Subscriptions.

    /// Subscribes connection `id` to `name` (idempotent), with offsets and a recovery of
    /// what came after `since`'s offset if it has one, or says why not. `Ok(Some(name))`:
    /// the subscription waits for the broker's confirmation (the reply goes out with it).
    fn subscribe(
        &mut self,
        ctx: &Context<'_>,
        id: ConnId,
        client: &mut Client,
        name: &str,
        since: Option<Since>,
    ) -> Result<Option<Arc<str>>, SubscribeError> {
        let Some(since) = since else {
            return self.add(ctx, id, client, name);
        };
        if !ctx.hub.broker.as_ref().is_some_and(|b| b.keeps_history()) {
            return Err(SubscribeError::NoHistory);
        }
        // Room in the queue for the first page, before the reply takes any.
        let room = ctx
            .config
            .max_send_queue
            .saturating_sub(client.queued_bytes());
        let waiting = self.add(ctx, id, client, name)?;
        client.ask_offsets();
        if let Since::After(after) = since
            && let Some(name) = client.topics().iter().find(|t| &***t == name).cloned()
        {
            self.recover(ctx, id, client, name, after, room);
        }
        Ok(waiting)
    }

    /// Starts connection `id`'s recovery of `topic` after `after`, its first page sized to
    /// `room`. A recovery of the topic already under way is replaced: a reply to its
    /// read is stale. The read is asked of the broker after the subscription, so nothing
    /// falls between history and live.
    fn recover(
        &mut self,
        ctx: &Context<'_>,
        id: ConnId,
        client: &mut Client,
        topic: Arc<str>,
        after: Offset,
        room: usize,
    ) {
        let Some(broker) = &ctx.hub.broker else {
            return;
        };
        let recoveries = client.recoveries_mut();
        recoveries.retain(|r| r.topic != topic);
        let to = self.next_dest(id);
        let max_held = ctx.config.max_send_queue;
        recoveries.push(Recovery::new(
            topic.clone(),
            (to.request, after),
            max_held,
            ctx.now,
        ));
        let read = HistoryRead {
            after,
            to,
            budget: room,
            fetched: 0,
            average: 0,
        };
        broker.request(BrokerRequest::History { topic, read });
    }

    /// Adds connection `id` to `name`, checked against its token and the per-connection
    /// cap. `Ok(Some(name))`: the broker has not confirmed the topic yet.
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
        if let Some(name) = client.topics().iter().find(|t| &***t == name) {
            return Ok((!ctx.hub.is_confirmed(name)).then(|| name.clone()));
        }
        let max = ctx.config.max_topics_per_connection;
        if client.topics().len() >= max {
            return Err(SubscribeError::TooManyTopics(max));
        }
        let (name, first) = self.topics.subscribe(name, id);
        let confirmed = if first {
            ctx.hub.set_interest(&name, self.worker, true)
        } else {
            ctx.hub.is_confirmed(&name)
        };
        client.topics_mut().push(name.clone());
        Ok((!confirmed).then_some(name))
    }

    /// Unsubscribes connection `id` from `name` (and ends its recovery of it), or says
    /// why not. `Ok(true)`: its subscribe reply was still waiting for the broker (it is
    /// due now, before this one's).
    fn unsubscribe(
        &mut self,
        ctx: &Context<'_>,
        id: ConnId,
        client: &mut Client,
        name: &str,
    ) -> Result<bool, SubscribeError> {
        topic::validate(name)?;
        let topics = client.topics_mut();
        let Some(at) = topics.iter().position(|t| &**t == name) else {
            return Err(SubscribeError::NotSubscribed);
        };
        let name = topics.swap_remove(at);
        client.recoveries_mut().retain(|r| r.topic != name);
        Ok(self.remove(ctx, id, &name))
    }

    /// Takes connection `id` off `name`, and its reply off the waiting ones; `true` if
    /// one was waiting.
    fn remove(&mut self, ctx: &Context<'_>, id: ConnId, name: &Arc<str>) -> bool {
        let waited = self.pending.forget(name, id);
        if self.topics.unsubscribe(name, id) {
            ctx.hub.set_interest(name, self.worker, false);
        }
        waited
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

    /// Reads the next page of connection `id`'s paused recoveries, each once its send
    /// queue has half its cap free: the replay goes at the reader's pace.
    fn read_next_pages(&mut self, ctx: &Context<'_>, id: ConnId, client: &mut Client) {
        let cap = ctx.config.max_send_queue;
        let Some(broker) = &ctx.hub.broker else {
            return;
        };
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
        for recovery in recoveries {
            let RecoveryPhase::Paused { after } = recovery.phase else {
                continue;
            };
            let to = self.next_dest(id);
            recovery.phase = RecoveryPhase::Fetching {
                request: to.request,
                after,
            };
            let read = HistoryRead {
                after,
                to,
                budget,
                fetched: recovery.fetched,
                average: recovery.average(),
            };
            broker.request(BrokerRequest::History {
                topic: recovery.topic.clone(),
                read,
            });
        }
    }
}

/// Ends `client`'s recovery `at` once the history is sent up to `last` (or cut short):
/// the held live messages the history did not have go out, each once, as far as the
/// queue has room (what does not fit, or did not fit in the hold, is dropped and a gap
/// notice says so: a prompt reader is not closed for the size of its backlog), and live
/// messages up to `last` are skipped from now on.
fn finish_recovery(
    ctx: &Context<'_>,
    counters: &WorkerStats,
    client: &mut Client,
    at: usize,
    mut last: Offset,
    cut_short: bool,
) {
    let deadline = ctx.close_deadline();
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
            if !client.has_room_for(broadcast.plain.len(), ctx.config.max_send_queue) {
                overflowed = true;
                break;
            }
            let delivered = client.push_broadcast(&topic, &broadcast, ctx.queue_rules(counters));
            if delivered == Delivered::ClosedSlow {
                client.recoveries_mut().clear();
                return;
            }
        }
    }
    client.recoveries_mut()[at].phase = RecoveryPhase::Live { sent_to: last };
    if overflowed {
        let why = "more came during the recovery than can be held or queued";
        client.send_text(commands::gap_notice(&topic, why), deadline);
    }
}

#[cfg(test)]
mod tests;
