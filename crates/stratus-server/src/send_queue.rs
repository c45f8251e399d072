//! A connection's outgoing frames, counted in bytes, drained by its writer task.
//!
//! Producers (the connection's reader, later the broadcast path) push `Bytes` frames; the
//! writer takes everything queued in one batch and sends it with one `writev`. The byte
//! count is what backpressure acts on: a producer can wait until the queue drains below a
//! mark.

use std::cell::RefCell;
use std::collections::VecDeque;

use bytes::Bytes;
use tokio::sync::Notify;

#[derive(Default)]
struct Inner {
    frames: VecDeque<Bytes>,
    bytes: usize,
    closed: bool,
}

/// Outgoing frames of one connection (single-threaded: lives on its worker).
#[derive(Default)]
pub(crate) struct SendQueue {
    inner: RefCell<Inner>,
    wake_writer: Notify,
    drained: Notify,
}

impl SendQueue {
    /// Queues a frame; `false` once the queue is closed.
    pub(crate) fn push(&self, frame: Bytes) -> bool {
        let mut inner = self.inner.borrow_mut();
        if inner.closed {
            return false;
        }
        inner.bytes += frame.len();
        inner.frames.push_back(frame);
        drop(inner);
        self.wake_writer.notify_one();
        true
    }

    /// Bytes queued and not yet written.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.inner.borrow().bytes
    }

    /// No more frames: the writer exits once what is queued is written.
    pub(crate) fn close(&self) {
        self.inner.borrow_mut().closed = true;
        self.wake_writer.notify_one();
    }

    /// Drops the frames not yet taken by the writer (the connection is being closed as a
    /// slow consumer: its Close must go next).
    pub(crate) fn discard_pending(&self) {
        let mut inner = self.inner.borrow_mut();
        let pending: usize = inner.frames.iter().map(Bytes::len).sum();
        inner.frames.clear();
        inner.bytes -= pending;
    }

    /// The writer failed: drop what is queued and refuse more.
    pub(crate) fn abandon(&self) {
        let mut inner = self.inner.borrow_mut();
        inner.closed = true;
        inner.frames.clear();
        inner.bytes = 0;
        drop(inner);
        self.drained.notify_waiters();
    }

    /// Waits for frames and moves up to `max` of them into `batch`. `false` when the
    /// queue is closed and empty.
    pub(crate) async fn take_batch(&self, batch: &mut Vec<Bytes>, max: usize) -> bool {
        loop {
            {
                let mut inner = self.inner.borrow_mut();
                if !inner.frames.is_empty() {
                    let n = inner.frames.len().min(max);
                    batch.extend(inner.frames.drain(..n));
                    return true;
                }
                if inner.closed {
                    return false;
                }
            }
            self.wake_writer.notified().await;
        }
    }

    /// Records that `n` queued bytes reached the socket.
    pub(crate) fn written(&self, n: usize) {
        let mut inner = self.inner.borrow_mut();
        inner.bytes = inner.bytes.saturating_sub(n);
        drop(inner);
        self.drained.notify_waiters();
    }

    /// Waits until at most `limit` bytes are queued.
    pub(crate) async fn wait_below(&self, limit: usize) {
        loop {
            let drained = self.drained.notified();
            if self.queued_bytes() <= limit {
                return;
            }
            drained.await;
        }
    }
}
