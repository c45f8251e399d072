//! User-level control across the cluster, on the broker thread. A node asked by its admin
//! API says `user {from, id, command}` on the control channel; Redis's answer to that
//! PUBLISH is how many nodes heard it (every node's pub/sub connection listens there),
//! this one included. Each node applies the command to its workers (through
//! [`Node::user_control`]) and answers on the same channel, `user-reply {to, id,
//! tally}`; the asking node sums the answers meant for it until every node that heard
//! has answered or [`CLUSTER_PATIENCE`] has passed, whichever is first.
//!
//! One channel for both directions, rather than one per node: nothing to subscribe per
//! node, and an answer costs every node one message it ignores, which for an admin
//! action is nothing. Bounded: at most [`MAX_ASKED`] commands of this node wait for
//! answers (one more is refused as busy), at most [`MAX_APPLYING`] commands from other
//! nodes are applied here at once (one more goes unanswered, and its asker says so).
//!
//! NATS does not say how many heard: there the asker sums what comes within
//! [`CLUSTER_PATIENCE`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::Control;
use crate::messages::{Node, PublishError, Published, Reach, ReplyTo};
use crate::model::user_control::{self as wire, ClusterError, ClusterTally, Tally, UserCommand};
use crate::node::user_control::{CLUSTER_PATIENCE, WORKER_PATIENCE, gather};

/// Commands of this node waiting for the cluster's answers.
pub(super) const MAX_ASKED: usize = 16;
/// Commands from the cluster being applied on this node at once.
pub(super) const MAX_APPLYING: usize = 64;

type Answer = oneshot::Sender<Result<ClusterTally, ClusterError>>;
type Boxed<T> = Pin<Box<dyn Future<Output = T>>>;

/// A command of this node waiting for the nodes' answers.
struct Asked {
    reply: Answer,
    /// How many nodes heard it (once Redis has said).
    nodes: Option<usize>,
    answered: usize,
    tally: Tally,
    deadline: Instant,
}

/// What happened next (see [`UserControl::next`]).
pub(super) enum Event {
    /// Redis said how many nodes heard command `id` (or failed to send it).
    Heard(u64, Result<Published, PublishError>),
    /// This node applied command `id` of node `to`: its answer.
    Applied { to: u64, id: u64, tally: Tally },
    /// A command's time is up.
    Due,
}

/// One session's user-level control.
#[derive(Default)]
pub(super) struct UserControl {
    next_id: u64,
    asked: HashMap<u64, Asked>,
    hearing: FuturesUnordered<Boxed<(u64, Result<Published, PublishError>)>>,
    applying: FuturesUnordered<Boxed<(u64, u64, Tally)>>,
}

impl UserControl {
    /// Whether anything is under way (else [`UserControl::next`] need not be polled).
    pub(super) fn is_busy(&self) -> bool {
        !self.asked.is_empty() || !self.applying.is_empty() || !self.hearing.is_empty()
    }

    /// Sends `command` to every node (this one's name on the channel is `me`); the sum
    /// of their answers goes to `reply`.
    pub(super) fn ask(&mut self, command: &UserCommand, reply: Answer, control: &Control, me: u64) {
        if self.asked.len() >= MAX_ASKED {
            let _ = reply.send(Err(ClusterError::Busy));
            return;
        }
        self.next_id += 1;
        let id = self.next_id;
        let (tx, rx) = oneshot::channel();
        if !control.say(wire::encode_request(me, id, command), ReplyTo::Caller(tx)) {
            let _ = reply.send(Err(ClusterError::BrokerUnavailable));
            return;
        }
        self.hearing.push(Box::pin(async move {
            let heard = rx.await.unwrap_or(Err(PublishError::BrokerUnavailable));
            (id, heard)
        }));
        self.asked.insert(
            id,
            Asked {
                reply,
                nodes: None,
                answered: 0,
                tally: Tally::default(),
                deadline: Instant::now() + CLUSTER_PATIENCE,
            },
        );
    }

