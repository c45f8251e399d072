//! A TCP proxy on loopback that puts faults between a node and its broker.
//!
//! Set at the start ([`Faults`]): latency on every byte, and more latency on a connection
//! from the moment its client sends a given command (a slow history read, say, without
//! slowing the node's other connections). Changed at any moment from the test
//! ([`Proxy::slow`], [`Proxy::cut`], [`Proxy::restore`]): more latency, every connection
//! reset, a blackhole, or one direction stopped.
//!
//! Each direction of each connection is a reader thread and a writer thread joined by a
//! queue of (when due, bytes), so bytes keep their order. A held direction's writer
//! waits: what its reader takes meanwhile (a close too) is queued and goes on, in order,
//! at [`Proxy::restore`], as a TCP connection's retransmissions do once a partition heals.
//! Nothing is lost inside a stream, only delayed.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak, mpsc};
use std::time::{Duration, Instant};

/// What the proxy does to the bytes it carries, for its whole life.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Added to every chunk, each way.
    pub latency: Duration,
    /// Once a client sends these bytes, everything the server sends it afterwards is
    /// held this much longer.
    pub slow_after: Option<(&'static [u8], Duration)>,
}

/// A fault switched on from the test, until [`Proxy::restore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Every connection is reset (RST) now, and each new one as soon as it is accepted.
    Drop,
    /// Connections are accepted and held; no byte goes either way, nor a close.
    Blackhole,
    /// What clients send is held; what the target sends still reaches them.
    ToTarget,
    /// What the target sends is held; what clients send still reaches it.
    ToClient,
}

/// A running proxy; when dropped it stops accepting and resets its connections.
pub struct Proxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

/// What the test and the proxy's threads share.
struct Shared {
    state: Mutex<State>,
    /// Signalled whenever `state.cut` changes, for the writers that wait.
    changed: Condvar,
}

#[derive(Default)]
struct State {
    cut: Option<Cut>,
    /// Added to every chunk read from now on, each way.
    latency: Duration,
    stopped: bool,
    /// The connections carried; each lives as long as one of its threads does.
    conns: Vec<Weak<Conn>>,
}

/// One proxied connection: the client's socket and the target's.
struct Conn {
    client: TcpStream,
    target: TcpStream,
    /// Set when the proxy resets it: its writers stop without a close of their own.
    reset: AtomicBool,
}

/// A direction of a connection.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    ToTarget,
    ToClient,
}

