//! One connection from accept to close: the opening handshake under a timeout, then a
//! reader task feeding the [`Session`] and a writer task draining the [`SendQueue`].
//!
//! The connection's state ([`Conn`]) is shared, on its worker's thread, by the reader,
//! the writer, and the worker (which delivers broadcasts, pings idle connections and
//! enforces close deadlines). Nobody holds a borrow across an `await`.
//!
//! The server closes TCP itself after a Close: it sends FIN behind its last frame, then
//! reads (and drops) whatever the peer still sends until the peer's FIN or the close
//! deadline. Closing with unread bytes would make the kernel send a reset, which can
//! destroy the Close frame before the peer reads it. A deadline that passes while the
//! reader waits is enforced by the worker's sweep, which shuts the socket down.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use stratus_proto::handshake::{HandshakeError, RequestReader, UpgradeRequest, http_error};
use stratus_proto::{CloseCode, Message, Session};
use stratus_uring::{self as uring, Stream};
use tokio::time::{Instant, timeout, timeout_at};
use tracing::debug;

use crate::broadcast::Broadcast;
use crate::commands::{self, Command};
use crate::config::{App, SlowConsumer};
use crate::send_queue::SendQueue;
use crate::topic;
use crate::worker::Worker;

/// Smallest read: enough for many small frames per syscall.
const READ_CHUNK: usize = 4096;
/// A push client mostly sends nothing: its idle read parks this small a buffer (a bigger
/// frame grows it, via the decoder's wanted length).
const IDLE_READ: usize = 256;
/// Most frames per `writev`.
const MAX_IOV: usize = 512;

/// Which frame of a broadcast a connection gets.
#[derive(Debug, Clone, Copy)]
pub(crate) enum FrameChoice {
    /// No compression negotiated: the plain frame.
    Plain,
    /// Shared-mode compression: the broadcast's compressed frame (made once).
    Shared { threshold: usize },
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

/// A connection's state, shared on its worker.
pub(crate) struct Conn {
    pub(crate) id: usize,
    pub(crate) stream: Stream,
    pub(crate) session: RefCell<Session>,
    pub(crate) queue: SendQueue,
    pub(crate) frames: FrameChoice,
    pub(crate) topics: RefCell<Vec<Arc<str>>>,
    pub(crate) last_seen: Cell<Instant>,
    pub(crate) ping_sent: Cell<Option<Instant>>,
    pub(crate) close_deadline: Cell<Option<Instant>>,
}

impl Conn {
    pub(crate) fn new(id: usize, stream: Stream, session: Session, frames: FrameChoice) -> Self {
        Self {
            id,
            stream,
            session: RefCell::new(session),
            queue: SendQueue::default(),
            frames,
            topics: RefCell::default(),
            last_seen: Cell::new(Instant::now()),
            ping_sent: Cell::new(None),
            close_deadline: Cell::new(None),
        }
    }

    /// Moves the session's outgoing frames to the writer; `false` if the writer is gone.
    pub(crate) fn flush(&self) -> bool {
        transmit(&mut self.session.borrow_mut(), &self.queue)
    }

    /// Starts a server-side close with `code`, to be complete by `deadline`. With
    /// `discard`, frames not yet handed to the writer are dropped so the Close goes next
    /// (a slow consumer would otherwise never see it).
    pub(crate) fn close(&self, code: CloseCode, reason: &str, deadline: Instant, discard: bool) {
        {
            let mut session = self.session.borrow_mut();
            if session.close_sent() {
                return;
            }
            session.close(code, reason);
        }
        if discard {
            self.queue.discard_pending();
        }
        self.flush();
        self.close_deadline.set(Some(deadline));
    }

