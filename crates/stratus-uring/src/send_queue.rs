//! A connection's outgoing frames, counted in bytes: the companion of
//! [`Ring::send`](crate::Ring::send).
//!
//! Frames wait here until the ring's owner sends them: it moves a batch into one
//! `sendmsg`, and puts back whatever the kernel did not take. The byte count covers the
//! frames in flight too, since they still hold memory; it is what the slow-consumer
//! policy and read backpressure act on.
//!
//! A queue holds nothing while it is empty and nothing is in flight, which is how a server's
//! idle connections nearly all are: its frames and counts are boxed apart, made by the
//! first frame queued and freed once the last one is written, so an idle connection keeps
//! a pointer (8 bytes) where it kept the queue (48), in every connection.
//!
//! Each entry knows whether it starts a frame. Discarding (a slow consumer's Close must
//! go next) keeps the pieces of frames whose start already went out, so the peer never
//! sees half a frame followed by the Close.

use std::collections::VecDeque;

use bytes::Bytes;

/// What one queued entry costs beyond its bytes, charged against the cap with them: its
/// slot in the queue (a `Bytes` and two flags, 40 bytes) and the allocator's share of the
/// small allocation a frame made for one connection (a pong, a reply) has of its own.
/// Without it, a peer that makes the server queue empty frames (pings it never reads the
/// pongs of) could hold hundreds of thousands of entries under a cap of bytes.
pub const ENTRY_OVERHEAD: usize = 64;

/// Pongs that may wait in a queue, each answering its own ping; past them, a new pong
/// replaces the newest one waiting (RFC 6455 5.5.3 lets an endpoint answer only the most
/// recent of several pings). A peer that reads gets every pong of a burst of pings (as
/// Autobahn's case 2.10 checks for ten); one that pings without reading holds a few.
pub(crate) const MAX_WAITING_PONGS: u8 = 16;

/// One queued piece of a frame.
struct Entry {
    bytes: Bytes,
    /// It starts a frame (a discard may drop it unless it has begun going out).
    starts_frame: bool,
    /// It is a whole pong, which a later pong may replace.
    pong: bool,
}

/// Outgoing frames of one connection.
#[derive(Default)]
pub struct SendQueue {
    /// `None` (no allocation) while nothing is queued or in flight.
    queued: Option<Box<Queued>>,
}

/// What a queue holds while it is not idle.
#[derive(Default)]
struct Queued {
    frames: VecDeque<Entry>,
    /// Bytes queued or in flight.
    bytes: usize,
    /// Entries queued or in flight.
    entries: u32,
    /// Pongs queued and not yet taken for sending (never more than [`MAX_WAITING_PONGS`]).
    waiting_pongs: u8,
}

impl SendQueue {
    /// Queues a whole frame.
    pub fn push(&mut self, frame: Bytes) {
        self.push_part(frame, true);
    }

    /// Queues part of a frame: its start, or what continues the part queued before.
    pub fn push_part(&mut self, part: Bytes, starts_frame: bool) {
        self.push_entry(Entry {
            bytes: part,
            starts_frame,
            pong: false,
        });
    }

    /// Queues a pong; with [`MAX_WAITING_PONGS`] waiting, it replaces the newest one if
    /// that is at the back of the queue, and is dropped otherwise (the peer has that many
    /// pongs it has not read, answering earlier pings). Returns whether it was queued.
    pub fn push_pong(&mut self, pong: Bytes) -> bool {
        let queued = self.queued_mut();
        if queued.waiting_pongs >= MAX_WAITING_PONGS {
            let Some(last) = queued.frames.back_mut().filter(|e| e.pong) else {
                return false;
            };
            queued.bytes = queued.bytes - last.bytes.len() + pong.len();
            last.bytes = pong;
            return true;
        }
        queued.waiting_pongs += 1;
        self.push_entry(Entry {
            bytes: pong,
            starts_frame: true,
            pong: true,
        });
        true
    }