impl Proxy {
    /// A proxy on a free loopback port to `target`.
    pub fn start(target: SocketAddr, faults: Faults) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let accepting = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let mut state = accepting.lock();
                if state.stopped {
                    return;
                }
                if state.cut == Some(Cut::Drop) {
                    reset_on_close(&client);
                    continue;
                }
                let Ok(target) = TcpStream::connect(target) else {
                    continue;
                };
                let conn = Arc::new(Conn {
                    client,
                    target,
                    reset: AtomicBool::new(false),
                });
                state.conns.retain(|c| c.strong_count() > 0);
                state.conns.push(Arc::downgrade(&conn));
                drop(state);
                carry(conn, &accepting, faults.clone());
            }
        });
        Self { addr, shared }
    }

    /// Switches `cut` on (in place of the one before). [`Cut::Drop`] has reset every
    /// connection by the time this returns.
    pub fn cut(&self, cut: Cut) {
        let mut state = self.shared.lock();
        let dropped = if cut == Cut::Drop {
            state.take_reset()
        } else {
            Vec::new()
        };
        state.cut = Some(cut);
        drop(state);
        self.shared.changed.notify_all();
        reset(dropped);
    }

    /// Adds `latency` to every chunk read from now on, each way (over the latency of
    /// [`Faults`], in place of the last `slow`).
    pub fn slow(&self, latency: Duration) {
        self.shared.lock().latency = latency;
    }

    /// No cut and no added latency: bytes flow again, what was held first.
    pub fn restore(&self) {
        let mut state = self.shared.lock();
        state.cut = None;
        state.latency = Duration::ZERO;
        self.shared.changed.notify_all();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.stopped = true;
        let conns = state.take_reset();
        drop(state);
        self.shared.changed.notify_all();
        reset(conns);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

impl State {
    /// Takes the live connections, each marked reset: marked under the lock, so that no
    /// held byte passes after the cut that resets them.
    fn take_reset(&mut self) -> Vec<Arc<Conn>> {
        let conns: Vec<Arc<Conn>> = self.conns.drain(..).filter_map(|c| c.upgrade()).collect();
        for conn in &conns {
            conn.reset.store(true, Ordering::Relaxed);
        }
        conns
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits while `way` is held; `false` if `conn` was reset meanwhile.
    fn pass(&self, conn: &Conn, way: Way) -> bool {
        let mut state = self.lock();
        loop {
            if conn.reset.load(Ordering::Relaxed) {
                return false;
            }
            let held = match state.cut {
                Some(Cut::Blackhole) => true,
                Some(Cut::ToTarget) => way == Way::ToTarget,
                Some(Cut::ToClient) => way == Way::ToClient,
                Some(Cut::Drop) | None => false,
            };
            if !held {
                return true;
            }
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }
}

impl Conn {
    /// The sockets `way` reads from and writes to.
    fn ends(&self, way: Way) -> (&TcpStream, &TcpStream) {
        match way {
            Way::ToTarget => (&self.client, &self.target),
            Way::ToClient => (&self.target, &self.client),
        }
    }
}

/// Makes closing `stream` send a reset rather than a FIN.
fn reset_on_close(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// Resets `conns` (marked reset): each one's threads end and its last close sends RST
/// both ways. Waits (a second at most) until they have.
fn reset(conns: Vec<Arc<Conn>>) {
    for conn in &conns {
        for stream in [&conn.client, &conn.target] {
            reset_on_close(stream);
            // Wakes the reader blocked on it.
            let _ = stream.shutdown(Shutdown::Read);
        }
    }
    let closing: Vec<Weak<Conn>> = conns.iter().map(Arc::downgrade).collect();
    drop(conns);
    let deadline = Instant::now() + Duration::from_secs(1);
    while closing.iter().any(|c| c.strong_count() > 0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn carry(conn: Arc<Conn>, shared: &Arc<Shared>, faults: Faults) {
    let _ = conn.client.set_nodelay(true);
    let _ = conn.target.set_nodelay(true);
    let slowed = Arc::new(AtomicBool::new(false));
    let (marker, extra) = faults.slow_after.unwrap_or((b"", Duration::ZERO));
    let to_target = {
        let slowed = slowed.clone();
        move |chunk: &[u8]| {
            if !marker.is_empty() && chunk.windows(marker.len()).any(|w| w == marker) {
                slowed.store(true, Ordering::Relaxed);
            }
            faults.latency
        }
    };
    let to_client = move |_: &[u8]| {
        if slowed.load(Ordering::Relaxed) {
            faults.latency + extra
        } else {
            faults.latency
        }
    };
    pipe(conn.clone(), Way::ToTarget, shared.clone(), to_target);
    pipe(conn, Way::ToClient, shared.clone(), to_client);
}

/// Copies `way` of `conn`, each chunk held for what `delay` says, and while the proxy
/// holds that direction.
fn pipe(
    conn: Arc<Conn>,
    way: Way,
    shared: Arc<Shared>,
    mut delay: impl FnMut(&[u8]) -> Duration + Send + 'static,
) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let reading = conn.clone();
    let timing = shared.clone();
    std::thread::spawn(move || {
        let mut from = reading.ends(way).0;
        let mut chunk = [0u8; 65536];
        loop {
            match from.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let due = Instant::now() + delay(&chunk[..n]) + timing.lock().latency;
                    if tx.send((due, chunk[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    });
    std::thread::spawn(move || {
        let mut to = conn.ends(way).1;
        for (due, bytes) in rx {
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if !shared.pass(&conn, way) || to.write_all(&bytes).is_err() {
                return;
            }
        }
        // The close is held as the bytes are.
        if shared.pass(&conn, way) {
            let _ = to.shutdown(Shutdown::Write);
        }
    });
}
