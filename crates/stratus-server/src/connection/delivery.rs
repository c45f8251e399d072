//! Delivery into a connection's send queue: a broadcast's frame (the plain one, the
//! shared compressed one, or compressed for this connection alone), its offset notice,
//! the cap on what may wait and the slow-consumer policy past it, notices of what could
//! not be delivered, and the live messages a recovery holds back.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use stratus_proto::CloseCode;
use stratus_uring::ENTRY_OVERHEAD;
use tracing::debug;

use crate::config::SlowConsumer;
use crate::connection::client::{Client, Phase, queue_transmit};
use crate::model::broadcast::{Broadcast, FrameChoice};
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
}

impl Client {
    /// Whether `bytes` more, in `entries` queue entries, fit under `cap`. An empty queue
    /// takes anything: one message larger than the cap still goes out (messages have
    /// limits of their own); the cap bounds what piles up behind it.
    fn has_room(&self, bytes: usize, entries: usize, cap: usize) -> bool {
        let queued = self.queued_bytes();
        queued == 0 || queued + bytes + entries * ENTRY_OVERHEAD <= cap
    }

    /// Applies the slow-consumer policy to a frame that does not fit under the cap.
    fn overflow(&mut self, rules: QueueRules<'_>) -> Delivered {
        match rules.policy {
            SlowConsumer::Drop => Delivered::Dropped,
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

    /// Queues a broadcast on `topic` (after its offset notice, if the connection asked
    /// for offsets), applying the slow-consumer policy when the queue would pass the cap;
    /// while the topic is being recovered, holds it instead.
    pub(crate) fn deliver(
        &mut self,
        topic: &str,
        broadcast: &Arc<Broadcast>,
        rules: QueueRules<'_>,
    ) -> Delivered {
        if let Some(at) = self.recoveries.iter().position(|r| *r.topic == *topic) {
            match self.recoveries[at].absorb(broadcast) {
                Live::Absorbed => return Delivered::Queued,
                Live::SendAndEnd => {
                    self.recoveries.swap_remove(at);
                }
                Live::Send => {}
            }
        }
        self.push_broadcast(topic, broadcast, rules)
    }

    /// Queues a broadcast as [`Client::deliver`] does, past any recovery.
    pub(crate) fn push_broadcast(
        &mut self,
        topic: &str,
        broadcast: &Arc<Broadcast>,
        rules: QueueRules<'_>,
    ) -> Delivered {
        let stats = rules.stats;
        if !self.accepts_broadcasts() {
            return Delivered::Skipped;
        }
        let frame: Option<&Bytes> = match self.frames {
            FrameChoice::Plain => Some(&broadcast.plain),
            FrameChoice::Shared { threshold } => {
                Some(broadcast.shared_frame(threshold as usize, stats))
            }
            FrameChoice::PerConnection => None,
        };
        let offset = if self.offsets {
            broadcast.offset_frame(topic)
        } else {
            None
        };
        let len = frame.map_or(broadcast.plain.len(), Bytes::len) + offset.map_or(0, Bytes::len);
        if !self.has_room(len, 1 + usize::from(offset.is_some()), rules.cap) {
            return self.overflow(rules);
        }
        if let Some(offset) = offset {
            self.queue.push(offset.clone());
        }
        match frame {
            Some(frame) => self.queue.push(frame.clone()),
            None => {
                if let Phase::Open(session) = &mut self.phase {
                    let _ = session.send(&broadcast.message);
                    let out = queue_transmit(session, &mut self.queue);
                    stats::add(&stats.deflate_in, broadcast.message.payload_len() as u64);
                    stats::add(&stats.deflate_out, out as u64);
                }
            }
        }
        Delivered::Queued
    }
}
