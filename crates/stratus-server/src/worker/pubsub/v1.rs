//! Protocol v1's commands (see `docs/protocol.md`): subscribe, unsubscribe, publish,
//! history, refresh and ping, each answered with a reply that echoes its id or an error
//! with a stable code.

use std::sync::Arc;

use serde_json::Map;

use super::{
    Context, HistoryCommand, MAX_HISTORY_READS, MAX_PUBLISHES_WAITING, PubSub, Subscribed,
    subscribed,
};
use crate::config::{COMMAND_COST, ClientPublish, PresenceMode};
use crate::connection::Client;
use crate::messages::{HistoryPage, HistoryRead, PublishDest, PublishError};
use crate::model::conn_id::ConnId;
use crate::model::hook::{Asker, HookKind, Pending};
use crate::model::offset::{Offset, Since};
use crate::model::presence::PresenceAnswer;
use crate::model::protocol::Notice;
use crate::model::protocol::v1::{self, Command, CommandId, ErrorCode, Malformed, Op};
use crate::model::publication::Publication;
use crate::model::topic;
use crate::stats;

/// A refusal of a command: its code and why.
pub(super) struct Refusal {
    pub(super) code: ErrorCode,
    pub(super) message: String,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl PubSub {
    /// A text message from protocol v1 connection `id`: a command, answered (some once
    /// the broker or the history has answered), or refused with an error naming its id.
    pub(super) fn on_v1(
        &mut self,
        ctx: &Context<'_>,
        id: ConnId,
        client: &mut Client,
        text: &[u8],
    ) {
        let command = match v1::parse(text) {
            Ok(command) => command,
            Err(Malformed(reply)) => {
                client.send_text(reply, ctx.close_deadline());
                return;
            }
        };
        if let Err(refusal) = self.run(ctx, id, client, &command) {
            let Command { id: command_id, op } = &command;
            let reply = v1::error(
                Some(command_id),
                Some(op.name()),
                op.topic(),
                refusal.code,
                &refusal.message,
            );
            client.send_text(reply, ctx.close_deadline());
        }
    }

    /// Runs `command`: its reply is sent, or will be; or it is refused.
    fn run(
        &mut self,
        ctx: &Context<'_>,
        id: ConnId,
        client: &mut Client,
        command: &Command,
    ) -> Result<(), Refusal> {
        let Command { id: command_id, op } = command;
        let costly = matches!(
            op,
            Op::Subscribe { .. }
                | Op::Unsubscribe { .. }
                | Op::History { .. }
                | Op::Refresh { .. }
                | Op::Presence { .. }
                | Op::Occupancy { .. }
        );
        if costly && !self.spend_command(ctx, client) {
            let why = format!(
                "rate limited: at most {} commands a second",
                ctx.config.message_rate / COMMAND_COST
            );
            return Err(Refusal::new(ErrorCode::RateLimited, why));
        }
        let deadline = ctx.close_deadline();
        match op {
            Op::Subscribe { topic, since } if Self::asks_subscribe_hook(ctx, topic) => {
                // The reply waits for the backend (`hooked`).
                valid(topic)?;
                let pending = Pending {
                    topic: Arc::from(topic.as_str()),
                    asker: Asker::V1(command_id.clone()),
                    since: *since,
                    publication: None,
                };
                self.ask_hook(ctx, id, client, HookKind::Subscribe, pending)
                    .map_err(|(code, why)| Refusal::new(code, why))?;
            }
            Op::Subscribe { topic, since } => {
                match self.subscribe(ctx, id, client, topic, *since, Some(command_id.clone())) {
                    Ok(Subscribed::Now) => subscribed(ctx, client, topic, Some(command_id), None),
                    Ok(Subscribed::Later) => {}
                    Err(e) => return Err(Refusal::new(e.code(), e.to_string())),
                }
            }
            Op::Unsubscribe { topic } => {
                let waiting = self
                    .unsubscribe(ctx, id, client, topic)
                    .map_err(|e| Refusal::new(e.code(), e.to_string()))?;
                for reply in waiting {
                    subscribed(ctx, client, topic, reply.as_ref(), None);
                }
                client.send_text(
                    v1::reply(command_id, "unsubscribe", Some(topic), Map::new()),
                    deadline,
                );
            }
            Op::Publish { topic, publication } => {
                self.publish(
                    ctx,
                    id,
                    client,
                    command_id,
                    topic,
                    publication.clone(),
                    false,
                )?;
            }
            Op::History {
                topic,
                since,
                limit,
            } => {
                self.history(ctx, id, client, command_id, topic, *since, *limit)?;
            }
            Op::Refresh { token } => self.refresh(ctx, id, client, command_id, token)?,
            Op::Ping => client.send_text(v1::reply(command_id, "ping", None, Map::new()), deadline),
            Op::Presence { topic } => self.presence(ctx, id, client, command_id, topic, true)?,
            Op::Occupancy { topic } => self.presence(ctx, id, client, command_id, topic, false)?,
        }
        Ok(())
    }

    /// A publish from connection `id`: allowed by the topic's namespace (and the token's
    /// claim where it asks for one), within the topic's message size and the
    /// connection's publish budget; it goes the way every publish goes (the broker
    /// included), and is answered with its offset.
    // `hooked`: the publish hook has allowed it (its budget was spent when it was asked).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn publish(
        &mut self,
        ctx: &Context<'_>,
        id: ConnId,
        client: &mut Client,
        command: &CommandId,
        name: &str,
        publication: Publication,
        hooked: bool,
    ) -> Result<(), Refusal> {
        valid(name)?;
        let options = ctx.config.options(name);
        let allowed = match options.publish {
            ClientPublish::Off => Err("publishing from connections is off for this topic"),
            ClientPublish::Subscribers if !client.topics().iter().any(|t| &**t == name) => {
                Err("only the topic's subscribers may publish to it: subscribe first")
            }
            ClientPublish::Subscribers => Ok(()),
            ClientPublish::Claim if client.grant().is_some_and(|g| g.may_publish(name)) => Ok(()),
            ClientPublish::Claim => Err("the token's publish claim does not allow this topic"),
        };
        allowed.map_err(|why| Refusal::new(ErrorCode::Forbidden, why))?;
        if publication.payload.len() > options.max_message {
            let why = format!(
                "at most {} bytes may be published to this topic",
                options.max_message
            );
            return Err(Refusal::new(ErrorCode::TooLarge, why));
        }
        let counters = self.counters(ctx);
        if !hooked && !client.spend_publish(ctx.now_ms, ctx.config.client_publish_rate) {
            stats::add(&counters.publishes_limited, 1);
            let why = format!(
                "rate limited: at most {} publishes a second",
                ctx.config.client_publish_rate
            );
            return Err(Refusal::new(ErrorCode::RateLimited, why));
        }
        if self
            .publishes
            .get(&id)
            .is_some_and(|&n| n >= MAX_PUBLISHES_WAITING)
        {
            stats::add(&counters.publishes_limited, 1);
            let why = "too many publishes are waiting for the broker: retry when they are answered";
            return Err(Refusal::new(ErrorCode::RateLimited, why));
        }
        if !hooked && Self::asks_publish_hook(ctx, name) {
            // It goes on once the backend allows it (`hooked`).
            let pending = Pending {
                topic: Arc::from(name),
                asker: Asker::V1(command.clone()),
                since: None,
                publication: Some(publication),
            };
            return self
                .ask_hook(ctx, id, client, HookKind::Publish, pending)
                .map_err(|(code, why)| Refusal::new(code, why));
        }
        let to = PublishDest {
            worker: self.worker,
            conn: id,
            command: command.clone(),
        };
        stats::add(&counters.client_publishes, 1);
        match ctx.hub.publish_for(to, name, publication) {
            Ok(delivery) if delivery.is_forwarded() => *self.publishes.entry(id).or_default() += 1,
            Ok(delivery) => published(
                ctx,
                client,
                command,
                name,
                Ok(delivery.offset().map(|o| o.to_string())),
            ),
            Err(err) => published(ctx, client, command, name, Err(err)),
        }
        Ok(())
    }

