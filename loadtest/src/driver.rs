//! Many client connections driven from one io_uring, the way a server worker runs: one
//! multishot receive per connection into shared buffers, and one `sendmsg` per connection
//! per turn carrying everything queued for it. A load generator built this way spends its
//! core on the protocol, not on a task, a wake-up and two syscalls per message, so it can
//! outrun the server it measures (the scenarios check that the server's core is busy).
//!
//! Connections open with blocking calls ([`stratus_client::connect_blocking`], or
//! [`sse::open`] for an event stream) and are handed over; raw TCP connections (no
//! WebSocket) are driven the same way.

use std::io;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use stratus_client::{ClientConfig, Handoff};
use stratus_proto::{CloseCode, Message, Session};
use stratus_uring::{Event, Ring, RingConfig, SendQueue};

use crate::sse::{self, EventParser};

/// Most frames per `sendmsg`.
const MAX_IOV: usize = 512;

/// Most bytes of an event-stream line or event a connection holds.
const EVENT_LIMIT: usize = 1 << 20;

/// Attempts at opening a connection the server resets (a peer's accept queue
/// overflowing while thousands open at once) before the run fails.
const OPEN_ATTEMPTS: usize = 5;

/// What arrived on a connection.
pub(crate) enum Received {
    /// A WebSocket message (pings and Close are answered by the session).
    Message(Message),
    /// A Server-Sent Event (heartbeat comments are skipped by the parser).
    Event(sse::Event),
    /// Raw TCP bytes: how many.
    Raw(usize),
}

impl Received {
    /// What a subscriber was pushed: a text message's payload, or an event's data.
    pub(crate) fn text(&self) -> Option<&[u8]> {
        match self {
            Received::Message(Message::Text(text)) => Some(text),
            Received::Event(event) => Some(&event.data),
            Received::Message(_) | Received::Raw(_) => None,
        }
    }
}

/// How a connection's bytes are read.
enum Framing {
    /// WebSocket frames.
    WebSocket(Session),
    /// A Server-Sent Events stream (receive only).
    EventStream(EventParser),
    /// Raw TCP: bytes are counted, not parsed.
    Raw,
}

/// One connection's state.
pub(crate) struct Conn {
    socket: TcpStream,
    framing: Framing,
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
        if let Framing::WebSocket(session) = &mut self.framing {
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

/// Opens `count` connections with `open`, retrying one that fails with an error `reset`
/// says may pass (the server reset it while thousands open at once) a few times.
fn open_many<T, E>(
    count: usize,
    mut open: impl FnMut() -> Result<T, E>,
    reset: impl Fn(&E) -> bool,
) -> Result<Vec<T>, E> {
    (0..count)
        .map(|_| {
            let mut attempt = 1;
            loop {
                match open() {
                    Err(e) if reset(&e) && attempt < OPEN_ATTEMPTS => {
                        attempt += 1;
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    result => return result,
                }
            }
        })
        .collect()
}

/// Opens `count` WebSocket connections to `url` for a [`Driver`] (a reset is retried).
pub(crate) fn connect_many(
    url: &str,
    config: &ClientConfig,
    count: usize,
) -> Result<Vec<Handoff>, stratus_client::Error> {
    open_many(
        count,
        || stratus_client::connect_blocking(url, config.clone()),
        |e| matches!(e, stratus_client::Error::Io(_)),
    )
}

/// Opens `count` event streams at `url` (`http://`) for a [`Driver`] (a reset is retried).
pub(crate) fn open_streams(url: &str, count: usize) -> Result<Vec<sse::Stream>, sse::OpenError> {
    let target = sse::Target::parse(url)?;
    let timeout = ClientConfig::default().connect_timeout;
    open_many(
        count,
        || sse::open(&target, timeout),
        |e| matches!(e, sse::OpenError::Io(_)),
    )
}

/// The connections and their ring.
pub(crate) struct Driver {
    ring: Ring,
    conns: Vec<Conn>,
    dirty: Vec<usize>,
    spare: Vec<Vec<Bytes>>,
    /// What one receive carried, handed to the caller once its connection is free.
    received: Vec<Received>,
    /// Bytes received on every connection together (frames as on the wire).
    bytes_in: u64,
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
            .map(|h| Conn::new(h.socket, Framing::WebSocket(h.session), h.leftover))
            .collect();
        Self::with(conns)
    }

    /// Drives event streams opened with [`open_streams`].
    pub(crate) fn sse(streams: Vec<sse::Stream>) -> io::Result<Self> {
        let conns = streams
            .into_iter()
            .map(|s| {
                let parser = EventParser::new(EVENT_LIMIT);
                Conn::new(s.socket, Framing::EventStream(parser), s.leftover)
            })
            .collect();
        Self::with(conns)
    }

    /// Drives raw TCP connections.
    pub(crate) fn raw(sockets: Vec<TcpStream>) -> io::Result<Self> {
        let conns = sockets
            .into_iter()
            .map(|s| Conn::new(s, Framing::Raw, BytesMut::new()))
            .collect();
        Self::with(conns)
    }

    fn with(conns: Vec<Conn>) -> io::Result<Self> {
        let mut driver = Self {
            ring: Ring::new(RingConfig::default())?,
            conns,
            dirty: Vec::new(),
            spare: Vec::new(),
            received: Vec::new(),
            bytes_in: 0,
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

    /// Bytes received so far on every connection together, as on the wire (a compressed
    /// message counts its compressed frame).
    pub(crate) fn bytes_received(&self) -> u64 {
        self.bytes_in
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
            Ok(n) => {
                self.bytes_in += n as u64;
                match &mut conn.framing {
                    Framing::Raw => self.received.push(Received::Raw(n)),
                    Framing::WebSocket(session) => {
                        conn.buf.extend_from_slice(self.ring.received());
                        while let Ok(Some(message)) = session.handle_read(&mut conn.buf) {
                            self.received.push(Received::Message(message));
                        }
                        while let Some(frame) = session.poll_transmit() {
                            conn.queue.push(frame);
                        }
                    }
                    Framing::EventStream(parser) => {
                        conn.buf.extend_from_slice(self.ring.received());
                        loop {
                            match parser.handle_read(&mut conn.buf) {
                                Ok(Some(event)) => self.received.push(Received::Event(event)),
                                Ok(None) => break,
                                Err(_) => {
                                    // Not a stream this parser can follow: stop reading it.
                                    conn.buf.clear();
                                    conn.done = true;
                                    break;
                                }
                            }
                        }
                    }
                }
                for received in self.received.drain(..) {
                    on(conn, i, received);
                }
            }
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
    /// FIN), waiting at most `timeout`; event streams and raw connections get FIN.
    pub(crate) fn close_all(&mut self, timeout: Duration) -> io::Result<()> {
        for i in 0..self.conns.len() {
            let conn = &mut self.conns[i];
            match &mut conn.framing {
                Framing::WebSocket(session) => {
                    session.close(CloseCode::NORMAL, "");
                    while let Some(frame) = session.poll_transmit() {
                        conn.queue.push(frame);
                    }
                }
                Framing::EventStream(_) | Framing::Raw => {
                    let _ = conn.socket.shutdown(std::net::Shutdown::Write);
                }
            }
            self.mark(i);
        }
        self.run(Instant::now() + timeout, |_, _, _| {})
    }
}

impl Conn {
    fn new(socket: TcpStream, framing: Framing, leftover: BytesMut) -> Self {
        Self {
            socket,
            framing,
            buf: leftover,
            queue: SendQueue::default(),
            sending: false,
            receiving: false,
            done: false,
            dirty: false,
        }
    }
}
