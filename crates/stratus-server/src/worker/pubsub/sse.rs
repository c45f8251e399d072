//! An event stream's subscriptions: the topics of its URL, each resumed from its
//! `Last-Event-ID` or `since` (one for all topics, or one per topic) through the same
//! recovery as a v1 subscribe's `since` where the topic keeps history; a topic that keeps
//! none starts live, with a gap event (what was published while the client was away is
//! lost). A stream's resume point is read as a moment: with one for several topics it
//! is another topic's offset for all but one, and a topic with nothing newer has missed
//! nothing.
//!
//! With a broker, a stream starts (its 200 goes out) only once the node's subscription to
//! each of its topics is confirmed, as a subscribe's reply waits: a client that has seen
//! the 200 gets every publish made after it.

use crate::connection::Client;
use crate::model::conn_id::ConnId;
use crate::model::offset::{Resume, Since};
use crate::model::protocol::Notice;

use super::{Context, PubSub};

impl PubSub {
    /// Subscribes event stream `id` to `topics` (checked at the request), each resumed
    /// from `resume` if given. A topic that cannot take it ends the stream.
    pub(crate) fn on_stream(
        &mut self,
        ctx: &Context<'_>,
        id: ConnId,
        client: &mut Client,
        topics: &[String],
        resume: Option<Resume>,
    ) {
        self.on_upgrade(ctx, id, client, topics);
        if !client.is_streaming() {
            // A topic could not take it: the stream is ending.
            return;
        }
        let mut unconfirmed = 0;
        for topic in client.topics() {
            if !ctx.hub.is_confirmed(topic) && self.pending.wait(topic.clone(), id, None).is_ok() {
                unconfirmed += 1;
            }
        }
        client.hold_stream_start(unconfirmed);
        let Some(resume) = resume else {
            return;
        };
        for name in topics {
            let Some(topic) = client.topics().iter().find(|t| &***t == name).cloned() else {
                continue;
            };
            let Some(from) = resume.of(name) else {
                continue;
            };
            let options = ctx.config.options(name);
            let keeps = match from {
                Since::After(_) => options.recovers(),
                Since::Now => options.history > 0,
            };
            if keeps {
                // Each first page sized to the room left; the replay itself keeps under
                // half the cap, later pages waiting for the queue to drain.
                let room = ctx
                    .config
                    .max_send_queue
                    .saturating_sub(client.queued_bytes());
                self.recover(ctx, id, client, &options, topic, from, room, None);
            } else if matches!(from, Since::After(_)) {
                let reason = "the topic keeps no history: messages published meanwhile are lost";
                let gap = Notice::Gap {
                    topic: &topic,
                    reason,
                };
                client.notify(&gap, ctx.close_deadline());
            }
        }
    }
}