    /// A `presence` (`members`) or `occupancy` command on `name`: allowed by the token
    /// and the topic's namespace; answered now without a broker, when Redis answers with
    /// one.
    fn presence(
        &mut self,
        ctx: &Context<'_>,
        id: ConnId,
        client: &mut Client,
        command: &CommandId,
        name: &str,
        members: bool,
    ) -> Result<(), Refusal> {
        readable(client, name)?;
        match ctx.config.options(name).presence {
            PresenceMode::Off => {
                let why = "no presence is kept for this topic (--presence, or its namespace's)";
                return Err(Refusal::new(ErrorCode::NoPresence, why));
            }
            PresenceMode::Counts if members => {
                let why = "this topic's presence is counts only: ask for its occupancy";
                return Err(Refusal::new(ErrorCode::NoPresence, why));
            }
            _ => {}
        }
        let to = PublishDest {
            worker: self.worker,
            conn: id,
            command: command.clone(),
        };
        if let Some(answer) = ctx.hub.ask_presence(name, members, to) {
            presence_reply(ctx, client, command, name, members, Some(answer));
        }
        Ok(())
    }

    /// A `history` command: a page of `name`'s history after `since` (from the oldest kept
    /// without), at most `limit` publications and what the queue has room for; the reply
    /// goes with the page.
    #[allow(clippy::too_many_arguments)]
    fn history(
        &mut self,
        ctx: &Context<'_>,
        id: ConnId,
        client: &mut Client,
        command: &CommandId,
        name: &str,
        since: Option<Since>,
        limit: usize,
    ) -> Result<(), Refusal> {
        readable(client, name)?;
        if ctx.config.options(name).history == 0 {
            let why = "no history is kept for this topic (--history, or its namespace's history)";
            return Err(Refusal::new(ErrorCode::NoHistory, why));
        }
        if self
            .history_commands
            .get(&id)
            .is_some_and(|c| c.len() >= MAX_HISTORY_READS)
        {
            let why = format!("at most {MAX_HISTORY_READS} history reads at once");
            return Err(Refusal::new(ErrorCode::RateLimited, why));
        }
        let to = self.next_dest(id);
        self.history_commands
            .entry(id)
            .or_default()
            .push(HistoryCommand {
                request: to.request,
                command: command.clone(),
                since: since.is_some(),
            });
        let read = HistoryRead {
            from: since.unwrap_or(Since::After(Offset::ZERO)),
            to,
            budget: ctx
                .config
                .max_send_queue
                .saturating_sub(client.queued_bytes()),
            fetched: 0,
            // Not a recovery: the page is sized by the limit and the budget alone.
            average: 1,
            page: limit,
            limit: usize::MAX,
            resumes: false,
            shared_start: false,
        };
        ctx.hub.read_history(Arc::from(name), read);
        Ok(())
    }

