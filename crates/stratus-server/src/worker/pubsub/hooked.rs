//! Subscribes and publishes that ask the backend first (namespaces with `subscribe-hook`
//! or `publish-hook`): the request handed to the hook thread, and what its answer sets
//! off. The command's reply waits for the answer, as a subscribe reply waits for the
//! broker, and at most [`MAX_HOOKS_WAITING`] of a connection's commands wait at once
//! (past it: `rate_limited`). An answer for a connection that has gone finds nothing.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::value::RawValue;
use stratus_proto::CloseCode;

use super::{Clients, Context, PubSub, Subscribed, subscribed};
use crate::connection::Client;
use crate::model::conn_id::ConnId;
use crate::model::hook::{
    Asker, HookAnswer, HookDest, HookFailure, HookJob, HookKind, Pending, PublishRequest,
    PublishVerdict, SubscribeRequest,
};
use crate::model::protocol::raw;
use crate::model::protocol::v1::{self, ErrorCode};
use crate::model::publication::{PayloadKind, Publication};
use crate::model::topic;
use crate::worker::hooks::log_failure;

/// Most commands of one connection waiting for a hook at once.
pub(super) const MAX_HOOKS_WAITING: u32 = 16;

/// A publication's data as the publish hook gets it: its JSON, or a JSON string.
fn data_of(publication: &Publication) -> Box<RawValue> {
    let text = String::from_utf8_lossy(&publication.payload);
    let json = match publication.kind {
        PayloadKind::Json => text.into_owned(),
        _ => serde_json::Value::String(text.into_owned()).to_string(),
    };
    RawValue::from_string(json)
        .unwrap_or_else(|_| RawValue::from_string("null".to_owned()).unwrap_or_default())
}

impl PubSub {
    /// Whether a subscribe to `topic` asks the subscribe hook first.
    pub(super) fn asks_subscribe_hook(ctx: &Context<'_>, topic: &str) -> bool {
        ctx.config.options(topic).subscribe_hook && ctx.hub.hooks.get().is_some()
    }

    /// Whether a publish to `topic` asks the publish hook first.
    pub(super) fn asks_publish_hook(ctx: &Context<'_>, topic: &str) -> bool {
        ctx.config.options(topic).publish_hook && ctx.hub.hooks.get().is_some()
    }

    /// Asks the `kind` hook about `pending` for connection `id`: its reply waits for the
    /// answer. Refused (code, why) past [`MAX_HOOKS_WAITING`] or with the line full.
    pub(super) fn ask_hook(
        &mut self,
        ctx: &Context<'_>,
        id: ConnId,
        client: &Client,
        kind: HookKind,
        pending: Pending,
    ) -> Result<(), (ErrorCode, String)> {
        let Some(link) = ctx.hub.hooks.get() else {
            return Err((ErrorCode::Unavailable, "no hook is running".into()));
        };
        if let Err(err) = topic::validate(&pending.topic) {
            return Err((ErrorCode::InvalidTopic, err.to_string()));
        }
        // Counted only once the hook has it: a refused ask leaves no entry behind.
        if self.hook_waits.get(&id).copied().unwrap_or(0) >= MAX_HOOKS_WAITING {
            let why = format!("at most {MAX_HOOKS_WAITING} commands may wait for the backend");
            return Err((ErrorCode::RateLimited, why));
        }
        let grant = client.grant();
        let user = grant.map(|g| g.subject.as_str());
        let info = grant
            .and_then(|g| g.info.as_deref())
            .and_then(|info| serde_json::from_str::<&RawValue>(info).ok());
        // The connection's client id as presence lists it (`<node>.<worker>.<connection>`).
        let conn = format!("{}.{}.{}", ctx.hub.node_id, self.worker, id);
        let body = match kind {
            HookKind::Publish => {
                let data = pending
                    .publication
                    .as_ref()
                    .map(data_of)
                    .unwrap_or_default();
                serde_json::to_vec(&PublishRequest {
                    user,
                    client: &conn,
                    topic: &pending.topic,
                    data: &data,
                })
            }
            _ => serde_json::to_vec(&SubscribeRequest {
                user,
                client: &conn,
                topic: &pending.topic,
                info,
            }),
        }
        .unwrap_or_default();
        let job = HookJob {
            kind,
            body,
            to: HookDest {
                worker: self.worker,
                conn: id,
            },
            asked: ctx.now,
            pending: Some(pending),
        };
        link.ask(job).map_err(|failure| failed(kind, &failure))?;
        *self.hook_waits.entry(id).or_default() += 1;
        Ok(())
    }

    /// A subscribe or publish hook answered for connection `id`: the command goes on as
    /// allowed (a publish with its data replaced, if the backend says so), or is refused
    /// with the backend's reason (`forbidden`) or the failure's code.
    pub(crate) fn on_hook_answer(
        &mut self,
        ctx: &Context<'_>,
        clients: &mut impl Clients,
        id: ConnId,
        answer: HookAnswer,
    ) {
        if let Some(waiting) = self.hook_waits.get_mut(&id) {
            *waiting = waiting.saturating_sub(1);
            if *waiting == 0 {
                self.hook_waits.remove(&id);
            }
        }
        let Some(client) = clients.client(id) else {
            return;
        };
        if !client.is_open_for_messages() {
            return;
        }
        match answer {
            HookAnswer::Subscribe(pending, result) => {
                let refusal = match result {
                    Ok(Ok(())) => return self.subscribe_allowed(ctx, id, client, pending),
                    Ok(Err(refused)) => (ErrorCode::Forbidden, refused.reason),
                    Err(failure) => failed(HookKind::Subscribe, &failure),
                };
                refuse(ctx, client, "subscribe", &pending, refusal);
            }
            HookAnswer::Publish(pending, result) => {
                let refusal = match result {
                    Ok(Ok(verdict)) => {
                        return self.publish_allowed(ctx, id, client, pending, verdict);
                    }
                    Ok(Err(refused)) => (ErrorCode::Forbidden, refused.reason),
                    Err(failure) => failed(HookKind::Publish, &failure),
                };
                refuse(ctx, client, "publish", &pending, refusal);
            }
            HookAnswer::Connect(_) => {}
        }
    }

