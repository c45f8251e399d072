//! One connection's state, from accept to close, as a state machine the worker drives:
//! no task and no buffer of its own while idle (received bytes arrive through the ring's
//! shared buffers; a read buffer exists only while a frame is incomplete).
//!
//! Phases: the HTTP upgrade ([`Phase::Handshake`]), WebSocket frames ([`Phase::Open`]),
//! or a last HTTP response on its way out ([`Phase::Answered`]: a refusal, or the status
//! page). The worker does the I/O; this module decides what to send and when the
//! connection is done.
//!
//! The server closes TCP itself after a Close: it sends FIN behind its last frame, then
//! reads (and drops) whatever the peer still sends until the peer's FIN or the close
//! deadline. Closing with unread bytes would make the kernel send a reset, which can
//! destroy the Close frame before the peer reads it.

use std::net::{IpAddr, Shutdown, TcpStream};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use stratus_proto::handshake::{Request, RequestReader};
use stratus_proto::{CloseCode, Message, Session};
use stratus_uring::{ENTRY_OVERHEAD, SendQueue};
use tracing::debug;

use crate::auth::Grant;
use crate::broadcast::Broadcast;
use crate::config::{Config, SlowConsumer};
use crate::history::{Live, Recovery};
use crate::metrics::{self, WorkerStats};
use crate::rate::TokenBucket;
use crate::tls_conn::TlsConn;
use crate::upgrade::{Refusal, Upgrade, refusal};

/// Moves `session`'s outgoing bytes to `queue`, frame boundaries marked (a pong as a
/// pong, which a later one may replace); returns how many bytes that was.
pub(crate) fn queue_transmit(session: &mut Session, queue: &mut SendQueue) -> usize {
    let mut moved = 0;
    if let Some(pong) = session.poll_pong() {
        let len = pong.len();
        if queue.push_pong(pong) {
            moved += len;
        }
    }
    while let Some((part, starts_frame)) = session.poll_transmit_part() {
        moved += part.len();
        queue.push_part(part, starts_frame);
    }
    moved
}

/// Which frame of a broadcast a connection gets.
#[derive(Debug, Clone, Copy)]
pub(crate) enum FrameChoice {
    /// No compression negotiated: the plain frame.
    Plain,
    /// Shared-mode compression: the broadcast's compressed frame (made once).
    /// (`threshold` as u32 keeps the choice in 8 bytes of every connection.)
    Shared { threshold: u32 },
    /// A per-connection compressor (context takeover or a smaller window): compressed
    /// for this connection alone.
    PerConnection,
}

/// What delivering a broadcast to one connection did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivered {
    Queued,
    Dropped,
    ClosedSlow,
    Skipped,
}

/// Where a connection is in its life.
// Nearly every connection is `Open`: boxing the session would add an allocation (and its
// header) to each of them to save bytes on the few still handshaking.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Phase {
    /// Reading the HTTP upgrade request.
    Handshake(RequestReader),
    /// Exchanging WebSocket frames.
    Open(Session),
    /// An HTTP response (a refusal, or the status page) is queued; the connection ends
    /// after it.
    Answered,
}

/// A connection's state, owned by its worker.
pub(crate) struct Conn {
    pub(crate) socket: TcpStream,
    /// The client's address, for the per-IP cap.
    pub(crate) ip: IpAddr,
    /// Names this connection in ring operations (slot and generation).
    pub(crate) token: u64,
    pub(crate) phase: Phase,
    /// Bytes received and not yet decoded (empty, without an allocation, when idle).
    pub(crate) read_buf: BytesMut,
    pub(crate) queue: SendQueue,
    pub(crate) frames: FrameChoice,
    pub(crate) topics: Vec<Arc<str>>,
    /// What the connection's token allows (with auth on).
    pub(crate) grant: Option<Box<Grant>>,
    pub(crate) last_seen: Instant,
    pub(crate) ping_sent: Option<Instant>,
    /// The handshake deadline; while open, the deadline of a message begun (see
    /// [`Conn::time_message`]); the close deadline once closing starts.
    pub(crate) deadline: Option<Instant>,
    pub(crate) io: IoState,
    /// TLS, on a `wss://` listener: the queue holds plaintext, sealed when sent.
    pub(crate) tls: Option<Box<TlsConn>>,
    /// Recoveries in progress, one per topic: live messages on their topics go through
    /// them.
    pub(crate) recoveries: Vec<Recovery>,
    /// Whether each message comes with its offset notice (asked for with `since`).
    pub(crate) offsets: bool,
    /// The messages it may still send (refilled at the message rate).
    pub(crate) inbound: TokenBucket,
}