    /// Queues a broadcast, applying the slow-consumer policy when the queue would pass
    /// `cap` bytes.
    pub(crate) fn deliver(
        &self,
        broadcast: &Broadcast,
        cap: usize,
        policy: SlowConsumer,
        close_deadline: Instant,
    ) -> Delivered {
        if self.session.borrow().close_sent() {
            return Delivered::Skipped;
        }
        let frame: Option<&Bytes> = match self.frames {
            FrameChoice::Plain => Some(&broadcast.plain),
            FrameChoice::Shared { threshold } => Some(broadcast.shared_frame(threshold)),
            FrameChoice::PerConnection => None,
        };
        let len = frame.map_or(broadcast.plain.len(), Bytes::len);
        if self.queue.queued_bytes() + len > cap {
            return match policy {
                SlowConsumer::Drop => Delivered::Dropped,
                SlowConsumer::Close => {
                    debug!(conn = self.id, "slow consumer");
                    self.close(CloseCode::POLICY, "slow consumer", close_deadline, true);
                    Delivered::ClosedSlow
                }
            };
        }
        match frame {
            Some(frame) => {
                self.queue.push(frame.clone());
            }
            None => {
                let _ = self.session.borrow_mut().send(&broadcast.message);
                self.flush();
            }
        }
        Delivered::Queued
    }
}

/// Moves `session`'s outgoing frames to `queue`; `false` if the writer is gone.
fn transmit(session: &mut Session, queue: &SendQueue) -> bool {
    while let Some(frame) = session.poll_transmit() {
        if !queue.push(frame) {
            return false;
        }
    }
    true
}

/// Serves one accepted connection to the end.
pub(crate) async fn serve(worker: Rc<Worker>, stream: Stream, peer: SocketAddr) {
    let config = worker.config.clone();
    let handshaking = worker.handshaking();
    let buf = BytesMut::with_capacity(READ_CHUNK);
    let (request, buf) =
        match timeout(config.handshake_timeout, handshake(&stream, buf, &config)).await {
            Ok(Ok(done)) => done,
            Ok(Err(Refusal::Http(err, buf))) => {
                return refuse(
                    &stream,
                    err.response(),
                    &err.to_string(),
                    buf,
                    peer,
                    &config,
                )
                .await;
            }
            Ok(Err(Refusal::Io)) => return,
            Err(_) => {
                debug!(%peer, "handshake timeout");
                return;
            }
        };
    if worker.is_draining() {
        let response = http_error(503, "Retry-After: 5\r\n", "server is shutting down");
        return refuse(&stream, response, "draining", buf, peer, &config).await;
    }
    let topics = match subscriptions(&request, config.app, config.max_topics_per_connection) {
        Ok(topics) => topics,
        Err((status, why)) => {
            let response = http_error(status, "", &why);
            return refuse(&stream, response, &why, buf, peer, &config).await;
        }
    };
    let mut session = Session::server(config.limits);
    let mut extension_header = String::new();
    let mut frames = FrameChoice::Plain;
    if let Some(deflate) = &config.deflate
        && let Some(agreed) = stratus_deflate::negotiate(&request.extensions, deflate)
    {
        extension_header = format!("Sec-WebSocket-Extensions: {}\r\n", agreed.response());
        session.set_compression(Box::new(agreed.compression(deflate.threshold)));
        frames = if agreed.shares_frames() {
            FrameChoice::Shared {
                threshold: deflate.threshold,
            }
        } else {
            FrameChoice::PerConnection
        };
    }
    let conn = worker.register(stream, session, frames);
    drop(handshaking);
    for t in &topics {
        // Validated above, and within the per-connection cap.
        let _ = worker.subscribe(&conn, t);
    }
    if conn
        .stream
        .write_all(request.accept(&extension_header))
        .await
        .is_err()
    {
        worker.unregister(&conn);
        return;
    }
    let writer = uring::spawn(write_loop(conn.clone()));
    let buf = match config.app {
        App::PubSub if buf.is_empty() => BytesMut::with_capacity(IDLE_READ),
        _ => buf,
    };
    let peer_done = read_loop(&worker, &conn, buf).await;
    worker.unregister(&conn);
    finish(&conn, writer, peer_done, &worker).await;
}

enum Refusal {
    Http(HandshakeError, BytesMut),
    Io,
}

/// Answers a refused handshake and closes.
async fn refuse(
    stream: &Stream,
    response: Vec<u8>,
    why: &str,
    buf: BytesMut,
    peer: SocketAddr,
    config: &crate::Config,
) {
    debug!(%peer, why, "handshake refused");
    if stream.write_all(response).await.is_ok() {
        linger_close(stream, buf, Instant::now() + config.close_timeout).await;
    }
}

/// Reads until the request head is complete; returns the request and the buffer holding
/// the bytes after it.
async fn handshake(
    stream: &Stream,
    mut buf: BytesMut,
    config: &crate::Config,
) -> Result<(UpgradeRequest, BytesMut), Refusal> {
    let mut reader = RequestReader::new(config.handshake_limits);
    loop {
        let (result, returned) = stream.read_into(buf, READ_CHUNK).await;
        buf = returned;
        match result {
            Ok(0) | Err(_) => return Err(Refusal::Io),
            Ok(_) => {}
        }
        match reader.read(&buf) {
            Ok(Some((request, head_len))) => {
                let _ = buf.split_to(head_len);
                return Ok((request, buf));
            }
            Ok(None) => {}
            Err(err) => return Err(Refusal::Http(err, buf)),
        }
    }
}

/// The topics a push client asks for at the upgrade (`/ws?topic=a&topic=b`), or the
/// HTTP status and reason to refuse it with.
fn subscriptions(
    request: &UpgradeRequest,
    app: App,
    max: usize,
) -> Result<Vec<String>, (u16, String)> {
    if app == App::Echo {
        return Ok(Vec::new());
    }
    let (path, query) = request
        .target
        .split_once('?')
        .unwrap_or((&request.target, ""));
    if path != "/ws" {
        return Err((404, format!("no WebSocket endpoint at {path}; use /ws")));
    }
    let mut topics: Vec<String> = Vec::new();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if key == "topic" {
            topic::validate(&value).map_err(|e| (400, format!("invalid topic {value:?}: {e}")))?;
            if !topics.iter().any(|t| *t == value) {
                topics.push(value.into_owned());
            }
        }
    }
    if topics.len() > max {
        return Err((400, format!("at most {max} topics per connection")));
    }
    Ok(topics)
}

