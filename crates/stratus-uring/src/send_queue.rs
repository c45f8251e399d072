//! A connection's outgoing frames, counted in bytes: the companion of
//! [`Ring::send`](crate::Ring::send).
//!
//! Frames wait here until the ring's owner sends them: it moves a batch into one
//! `sendmsg`, and puts back whatever the kernel did not take. The byte count covers the
//! frames in flight too, since they still hold memory; it is what the slow-consumer
//! policy and read backpressure act on.
//!
//! Each entry knows whether it starts a frame. Discarding (a slow consumer's Close must
//! go next) keeps the pieces of frames whose start already went out, so the peer never
//! sees half a frame followed by the Close.

use std::collections::VecDeque;

use bytes::Bytes;

/// Outgoing frames of one connection.
#[derive(Default)]
pub struct SendQueue {
    /// Bytes to send, and whether each starts a frame.
    frames: VecDeque<(Bytes, bool)>,
    bytes: usize,
}

impl SendQueue {
    /// Queues a whole frame.
    pub fn push(&mut self, frame: Bytes) {
        self.push_part(frame, true);
    }

    /// Queues part of a frame: its start, or what continues the part queued before.
    pub fn push_part(&mut self, part: Bytes, starts_frame: bool) {
        self.bytes += part.len();
        self.frames.push_back((part, starts_frame));
    }

    /// Bytes queued or in flight.
    pub fn queued_bytes(&self) -> usize {
        self.bytes
    }

    /// Whether frames wait to be sent.
    pub fn has_pending(&self) -> bool {
        !self.frames.is_empty()
    }

    /// Drops the frames not yet begun (the connection is being closed as a slow
    /// consumer: its Close must go next); the rest of a frame already begun stays.
    pub fn discard_pending(&mut self) {
        let begun = self.frames.iter().take_while(|(_, starts)| !starts).count();
        let pending: usize = self.frames.drain(begun..).map(|(b, _)| b.len()).sum();
        self.bytes -= pending;
    }

    /// Moves up to `max` frames, oldest first, into `batch`.
    pub fn take_batch(&mut self, batch: &mut Vec<Bytes>, max: usize) {
        let n = self.frames.len().min(max);
        batch.extend(self.frames.drain(..n).map(|(b, _)| b));
    }

    /// Records that the first `written` bytes of `batch` reached the socket and puts the
    /// rest back at the front, in order. Leaves `batch` empty.
    pub fn sent(&mut self, batch: &mut Vec<Bytes>, mut written: usize) {
        self.bytes -= written.min(self.bytes);
        let mut frames = batch.drain(..);
        let mut unsent = Vec::new();
        for frame in frames.by_ref() {
            if frame.len() > written {
                unsent.push(frame.slice(written..));
                break;
            }
            written -= frame.len();
        }
        unsent.extend(frames);
        // Put back as begun (kept by a discard): the first may be the rest of a frame,
        // and any may be the first half of one.
        for frame in unsent.into_iter().rev() {
            self.frames.push_front((frame, false));
        }
        // A drained queue gives its memory back: most connections are idle most of the
        // time, and an idle one should hold nothing.
        if self.frames.is_empty() {
            self.frames = VecDeque::new();
        }
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

    #[test]
    fn partial_send_puts_the_unsent_tail_back_in_order() {
        let mut q = queue(&[b"abc", b"defg", b"hi"]);
        let mut batch = Vec::new();
        q.take_batch(&mut batch, 8);
        assert_eq!(q.queued_bytes(), 9, "bytes in flight still count");
        q.push(Bytes::from_static(b"jk"));
        q.sent(&mut batch, 5);
        assert!(batch.is_empty());
        assert_eq!(q.queued_bytes(), 6);
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
        assert_eq!(q.queued_bytes(), 4 + 7);
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
        assert_eq!(q.queued_bytes(), 3);
        assert!(!q.has_pending());
        q.sent(&mut batch, 3);
        assert_eq!(q.queued_bytes(), 0);
    }
}