/// What a connection is counted in.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counted {
    /// Nothing (not yet, or no longer: a socket shed mid-upgrade).
    #[default]
    Nothing,
    /// The worker's sockets that have not finished the upgrade.
    Unupgraded,
    /// The server's open WebSocket connections (and its address's).
    Open,
}

/// What is in flight and what is finished, for the worker.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IoState {
    /// A multishot receive is armed.
    pub(crate) receiving: bool,
    /// A cancel of that receive was sent (read backpressure).
    pub(crate) recv_cancelled: bool,
    /// A send is in flight.
    pub(crate) sending: bool,
    /// The peer sent FIN (or the socket failed): nothing more will be read.
    pub(crate) peer_done: bool,
    /// Send FIN once everything queued is written.
    pub(crate) fin_after_flush: bool,
    pub(crate) fin_sent: bool,
    /// Shut down: the slot is freed once nothing is in flight.
    pub(crate) dead: bool,
    /// Queued for the worker's end-of-tick pass.
    pub(crate) dirty: bool,
    /// Decoding stopped with the queue at its cap or the message budget used up: the rest
    /// of the input (in the read buffer) waits for the queue to drain or the budget to
    /// refill.
    pub(crate) input_waiting: bool,
    /// What the connection is counted in, to be released when it goes.
    pub(crate) counted: Counted,
}

impl Conn {
    pub(crate) fn new(
        socket: TcpStream,
        ip: IpAddr,
        token: u64,
        limits: stratus_proto::handshake::HandshakeLimits,
        deadline: Instant,
        tls: Option<Box<TlsConn>>,
    ) -> Self {
        Self {
            socket,
            ip,
            token,
            phase: Phase::Handshake(RequestReader::new(limits)),
            read_buf: BytesMut::new(),
            queue: SendQueue::default(),
            frames: FrameChoice::Plain,
            topics: Vec::new(),
            grant: None,
            last_seen: Instant::now(),
            ping_sent: None,
            deadline: Some(deadline),
            io: IoState::default(),
            tls,
            recoveries: Vec::new(),
            offsets: false,
            inbound: TokenBucket::full(0, 0),
        }
    }

    /// Bytes queued or in flight: plaintext not yet sealed, and sealed records not yet
    /// written (what the cap and read backpressure act on).
    pub(crate) fn queued_bytes(&self) -> usize {
        self.queue.queued_bytes() + self.tls.as_ref().map_or(0, |t| t.out.queued_bytes())
    }

    /// Whether the client's input waits (reading pauses, and what was read stays
    /// undecoded): its queue is at the cap (until it drains), or it has used up its
    /// message budget (until it refills, at `now_ms`).
    pub(crate) fn is_input_held(&self, config: &Config, now_ms: u32) -> bool {
        self.is_queue_full(config) || self.is_over_message_rate(config, now_ms)
    }

    /// Whether its queue is at the cap (what the client's messages make the server send
    /// waits there, so its input waits too).
    pub(crate) fn is_queue_full(&self, config: &Config) -> bool {
        self.queued_bytes() >= config.max_send_queue
    }

    /// Whether it has used half its message budget or more: its input is then read a
    /// buffer at a time.
    pub(crate) fn is_sparing_input(&self, config: &Config, now_ms: u32) -> bool {
        self.inbound.is_low(now_ms, config.message_rate)
    }

    /// Whether it has used up its message budget (once it is closing, only the peer's
    /// Close is wanted, and its input is read whatever the budget).
    pub(crate) fn is_over_message_rate(&self, config: &Config, now_ms: u32) -> bool {
        !self.inbound.is_ready(now_ms, config.message_rate) && self.is_open_for_messages()
    }

    /// Whether `bytes` more, in `entries` queue entries, fit under `cap`. An empty queue
    /// takes anything: one message larger than the cap still goes out (messages have
    /// limits of their own); the cap bounds what piles up behind it.
    fn has_room(&self, bytes: usize, entries: usize, cap: usize) -> bool {
        let queued = self.queued_bytes();
        queued == 0 || queued + bytes + entries * ENTRY_OVERHEAD <= cap
    }

    /// Applies the slow-consumer policy to a frame that does not fit under the cap.
    fn overflow(&mut self, policy: SlowConsumer, close_deadline: Instant) -> Delivered {
        match policy {
            SlowConsumer::Drop => Delivered::Dropped,
            SlowConsumer::Close => {
                debug!(conn = self.token, "slow consumer");
                self.close(CloseCode::POLICY, "slow consumer", close_deadline, true);
                Delivered::ClosedSlow
            }
        }
    }