    fn push_entry(&mut self, entry: Entry) {
        let queued = self.queued_mut();
        queued.bytes += entry.bytes.len();
        queued.entries += 1;
        queued.frames.push_back(entry);
    }

    /// What it holds, made on first use.
    fn queued_mut(&mut self) -> &mut Queued {
        self.queued.get_or_insert_with(Box::default)
    }

    /// Frees what it holds once nothing is queued or in flight: most connections are
    /// idle most of the time, and an idle one should hold nothing.
    fn release_if_idle(&mut self) {
        if self
            .queued
            .as_ref()
            .is_some_and(|q| q.frames.is_empty() && q.entries == 0)
        {
            self.queued = None;
        }
    }

    /// What the frames queued or in flight cost: their bytes, plus [`ENTRY_OVERHEAD`]
    /// for each (what the cap, read backpressure and `/metrics` count).
    pub fn queued_bytes(&self) -> usize {
        self.queued
            .as_ref()
            .map_or(0, |q| q.bytes + q.entries as usize * ENTRY_OVERHEAD)
    }

    /// Whether frames wait to be sent.
    pub fn has_pending(&self) -> bool {
        self.queued.as_ref().is_some_and(|q| !q.frames.is_empty())
    }

    /// Drops the frames not yet begun (the connection is being closed as a slow
    /// consumer: its Close must go next); the rest of a frame already begun stays.
    pub fn discard_pending(&mut self) {
        let Some(queued) = self.queued.as_deref_mut() else {
            return;
        };
        let begun = queued.frames.iter().take_while(|e| !e.starts_frame).count();
        for entry in queued.frames.drain(begun..) {
            queued.bytes -= entry.bytes.len();
            queued.entries -= 1;
            queued.waiting_pongs -= u8::from(entry.pong);
        }
        self.release_if_idle();
    }

    /// Moves up to `max` frames, oldest first, into `batch`.
    pub fn take_batch(&mut self, batch: &mut Vec<Bytes>, max: usize) {
        let Some(queued) = self.queued.as_deref_mut() else {
            return;
        };
        let n = queued.frames.len().min(max);
        for entry in queued.frames.drain(..n) {
            queued.waiting_pongs -= u8::from(entry.pong);
            batch.push(entry.bytes);
        }
    }

