//! One connection, from accept to close: its socket and what the worker's ring has in
//! flight on it ([`Conn`]), and its protocol side ([`Client`]: the handshake, the session,
//! the send queue, deadlines, subscriptions), which everything above works on without a
//! socket. No task and no buffer of its own while idle: received bytes arrive through the
//! ring's shared buffers, and a read buffer exists only while a frame is incomplete.
//!
//! Every change of state is a method here; the worker asks what to do next (send, FIN,
//! re-arm or cancel the receive, free) and does the I/O. The server closes TCP itself
//! after a Close: it sends FIN behind its last frame, then reads (and drops) whatever the
//! peer still sends until the peer's FIN or the close deadline. Closing with unread bytes
//! would make the kernel send a reset, which can destroy the Close frame before the peer
//! reads it.
//!
//! This layer decides what to send and when the connection is done; it must not touch the
//! ring, the hub or another connection.

pub(crate) mod client;
pub(crate) mod conflation;
pub(crate) mod delivery;
pub(crate) mod sse;
pub(crate) mod status_page;
pub(crate) mod tls;
pub(crate) mod topic_list;
pub(crate) mod upgrade;

use std::io;
use std::net::{IpAddr, Shutdown, TcpStream};

use bytes::{Bytes, BytesMut};

pub(crate) use client::{Client, Tick};
pub(crate) use delivery::{Delivered, QueueRules};

use crate::model::conn_id::ConnId;

/// Most a partial frame's buffer reserves beyond the bytes it holds.
const PARTIAL_RESERVE: usize = 64 << 10;

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

/// The receive a connection has armed in the ring.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Receive {
    /// None.
    #[default]
    Idle,
    /// One is armed.
    Armed,
    /// One is armed and its cancel was sent (read backpressure).
    Cancelling,
}

/// A ring operation on the receive side that a connection needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReceiveOp {
    /// Arm a multishot receive.
    Multishot,
    /// Arm a receive of one buffer (a connection sparing its message budget).
    Once,
    /// Cancel the armed receive (its input is held).
    Cancel,
}

/// What the ring has in flight on a connection, and what is finished.
#[derive(Debug, Default, Clone, Copy)]
struct IoState {
    receive: Receive,
    /// A send is in flight.
    sending: bool,
    /// The peer sent FIN (or the socket failed): nothing more will be read.
    peer_done: bool,
    /// FIN was sent.
    fin_sent: bool,
    /// Shut down: the slot is freed once nothing is in flight.
    dead: bool,
    /// Decoding stopped with the queue at its cap or the message budget used up: the
    /// rest of the input (in the read buffer) waits for the queue to drain or the budget
    /// to refill.
    input_waiting: bool,
    /// What the connection is counted in, to be released when it goes.
    counted: Counted,
}

/// Received bytes being decoded (see [`Conn::take_input`]).
pub(crate) struct Input {
    pub(crate) buf: BytesMut,
    /// The worker's scratch buffer, lent.
    lent: bool,
}

/// A connection, owned by its worker.
pub(crate) struct Conn {
    socket: TcpStream,
    /// The client's address, for the per-address caps.
    ip: IpAddr,
    id: ConnId,
    /// What the ring has in flight on it.
    io: IoState,
    /// Bytes received and not yet decoded: a partial frame's, boxed (`None` when idle,
    /// which nearly every connection is: 8 bytes in each instead of a `BytesMut`'s 32).
    read_buf: Option<Box<BytesMut>>,
    /// Its protocol side.
    client: Client,
    /// Queued for its worker's end-of-turn settle (the worker's table keeps this flag
    /// here, in a byte of the connection's padding, not beside it).
    settle_queued: bool,
}

impl Conn {
    /// A connection on `socket`, from `ip`, named `id`, counted in `counted`.
    pub(crate) fn new(
        socket: TcpStream,
        ip: IpAddr,
        id: ConnId,
        client: Client,
        counted: Counted,
    ) -> Self {
        Self {
            socket,
            ip,
            id,
            io: IoState {
                counted,
                ..IoState::default()
            },
            read_buf: None,
            client,
            settle_queued: false,
        }
    }

    /// Queues it for the end-of-turn settle: `false` if it already was.
    pub(crate) fn queue_settle(&mut self) -> bool {
        !std::mem::replace(&mut self.settle_queued, true)
    }

    /// It is being settled: no longer queued.
    pub(crate) fn unqueue_settle(&mut self) {
        self.settle_queued = false;
    }

    /// Its name in the worker.
    pub(crate) fn id(&self) -> ConnId {
        self.id
    }

