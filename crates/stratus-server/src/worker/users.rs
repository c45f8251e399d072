//! User-level control in a worker: an index from a user (the `sub` of a connection's
//! token) to the worker's connections of that user, kept in step with the upgrade and the
//! free, so a command on one user costs its own connections, never a scan of the table;
//! and the command's application to each of them (list, close, unsubscribe, subscribe),
//! whose tally goes back to whoever asked.
//!
//! A server-side subscribe on a topic the broker has not yet confirmed tells a v1
//! connection `subscribed` only with the confirmation (as a client's own subscribe reply
//! waits for it), so what is published after the notice reaches it.

use std::collections::HashMap;
use std::sync::Arc;

use stratus_proto::CloseCode;
use tokio::sync::oneshot;

use crate::connection::Conn;
use crate::model::conn_id::ConnId;
use crate::model::protocol::{Notice, Protocol};
use crate::model::user_control::{Tally, UserAction, UserCommand, UserConn, client_id};
use crate::worker::Worker;
use crate::worker::pubsub::Context;
use crate::worker::pubsub::server_side::ServerSubscribe;

/// Most server-side subscriptions one worker holds a `subscribed` notice for while the
/// broker confirms their topics; past it the notice goes at once.
const MAX_AWAITING: usize = 65_536;

/// A connection of a user: its id, and when it upgraded (ms since the Unix epoch).
type Entry = (ConnId, u64);

/// The worker's connections by user.
#[derive(Debug, Default)]
pub(crate) struct UserIndex {
    users: HashMap<Box<str>, Vec<Entry>>,
}

impl UserIndex {
    /// Connection `id` of `user` has upgraded, at `since_ms`.
    pub(crate) fn opened(&mut self, user: &str, id: ConnId, since_ms: u64) {
        match self.users.get_mut(user) {
            Some(conns) => conns.push((id, since_ms)),
            None => {
                self.users.insert(user.into(), vec![(id, since_ms)]);
            }
        }
    }

    /// Connection `id` of `user` is gone.
    pub(crate) fn closed(&mut self, user: &str, id: ConnId) {
        let Some(conns) = self.users.get_mut(user) else {
            return;
        };
        conns.retain(|(c, _)| *c != id);
        if conns.is_empty() {
            self.users.remove(user);
        }
    }

    /// `user`'s connections.
    pub(crate) fn connections(&self, user: &str) -> &[Entry] {
        self.users.get(user).map_or(&[], Vec::as_slice)
    }

    /// Users with connections here.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.users.len()
    }
}

/// The worker's side of user-level control: the index, and the `subscribed` notices
/// waiting for their topics' confirmation.
#[derive(Debug, Default)]
pub(crate) struct Users {
    index: UserIndex,
    awaiting: HashMap<Arc<str>, Vec<ConnId>>,
    awaiting_len: usize,
    /// The topics each connection in `awaiting` waits for: what it leaves behind when it
    /// goes or is unsubscribed (a topic that leaves the hub's interest is never
    /// confirmed, so its waiters would stay otherwise).
    awaited_by: HashMap<ConnId, Vec<Arc<str>>>,
}

impl Users {
    /// Connection `id` of `user` has upgraded (now).
    pub(crate) fn opened(&mut self, user: &str, id: ConnId) {
        self.index.opened(user, id, unix_ms());
    }

    /// Connection `id` of `user` is gone: it waits for no confirmation any more.
    pub(crate) fn closed(&mut self, user: &str, id: ConnId) {
        self.index.closed(user, id);
        for topic in self.awaited_by.remove(&id).unwrap_or_default() {
            self.unwait(&topic, id);
        }
    }

    /// Connection `id` was unsubscribed from `topic`: it is not told `subscribed`.
    fn unsubscribed(&mut self, topic: &str, id: ConnId) {
        let Some(topics) = self.awaited_by.get_mut(&id) else {
            return;
        };
        topics.retain(|t| &**t != topic);
        if topics.is_empty() {
            self.awaited_by.remove(&id);
        }
        self.unwait(topic, id);
    }