    /// Records that the first `written` bytes of `batch` reached the socket and puts the
    /// rest back at the front, in order. Leaves `batch` empty.
    pub fn sent(&mut self, batch: &mut Vec<Bytes>, mut written: usize) {
        let queued = self.queued_mut();
        queued.bytes -= written.min(queued.bytes);
        let mut frames = batch.drain(..);
        let mut unsent = Vec::new();
        for frame in frames.by_ref() {
            if frame.len() > written {
                unsent.push(frame.slice(written..));
                break;
            }
            written -= frame.len();
            queued.entries -= 1;
        }
        unsent.extend(frames);
        // Put back as begun (kept by a discard): the first may be the rest of a frame,
        // and any may be the first half of one.
        for frame in unsent.into_iter().rev() {
            queued.frames.push_front(Entry {
                bytes: frame,
                starts_frame: false,
                pong: false,
            });
        }
        self.release_if_idle();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(frames: &[&'static [u8]]) -> SendQueue {
        let mut q = SendQueue::default();
        for f in frames {
            q.push(Bytes::from_static(f));
        }
        q
    }

    /// A server keeps a queue in every connection, nearly all idle: an idle queue is a
    /// pointer, and what it held is freed once all of it is written.
    #[test]
    fn an_idle_queue_is_a_pointer_and_holds_nothing() {
        assert_eq!(size_of::<SendQueue>(), 8, "it sits in every connection");
        let mut q = queue(&[b"abc", b"de"]);
        let mut batch = Vec::new();
        q.take_batch(&mut batch, 1);
        q.sent(&mut batch, 3);
        assert!(q.queued.is_some(), "a frame still queued");
        q.take_batch(&mut batch, 8);
        q.discard_pending();
        assert!(q.queued.is_some(), "a frame in flight");
        q.sent(&mut batch, 2);
        assert!(q.queued.is_none() && q.queued_bytes() == 0 && !q.has_pending());
    }

    #[test]
    fn partial_send_puts_the_unsent_tail_back_in_order() {
        let mut q = queue(&[b"abc", b"defg", b"hi"]);
        let mut batch = Vec::new();
        q.take_batch(&mut batch, 8);
        assert_eq!(
            q.queued_bytes(),
            9 + 3 * ENTRY_OVERHEAD,
            "frames in flight still count"
        );
        q.push(Bytes::from_static(b"jk"));
        q.sent(&mut batch, 5);
        assert!(batch.is_empty());
        assert_eq!(q.queued_bytes(), 6 + 3 * ENTRY_OVERHEAD, "abc went out");
        let mut rest = Vec::new();
        q.take_batch(&mut rest, 8);
        assert_eq!(rest, [&b"fg"[..], b"hi", b"jk"]);
    }

    #[test]
    fn discard_keeps_the_rest_of_frames_already_begun() {
        let mut q = queue(&[b"head"]);
        q.push_part(Bytes::from_static(b"payload"), false);
        q.push(Bytes::from_static(b"next"));
        let mut batch = Vec::new();
        q.take_batch(&mut batch, 1);
        // The header went out; the payload of its frame must follow it.
        q.discard_pending();
        assert_eq!(q.queued_bytes(), 4 + 7 + 2 * ENTRY_OVERHEAD);
        q.sent(&mut batch, 2);
        q.push(Bytes::from_static(b"close"));
        q.discard_pending();
        let mut rest = Vec::new();
        q.take_batch(&mut rest, 8);
        assert_eq!(
            rest,
            [&b"ad"[..], b"payload"],
            "a half-sent header and its payload stay"
        );
    }

    #[test]
    fn discard_keeps_the_count_of_frames_in_flight() {
        let mut q = queue(&[b"abc", b"de"]);
        let mut batch = Vec::new();
        q.take_batch(&mut batch, 1);
        q.discard_pending();
        assert_eq!(q.queued_bytes(), 3 + ENTRY_OVERHEAD);
        assert!(!q.has_pending());
        q.sent(&mut batch, 3);
        assert_eq!(q.queued_bytes(), 0);
    }

    #[test]
    fn empty_frames_are_charged_their_overhead() {
        let mut q = SendQueue::default();
        let mut pushed = 0;
        while q.queued_bytes() < 1 << 20 {
            q.push(Bytes::from_static(b"\x8a\x00"));
            pushed += 1;
        }
        assert_eq!(pushed, (1 << 20) / (2 + ENTRY_OVERHEAD) + 1);
        assert!(pushed < 20_000, "a 1 MiB cap holds {pushed} empty frames");
    }

    #[test]
    fn past_the_waiting_pongs_a_pong_replaces_the_newest() {
        let mut q = SendQueue::default();
        let pong = |i: usize| Bytes::from(format!("p{i}"));
        let max = usize::from(MAX_WAITING_PONGS);
        for i in 0..max + 100 {
            q.push_pong(pong(i));
        }
        let mut batch = Vec::new();
        q.take_batch(&mut batch, 1000);
        assert_eq!(batch.len(), max, "a burst answered one by one, then one");
        assert_eq!(
            batch[..max - 1],
            (0..max - 1).map(pong).collect::<Vec<_>>()[..]
        );
        assert_eq!(batch[max - 1], pong(max + 99), "the latest");
        // Taken for sending, they no longer count: the next burst is answered again.
        q.push_pong(pong(1));
        q.push(Bytes::from_static(b"data"));
        for i in 2..max + 5 {
            q.push_pong(pong(i));
        }
        let mut rest = Vec::new();
        q.take_batch(&mut rest, 1000);
        assert_eq!(rest.len(), max + 1, "{rest:?}");
        assert_eq!(
            rest[1],
            Bytes::from_static(b"data"),
            "a data frame is never replaced"
        );
        assert_eq!(rest[max], pong(max + 4));
    }
}