    /// A `refresh`: the new token must verify and name the same subject; its topics
    /// replace the old ones, and subscriptions it no longer allows end with a notice.
    fn refresh(
        &mut self,
        ctx: &Context<'_>,
        id: ConnId,
        client: &mut Client,
        command: &CommandId,
        token: &str,
    ) -> Result<(), Refusal> {
        let Some(auth) = &ctx.config.auth else {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                "auth is off: there is no token to refresh",
            ));
        };
        let grant = auth
            .verify(token)
            .map_err(|why| Refusal::new(ErrorCode::InvalidToken, why))?;
        if client.grant().is_some_and(|g| g.subject != grant.subject) {
            return Err(Refusal::new(
                ErrorCode::InvalidToken,
                "the new token names another subject",
            ));
        }
        let expires = grant.expires;
        let ended: Vec<Arc<str>> = client
            .topics()
            .iter()
            .filter(|t| !grant.allows(t))
            .cloned()
            .collect();
        client.set_grant(grant);
        for topic in ended {
            if let Ok(waiting) = self.unsubscribe(ctx, id, client, &topic) {
                for reply in waiting {
                    subscribed(ctx, client, &topic, reply.as_ref(), None);
                }
                let reason = "the new token does not allow this topic";
                client.notify(
                    &Notice::Unsubscribed {
                        topic: &topic,
                        reason,
                    },
                    ctx.close_deadline(),
                );
            }
        }
        let mut fields = Map::new();
        fields.insert("expires".into(), expires.into());
        client.send_text(
            v1::reply(command, "refresh", None, fields),
            ctx.close_deadline(),
        );
        Ok(())
    }
}

