//! The node's side of the backend hooks: the bounded line of requests to the hook thread
//! (a worker hands a request over with `try_send` and never waits on it), and the hooks'
//! counters for /metrics. The hook thread's answers come back to each worker through the
//! hub (`WorkerMsg::Hooked`), like history pages.
//!
//! Bounded: `--hook-concurrency` requests in flight (the hook thread's permits), a line of
//! `Hooks::queue` behind them (this channel), and past that [`HookFailure::Busy`] at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use crate::model::hook::{HookFailure, HookJob, HookKind, OUTCOMES, outcome_index};
use crate::stats::Histogram;

/// What the hooks count.
#[derive(Debug, Default)]
pub(crate) struct HookStats {
    /// Answers per hook (connect, subscribe, publish) and outcome ([`OUTCOMES`]).
    pub(crate) outcomes: [[AtomicU64; OUTCOMES.len()]; 3],
    /// From the ask to the answer, per hook.
    pub(crate) latency: [Histogram; 3],
    /// Requests being sent or awaiting their answer now.
    pub(crate) in_flight: AtomicU64,
}

impl HookStats {
    /// Counts an answer to a `kind` hook with `outcome`, `latency` after it was asked.
    pub(crate) fn answered(&self, kind: HookKind, outcome: &str, latency: std::time::Duration) {
        self.outcomes[kind.index()][outcome_index(outcome)].fetch_add(1, Ordering::Relaxed);
        self.latency[kind.index()].observe(latency);
    }
}

/// The workers' way to the hook thread.
#[derive(Debug)]
pub(crate) struct HookLink {
    tx: mpsc::Sender<HookJob>,
    pub(crate) stats: Arc<HookStats>,
}

impl HookLink {
    /// A link over `tx` (whose capacity is the line's length).
    pub(crate) fn new(tx: mpsc::Sender<HookJob>, stats: Arc<HookStats>) -> Self {
        Self { tx, stats }
    }

    /// Hands `job` to the hook thread, or says why it cannot go: the line is full
    /// ([`HookFailure::Busy`], counted) or the thread has stopped.
    pub(crate) fn ask(&self, job: HookJob) -> Result<(), HookFailure> {
        let kind = job.kind;
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                let busy = HookFailure::Busy;
                self.stats
                    .answered(kind, busy.outcome(), std::time::Duration::ZERO);
                Err(busy)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(HookFailure::Unavailable(
                "the hook thread has stopped".into(),
            )),
        }
    }

    /// Requests waiting in line for a free slot now.
    pub(crate) fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::model::conn_id::ConnId;
    use crate::model::hook::HookDest;

    fn job() -> HookJob {
        HookJob {
            kind: HookKind::Connect,
            body: Vec::new(),
            to: HookDest {
                worker: 0,
                conn: ConnId::new(0, 1),
            },
            asked: Instant::now(),
            pending: None,
        }
    }

    #[test]
    fn past_the_line_a_hook_is_busy_at_once_and_counted() {
        let (tx, mut rx) = mpsc::channel(2);
        let link = HookLink::new(tx, Arc::default());
        assert!(link.ask(job()).is_ok() && link.ask(job()).is_ok());
        assert_eq!(link.queued(), 2);
        assert_eq!(link.ask(job()), Err(HookFailure::Busy));
        let busy = &link.stats.outcomes[0][outcome_index("busy")];
        assert_eq!(busy.load(Ordering::Relaxed), 1);
        rx.close();
        while rx.try_recv().is_ok() {}
        assert!(matches!(link.ask(job()), Err(HookFailure::Unavailable(_))));
    }
}
