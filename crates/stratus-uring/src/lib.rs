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

use socket2::{Domain, Protocol, Socket, Type};

mod buffers;
mod ring;
mod send_queue;
mod stream;
mod wake;

pub use ring::{Event, Ring, RingConfig};
pub use send_queue::{ENTRY_OVERHEAD, SendQueue};
pub use stream::Stream;
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

/// `count` non-blocking listening sockets on `addr` with SO_REUSEPORT, so every worker
/// has its own listener and the kernel spreads connections among them (port 0: one fresh
/// port for all). Refused with `AddrInUse` where another socket already listens:
/// SO_REUSEPORT alone would let a second server of the same user join the group without
/// an error and silently take part of the connections.
pub fn bind_listeners(
    addr: SocketAddr,
    count: usize,
    backlog: i32,
) -> io::Result<Vec<std::net::TcpListener>> {
    if addr.port() != 0 {
        // Without SO_REUSEPORT a bind is refused wherever any socket listens (with
        // SO_REUSEADDR, not by a closed connection's TIME_WAIT).
        let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        probe.set_reuse_address(true)?;
        probe.bind(&addr.into()).map_err(|err| match err.kind() {
            io::ErrorKind::AddrInUse => io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{addr} is in use: another server listens there"),
            ),
            _ => err,
        })?;
    }
    let first = bind_reuseport(addr, backlog)?;
    let local = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..count.max(1) {
        listeners.push(bind_reuseport(local, backlog)?);
    }
    Ok(listeners)
}

/// One listening socket of a SO_REUSEPORT group.
fn bind_reuseport(addr: SocketAddr, backlog: i32) -> io::Result<std::net::TcpListener> {
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
        Ok((Stream::new(stream), peer))
    }

    /// Stops listening now: a pending accept fails and new connections are refused.
    pub fn close(&self) {
        let _ = self.control.shutdown(Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_group_shares_one_port_and_a_second_server_is_refused() {
        let group = bind_listeners("127.0.0.1:0".parse().unwrap(), 3, 16).unwrap();
        let addr = group[0].local_addr().unwrap();
        assert_ne!(addr.port(), 0);
        for listener in &group {
            assert_eq!(listener.local_addr().unwrap(), addr, "one port for all");
        }
        let second = bind_listeners(addr, 2, 16).unwrap_err();
        assert_eq!(second.kind(), io::ErrorKind::AddrInUse, "{second}");
        assert!(second.to_string().contains("another server"), "{second}");
        drop(group);
        let again = bind_listeners(addr, 2, 16).unwrap();
        assert_eq!(
            again.len(),
            2,
            "the port is free once the first group is gone"
        );
    }
}
