//! The output side of the driver: the end-of-turn settle of every connection the turn
//! changed (one `sendmsg` with everything queued, FIN, the receive re-armed or cancelled,
//! input that waited resumed, the slot freed once nothing is in flight), and what a
//! finished send or a freed connection sets off.

use std::io;
use std::time::Instant;

use bytes::Bytes;

use crate::connection::{Counted, ReceiveOp};
use crate::model::conn_id::ConnId;
use crate::stats;
use crate::worker::Worker;

/// Most frames per `sendmsg`.
const MAX_IOV: usize = 512;
/// Sends submitted at a time when a turn has many.
const SETTLE_CHUNK: usize = 1024;
/// Emptied send batches kept for reuse.
const SPARE_BATCHES: usize = 256;

impl Worker {
    /// The end-of-turn pass over the connections this turn changed.
    ///
    /// A fanout to many connections is sent in chunks, and publishes that arrived in
    /// the meantime are queued between chunks: the connections not yet sent to carry
    /// them in the same `sendmsg`, instead of every publish waiting for the whole fanout
    /// before it (one publisher flat out, 10,000 subscribers: 248k -> 1.58M deliveries/s).
    pub(super) fn settle(&mut self) -> io::Result<()> {
        let dirty = self.conns.take_dirty();
        let mut sends = 0usize;
        // Chunks well inside the completion queue: each chunk's completions are taken
        // out of the kernel's queue before the next is submitted, so a fanout to more
        // sockets than the queue holds never overflows it.
        let chunk = SETTLE_CHUNK.min(self.ring.completion_capacity() / 4).max(1);
        for &id in &dirty {
            if self.settle_one(id) {
                sends += 1;
                if sends.is_multiple_of(chunk) {
                    self.ring.submit()?;
                    self.ring.reap();
                    self.read_inbox();
                }
            }
        }
        self.conns.reuse_dirty(dirty);
        if !self.conns.has_dirty() && !self.unsent_publishes.is_empty() {
            self.ring.submit()?;
            let now = Instant::now();
            let histogram = &self.hub.workers[self.index].publish_latency;
            for published in self.unsent_publishes.drain(..) {
                histogram.observe(now - published);
            }
        }
        Ok(())
    }

    /// Settles one connection; `true` if it started a send.
    fn settle_one(&mut self, id: ConnId) -> bool {
        let now_ms = self.clock.now_ms();
        let Some(conn) = self.conns.settling(id) else {
            return false;
        };
        let mut started = false;
        if conn.is_ready_to_send() {
            let mut batch = self.spare_batches.pop().unwrap_or_default();
            conn.start_send(&mut batch, MAX_IOV);
            self.ring.send(conn.fd(), id.token(), batch);
            started = true;
        }
        conn.finish_flushed();
        if conn.is_dead() {
            if conn.is_finished() {
                self.free(id);
            }
            return started;
        }
        let held = conn.client().is_input_held(&self.config, now_ms);
        if conn.is_input_waiting() && !held {
            self.resume_input(id);
            return started;
        }
        // A connection that has used much of its message budget is read a buffer at a
        // time: what the kernel hands over (and the server then holds) stays small while
        // it sends more than it may.
        let sparing = conn.client().is_sparing_input(&self.config, now_ms);
        match conn.next_receive(held, sparing) {
            Some(ReceiveOp::Multishot) => self.ring.recv_multishot(conn.fd(), id.token()),
            Some(ReceiveOp::Once) => self.ring.recv_once(conn.fd(), id.token()),
            Some(ReceiveOp::Cancel) => self.ring.cancel_recv(id.token()),
            None => {}
        }
        started
    }

    /// A send finished: what it wrote leaves the queue (a failed one ends the
    /// connection), and a recovery paused for room may read on.
    pub(super) fn on_sent(
        &mut self,
        id: ConnId,
        result: io::Result<usize>,
        mut frames: Vec<Bytes>,
    ) {
        if let Some(conn) = self.conns.get(id) {
            let written = conn.on_sent(&mut frames, &result);
            stats::add(&self.hub.workers[self.index].bytes_out, written as u64);
            let ctx = self.clock.context(&self.hub, &self.config);
            self.pubsub.on_sent(&ctx, id, conn.client_mut());
        }
        frames.clear();
        if self.spare_batches.len() < SPARE_BATCHES {
            self.spare_batches.push(frames);
        }
    }

    /// Forgets a connection whose operations have all finished, closing its socket, and
    /// gives back what it held: its count, its topics, its waiting replies.
    pub(super) fn free(&mut self, id: ConnId) {
        let Some(conn) = self.conns.remove(id) else {
            return;
        };
        if conn.counted() == Counted::Unupgraded {
            self.unupgraded.finished(conn.ip());
        }
        let ctx = self.clock.context(&self.hub, &self.config);
        if let Some(grant) = conn.client().grant() {
            self.users.closed(&grant.subject, id);
        }
        self.pubsub.on_left(&ctx, id, conn.client());
        if conn.counted() == Counted::Open {
            self.hub
                .release(conn.ip(), self.config.max_connections_per_ip);
            self.hub.workers[self.index].closed(conn.client().close_code());
        }
    }
}
