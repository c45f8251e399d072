//! Every io_uring call of Stratus: the server workers' own rings ([`Ring`], on the
//! io-uring crate, with provided buffer rings and multishot operations), and the
//! tokio-uring runtime, listener and stream that the client and the admin API use.
//!
//! tokio-uring is thinly maintained (0.5.0, May 2024; multishot operations stubbed), so
//! connection logic never names it: this crate can grow io-uring-crate pieces (provided
//! buffer rings, multishot receive) or be replaced without touching anything else.

use std::future::Future;
use std::io;
use std::net::{Shutdown, SocketAddr};

use bytes::{Bytes, BytesMut};
use socket2::{Domain, Protocol, Socket, Type};
use tokio_uring::buf::BoundedBuf;

mod buffers;
mod ring;
mod send_queue;
mod wake;

pub use ring::{Event, Ring, RingConfig};
pub use send_queue::SendQueue;
pub use wake::Wake;

/// Runs `future` on a new io_uring runtime on this thread (the thread must not already
/// run one).
pub fn run<F: Future>(future: F) -> io::Result<F::Output> {
    let mut builder = tokio_uring::builder();
    // COOP_TASKRUN: completions do not interrupt the thread while it runs; they are
    // handled at its next syscall (a sleeping thread is still woken). Measured with
    // `loadtest/compare-echo.sh 100 20`: 151k -> 200k echo msgs/s on one worker;
    // SINGLE_ISSUER on top made no difference.
    builder
        .entries(1024)
        .uring_builder(tokio_uring::uring_builder().setup_coop_taskrun());
    let runtime = tokio_uring::Runtime::new(&builder)?;
    Ok(runtime.block_on(future))
}

/// Spawns a task on the current worker's runtime.
pub fn spawn<F: Future + 'static>(task: F) -> tokio::task::JoinHandle<F::Output> {
    tokio_uring::spawn(task)
}

/// A non-blocking listening socket with SO_REUSEPORT, so every worker binds its own
/// listener to the same address and the kernel spreads connections among them.
pub fn bind_reuseport(addr: SocketAddr, backlog: i32) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// A listener on the current worker's ring.
pub struct Listener {
    ring: tokio_uring::net::TcpListener,
    /// A second descriptor for the same socket, to shut it down while an accept is
    /// pending (tokio-uring cannot cancel the accept).
    control: Socket,
}

impl Listener {
    /// Takes over a bound std listener; call on the worker thread.
    pub fn from_std(listener: std::net::TcpListener) -> io::Result<Self> {
        let control = Socket::from(listener.try_clone()?);
        Ok(Self {
            ring: tokio_uring::net::TcpListener::from_std(listener),
            control,
        })
    }

    /// Accepts the next connection, with TCP_NODELAY set.
    pub async fn accept(&self) -> io::Result<(Stream, SocketAddr)> {
        let (stream, peer) = self.ring.accept().await?;
        stream.set_nodelay(true)?;
        Ok((Stream(stream), peer))
    }

    /// Stops listening now: a pending accept fails and new connections are refused.
    pub fn close(&self) {
        let _ = self.control.shutdown(Shutdown::Both);
    }
}

/// A connected TCP stream on the current thread's ring.
pub struct Stream(tokio_uring::net::TcpStream);

impl Stream {
    /// Connects to `addr`, with TCP_NODELAY set.
    pub async fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = tokio_uring::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self(stream))
    }

    /// Reads into `buf`'s spare capacity (growing it to at least `want` spare bytes),
    /// appending to what it holds. Returns the byte count (0 at EOF) and the buffer.
    pub async fn read_into(&self, mut buf: BytesMut, want: usize) -> (io::Result<usize>, BytesMut) {
        if buf.capacity() - buf.len() < want {
            buf.reserve(want);
        }
        let (len, cap) = (buf.len(), buf.capacity());
        let (result, slice) = self.0.read(buf.slice(len..cap)).await;
        (result, slice.into_inner())
    }

    /// Writes all of `data`.
    pub async fn write_all(&self, data: Vec<u8>) -> io::Result<()> {
        self.0.write_all(data).await.0
    }

    /// Writes every frame with as few `writev` calls as the kernel allows, resuming
    /// after partial writes. Returns the emptied vector for reuse.
    pub async fn writev_all(&self, mut frames: Vec<Bytes>) -> (io::Result<()>, Vec<Bytes>) {
        while !frames.is_empty() {
            let (result, returned) = self.0.writev(frames).await;
            frames = returned;
            let mut written = match result {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), frames),
                Ok(n) => n,
                Err(e) => return (Err(e), frames),
            };
            let full = frames.iter().take_while(|f| {
                let fits = f.len() <= written;
                if fits {
                    written -= f.len();
                }
                fits
            });
            let full = full.count();
            frames.drain(..full);
            if let Some(first) = frames.first_mut() {
                *first = Bytes::slice(first, written..);
            }
        }
        (Ok(()), frames)
    }

    /// Sends FIN after everything written so far.
    pub fn shutdown_write(&self) {
        // ENOTCONN after a reset is expected and harmless here.
        let _ = self.0.shutdown(Shutdown::Write);
    }
}

impl Stream {
    /// Shuts both directions down: every pending operation on the socket completes at
    /// once (a blocked read returns 0), so the tasks using it end.
    pub fn abort(&self) {
        let _ = self.0.shutdown(Shutdown::Both);
    }
}

impl Drop for Stream {
    /// tokio-uring does not cancel an operation whose future is dropped (a read abandoned
    /// at a timeout stays in flight, holding the descriptor open, until data arrives).
    /// Shutting the socket down completes every pending operation at once, so dropping a
    /// `Stream` always releases the connection.
    fn drop(&mut self) {
        let _ = self.0.shutdown(Shutdown::Both);
    }
}