    /// Takes in a message on the control channel if it is user control's (`true`): a
    /// command to apply here, or an answer to one of this node's (`me`).
    pub(super) fn on_words(&mut self, payload: &[u8], node: &dyn Node, me: u64) -> bool {
        if let Some((from, id, command)) = wire::parse_request(payload) {
            if self.applying.len() < MAX_APPLYING {
                let answers = node.user_control(Arc::new(command));
                self.applying.push(Box::pin(async move {
                    (from, id, gather(answers, WORKER_PATIENCE).await)
                }));
            }
            return true;
        }
        let Some((to, id, tally)) = wire::parse_reply(payload) else {
            return false;
        };
        if to == me {
            if let Some(asked) = self.asked.get_mut(&id) {
                asked.tally.merge(tally);
                asked.answered += 1;
            }
            self.finish_answered();
        }
        true
    }

    /// The next thing that happened: a count of nodes, an application done here, or a
    /// deadline passed.
    pub(super) async fn next(&mut self) -> Event {
        let due = self.asked.values().map(|a| a.deadline).min();
        tokio::select! {
            Some((id, heard)) = self.hearing.next(), if !self.hearing.is_empty() => {
                Event::Heard(id, heard)
            }
            Some((to, id, tally)) = self.applying.next(), if !self.applying.is_empty() => {
                Event::Applied { to, id, tally }
            }
            () = sleep_until(due) => Event::Due,
        }
    }

    /// Acts on what [`UserControl::next`] found: answers go out through `control`.
    pub(super) fn handle(&mut self, event: Event, control: &Control) {
        match event {
            Event::Heard(id, heard) => {
                let Some(asked) = self.asked.get_mut(&id) else {
                    return;
                };
                match heard {
                    Ok(Published {
                        reach: Reach::Nodes(n),
                        ..
                    }) => asked.nodes = Some(n),
                    // NATS does not count who heard: the answers that come in time count.
                    Ok(Published {
                        reach: Reach::Broker,
                        ..
                    }) => {}
                    _ => {
                        if let Some(asked) = self.asked.remove(&id) {
                            let _ = asked.reply.send(Err(ClusterError::BrokerUnavailable));
                        }
                        return;
                    }
                }
                self.finish_answered();
            }
            Event::Applied { to, id, tally } => {
                control.say(wire::encode_reply(to, id, &tally), ReplyTo::Nobody);
            }
            Event::Due => {
                let now = Instant::now();
                let due: Vec<u64> = self
                    .asked
                    .iter()
                    .filter(|(_, a)| a.deadline <= now)
                    .map(|(&id, _)| id)
                    .collect();
                for id in due {
                    self.finish(id);
                }
            }
        }
    }

    /// Answers the commands every node that heard has answered.
    fn finish_answered(&mut self) {
        let done: Vec<u64> = self
            .asked
            .iter()
            .filter(|(_, a)| a.nodes.is_some_and(|n| a.answered >= n))
            .map(|(&id, _)| id)
            .collect();
        for id in done {
            self.finish(id);
        }
    }

    /// Answers command `id` with what came.
    fn finish(&mut self, id: u64) {
        if let Some(asked) = self.asked.remove(&id) {
            let answered = asked.answered;
            let _ = asked.reply.send(Ok(ClusterTally {
                tally: asked.tally,
                answered,
                nodes: asked.nodes.unwrap_or(answered).max(answered),
            }));
        }
    }
}