    /// Takes `id` out of `topic`'s waiters.
    fn unwait(&mut self, topic: &str, id: ConnId) {
        let Some(waiting) = self.awaiting.get_mut(topic) else {
            return;
        };
        let before = waiting.len();
        waiting.retain(|c| *c != id);
        self.awaiting_len -= before - waiting.len();
        if waiting.is_empty() {
            self.awaiting.remove(topic);
        }
    }

    /// Connection `id` waits for `topic`'s confirmation to be told `subscribed`; `false`
    /// if too many wait (it is told now).
    fn wait(&mut self, topic: Arc<str>, id: ConnId) -> bool {
        if self.awaiting_len >= MAX_AWAITING {
            return false;
        }
        self.awaited_by.entry(id).or_default().push(topic.clone());
        self.awaiting.entry(topic).or_default().push(id);
        self.awaiting_len += 1;
        true
    }

    /// The connections waiting for `topic`, which no longer wait.
    fn take(&mut self, topic: &str) -> Vec<ConnId> {
        let taken = self.awaiting.remove(topic).unwrap_or_default();
        self.awaiting_len -= taken.len();
        for id in &taken {
            if let Some(topics) = self.awaited_by.get_mut(id) {
                topics.retain(|t| &**t != topic);
                if topics.is_empty() {
                    self.awaited_by.remove(id);
                }
            }
        }
        taken
    }
}

/// A connection as listed.
fn describe(node: &str, worker: usize, conn: &Conn, since_ms: u64) -> UserConn {
    let client = conn.client();
    UserConn {
        client_id: client_id(node, worker, conn.id()),
        node: node.to_owned(),
        remote: conn.ip().to_string(),
        protocol: match client.protocol() {
            Protocol::Raw => "raw",
            Protocol::V1 => "v1",
            Protocol::Sse => "sse",
        }
        .to_owned(),
        topics: client.topics().iter().map(|t| t.to_string()).collect(),
        connected_since_ms: since_ms,
    }
}

/// Milliseconds since the Unix epoch (when a connection upgraded, as listed).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Worker {
    /// Applies `command` to this worker's connections of its user, and answers `reply`
    /// with what it came to.
    pub(super) fn on_user_command(&mut self, command: &UserCommand, reply: oneshot::Sender<Tally>) {
        let ctx = self.clock.context(&self.hub, &self.config);
        let mut tally = Tally::default();
        let entries = self.users.index.connections(&command.user).to_vec();
        for (id, since_ms) in entries {
            let Some(conn) = self.conns.get(id).filter(|c| !c.is_dead()) else {
                continue;
            };
            let outcome = match &command.action {
                UserAction::List => {
                    tally.list(describe(&self.hub.node_id, self.index, conn, since_ms));
                    Ok(())
                }
                UserAction::Disconnect { code, reason } => {
                    let client = conn.client_mut();
                    if client.close_code().is_some() {
                        Err("closing")
                    } else {
                        client.close(CloseCode(*code), reason, ctx.close_deadline(), false);
                        Ok(())
                    }
                }
                UserAction::Unsubscribe { topic } => {
                    self.users.unsubscribed(topic, id);
                    self.pubsub
                        .unsubscribe_for_server(&ctx, id, conn.client_mut(), topic)
                        .map_err(|e| e.word())
                }
                UserAction::Subscribe { topic } => {
                    subscribe(&mut self.pubsub, &mut self.users, &ctx, id, conn, topic)
                }
            };
            match outcome {
                Ok(()) => tally.affected += 1,
                Err(why) => tally.refuse(why),
            }
        }
        let _ = reply.send(tally);
    }

    /// The broker confirmed `topic`: the connections the server subscribed to it are told
    /// so (those that have left it meanwhile are not).
    pub(super) fn on_user_topic_confirmed(&mut self, topic: &Arc<str>) {
        if !self.hub.is_confirmed(topic) {
            return;
        }
        let ctx = self.clock.context(&self.hub, &self.config);
        for id in self.users.take(topic) {
            let Some(conn) = self.conns.get(id).filter(|c| !c.is_dead()) else {
                continue;
            };
            if conn.client().topics().contains(topic) {
                let notice = Notice::Subscribed { topic };
                conn.client_mut().notify(&notice, ctx.close_deadline());
            }
        }
    }
}

