//! Thread per core: each worker thread runs its own io_uring runtime with its own
//! SO_REUSEPORT listener on the shared address, and owns the connections it accepts.
//! [`Server`] starts them, publishes into them, and drains them.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use stratus_proto::Message;
use tokio::sync::mpsc;
use tracing::info;

use crate::config::Config;
use crate::hub::{Delivery, Hub, PublishError, Stats, WorkerLink};
use crate::worker::{self, Worker};

/// Most workers: a topic's workers are tracked in a 64-bit mask.
const MAX_WORKERS: usize = 64;

/// A running server.
pub struct Server {
    local_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    hub: Arc<Hub>,
    workers: Vec<JoinHandle<io::Result<()>>>,
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

impl Server {
    /// Binds one listener per worker (and the admin listener) and starts the workers.
    pub fn start(config: Config) -> io::Result<Self> {
        let workers = config.workers.clamp(1, MAX_WORKERS);
        if let Some(admin) = config.admin_listen
            && config.admin_token.is_none()
            && !admin.ip().is_loopback()
        {
            return Err(invalid(format!(
                "the admin listener on {admin} needs an admin token (or a loopback address)"
            )));
        }
        let first = stratus_uring::bind_reuseport(config.listen, 4096)?;
        let local_addr = first.local_addr()?;
        let mut listeners = vec![first];
        for _ in 1..workers {
            listeners.push(stratus_uring::bind_reuseport(local_addr, 4096)?);
        }
        let mut admin = config
            .admin_listen
            .map(|addr| stratus_uring::bind_reuseport(addr, 1024))
            .transpose()?;
        let admin_addr = admin
            .as_ref()
            .map(std::net::TcpListener::local_addr)
            .transpose()?;
        let (links, inboxes): (Vec<_>, Vec<_>) = (0..workers)
            .map(|_| {
                let (tx, rx) = mpsc::unbounded_channel();
                let link = WorkerLink {
                    tx,
                    pending: AtomicUsize::new(0),
                };
                (link, rx)
            })
            .unzip();
        let hub = Arc::new(Hub::new(links));
        let config = Arc::new(config);
        let mut threads = Vec::with_capacity(workers);
        for (index, (listener, inbox)) in listeners.into_iter().zip(inboxes).enumerate() {
            let (hub, config) = (hub.clone(), config.clone());
            let admin = if index == 0 { admin.take() } else { None };
            let thread = std::thread::Builder::new()
                .name(format!("stratus-worker-{index}"))
                .spawn(move || {
                    stratus_uring::run(async move {
                        let worker = Rc::new(Worker::new(index, hub, config));
                        worker::run(worker, listener, inbox, admin).await;
                    })
                })?;
            threads.push(thread);
        }
        info!(%local_addr, ?admin_addr, workers, "listening");
        Ok(Self {
            local_addr,
            admin_addr,
            hub,
            workers: threads,
        })
    }

    /// The address the WebSocket listeners are bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The admin listener's address, if there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Publishes `message` (text or binary) to every subscriber of `topic`, from any
    /// thread. The message is framed once; the returned [`Delivery`] tells how many
    /// subscribers it was queued to.
    pub fn publish(&self, topic: &str, message: Message) -> Result<Delivery, PublishError> {
        self.hub.publish(topic, message)
    }

    /// The server's counters.
    pub fn stats(&self) -> &Stats {
        &self.hub.stats
    }

    /// Topics with at least one subscriber anywhere.
    pub fn topic_count(&self) -> usize {
        self.hub.topic_count()
    }

    /// Shuts down: stops accepting (upgrades still in their handshake get 503), sends
    /// Close 1001 to every client, waits for their replies up to the drain timeout, then
    /// ends the workers and waits for them.
    pub fn stop(self) -> io::Result<()> {
        self.hub.drain();
        self.join()
    }

    /// Waits until every worker has ended.
    pub fn join(self) -> io::Result<()> {
        for worker in self.workers {
            worker
                .join()
                .map_err(|_| io::Error::other("worker thread panicked"))??;
        }
        Ok(())
    }

    /// Connections open now.
    pub fn connections(&self) -> u64 {
        self.hub.stats.connections.load(Ordering::Relaxed)
    }
}