/// Sleeps until `due`, or for ever without one.
async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::*;
    use crate::config::Config;
    use crate::messages::{Outgoing, WorkerMsg};
    use crate::model::user_control::{UserAction, UserConn};
    use crate::node::hub::Hub;
    use crate::stats::BrokerStats;
    use crate::testing;

    fn control() -> (Control, mpsc::UnboundedReceiver<Outgoing>) {
        let (publishes, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(BrokerStats::default());
        (Control { publishes, stats }, rx)
    }

    fn list(user: &str) -> UserCommand {
        UserCommand {
            user: user.into(),
            action: UserAction::List,
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
    }

    /// Node 7 asks for alice's connections and Redis says `nodes` heard it: the hub,
    /// the control channel, the state, where the answer comes, and the request's id.
    fn asked_of(nodes: usize) -> (Hub, Control, UserControl, Asking, u64) {
        let (hub, _inboxes, _) = testing::hub(1, false, Config::default());
        let (control, mut said) = control();
        let mut users = UserControl::default();
        let (reply, answer) = oneshot::channel();
        users.ask(&list("alice"), reply, &control, 7);
        let request = said.try_recv().expect("said on the control channel");
        let (from, id, command) =
            wire::parse_request(&request.publication.payload).expect("a request");
        assert_eq!((from, command), (7, list("alice")));
        request.answer(Ok(Published::by_broker(nodes, None)), &hub);
        let event = runtime().block_on(users.next());
        users.handle(event, &control);
        (hub, control, users, answer, id)
    }

    type Asking = oneshot::Receiver<Result<ClusterTally, ClusterError>>;

    #[test]
    fn a_command_is_said_once_and_answered_when_every_node_that_heard_has_answered() {
        let (hub, _control, mut users, mut answer, id) = asked_of(2);
        assert!(answer.try_recv().is_err(), "no node has answered yet");
        let mut one = Tally {
            affected: 2,
            ..Tally::default()
        };
        one.refuse("closing");
        assert!(users.on_words(&wire::encode_reply(7, id, &one), &hub, 7));
        assert!(
            users.on_words(&wire::encode_reply(8, id, &one), &hub, 7),
            "an answer for another node is user control's, and ignored"
        );
        assert!(answer.try_recv().is_err(), "one of two");
        assert!(users.on_words(&wire::encode_reply(7, id, &one), &hub, 7));
        let done = answer.try_recv().expect("answered").expect("a tally");
        assert_eq!((done.answered, done.nodes, done.tally.affected), (2, 2, 4));
        assert_eq!(done.tally.refused["closing"], 2);
        assert!(!users.is_busy());
        assert!(!users.on_words(b"overloaded 1 500", &hub, 7), "not ours");
    }

    #[test]
    fn past_its_time_a_command_sums_what_came_and_says_who_did_not_answer() {
        let (hub, control, mut users, mut answer, id) = asked_of(3);
        let one = Tally {
            affected: 1,
            ..Tally::default()
        };
        users.on_words(&wire::encode_reply(7, id, &one), &hub, 7);
        for asked in users.asked.values_mut() {
            asked.deadline = Instant::now();
        }
        let event = runtime().block_on(users.next());
        users.handle(event, &control);
        let done = answer.try_recv().expect("answered").expect("a tally");
        assert_eq!((done.answered, done.nodes, done.tally.affected), (1, 3, 1));
    }

    #[test]
    fn commands_in_flight_are_capped_and_a_lost_broker_fails_them() {
        let (hub, _inboxes, _) = testing::hub(1, false, Config::default());
        let (control, mut said) = control();
        let mut users = UserControl::default();
        let mut answers = Vec::new();
        for _ in 0..MAX_ASKED {
            let (reply, rx) = oneshot::channel();
            users.ask(&list("a"), reply, &control, 7);
            answers.push(rx);
        }
        let (reply, mut busy) = oneshot::channel();
        users.ask(&list("a"), reply, &control, 7);
        assert_eq!(busy.try_recv(), Ok(Err(ClusterError::Busy)));
        // The publish of the first fails: its caller hears the broker is unavailable.
        let first = said.try_recv().expect("said");
        first.answer(Err(PublishError::BrokerUnavailable), &hub);
        let event = runtime().block_on(users.next());
        users.handle(event, &control);
        assert_eq!(
            answers[0].try_recv(),
            Ok(Err(ClusterError::BrokerUnavailable))
        );
    }

    #[test]
    fn a_command_from_another_node_is_applied_here_and_answered_to_it() {
        let (hub, mut inboxes, _) = testing::hub(2, false, Config::default());
        let (control, mut said) = control();
        let mut users = UserControl::default();
        let words = wire::encode_request(9, 4, &list("bob"));
        assert!(users.on_words(&words, &hub, 7));
        for inbox in &mut inboxes {
            let Ok(WorkerMsg::User { command, reply }) = inbox.try_recv() else {
                panic!("each worker is asked");
            };
            assert_eq!(*command, list("bob"));
            let mut tally = Tally::default();
            tally.list(UserConn {
                client_id: "n.0.1".into(),
                node: "n".into(),
                remote: "127.0.0.1".into(),
                protocol: "raw".into(),
                topics: Vec::new(),
                connected_since_ms: 1,
            });
            tally.affected = 1;
            let _ = reply.send(tally);
        }
        let event = runtime().block_on(users.next());
        users.handle(event, &control);
        let answer = said.try_recv().expect("answered on the control channel");
        let (to, id, tally) = wire::parse_reply(&answer.publication.payload).expect("a reply");
        assert_eq!(
            (to, id, tally.affected, tally.connections.len()),
            (9, 4, 2, 2)
        );
        assert!(!users.is_busy());
    }
}