    /// Queues a notice the server makes on its own about what it could not deliver (a gap
    /// notice): past the cap too (there is at most one per recovery), since a client that
    /// lost messages must learn of it whatever the policy did.
    pub(crate) fn push_notice(&mut self, text: String, close_deadline: Instant) {
        if let Some(session) = self.session().filter(|s| !s.close_sent()) {
            let _ = session.send(&Message::text(text));
            self.transmit(close_deadline);
        }
    }

    /// Whether a frame of `bytes` fits under `cap` (see [`Conn::has_room`]).
    pub(crate) fn has_room_for(&self, bytes: usize, cap: usize) -> bool {
        self.has_room(bytes, 1, cap)
    }

    /// Whether anything waits to be sent (on TLS: records rustls has to send, and the
    /// close_notify that goes before FIN).
    pub(crate) fn has_pending(&self) -> bool {
        self.queue.has_pending()
            || self.tls.as_ref().is_some_and(|t| {
                t.out.has_pending() || t.wants_write() || (self.io.fin_after_flush && !t.notified())
            })
    }

    /// Moves the next bytes to send into `batch` (empty): queued frames, or on TLS the
    /// records sealed from them (with close_notify once a FIN is due and all is sealed).
    pub(crate) fn take_batch(&mut self, batch: &mut Vec<Bytes>, max: usize) {
        let Some(tls) = &mut self.tls else {
            self.queue.take_batch(batch, max);
            return;
        };
        tls.seal(&mut self.queue, batch);
        if self.io.fin_after_flush && !self.queue.has_pending() {
            tls.close_notify();
        }
        tls.out.take_batch(batch, max);
    }

    /// Records that the first `written` bytes of `batch` (from
    /// [`take_batch`](Self::take_batch)) were sent.
    pub(crate) fn sent(&mut self, batch: &mut Vec<Bytes>, written: usize) {
        match &mut self.tls {
            Some(tls) => tls.out.sent(batch, written),
            None => self.queue.sent(batch, written),
        }
    }

    /// A TLS failure (bad record, failed handshake): the alert rustls queued goes out,
    /// then FIN; nothing more is read.
    pub(crate) fn fail_tls(&mut self, why: &rustls::Error, deadline: Instant) {
        debug!(conn = self.token, error = %why, "TLS failed");
        self.phase = Phase::Answered;
        self.io.fin_after_flush = true;
        self.deadline = Some(deadline);
    }

    /// The session, once upgraded.
    pub(crate) fn session(&mut self) -> Option<&mut Session> {
        match &mut self.phase {
            Phase::Open(session) => Some(session),
            _ => None,
        }
    }

