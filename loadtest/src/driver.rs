//! Many client connections driven from one io_uring, the way a server worker runs: one
//! multishot receive per connection into shared buffers, and one `sendmsg` per connection
//! per turn carrying everything queued for it. A load generator built this way spends its
//! core on the protocol, not on a task, a wake-up and two syscalls per message, so it can
//! outrun the server it measures (the scenarios check that the server's core is busy).
//!
//! Connections open with blocking calls ([`stratus_client::connect_blocking`]) and are
//! handed over; raw TCP connections (no WebSocket) are driven the same way.

use std::io;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use stratus_client::{ClientConfig, Handoff};
use stratus_proto::{CloseCode, Message, Session};
use stratus_uring::{Event, Ring, RingConfig, SendQueue};

/// Most frames per `sendmsg`.
const MAX_IOV: usize = 512;

/// What arrived on a connection.
pub(crate) enum Received {
    /// A WebSocket message (pings and Close are answered by the session).
    Message(Message),
    /// Raw TCP bytes: how many.
    Raw(usize),
}

/// One connection's state.
pub(crate) struct Conn {
    socket: TcpStream,
    /// `None` for raw TCP.
    session: Option<Session>,
    buf: BytesMut,
    queue: SendQueue,
    sending: bool,
    receiving: bool,
    /// The server closed (or the socket failed).
    done: bool,
    dirty: bool,
}

impl Conn {
    /// Queues a message (WebSocket connections).
    pub(crate) fn send(&mut self, message: &Message) {
        if let Some(session) = &mut self.session {
            let _ = session.send(message);
            while let Some(frame) = session.poll_transmit() {
                self.queue.push(frame);
            }
        }
    }

    /// Whether the server closed it (or its socket failed).
    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    /// Queues raw bytes (raw TCP connections).
    pub(crate) fn send_raw(&mut self, bytes: Bytes) {
        self.queue.push(bytes);
    }
}