/// Subscribes `conn` to `topic` for the server; tells it so now, or once the broker
/// confirms the topic.
fn subscribe(
    pubsub: &mut crate::worker::pubsub::PubSub,
    users: &mut Users,
    ctx: &Context<'_>,
    id: ConnId,
    conn: &mut Conn,
    topic: &str,
) -> Result<(), &'static str> {
    if conn.client().topics().iter().any(|t| &**t == topic) {
        return Err("already_subscribed");
    }
    let client = conn.client_mut();
    let subscribed = pubsub
        .subscribe_for_server(ctx, id, client, topic)
        .map_err(|e| e.word())?;
    let now = match subscribed {
        ServerSubscribe::Live => true,
        ServerSubscribe::Unconfirmed(topic) => !users.wait(topic, id),
    };
    if now {
        client.notify(&Notice::Subscribed { topic }, ctx.close_deadline());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_follows_connections_in_and_out() {
        let mut index = UserIndex::default();
        let (a1, a2, b1) = (ConnId::new(0, 1), ConnId::new(1, 2), ConnId::new(2, 3));
        index.opened("alice", a1, 10);
        index.opened("alice", a2, 20);
        index.opened("bob", b1, 30);
        assert_eq!(index.connections("alice"), [(a1, 10), (a2, 20)]);
        assert_eq!(index.connections("bob"), [(b1, 30)]);
        assert_eq!(index.connections("carol"), []);
        assert_eq!(index.len(), 2);
        index.closed("alice", a1);
        assert_eq!(index.connections("alice"), [(a2, 20)]);
        index.closed("alice", a1);
        index.closed("nobody", a1);
        index.closed("alice", a2);
        assert_eq!(index.connections("alice"), []);
        assert_eq!(index.len(), 1, "a user without connections is forgotten");
    }

    #[test]
    fn notices_wait_for_a_confirmation_up_to_a_bound() {
        let mut users = Users::default();
        let topic: Arc<str> = Arc::from("t");
        assert!(users.wait(topic.clone(), ConnId::new(0, 1)));
        assert!(users.wait(topic.clone(), ConnId::new(1, 1)));
        assert_eq!(users.take("t").len(), 2);
        assert!(users.take("t").is_empty(), "taken once");
        users.awaiting_len = MAX_AWAITING;
        assert!(!users.wait(topic, ConnId::new(0, 1)), "past the bound: now");
    }

    #[test]
    fn a_connection_that_goes_or_is_unsubscribed_waits_no_more() {
        let mut users = Users::default();
        let (a, b) = (ConnId::new(0, 1), ConnId::new(1, 1));
        let (t, u): (Arc<str>, Arc<str>) = (Arc::from("t"), Arc::from("u"));
        users.opened("ann", a);
        users.opened("bob", b);
        assert!(users.wait(t.clone(), a));
        assert!(users.wait(u.clone(), a));
        assert!(users.wait(t.clone(), b));
        // Neither topic is ever confirmed (they left the hub's interest).
        users.closed("ann", a);
        users.unsubscribed("t", b);
        assert_eq!(users.awaiting_len, 0);
        assert!(users.awaiting.is_empty());
        assert!(users.awaited_by.is_empty());
        // A confirmation after an unsubscribe of another topic still finds its waiter.
        assert!(users.wait(t.clone(), b));
        assert!(users.wait(u, b));
        users.unsubscribed("u", b);
        assert_eq!(users.take("t"), [b]);
        assert_eq!(users.awaiting_len, 0);
        assert!(users.awaited_by.is_empty());
    }
}
