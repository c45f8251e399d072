//! Delivery into a connection's send queue: a broadcast's frame (the plain one, the
//! shared compressed one, or compressed for this connection alone), its offset notice,
//! the cap on what may wait and the slow-consumer policy past it (closing, dropping, or
//! conflating into the newest per key until the queue drains), and the live messages a
//! recovery holds back.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use stratus_proto::CloseCode;
use stratus_uring::ENTRY_OVERHEAD;
use tracing::debug;

use crate::config::SlowConsumer;
use crate::connection::client::{Client, Phase, queue_transmit};
use crate::connection::conflation::Conflation;
use crate::model::broadcast::Broadcast;
use crate::model::protocol::{Notice, Protocol};
use crate::model::publication::PayloadKind;
use crate::model::recovery::Live;
use crate::stats::{self, WorkerStats};

/// How broadcasts are queued: the cap on a connection's queue, the slow-consumer policy
/// past it, when a close begun now must be done, and where compressions are counted.
#[derive(Clone, Copy)]
pub(crate) struct QueueRules<'a> {
    pub(crate) cap: usize,
    pub(crate) policy: SlowConsumer,
    pub(crate) close_deadline: Instant,
    pub(crate) stats: &'a WorkerStats,
}

/// What delivering a broadcast to one connection did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivered {
    /// Queued (or held by a recovery).
    Queued,
    /// Skipped for a full queue (the `drop` policy).
    Dropped,
    /// The connection was closed as a slow consumer (the `close` policy).
    ClosedSlow,
    /// The connection takes no more broadcasts (it is closing, or not yet upgraded).
    Skipped,
    /// Held as the newest of its key until the queue drains (the `conflate` policy).
    Conflated,
}

impl Client {
    /// Whether `bytes` more, in `entries` queue entries, fit under `cap`. An empty queue
    /// takes anything: one message larger than the cap still goes out (messages have
    /// limits of their own); the cap bounds what piles up behind it.
    fn has_room(&self, bytes: usize, entries: usize, cap: usize) -> bool {
        let queued = self.queued_bytes();
        queued == 0 || queued + bytes + entries * ENTRY_OVERHEAD <= cap
    }

    /// Applies the slow-consumer policy to `broadcast`, whose frame does not fit under the
    /// cap.
    fn overflow(&mut self, broadcast: &Arc<Broadcast>, rules: QueueRules<'_>) -> Delivered {
        match rules.policy {
            SlowConsumer::Drop => Delivered::Dropped,
            SlowConsumer::Conflate => {
                self.extras_mut()
                    .conflation
                    .get_or_insert_with(Conflation::default)
                    .hold(broadcast, rules.cap);
                Delivered::Conflated
            }
            SlowConsumer::Close => {
                debug!("slow consumer");
                let deadline = rules.close_deadline;
                self.close(CloseCode::POLICY, "slow consumer", deadline, true);
                Delivered::ClosedSlow
            }
        }
    }

    /// Whether a frame of `bytes` fits under `cap` (see [`Client::has_room`]).
    pub(crate) fn has_room_for(&self, bytes: usize, cap: usize) -> bool {
        self.has_room(bytes, 1, cap)
    }

    /// Whether broadcasts still go to this connection.
    fn accepts_broadcasts(&self) -> bool {
        self.is_open_for_messages()
    }

    /// Queues a broadcast (in raw mode after its offset notice, if the connection asked
    /// for offsets), applying the slow-consumer policy when the queue would pass the cap;
    /// while its topic is being recovered, holds it instead.
    pub(crate) fn deliver(
        &mut self,
        broadcast: &Arc<Broadcast>,
        rules: QueueRules<'_>,
    ) -> Delivered {
        if broadcast.publication.kind == PayloadKind::Event {
            return self.deliver_event(broadcast, rules);
        }
        if let Some(extras) = &mut self.extras
            && let Some(at) = extras
                .recoveries
                .iter()
                .position(|r| r.topic == broadcast.topic)
        {
            match extras.recoveries[at].absorb(broadcast) {
                Live::Absorbed => return Delivered::Queued,
                Live::SendAndEnd => {
                    extras.recoveries.swap_remove(at);
                }
                Live::Send => {}
            }
        }
        // While some are held, the rest of a conflated topic waits with them: each key
        // keeps its newest, in order.
        if rules.policy == SlowConsumer::Conflate && self.is_conflating() {
            return self.overflow(broadcast, rules);
        }
        self.push_broadcast(broadcast, rules)
    }

