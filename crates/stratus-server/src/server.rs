//! Thread per core: each worker thread runs its own io_uring runtime with its own
//! SO_REUSEPORT listener on the shared address, and owns the connections it accepts.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::thread::JoinHandle;

use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::Config;
use crate::connection::{self, ACCEPT_BACKOFF};
use stratus_uring::{self as uring, Listener};

/// A running server: its address, and a way to stop it.
pub struct Server {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    workers: Vec<JoinHandle<io::Result<()>>>,
}

impl Server {
    /// Binds one listener per worker and starts the workers.
    pub fn start(config: Config) -> io::Result<Self> {
        let workers = config.workers.max(1);
        let first = uring::bind_reuseport(config.listen, 4096)?;
        let local_addr = first.local_addr()?;
        let mut listeners = vec![first];
        for _ in 1..workers {
            listeners.push(uring::bind_reuseport(local_addr, 4096)?);
        }
        let (stop, stopped) = watch::channel(false);
        let mut threads = Vec::with_capacity(workers);
        for (index, listener) in listeners.into_iter().enumerate() {
            let config = config.clone();
            let stopped = stopped.clone();
            let thread = std::thread::Builder::new()
                .name(format!("stratus-worker-{index}"))
                .spawn(move || uring::run(worker(listener, config, stopped)))?;
            threads.push(thread);
        }
        info!(%local_addr, workers, "listening");
        Ok(Self {
            local_addr,
            stop,
            workers: threads,
        })
    }

    /// The address the listeners are bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, ends every worker and waits for the threads.
    pub fn stop(self) -> io::Result<()> {
        let _ = self.stop.send(true);
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
}

async fn worker(
    listener: std::net::TcpListener,
    config: Config,
    mut stopped: watch::Receiver<bool>,
) {
    let listener = Listener::from_std(listener);
    let config = Rc::new(config);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    uring::spawn(connection::serve(stream, peer, config.clone()));
                }
                Err(err) => {
                    warn!(error = %err, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            _ = stopped.changed() => return,
        }
    }
}