/// Checks a topic name, as a refusal.
fn valid(name: &str) -> Result<(), Refusal> {
    topic::validate(name).map_err(|e| Refusal::new(ErrorCode::InvalidTopic, e.to_string()))
}

/// Refuses a read of `name` (its history, its presence) that is not a topic, or that
/// the connection's token does not allow.
fn readable(client: &Client, name: &str) -> Result<(), Refusal> {
    valid(name)?;
    if client.grant().is_some_and(|g| !g.allows(name)) {
        let why = "the token does not allow this topic";
        return Err(Refusal::new(ErrorCode::Forbidden, why));
    }
    Ok(())
}

/// Answers publish `command` on `topic`: its offset, or why it failed.
pub(super) fn published(
    ctx: &Context<'_>,
    client: &mut Client,
    command: &CommandId,
    topic: &str,
    result: Result<Option<String>, PublishError>,
) {
    let text = match result {
        Ok(offset) => {
            let mut fields = Map::new();
            fields.insert("offset".into(), offset.into());
            v1::reply(command, "publish", Some(topic), fields)
        }
        Err(err) => {
            let code = match err {
                PublishError::Overloaded => ErrorCode::Overloaded,
                PublishError::BrokerUnavailable | PublishError::Draining => ErrorCode::Unavailable,
                PublishError::InvalidTopic(_) => ErrorCode::InvalidTopic,
                _ => ErrorCode::BadRequest,
            };
            v1::error(
                Some(command),
                Some("publish"),
                Some(topic),
                code,
                &err.to_string(),
            )
        }
    };
    client.send_text(text, ctx.close_deadline());
}

/// Answers a `presence` (`members`) or `occupancy` command with `answer`, or refuses it
/// with `unavailable` when the broker could not read it.
pub(super) fn presence_reply(
    ctx: &Context<'_>,
    client: &mut Client,
    command: &CommandId,
    topic: &str,
    members: bool,
    answer: Option<PresenceAnswer>,
) {
    let op = if members { "presence" } else { "occupancy" };
    let text = match answer {
        Some(answer) => v1::reply(command, op, Some(topic), answer.fields()),
        None => v1::error(
            Some(command),
            Some(op),
            Some(topic),
            ErrorCode::Unavailable,
            "the cluster's presence could not be read from the broker",
        ),
    };
    client.send_text(text, ctx.close_deadline());
}

/// Answers a `history` command with its page, or refuses it with `unavailable` when the
/// history could not be read.
pub(super) fn history_reply(
    ctx: &Context<'_>,
    client: &mut Client,
    command: &HistoryCommand,
    topic: &str,
    page: HistoryPage,
) {
    if page.failed {
        let why = page.gap.unwrap_or("the history could not be read");
        let text = v1::error(
            Some(&command.command),
            Some("history"),
            Some(topic),
            ErrorCode::Unavailable,
            why,
        );
        client.send_text(text, ctx.close_deadline());
        return;
    }
    let mut fields = Map::new();
    fields.insert("publications".into(), v1::publications(&page.entries));
    fields.insert("gap".into(), page.gap.filter(|_| command.since).into());
    fields.insert("more".into(), page.more.into());
    client.send_text(
        v1::reply(&command.command, "history", Some(topic), fields),
        ctx.close_deadline(),
    );
}
