//! A TCP proxy on loopback that puts faults between a node and its broker: latency on
//! every byte, and more latency on a connection from the moment its client sends a
//! given command (a slow history read, say, without slowing the node's other
//! connections). Each direction of each connection is a reader thread and a writer
//! thread joined by a queue of (when due, bytes), so bytes keep their order.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What the proxy does to the bytes it carries.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Added to every chunk, each way.
    pub latency: Duration,
    /// Once a client sends these bytes, everything the server sends it afterwards is
    /// held this much longer.
    pub slow_after: Option<(&'static [u8], Duration)>,
}

/// A running proxy; it stops accepting when dropped (connections end with their peers).
pub struct Proxy {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// A proxy on a free loopback port to `target`.
    pub fn start(target: SocketAddr, faults: Faults) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                carry(client, server, faults.clone());
            }
        });
        Self { addr, stop }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

fn carry(client: TcpStream, server: TcpStream, faults: Faults) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let slowed = Arc::new(AtomicBool::new(false));
    let (marker, extra) = faults.slow_after.unwrap_or((b"", Duration::ZERO));
    let upstream = {
        let slowed = slowed.clone();
        move |chunk: &[u8]| {
            if !marker.is_empty() && chunk.windows(marker.len()).any(|w| w == marker) {
                slowed.store(true, Ordering::Relaxed);
            }
            faults.latency
        }
    };
    let downstream = move |_: &[u8]| {
        if slowed.load(Ordering::Relaxed) {
            faults.latency + extra
        } else {
            faults.latency
        }
    };
    pipe(
        client.try_clone().unwrap(),
        server.try_clone().unwrap(),
        upstream,
    );
    pipe(server, client, downstream);
}

/// Copies `from` to `to`, each chunk held for what `delay` says.
fn pipe(
    mut from: TcpStream,
    mut to: TcpStream,
    mut delay: impl FnMut(&[u8]) -> Duration + Send + 'static,
) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 65536];
        loop {
            match from.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let due = Instant::now() + delay(&chunk[..n]);
                    if tx.send((due, chunk[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    });
    std::thread::spawn(move || {
        for (due, bytes) in rx {
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if to.write_all(&bytes).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