    /// The subscribe hook allowed `pending`: it is subscribed as any subscribe is.
    fn subscribe_allowed(
        &mut self,
        ctx: &Context<'_>,
        id: ConnId,
        client: &mut Client,
        pending: Pending,
    ) {
        let topic = &pending.topic;
        let reply = match &pending.asker {
            Asker::V1(command) => Some(command.clone()),
            Asker::Raw | Asker::Upgrade => None,
        };
        let result = self.subscribe(ctx, id, client, topic, pending.since, reply);
        let text = match (&pending.asker, result) {
            (Asker::V1(command), Ok(Subscribed::Now)) => {
                return subscribed(ctx, client, topic, Some(command), None);
            }
            (_, Ok(Subscribed::Later)) | (Asker::Upgrade, Ok(Subscribed::Now)) => return,
            (Asker::Raw, Ok(Subscribed::Now)) => raw::ok_reply("subscribe", topic),
            (asker, Err(err)) => {
                let refusal = (err.code(), err.to_string());
                let pending = Pending {
                    asker: asker.clone(),
                    ..pending.clone()
                };
                return refuse(ctx, client, "subscribe", &pending, refusal);
            }
        };
        client.send_text(text, ctx.close_deadline());
    }

    /// The publish hook allowed `pending`: it is published (with the backend's data, if
    /// it replaced it) as any client publish is, its budget already spent.
    fn publish_allowed(
        &mut self,
        ctx: &Context<'_>,
        id: ConnId,
        client: &mut Client,
        pending: Pending,
        verdict: PublishVerdict,
    ) {
        let Asker::V1(command) = &pending.asker else {
            return;
        };
        let Some(publication) = pending.publication.clone() else {
            return;
        };
        let publication = match verdict {
            PublishVerdict::Allow => Ok(publication),
            PublishVerdict::Replace(data) => {
                let key = publication.key.as_deref();
                Publication::json(Bytes::from(data.get().to_owned())).and_then(|p| p.with_key(key))
            }
        };
        let result = match publication {
            Ok(publication) => self
                .publish(ctx, id, client, command, &pending.topic, publication, true)
                .map_err(|r| (r.code, r.message)),
            Err(err) => Err((ErrorCode::HookError, format!("the backend's data: {err}"))),
        };
        if let Err(refusal) = result {
            refuse(ctx, client, "publish", &pending, refusal);
        }
    }
}

/// Refuses what `pending` asked for: an error reply (v1, raw), or for an upgrade-URL
/// topic a close naming it (1008 refused, 1013 the backend failed).
/// A hook's failure as a refusal: its code, and the text a client is told (the detail
/// goes to the log).
fn failed(kind: HookKind, failure: &HookFailure) -> (ErrorCode, String) {
    log_failure(kind, failure);
    (failure.v1_code(), failure.public_text().to_owned())
}

fn refuse(
    ctx: &Context<'_>,
    client: &mut Client,
    op: &str,
    pending: &Pending,
    (code, why): (ErrorCode, String),
) {
    let topic = &*pending.topic;
    let text = match &pending.asker {
        Asker::V1(command) => v1::error(Some(command), Some(op), Some(topic), code, &why),
        Asker::Raw => raw::error_reply(Some(op), Some(topic), &why),
        Asker::Upgrade => {
            let close = if code == ErrorCode::Forbidden {
                CloseCode::POLICY
            } else {
                CloseCode::TRY_AGAIN_LATER
            };
            let why = format!("cannot subscribe to {topic}: {why}");
            client.close(close, &why, ctx.close_deadline(), false);
            return;
        }
    };
    client.send_text(text, ctx.close_deadline());
}

/// Upgrade-URL topics whose subscribes ask the hook: taken out of `topics` and asked;
/// a topic that cannot be asked closes the connection (1013) as a full topic does.
pub(crate) fn ask_upgrade_topics(
    pubsub: &mut PubSub,
    ctx: &Context<'_>,
    id: ConnId,
    client: &mut Client,
    topics: &mut Vec<String>,
) {
    let asked: Vec<String> = topics
        .iter()
        .filter(|t| PubSub::asks_subscribe_hook(ctx, t))
        .cloned()
        .collect();
    topics.retain(|t| !asked.contains(t));
    for topic in asked {
        let pending = Pending {
            topic: Arc::from(topic.as_str()),
            asker: Asker::Upgrade,
            since: None,
            publication: None,
        };
        if let Err(refusal) = pubsub.ask_hook(ctx, id, client, HookKind::Subscribe, pending.clone())
        {
            refuse(ctx, client, "subscribe", &pending, refusal);
            return;
        }
    }
}
