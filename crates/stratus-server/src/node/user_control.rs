//! User-level control on the node's side: a command on every connection of one user goes
//! to each worker (each keeps an index from user to its connections, so none scans its
//! table) and their answers are summed; with a broker the command goes to every node
//! through Redis instead, this one included, and the broker thread sums what the nodes
//! answer within [`CLUSTER_PATIENCE`].
//!
//! Here rather than in the hub: the hub is the publish path, this is an admin action
//! that only needs the hub's inboxes (and its broker link).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::oneshot;

use crate::messages::{BrokerRequest, WorkerMsg};
use crate::model::user_control::{ClusterError, ClusterTally, Tally, UserCommand};
use crate::node::hub::Hub;
use crate::stats;

/// How long a node waits for its workers' answers (a worker answers within its turn; one
/// that does not, a stuck or ended one, is left out of the sum).
pub(crate) const WORKER_PATIENCE: Duration = Duration::from_millis(500);
/// How long the node asked waits for the other nodes' answers through the broker before
/// it sums what came (the ones that did not answer are said to have not).
pub(crate) const CLUSTER_PATIENCE: Duration = Duration::from_secs(1);

impl Hub {
    /// Sends `command` to every worker of the node: one answer each to wait for.
    pub(crate) fn ask_workers(&self, command: &Arc<UserCommand>) -> Vec<oneshot::Receiver<Tally>> {
        let mut answers = Vec::with_capacity(self.links.len());
        for link in &self.links {
            let (reply, rx) = oneshot::channel();
            let msg = WorkerMsg::User {
                command: command.clone(),
                reply,
            };
            if link.send(msg) {
                answers.push(rx);
            }
        }
        answers
    }

    /// Applies `command` to every connection of its user: on every node with a broker,
    /// else on this one's workers. Counted by action.
    pub(crate) async fn control_users(
        &self,
        command: UserCommand,
    ) -> Result<ClusterTally, ClusterError> {
        stats::add(&self.stats.user_commands[command.action.index()], 1);
        let command = Arc::new(command);
        let Some(broker) = &self.broker else {
            let tally = gather(self.ask_workers(&command), WORKER_PATIENCE).await;
            return Ok(ClusterTally {
                tally,
                answered: 1,
                nodes: 1,
            });
        };
        // Said on the control channel, which is the first shard's.
        if !broker.first_is_up() {
            return Err(ClusterError::BrokerUnavailable);
        }
        let (reply, rx) = oneshot::channel();
        broker.request(BrokerRequest::UserControl { command, reply });
        rx.await.unwrap_or(Err(ClusterError::BrokerUnavailable))
    }
}

/// The sum of the `answers` that come within `patience` (an answer dropped unsent, by a
/// worker that ended, counts as nothing).
pub(crate) async fn gather(answers: Vec<oneshot::Receiver<Tally>>, patience: Duration) -> Tally {
    let mut pending: FuturesUnordered<_> = answers.into_iter().collect();
    let mut sum = Tally::default();
    let deadline = tokio::time::Instant::now() + patience;
    while let Ok(Some(answer)) = tokio::time::timeout_at(deadline, pending.next()).await {
        if let Ok(tally) = answer {
            sum.merge(tally);
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::model::user_control::UserAction;
    use crate::testing;

    #[test]
    fn every_worker_is_asked_and_the_answers_that_come_are_summed() {
        let (hub, mut inboxes, _) = testing::hub(3, false, Config::default());
        let command = Arc::new(UserCommand {
            user: "alice".into(),
            action: UserAction::List,
        });
        let answers = hub.ask_workers(&command);
        assert_eq!(answers.len(), 3);
        let mut replies = Vec::new();
        for inbox in &mut inboxes {
            let Ok(WorkerMsg::User {
                command: got,
                reply,
            }) = inbox.try_recv()
            else {
                panic!("each worker is asked");
            };
            assert_eq!(got, command);
            replies.push(reply);
        }
        // Two answer, one ends without answering.
        for reply in replies.drain(..2) {
            let mut tally = Tally {
                affected: 2,
                ..Tally::default()
            };
            tally.refuse("topic_full");
            let _ = reply.send(tally);
        }
        drop(replies);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let sum = runtime.block_on(gather(answers, Duration::from_secs(5)));
        assert_eq!(sum.affected, 4);
        assert_eq!(sum.refused["topic_full"], 2);
    }

    #[test]
    fn a_worker_that_does_not_answer_in_time_is_left_out() {
        let (tx, rx) = oneshot::channel::<Tally>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let sum = runtime.block_on(gather(vec![rx], Duration::from_millis(10)));
        assert_eq!(sum, Tally::default());
        drop(tx);
    }
}