    /// A server event: to v1 connections and event streams only, never held by a recovery or conflated (a
    /// full queue under `conflate` drops it).
    fn deliver_event(&mut self, broadcast: &Arc<Broadcast>, rules: QueueRules<'_>) -> Delivered {
        if !matches!(self.protocol, Protocol::V1 | Protocol::Sse) {
            return Delivered::Skipped;
        }
        if rules.policy == SlowConsumer::Conflate {
            let len = broadcast.encoding(self.protocol).plain.len();
            if self.is_conflating() || !self.has_room(len, 1, rules.cap) {
                return Delivered::Dropped;
            }
        }
        self.push_broadcast(broadcast, rules)
    }

    /// Whether broadcasts are held by the `conflate` policy.
    pub(crate) fn is_conflating(&self) -> bool {
        self.extras
            .as_ref()
            .and_then(|e| e.conflation.as_ref())
            .is_some_and(|c| !c.is_empty())
    }

    /// Queues what the `conflate` policy held, oldest key first, while the queue has room:
    /// each after a notice of what was skipped before it. Returns how many broadcasts
    /// went out.
    pub(crate) fn release_conflated(&mut self, rules: QueueRules<'_>) -> u64 {
        let mut released = 0;
        loop {
            let queued = self.queued_bytes();
            let Some(conflation) = self.extras.as_mut().and_then(|e| e.conflation.as_mut()) else {
                return released;
            };
            let fits = |len: usize| queued == 0 || queued + len + 2 * ENTRY_OVERHEAD <= rules.cap;
            let Some(((topic, key), held)) = conflation.next_if(fits) else {
                return released;
            };
            if held.skipped > 0 {
                let notice = Notice::Skip {
                    topic: &topic,
                    key: key.as_deref(),
                    skipped: held.skipped,
                    from: held.first,
                    to: held.last,
                };
                self.notify(&notice, rules.close_deadline);
            }
            if let Some(broadcast) = held.broadcast {
                let past_cap = QueueRules {
                    cap: usize::MAX,
                    ..rules
                };
                self.push_broadcast(&broadcast, past_cap);
                released += 1;
            }
        }
    }

    /// Queues a broadcast as [`Client::deliver`] does, past any recovery.
    pub(crate) fn push_broadcast(
        &mut self,
        broadcast: &Arc<Broadcast>,
        rules: QueueRules<'_>,
    ) -> Delivered {
        let stats = rules.stats;
        if !self.accepts_broadcasts() {
            return Delivered::Skipped;
        }
        let encoding = broadcast.encoding(self.protocol);
        let frame = encoding.frame(self.frames, stats);
        let notice = match self.protocol {
            Protocol::Raw if self.offsets => broadcast.offset_frame(),
            _ => None,
        };
        let len = frame.map_or(encoding.plain.len(), Bytes::len) + notice.map_or(0, Bytes::len);
        if !self.has_room(len, 1 + usize::from(notice.is_some()), rules.cap) {
            return self.overflow(broadcast, rules);
        }
        if let Some(notice) = notice {
            self.queue.push(notice.clone());
        }
        match frame {
            Some(frame) => self.queue.push(frame.clone()),
            None => {
                if let Phase::Open(session) = &mut self.phase {
                    let _ = session.send(&encoding.message);
                    let out = queue_transmit(session, &mut self.queue);
                    stats::add(&stats.deflate_in, encoding.message.payload_len() as u64);
                    stats::add(&stats.deflate_out, out as u64);
                    stats::add(&stats.compressions, 1);
                }
            }
        }
        Delivered::Queued
    }
}
