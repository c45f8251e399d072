//! A subscriber's recovery of what it missed on one topic: the history is read a page
//! at a time (from Redis, by the broker) while live messages on the topic are held, then
//! sent without repeating any; gaps are named, never silent.
//!
//! With a history, every publish has an offset. A subscriber opts in with `"since"` on its
//! subscribe command: `"$"` for offsets from now on, or the last offset it saw to first
//! get what it missed. While the missed messages are read, live ones for the connection
//! wait in a bounded hold, and are sent after the history without repeating any; when the
//! history no longer reaches back to the offset (Redis trimmed what came after it), a gap
//! notice comes first.

use std::sync::Arc;
use std::time::Instant;

use crate::model::broadcast::Broadcast;
use crate::model::offset::Offset;
use crate::model::protocol::v1::CommandId;

/// Most live messages held for one recovery while its history is read (their bytes are
/// bounded by the send-queue cap); beyond, they are dropped and the connection gets a gap
/// notice.
const MAX_HELD: usize = 10_000;

/// How long a recovery may take (a reader that never reads, a broker that never answers):
/// past it, the held messages are dropped and the client gets a gap notice.
pub(crate) const RECOVERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// What a recovery does with a live message on its topic.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Live {
    /// Held, or skipped as one already sent: nothing goes out now.
    Absorbed,
    /// Goes out, and the recovery goes on (a message without an offset, published by a
    /// node without a history, cannot be placed).
    Send,
    /// Goes out, and ends the recovery: it is newer than everything sent.
    SendAndEnd,
}

/// Where a recovery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// A page of the history, after `after`, is being read (request `request`).
    Fetching { request: u64, after: Offset },
    /// A page has been queued; the next, after `after`, is read once the connection's
    /// send queue has room for it (the replay goes at the reader's pace, a page at a time).
    Paused { after: Offset },
    /// The history is sent, up to `sent_to`: live messages up to it are skipped as
    /// already sent; the first newer one ends the recovery.
    Live { sent_to: Offset },
}

/// A connection's recovery on one topic.
///
/// While the history is read, a page at a time, live messages are held. Once it is all
/// sent, live messages that Redis published before it read the history can still be on
/// their way (the history and the live messages come over different connections), so
/// those up to the last one sent are skipped; the first newer one ends the recovery.
#[derive(Debug)]
pub(crate) struct Recovery {
    pub(crate) topic: Arc<str>,
    pub(crate) phase: Phase,
    /// History entries sent so far, and their payload bytes.
    pub(crate) fetched: usize,
    payload: usize,
    /// When it started.
    started: Instant,
    /// Live messages that arrived while the history was read.
    pub(crate) held: Vec<Arc<Broadcast>>,
    held_bytes: usize,
    /// Most bytes of frames held: what the connection's send queue may hold, since they
    /// all go to it in the end.
    max_held_bytes: usize,
    /// More than [`MAX_HELD`] (or `max_held_bytes`) arrived: some were dropped.
    pub(crate) overflowed: bool,
    /// A protocol v1 subscribe waiting for the first page: its reply says where the
    /// subscription starts.
    pub(crate) reply: Option<CommandId>,
}

impl Recovery {
    /// A recovery whose first page, after `after`, is read by `request`, holding at most
    /// `max_held_bytes` of live messages meanwhile; it starts at `now`.
    pub(crate) fn new(
        topic: Arc<str>,
        (request, after): (u64, Offset),
        max_held_bytes: usize,
        now: Instant,
    ) -> Self {
        Self {
            topic,
            phase: Phase::Fetching { request, after },
            started: now,
            payload: 0,
            fetched: 0,
            held: Vec::new(),
            held_bytes: 0,
            max_held_bytes,
            overflowed: false,
            reply: None,
        }
    }

    /// Whether `request` is the read this recovery waits for.
    pub(crate) fn awaits(&self, request: u64) -> bool {
        matches!(self.phase, Phase::Fetching { request: r, .. } if r == request)
    }

    /// The average payload of the history entries sent so far (0 before any).
    pub(crate) fn average(&self) -> usize {
        self.payload.checked_div(self.fetched).unwrap_or(0)
    }

    /// Counts a history entry of `payload` bytes sent.
    pub(crate) fn sent(&mut self, payload: usize) {
        self.fetched += 1;
        self.payload += payload;
    }