/// Opens `count` WebSocket connections to `url` for a [`Driver`]. A connection the server
/// resets while thousands open at once (a peer's accept queue overflowing) is retried a
/// few times before the run fails.
pub(crate) fn connect_many(
    url: &str,
    config: &ClientConfig,
    count: usize,
) -> Result<Vec<Handoff>, stratus_client::Error> {
    const ATTEMPTS: usize = 5;
    (0..count)
        .map(|_| {
            let mut attempt = 1;
            loop {
                match stratus_client::connect_blocking(url, config.clone()) {
                    Err(stratus_client::Error::Io(_)) if attempt < ATTEMPTS => {
                        attempt += 1;
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    result => return result,
                }
            }
        })
        .collect()
}

/// The connections and their ring.
pub(crate) struct Driver {
    ring: Ring,
    conns: Vec<Conn>,
    dirty: Vec<usize>,
    spare: Vec<Vec<Bytes>>,
    messages: Vec<Message>,
}

impl Driver {
    /// Drives WebSocket connections opened with [`stratus_client::connect_blocking`].
    pub(crate) fn new(handoffs: Vec<Handoff>) -> io::Result<Self> {
        if handoffs.iter().any(|h| h.tls.is_some()) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the load generator drives ws:// connections only, not wss://",
            ));
        }
        let conns = handoffs
            .into_iter()
            .map(|h| Conn::new(h.socket, Some(h.session), h.leftover))
            .collect();
        Self::with(conns)
    }

    /// Drives raw TCP connections.
    pub(crate) fn raw(sockets: Vec<TcpStream>) -> io::Result<Self> {
        let conns = sockets
            .into_iter()
            .map(|s| Conn::new(s, None, BytesMut::new()))
            .collect();
        Self::with(conns)
    }

    fn with(conns: Vec<Conn>) -> io::Result<Self> {
        let mut driver = Self {
            ring: Ring::new(RingConfig::default())?,
            conns,
            dirty: Vec::new(),
            spare: Vec::new(),
            messages: Vec::new(),
        };
        for i in 0..driver.conns.len() {
            driver.mark(i);
        }
        Ok(driver)
    }

    /// The connections, to queue their first messages.
    pub(crate) fn conns(&mut self) -> &mut [Conn] {
        &mut self.conns
    }

    fn mark(&mut self, i: usize) {
        let conn = &mut self.conns[i];
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(i);
        }
    }

    /// Runs until `deadline` (or every connection is done), calling `on` for everything
    /// that arrives; `on` may queue replies on the connection it is given.
    pub(crate) fn run(
        &mut self,
        deadline: Instant,
        mut on: impl FnMut(&mut Conn, usize, Received),
    ) -> io::Result<()> {
        loop {
            self.settle();
            let now = Instant::now();
            if now >= deadline || self.conns.iter().all(|c| c.done) {
                return Ok(());
            }
            let wait = (deadline - now).min(Duration::from_millis(100));
            self.ring.submit_and_wait(wait)?;
            let mut events = 0usize;
            while let Some(event) = self.ring.next_event() {
                match event {
                    Event::Received {
                        token,
                        result,
                        more,
                    } => self.on_received(token as usize, result, more, &mut on),
                    Event::Sent {
                        token,
                        result,
                        mut frames,
                    } => {
                        let i = token as usize;
                        let conn = &mut self.conns[i];
                        conn.sending = false;
                        match result {
                            Ok(n) => conn.queue.sent(&mut frames, n),
                            Err(_) => conn.done = true,
                        }
                        frames.clear();
                        self.spare.push(frames);
                        self.mark(i);
                    }
                    Event::Accepted { .. } | Event::Woken => {}
                }
                // Send as the turn goes, as the server workers do.
                events += 1;
                if events.is_power_of_two() {
                    self.settle();
                    self.ring.submit()?;
                }
            }
        }
    }

    fn on_received(
        &mut self,
        i: usize,
        result: io::Result<usize>,
        more: bool,
        on: &mut impl FnMut(&mut Conn, usize, Received),
    ) {
        let conn = &mut self.conns[i];
        conn.receiving &= more;
        match result {
            Ok(0) => conn.done = true,
            Ok(n) => match &mut conn.session {
                None => on(conn, i, Received::Raw(n)),
                Some(session) => {
                    conn.buf.extend_from_slice(self.ring.received());
                    while let Ok(Some(message)) = session.handle_read(&mut conn.buf) {
                        self.messages.push(message);
                    }
                    while let Some(frame) = session.poll_transmit() {
                        conn.queue.push(frame);
                    }
                    for message in self.messages.drain(..) {
                        on(conn, i, Received::Message(message));
                    }
                }
            },
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
            Err(_) => conn.done = true,
        }
        self.mark(i);
    }

    /// Sends what is queued and re-arms receives, for every connection touched.
    fn settle(&mut self) {
        for i in std::mem::take(&mut self.dirty) {
            let conn = &mut self.conns[i];
            conn.dirty = false;
            if conn.done {
                continue;
            }
            let fd = conn.socket.as_raw_fd();
            if !conn.sending && conn.queue.has_pending() {
                let mut batch = self.spare.pop().unwrap_or_default();
                conn.queue.take_batch(&mut batch, MAX_IOV);
                self.ring.send(fd, i as u64, batch);
                conn.sending = true;
            }
            if !conn.receiving {
                self.ring.recv_multishot(fd, i as u64);
                conn.receiving = true;
            }
        }
    }

    /// Closes every WebSocket connection cleanly (Close, then the server's Close and
    /// FIN), waiting at most `timeout`; raw connections get FIN.
    pub(crate) fn close_all(&mut self, timeout: Duration) -> io::Result<()> {
        for i in 0..self.conns.len() {
            let conn = &mut self.conns[i];
            match &mut conn.session {
                Some(session) => {
                    session.close(CloseCode::NORMAL, "");
                    while let Some(frame) = session.poll_transmit() {
                        conn.queue.push(frame);
                    }
                }
                None => {
                    let _ = conn.socket.shutdown(std::net::Shutdown::Write);
                }
            }
            self.mark(i);
        }
        self.run(Instant::now() + timeout, |_, _, _| {})
    }
}

impl Conn {
    fn new(socket: TcpStream, session: Option<Session>, leftover: BytesMut) -> Self {
        Self {
            socket,
            session,
            buf: leftover,
            queue: SendQueue::default(),
            sending: false,
            receiving: false,
            done: false,
            dirty: false,
        }
    }
}