/// The WebSocket phase: decode, answer, act, until the session closes or the peer goes.
/// Returns whether the peer already closed its side (EOF).
async fn read_loop(worker: &Worker, conn: &Rc<Conn>, mut buf: BytesMut) -> bool {
    let config = &worker.config;
    loop {
        {
            let mut session = conn.session.borrow_mut();
            loop {
                match session.handle_read(&mut buf) {
                    Ok(Some(message)) => {
                        on_message(worker, conn, &mut session, message);
                        // Answer each message before decoding the next: every ping of a
                        // burst gets its pong (only an unread backlog is coalesced).
                        if !transmit(&mut session, &conn.queue) {
                            return true;
                        }
                    }
                    Ok(None) => break,
                    Err(err) => {
                        debug!(conn = conn.id, error = %err, code = err.close_code().0, "protocol error");
                        break;
                    }
                }
            }
        }
        if !conn.flush() {
            return true;
        }
        let want = {
            let session = conn.session.borrow();
            if session.is_closed() {
                return false;
            }
            if session.close_sent() && conn.close_deadline.get().is_none() {
                conn.close_deadline
                    .set(Some(Instant::now() + config.close_timeout));
            }
            let chunk = match config.app {
                App::PubSub => IDLE_READ,
                App::Echo => READ_CHUNK,
            };
            session.wanted_len().saturating_sub(buf.len()).max(chunk)
        };
        conn.queue.wait_below(config.max_send_queue).await;
        let (result, returned) = conn.stream.read_into(buf, want).await;
        buf = returned;
        match result {
            Ok(0) | Err(_) => return true,
            Ok(_) => {
                conn.last_seen.set(Instant::now());
                conn.ping_sent.set(None);
            }
        }
    }
}

/// What the application does with a message: echo it, or run a subscription command.
fn on_message(worker: &Worker, conn: &Conn, session: &mut Session, message: Message) {
    let reply = match (worker.config.app, &message) {
        (App::Echo, m) if m.is_data() => {
            let _ = session.send(&message);
            return;
        }
        (App::PubSub, Message::Text(text)) => match commands::parse(text) {
            Ok(Command::Subscribe(t)) => match worker.subscribe(conn, &t) {
                Ok(()) => commands::ok_reply("subscribe", &t),
                Err(e) => commands::error_reply(Some("subscribe"), Some(&t), &e),
            },
            Ok(Command::Unsubscribe(t)) => match worker.unsubscribe(conn, &t) {
                Ok(()) => commands::ok_reply("unsubscribe", &t),
                Err(e) => commands::error_reply(Some("unsubscribe"), Some(&t), &e),
            },
            Err(reply) => reply,
        },
        (App::PubSub, Message::Binary(_)) => {
            commands::error_reply(None, None, "binary messages are not commands")
        }
        _ => return,
    };
    let _ = session.send(&Message::text(reply));
}

/// Lets the writer finish (bounded by the close deadline), then closes TCP: FIN, then
/// waits for the peer's FIN unless it already came.
async fn finish(
    conn: &Conn,
    writer: tokio::task::JoinHandle<()>,
    peer_done: bool,
    worker: &Worker,
) {
    let deadline = conn
        .close_deadline
        .get()
        .unwrap_or_else(|| Instant::now() + worker.config.close_timeout);
    conn.queue.close();
    let abort = writer.abort_handle();
    if timeout_at(deadline, writer).await.is_err() {
        abort.abort();
        return;
    }
    if !peer_done {
        linger_close(&conn.stream, BytesMut::new(), deadline).await;
    }
}

/// Sends FIN and reads until the peer's FIN or the deadline, dropping what arrives.
async fn linger_close(stream: &Stream, mut buf: BytesMut, deadline: Instant) {
    stream.shutdown_write();
    loop {
        buf.clear();
        match timeout_at(deadline, stream.read_into(buf, READ_CHUNK)).await {
            Ok((Ok(n), returned)) if n > 0 => buf = returned,
            _ => return,
        }
    }
}

/// Drains the queue with one `writev` per batch until it is closed and empty.
async fn write_loop(conn: Rc<Conn>) {
    let mut batch: Vec<Bytes> = Vec::new();
    while conn.queue.take_batch(&mut batch, MAX_IOV).await {
        let bytes = batch.iter().map(Bytes::len).sum();
        let (result, returned) = conn.stream.writev_all(batch).await;
        batch = returned;
        batch.clear();
        if result.is_err() {
            conn.queue.abandon();
            return;
        }
        conn.queue.written(bytes);
    }
}