    /// The client's address.
    pub(crate) fn ip(&self) -> IpAddr {
        self.ip
    }

    /// Its socket's descriptor, for ring operations.
    pub(crate) fn fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.socket.as_raw_fd()
    }

    /// Its protocol side.
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// Its protocol side, to change.
    pub(crate) fn client_mut(&mut self) -> &mut Client {
        &mut self.client
    }

    /// What it is counted in.
    pub(crate) fn counted(&self) -> Counted {
        self.io.counted
    }

    /// From now on it is counted in `counted` (released by whoever frees it).
    pub(crate) fn count_in(&mut self, counted: Counted) {
        self.io.counted = counted;
    }

    /// Whether it is shut down (freed once nothing is in flight).
    pub(crate) fn is_dead(&self) -> bool {
        self.io.dead
    }

    /// Shuts the socket down: every operation in flight on it completes at once.
    pub(crate) fn kill(&mut self) {
        if !self.io.dead {
            self.io.dead = true;
            // ENOTCONN after a reset is expected and harmless here.
            let _ = self.socket.shutdown(Shutdown::Both);
        }
    }

    // Input.

    /// A receive completed: with `more`, it stays armed.
    pub(crate) fn on_receive(&mut self, result: &io::Result<usize>, more: bool) {
        if !more {
            self.io.receive = Receive::Idle;
        }
        match result {
            Ok(0) => self.io.peer_done = true,
            Ok(_) => {}
            // Out of buffers (the pool grew) or paused: re-armed when settled.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::ECANCELED)) => {}
            Err(_) => {
                self.io.peer_done = true;
                self.kill();
            }
        }
    }

    /// The peer has ended its side (a TLS close_notify): nothing more will be read.
    pub(crate) fn peer_closed(&mut self) {
        self.io.peer_done = true;
    }

    /// Whether what arrives is still read: not once FIN is sent, the socket is shut down,
    /// or a last response is on its way (it is then dropped).
    pub(crate) fn takes_input(&self) -> bool {
        !self.io.fin_sent && !self.io.dead && !self.client.is_answered()
    }

    /// Its input waits (the queue is at its cap or the message budget used up): reading
    /// pauses until [`Conn::next_receive`] finds it may go on.
    pub(crate) fn hold_input(&mut self) {
        self.io.input_waiting = true;
    }

    /// Whether input waits to be decoded (see [`Conn::hold_input`]).
    pub(crate) fn is_input_waiting(&self) -> bool {
        self.io.input_waiting
    }

    /// The bytes to decode, in its own buffer (a partial frame) or, while it has none,
    /// in `scratch`, lent (an idle connection keeps no buffer). Give them back with
    /// [`Conn::return_input`].
    pub(crate) fn take_input(&mut self, scratch: &mut BytesMut) -> Input {
        self.io.input_waiting = false;
        match self.read_buf.take() {
            Some(own) => Input {
                buf: *own,
                lent: false,
            },
            None => Input {
                buf: std::mem::take(scratch),
                lent: true,
            },
        }
    }

    /// Keeps what is left of `input` until more arrives, and gives a lent buffer back to
    /// `scratch`.
    pub(crate) fn return_input(&mut self, input: Input, scratch: &mut BytesMut) {
        let Input { mut buf, lent } = input;
        if !lent {
            // An emptied buffer still shares the allocation of the payloads taken from it:
            // an idle connection keeps none.
            self.read_buf = (!buf.is_empty()).then(|| Box::new(buf));
            return;
        }
        if !buf.is_empty() {
            // The rest of a frame: a buffer of its own, sized for the whole frame (up to a
            // bound, so a header alone cannot reserve much) so the rest lands without a
            // reallocation.
            let want = self.client.wanted_len();
            let mut own =
                BytesMut::with_capacity(want.clamp(buf.len(), buf.len() + PARTIAL_RESERVE));
            own.extend_from_slice(&buf);
            self.read_buf = Some(Box::new(own));
            buf.clear();
        }
        *scratch = buf;
    }

    /// The receive operation it needs now: armed unless the peer is done or its input is
    /// `held` (a buffer at a time while `sparing` its budget), cancelled while held.
    pub(crate) fn next_receive(&mut self, held: bool, sparing: bool) -> Option<ReceiveOp> {
        match self.io.receive {
            Receive::Idle if !self.io.peer_done && !held => {
                self.io.receive = Receive::Armed;
                Some(if sparing {
                    ReceiveOp::Once
                } else {
                    ReceiveOp::Multishot
                })
            }
            Receive::Armed if held => {
                self.io.receive = Receive::Cancelling;
                Some(ReceiveOp::Cancel)
            }
            _ => None,
        }
    }

    // Output.

    /// Whether a send should start: nothing in flight, something to send.
    pub(crate) fn is_ready_to_send(&self) -> bool {
        !self.io.dead && !self.io.sending && self.client.has_pending()
    }

    /// Moves the next bytes to send into `batch` (empty; at most `max` frames): a send of
    /// them is in flight from now on.
    pub(crate) fn start_send(&mut self, batch: &mut Vec<Bytes>, max: usize) {
        self.client.take_batch(batch, max);
        self.io.sending = true;
    }

    /// The send of `batch` completed with `result`; `batch` is left empty. Returns the
    /// bytes written.
    pub(crate) fn on_sent(&mut self, batch: &mut Vec<Bytes>, result: &io::Result<usize>) -> usize {
        self.io.sending = false;
        match result {
            Ok(n) => {
                self.client.sent(batch, *n);
                *n
            }
            Err(_) => {
                batch.clear();
                self.kill();
                0
            }
        }
    }

    /// With nothing in flight: FIN once the client wants it, and the end once the peer's
    /// FIN has come and what it sent before is answered.
    pub(crate) fn finish_flushed(&mut self) {
        if self.io.dead || self.io.sending {
            return;
        }
        if self.client.wants_fin() && !self.io.fin_sent {
            self.io.fin_sent = true;
            let _ = self.socket.shutdown(Shutdown::Write);
        }
        // Once the peer has sent FIN, what it sent before is still answered (input that
        // waited for the budget or the queue), then the connection ends.
        if self.io.peer_done && !self.io.input_waiting {
            self.kill();
        }
    }

    /// Whether it is shut down with nothing in flight: its slot can be freed.
    pub(crate) fn is_finished(&self) -> bool {
        self.io.dead && self.io.receive == Receive::Idle && !self.io.sending
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::testing::loopback_conn;

    fn conn() -> (Conn, TcpStream) {
        loopback_conn(ConnId::new(0, 1))
    }

    #[test]
    fn the_receive_is_armed_held_back_and_rearmed() {
        let (mut conn, _peer) = conn();
        assert_eq!(conn.next_receive(false, false), Some(ReceiveOp::Multishot));
        assert_eq!(conn.next_receive(false, false), None, "already armed");
        assert_eq!(
            conn.next_receive(true, false),
            Some(ReceiveOp::Cancel),
            "input held"
        );
        assert_eq!(conn.next_receive(true, false), None, "cancelled once");
        let cancelled = Err(io::Error::from_raw_os_error(libc::ECANCELED));
        conn.on_receive(&cancelled, false);
        assert_eq!(conn.next_receive(true, false), None, "not while held");
        assert_eq!(
            conn.next_receive(false, true),
            Some(ReceiveOp::Once),
            "sparing its budget"
        );
        conn.on_receive(&Ok(0), false);
        assert_eq!(conn.next_receive(false, false), None, "the peer is done");
    }

    #[test]
    fn a_connection_ends_once_flushed_after_the_peers_fin_and_frees_once_idle() {
        let (mut conn, _peer) = conn();
        assert_eq!(conn.next_receive(false, false), Some(ReceiveOp::Multishot));
        conn.client_mut().send_text("bye".into(), Instant::now());
        assert!(conn.is_ready_to_send());
        let mut batch = Vec::new();
        conn.start_send(&mut batch, 16);
        assert!(!conn.is_ready_to_send(), "one send in flight");
        conn.on_receive(&Ok(0), true);
        conn.finish_flushed();
        assert!(!conn.is_dead(), "its reply is still being sent");
        let written = batch.iter().map(Bytes::len).sum();
        assert_eq!(conn.on_sent(&mut batch, &Ok(written)), written);
        conn.finish_flushed();
        assert!(conn.is_dead(), "flushed after the peer's FIN");
        assert!(!conn.is_finished(), "its receive is still in the ring");
        conn.on_receive(&Ok(0), false);
        assert!(conn.is_finished());
    }

    #[test]
    fn a_failed_send_kills_the_connection() {
        let (mut conn, _peer) = conn();
        conn.client_mut().send_text("x".into(), Instant::now());
        let mut batch = Vec::new();
        conn.start_send(&mut batch, 16);
        let failed = Err(io::Error::from_raw_os_error(libc::EPIPE));
        assert_eq!(conn.on_sent(&mut batch, &failed), 0);
        assert!(conn.is_dead() && batch.is_empty());
        assert!(conn.is_finished(), "nothing armed, nothing in flight");
    }
}
