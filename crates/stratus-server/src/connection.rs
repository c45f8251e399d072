//! One connection from accept to close: the opening handshake under a timeout, then the
//! read loop feeding the [`Session`], a writer task draining the [`SendQueue`], and the
//! close sequence.
//!
//! The server closes TCP itself after a Close: it sends FIN behind its last frame, then
//! reads (and drops) whatever the peer still sends until the peer's FIN or the close
//! timeout. Closing with unread bytes would make the kernel send a reset, which can
//! destroy the Close frame before the peer reads it.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use stratus_proto::handshake::{HandshakeError, RequestReader, UpgradeRequest};
use stratus_proto::{Message, Session};
use tokio::time::{Instant, timeout, timeout_at};
use tracing::debug;

use crate::config::Config;
use crate::send_queue::SendQueue;
use stratus_uring::{self as uring, Stream};

/// Smallest read: enough for many small frames per syscall.
const READ_CHUNK: usize = 4096;
/// Most frames per `writev`.
const MAX_IOV: usize = 512;

/// Serves one accepted connection to the end.
pub(crate) async fn serve(stream: Stream, peer: SocketAddr, config: Rc<Config>) {
    let stream = Rc::new(stream);
    let buf = BytesMut::with_capacity(READ_CHUNK);
    let (request, buf) =
        match timeout(config.handshake_timeout, handshake(&stream, buf, &config)).await {
            Ok(Ok(done)) => done,
            Ok(Err(Refusal::Http(err, buf))) => {
                debug!(%peer, error = %err, "handshake refused");
                if stream.write_all(err.response()).await.is_ok() {
                    linger_close(&stream, buf, Instant::now() + config.close_timeout).await;
                }
                return;
            }
            Ok(Err(Refusal::Io)) => return,
            Err(_) => {
                debug!(%peer, "handshake timeout");
                return;
            }
        };
    let mut session = Session::server(config.limits);
    let mut extension_header = String::new();
    if let Some(deflate) = &config.deflate
        && let Some(agreed) = stratus_deflate::negotiate(&request.extensions, deflate)
    {
        extension_header = format!("Sec-WebSocket-Extensions: {}\r\n", agreed.response());
        session.set_compression(Box::new(agreed.compression(deflate.threshold)));
    }
    if stream
        .write_all(request.accept(&extension_header))
        .await
        .is_err()
    {
        return;
    }
    run_session(stream, peer, session, buf, &config).await;
}

enum Refusal {
    Http(HandshakeError, BytesMut),
    Io,
}

/// Reads until the request head is complete; returns the request and the buffer holding
/// the bytes after it.
async fn handshake(
    stream: &Stream,
    mut buf: BytesMut,
    config: &Config,
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

/// The WebSocket phase: decode, answer, echo, close.
async fn run_session(
    stream: Rc<Stream>,
    peer: SocketAddr,
    mut session: Session,
    mut buf: BytesMut,
    config: &Config,
) {
    let queue = Rc::new(SendQueue::default());
    let writer = uring::spawn(write_loop(stream.clone(), queue.clone()));
    let mut close_deadline = None;
    let peer_done = 'conn: loop {
        loop {
            match session.handle_read(&mut buf) {
                Ok(Some(message)) => on_message(&mut session, message),
                Ok(None) => break,
                Err(err) => {
                    debug!(%peer, error = %err, code = err.close_code().0, "protocol error");
                    break;
                }
            }
            if !flush(&mut session, &queue) {
                break 'conn true;
            }
        }
        if !flush(&mut session, &queue) {
            break true;
        }
        if session.is_closed() {
            break false;
        }
        if session.close_sent() && close_deadline.is_none() {
            close_deadline = Some(Instant::now() + config.close_timeout);
        }
        queue.wait_below(config.max_send_queue).await;
        let want = session
            .wanted_len()
            .saturating_sub(buf.len())
            .max(READ_CHUNK);
        let read = stream.read_into(buf, want);
        let (result, returned) = match close_deadline {
            Some(deadline) => match timeout_at(deadline, read).await {
                Ok(done) => done,
                Err(_) => return finish(&stream, writer, &queue, None, config).await,
            },
            None => read.await,
        };
        buf = returned;
        match result {
            Ok(0) | Err(_) => break true,
            Ok(_) => {}
        }
    };
    finish(&stream, writer, &queue, (!peer_done).then_some(buf), config).await;
}

/// The echo application: every text and binary message goes back as it came.
fn on_message(session: &mut Session, message: Message) {
    if message.is_data() {
        let _ = session.send(&message);
    }
}

/// Moves the session's outgoing frames to the writer; `false` if the writer is gone.
fn flush(session: &mut Session, queue: &SendQueue) -> bool {
    while let Some(frame) = session.poll_transmit() {
        if !queue.push(frame) {
            return false;
        }
    }
    true
}

/// Lets the writer finish (bounded by the close timeout), then closes TCP: FIN, then
/// waits for the peer's FIN unless it already came (`buf` is `None`).
async fn finish(
    stream: &Stream,
    writer: tokio::task::JoinHandle<()>,
    queue: &SendQueue,
    buf: Option<BytesMut>,
    config: &Config,
) {
    let deadline = Instant::now() + config.close_timeout;
    queue.close();
    let abort = writer.abort_handle();
    if timeout_at(deadline, writer).await.is_err() {
        abort.abort();
        return;
    }
    if let Some(buf) = buf {
        linger_close(stream, buf, deadline).await;
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
async fn write_loop(stream: Rc<Stream>, queue: Rc<SendQueue>) {
    let mut batch: Vec<Bytes> = Vec::new();
    while queue.take_batch(&mut batch, MAX_IOV).await {
        let bytes = batch.iter().map(Bytes::len).sum();
        let (result, returned) = stream.writev_all(batch).await;
        batch = returned;
        batch.clear();
        if result.is_err() {
            queue.abandon();
            return;
        }
        queue.written(bytes);
    }
}

/// How long to wait after a failed accept (out of descriptors) before trying again.
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);
