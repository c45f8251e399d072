//! Raw mode's commands: subscribe and unsubscribe, in JSON without ids, answered with
//! `{"op":..,"topic":..,"ok":true}` or `"ok":false` and an error (see
//! `model::protocol::raw`).

use std::sync::Arc;

use super::{Context, PubSub, Subscribed, subscribed};
use crate::config::COMMAND_COST;
use crate::connection::Client;
use crate::model::conn_id::ConnId;
use crate::model::hook::{Asker, HookKind, Pending};
use crate::model::protocol::raw::{self, Command};

impl PubSub {
    /// A text message from raw-mode connection `id`: a command, answered (a subscribe
    /// once the broker has confirmed the topic), or refused with an error reply.
    pub(super) fn on_raw(
        &mut self,
        ctx: &Context<'_>,
        id: ConnId,
        client: &mut Client,
        text: &[u8],
    ) {
        let reply = match raw::parse(text) {
            Err(reply) => reply,
            Ok(command) if !self.spend_command(ctx, client) => {
                let (op, topic) = match &command {
                    Command::Subscribe { topic, .. } => ("subscribe", topic),
                    Command::Unsubscribe(topic) => ("unsubscribe", topic),
                };
                let why = format!(
                    "rate limited: at most {} commands a second",
                    ctx.config.message_rate / COMMAND_COST
                );
                raw::error_reply(Some(op), Some(topic), &why)
            }
            Ok(Command::Subscribe { topic, since }) if Self::asks_subscribe_hook(ctx, &topic) => {
                // The reply waits for the backend (`hooked`).
                let pending = Pending {
                    topic: Arc::from(topic.as_str()),
                    asker: Asker::Raw,
                    since,
                    publication: None,
                };
                match self.ask_hook(ctx, id, client, HookKind::Subscribe, pending) {
                    Ok(()) => return,
                    Err((_, why)) => raw::error_reply(Some("subscribe"), Some(&topic), &why),
                }
            }
            Ok(Command::Subscribe { topic, since }) => {
                match self.subscribe(ctx, id, client, &topic, since, None) {
                    Ok(Subscribed::Now) => raw::ok_reply("subscribe", &topic),
                    Ok(Subscribed::Later) => return,
                    Err(e) => raw::error_reply(Some("subscribe"), Some(&topic), &e.to_string()),
                }
            }
            Ok(Command::Unsubscribe(topic)) => match self.unsubscribe(ctx, id, client, &topic) {
                Ok(waiting) => {
                    // Every command gets its reply: a subscribe still waiting for the
                    // broker is answered first (it held until this unsubscribe).
                    for reply in waiting {
                        subscribed(ctx, client, &topic, reply.as_ref(), None);
                    }
                    raw::ok_reply("unsubscribe", &topic)
                }
                Err(e) => raw::error_reply(Some("unsubscribe"), Some(&topic), &e.to_string()),
            },
        };
        client.send_text(reply, ctx.close_deadline());
    }
}