    /// Whether it has taken longer than `limit` since it started (at `now`): a reader
    /// that never reads, or a broker that never answers, must not hold it open.
    pub(crate) fn is_overdue(&self, now: Instant, limit: std::time::Duration) -> bool {
        self.is_recovering() && now.saturating_duration_since(self.started) >= limit
    }

    /// Whether it is still reading the history (live messages are held).
    pub(crate) fn is_recovering(&self) -> bool {
        !matches!(self.phase, Phase::Live { .. })
    }

    /// Gives up reading the history: the held messages are dropped, and live ones after
    /// what was sent go out from now on. Returns whether it was still reading (the
    /// connection then gets a gap notice).
    pub(crate) fn abandon(&mut self) -> bool {
        let after = match self.phase {
            Phase::Fetching { after, .. } | Phase::Paused { after } => after,
            Phase::Live { .. } => return false,
        };
        drop(self.take_held());
        self.phase = Phase::Live { sent_to: after };
        true
    }

    /// Takes a live message on the topic.
    pub(crate) fn absorb(&mut self, broadcast: &Arc<Broadcast>) -> Live {
        let Phase::Live { sent_to } = self.phase else {
            let bytes = broadcast.len();
            if self.held.len() < MAX_HELD && self.held_bytes + bytes <= self.max_held_bytes {
                self.held.push(broadcast.clone());
                self.held_bytes += bytes;
            } else {
                self.overflowed = true;
            }
            return Live::Absorbed;
        };
        match broadcast.offset {
            Some(offset) if offset <= sent_to => Live::Absorbed,
            Some(_) => Live::SendAndEnd,
            None => Live::Send,
        }
    }

    /// The held live messages, which no longer count against the bound.
    pub(crate) fn take_held(&mut self) -> Vec<Arc<Broadcast>> {
        self.held_bytes = 0;
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(offset: Option<Offset>) -> Arc<Broadcast> {
        Broadcast::text("t", "x", offset)
    }

    #[test]
    fn a_recovery_holds_then_skips_what_was_sent_then_ends() {
        let mut recovery =
            Recovery::new(Arc::from("t"), (7, Offset(1, 0)), 1 << 20, Instant::now());
        assert!(
            recovery.awaits(7) && !recovery.awaits(6),
            "only its own read"
        );
        assert_eq!(recovery.absorb(&live(Some(Offset(5, 0)))), Live::Absorbed);
        recovery.phase = Phase::Paused {
            after: Offset(4, 0),
        };
        assert!(!recovery.awaits(7), "between pages it waits for no read");
        assert_eq!(recovery.absorb(&live(Some(Offset(5, 1)))), Live::Absorbed);
        assert_eq!(
            recovery.take_held().len(),
            2,
            "held while the history is read"
        );
        recovery.phase = Phase::Live {
            sent_to: Offset(5, 0),
        };
        assert_eq!(
            recovery.absorb(&live(Some(Offset(4, 9)))),
            Live::Absorbed,
            "already sent"
        );
        assert_eq!(
            recovery.absorb(&live(Some(Offset(5, 0)))),
            Live::Absorbed,
            "already sent"
        );
        assert_eq!(recovery.absorb(&live(None)), Live::Send, "cannot be placed");
        assert_eq!(recovery.absorb(&live(Some(Offset(5, 1)))), Live::SendAndEnd);
    }

    #[test]
    fn held_messages_are_bounded_and_overflow_is_remembered() {
        let mut recovery = Recovery::new(
            Arc::from("t"),
            (0, Offset::ZERO),
            usize::MAX,
            Instant::now(),
        );
        for _ in 0..MAX_HELD + 5 {
            assert_eq!(recovery.absorb(&live(Some(Offset(1, 0)))), Live::Absorbed);
        }
        assert_eq!(recovery.held.len(), MAX_HELD);
        assert!(recovery.overflowed);
        let mut small = Recovery::new(Arc::from("t"), (0, Offset::ZERO), 100, Instant::now());
        let frame = live(None).len();
        for _ in 0..100 / frame + 1 {
            small.absorb(&live(None));
        }
        assert_eq!(
            small.held.len(),
            100 / frame,
            "held up to the bytes allowed"
        );
        assert!(small.overflowed);
    }
}