    /// Reads the request from `buf`: the request (with the head consumed from `buf`)
    /// once complete, `Ok(None)` while incomplete, or the refusal to send.
    pub(crate) fn read_request(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, Refusal> {
        let Phase::Handshake(reader) = &mut self.phase else {
            return Ok(None);
        };
        match reader.read_request(buf) {
            Ok(Some((request, head_len))) => {
                buf.advance(head_len);
                Ok(Some(request))
            }
            Ok(None) => Ok(None),
            Err(err) => Err(refusal(&err)),
        }
    }

    /// Upgrades to WebSocket with the 101 response queued first; `inbound` is its
    /// message budget, full.
    pub(crate) fn open(&mut self, upgrade: Upgrade, inbound: TokenBucket) {
        self.inbound = inbound;
        self.phase = Phase::Open(upgrade.session);
        self.frames = upgrade.frames;
        self.grant = upgrade.grant.map(Box::new);
        self.deadline = None;
        self.queue.push(Bytes::from(upgrade.response));
    }

    /// Answers the upgrade with an HTTP error and ends the connection after it.
    pub(crate) fn refuse(&mut self, response: Vec<u8>, why: &str, deadline: Instant) {
        debug!(conn = self.token, why, "handshake refused");
        self.answer(Bytes::from(response), deadline);
    }

    /// Sends a last HTTP response, then FIN; the peer has until `deadline` to close.
    pub(crate) fn answer(&mut self, response: Bytes, deadline: Instant) {
        self.phase = Phase::Answered;
        self.queue.push(response);
        self.io.fin_after_flush = true;
        self.deadline = Some(deadline);
    }

    /// Moves the session's outgoing frames to the send queue, and notes a close in
    /// progress: FIN once the Close handshake is done, and a deadline for it. Once both
    /// Closes are exchanged the peer has at most `close_deadline` to close TCP, even if an
    /// earlier, longer deadline (a drain's) was set.
    pub(crate) fn transmit(&mut self, close_deadline: Instant) {
        let Phase::Open(session) = &mut self.phase else {
            return;
        };
        queue_transmit(session, &mut self.queue);
        if session.is_closed() {
            self.io.fin_after_flush = true;
            self.deadline = Some(
                self.deadline
                    .map_or(close_deadline, |d| d.min(close_deadline)),
            );
        } else if session.close_sent() {
            self.deadline.get_or_insert(close_deadline);
        }
    }

    /// Times the message in progress: while one has begun (part of a frame, or of a
    /// fragmented message, waits) it must be done by `deadline`, set when it began;
    /// once none is, there is no deadline. A connection that is closing keeps its close
    /// deadline.
    pub(crate) fn time_message(&mut self, midway: bool, deadline: Instant) {
        if !self.is_open_for_messages() {
            return;
        }
        if midway {
            self.deadline.get_or_insert(deadline);
        } else {
            self.deadline = None;
        }
    }

    /// Whether the deadline set is a message's (the connection is open and not closing).
    pub(crate) fn is_timing_message(&self) -> bool {
        self.deadline.is_some() && self.is_open_for_messages()
    }

    fn is_open_for_messages(&self) -> bool {
        matches!(&self.phase, Phase::Open(session) if !session.close_sent())
    }

    /// Starts a server-side close with `code`. With `discard`, frames not yet sent are
    /// dropped so the Close goes next (a slow consumer would otherwise never see it).
    pub(crate) fn close(
        &mut self,
        code: CloseCode,
        reason: &str,
        deadline: Instant,
        discard: bool,
    ) {
        if self.is_timing_message() {
            // A message's deadline gives way to the close's.
            self.deadline = None;
        }
        let Phase::Open(session) = &mut self.phase else {
            return;
        };
        if session.close_sent() {
            return;
        }
        session.close(code, reason);
        if discard {
            self.queue.discard_pending();
        }
        self.transmit(deadline);
    }

    /// Whether broadcasts still go to this connection.
    fn accepts_broadcasts(&mut self) -> bool {
        !self.io.dead && self.session().is_some_and(|s| !s.close_sent())
    }

    /// Queues a broadcast on `topic` (after its offset notice, if the connection asked
    /// for offsets), applying the slow-consumer policy when the queue would pass `cap`
    /// bytes; while the topic is being recovered, holds it instead.
    pub(crate) fn deliver(
        &mut self,
        topic: &str,
        broadcast: &Arc<Broadcast>,
        (cap, policy): (usize, SlowConsumer),
        close_deadline: Instant,
        stats: &WorkerStats,
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
        self.push_broadcast(topic, broadcast, (cap, policy), close_deadline, stats)
    }

    /// Queues a broadcast as [`Conn::deliver`] does, past any recovery.
    pub(crate) fn push_broadcast(
        &mut self,
        topic: &str,
        broadcast: &Arc<Broadcast>,
        (cap, policy): (usize, SlowConsumer),
        close_deadline: Instant,
        stats: &WorkerStats,
    ) -> Delivered {
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
        if !self.has_room(len, 1 + usize::from(offset.is_some()), cap) {
            return self.overflow(policy, close_deadline);
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
                    metrics::add(&stats.deflate_in, broadcast.message.payload_len() as u64);
                    metrics::add(&stats.deflate_out, out as u64);
                }
            }
        }
        Delivered::Queued
    }

    /// Shuts the socket down: every operation in flight on it completes at once.
    pub(crate) fn kill(&mut self) {
        if !self.io.dead {
            self.io.dead = true;
            // ENOTCONN after a reset is expected and harmless here.
            let _ = self.socket.shutdown(Shutdown::Both);
        }
    }

    /// Sends FIN (after everything queued is written).
    pub(crate) fn send_fin(&mut self) {
        self.io.fin_sent = true;
        let _ = self.socket.shutdown(Shutdown::Write);
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    /// An idle connection is its slab entry plus its subscriptions: keep the entry small
    /// (the README's memory figure, under 1 KiB per connection, depends on it).
    #[test]
    fn connection_state_fits_in_512_bytes() {
        assert!(
            size_of::<Conn>() <= 512,
            "Conn is {} bytes",
            size_of::<Conn>()
        );
    }
}
