//! A connection's outgoing frames, counted in bytes: the companion of
//! [`Ring::send`](crate::Ring::send).
//!
//! Frames wait here until the ring's owner sends them: it moves a batch into one
//! `sendmsg`, and puts back whatever the kernel did not take. The byte count covers the
//! frames in flight too, since they still hold memory; it is what the slow-consumer
//! policy and read backpressure act on.

use std::collections::VecDeque;

use bytes::Bytes;

/// Outgoing frames of one connection.
#[derive(Default)]
pub struct SendQueue {
    frames: VecDeque<Bytes>,
    bytes: usize,
}

impl SendQueue {
    /// Queues a frame.
    pub fn push(&mut self, frame: Bytes) {
        self.bytes += frame.len();
        self.frames.push_back(frame);
    }

    /// Bytes queued or in flight.
    pub fn queued_bytes(&self) -> usize {
        self.bytes
    }

    /// Whether frames wait to be sent.
    pub fn has_pending(&self) -> bool {
        !self.frames.is_empty()
    }

    /// Drops the frames not yet sent (the connection is being closed as a slow consumer:
    /// its Close must go next).
    pub fn discard_pending(&mut self) {
        let pending: usize = self.frames.iter().map(Bytes::len).sum();
        self.frames.clear();
        self.bytes -= pending;
    }

    /// Moves up to `max` frames, oldest first, into `batch`.
    pub fn take_batch(&mut self, batch: &mut Vec<Bytes>, max: usize) {
        let n = self.frames.len().min(max);
        batch.extend(self.frames.drain(..n));
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
        for frame in unsent.into_iter().rev() {
            self.frames.push_front(frame);
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
