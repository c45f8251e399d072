//! A worker thread's state: its connections, its topic table, and the tasks that run on
//! its io_uring runtime (accept loop, inbox, sweep, and on worker 0 the admin API).
//!
//! The sweep runs a few times a second over the worker's connections: it pings the
//! silent ones, closes those whose ping went unanswered, and shuts down those whose close
//! deadline passed. One timer per worker instead of one per connection.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use slab::Slab;
use stratus_proto::{CloseCode, Message, Session};
use stratus_uring::{self as uring, Listener, Stream};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tracing::warn;

use crate::broadcast::Broadcast;
use crate::config::Config;
use crate::connection::{self, Conn, Delivered, FrameChoice};
use crate::hub::{Hub, WorkerMsg};
use crate::topic::{self, TopicTable};

/// How long to wait after a failed accept (out of descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// One worker's state.
pub(crate) struct Worker {
    pub(crate) index: usize,
    pub(crate) hub: Arc<Hub>,
    pub(crate) config: Arc<Config>,
    conns: RefCell<Slab<Rc<Conn>>>,
    topics: RefCell<TopicTable>,
    draining: Cell<Option<Instant>>,
    stop_accepting: Notify,
    /// Connections accepted and still in their opening handshake.
    handshaking: Cell<usize>,
}

/// Counts a connection as handshaking while it lives.
pub(crate) struct Handshaking<'a>(&'a Worker);

impl Drop for Handshaking<'_> {
    fn drop(&mut self) {
        self.0.handshaking.set(self.0.handshaking.get() - 1);
    }
}

impl Worker {
    pub(crate) fn new(index: usize, hub: Arc<Hub>, config: Arc<Config>) -> Self {
        Self {
            index,
            hub,
            config,
            conns: RefCell::default(),
            topics: RefCell::default(),
            draining: Cell::new(None),
            stop_accepting: Notify::new(),
            handshaking: Cell::new(0),
        }
    }

    /// Marks a connection as handshaking until the guard drops: a drain waits for it, so
    /// an upgrade that arrives during the drain gets its 503.
    pub(crate) fn handshaking(&self) -> Handshaking<'_> {
        self.handshaking.set(self.handshaking.get() + 1);
        Handshaking(self)
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.get().is_some()
    }

    /// Adds an upgraded connection.
    pub(crate) fn register(
        &self,
        stream: Stream,
        session: Session,
        frames: FrameChoice,
    ) -> Rc<Conn> {
        let mut conns = self.conns.borrow_mut();
        let entry = conns.vacant_entry();
        let conn = Rc::new(Conn::new(entry.key(), stream, session, frames));
        entry.insert(conn.clone());
        self.hub.stats.connections.fetch_add(1, Ordering::Relaxed);
        conn
    }

    /// Removes a connection and all its subscriptions.
    pub(crate) fn unregister(&self, conn: &Conn) {
        for t in conn.topics.take() {
            self.drop_subscription(&t, conn.id);
        }
        if self.conns.borrow_mut().try_remove(conn.id).is_some() {
            self.hub.stats.connections.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn drop_subscription(&self, topic: &Arc<str>, conn: usize) {
        if self.topics.borrow_mut().unsubscribe(topic, conn) {
            self.hub.set_interest(topic, self.index, false);
        }
    }

    /// Subscribes `conn` to `topic` (idempotent), or says why not.
    pub(crate) fn subscribe(&self, conn: &Conn, name: &str) -> Result<(), String> {
        topic::validate(name).map_err(|e| e.to_string())?;
        let mut topics = conn.topics.borrow_mut();
        if topics.iter().any(|t| &**t == name) {
            return Ok(());
        }
        let max = self.config.max_topics_per_connection;
        if topics.len() >= max {
            return Err(format!("at most {max} topics per connection"));
        }
        let name: Arc<str> = Arc::from(name);
        if self.topics.borrow_mut().subscribe(&name, conn.id) {
            self.hub.set_interest(&name, self.index, true);
        }
        topics.push(name);
        Ok(())
    }

    /// Unsubscribes `conn` from `topic`, or says why not.
    pub(crate) fn unsubscribe(&self, conn: &Conn, name: &str) -> Result<(), String> {
        topic::validate(name).map_err(|e| e.to_string())?;
        let mut topics = conn.topics.borrow_mut();
        let Some(at) = topics.iter().position(|t| &**t == name) else {
            return Err("not subscribed".into());
        };
        let t = topics.swap_remove(at);
        drop(topics);
        self.drop_subscription(&t, conn.id);
        Ok(())
    }

    /// Queues a broadcast on every local subscriber of `topic`; returns how many got it.
    fn fanout(&self, topic: &str, broadcast: &Broadcast) -> usize {
        let topics = self.topics.borrow();
        let Some(subscribers) = topics.subscribers(topic) else {
            return 0;
        };
        let conns = self.conns.borrow();
        let config = &self.config;
        let deadline = Instant::now() + config.close_timeout;
        let (mut queued, mut dropped, mut closed) = (0, 0, 0);
        for id in subscribers {
            let Some(conn) = conns.get(*id) else { continue };
            match conn.deliver(
                broadcast,
                config.max_send_queue,
                config.slow_consumer,
                deadline,
            ) {
                Delivered::Queued => queued += 1,
                Delivered::Dropped => dropped += 1,
                Delivered::ClosedSlow => closed += 1,
                Delivered::Skipped => {}
            }
        }
        let stats = &self.hub.stats;
        stats.delivered.fetch_add(queued, Ordering::Relaxed);
        stats.dropped.fetch_add(dropped, Ordering::Relaxed);
        stats
            .slow_consumer_closes
            .fetch_add(closed, Ordering::Relaxed);
        queued as usize
    }

    /// Pings silent connections, closes unresponsive ones, enforces close deadlines.
    fn sweep(&self, now: Instant) {
        let config = &self.config;
        for (_, conn) in self.conns.borrow().iter() {
            if let Some(deadline) = conn.close_deadline.get() {
                if now >= deadline {
                    conn.stream.abort();
                }
                continue;
            }
            match conn.ping_sent.get() {
                Some(sent) if now - sent >= config.pong_timeout => {
                    conn.close(
                        CloseCode::GOING_AWAY,
                        "pong timeout",
                        now + config.close_timeout,
                        true,
                    );
                }
                None if now - conn.last_seen.get() >= config.ping_interval => {
                    let sent = conn.session.borrow_mut().send(&Message::Ping(Bytes::new()));
                    if sent.is_ok() && conn.flush() {
                        conn.ping_sent.set(Some(now));
                    }
                }
                _ => {}
            }
        }
    }

    /// Stops accepting and closes every connection with 1001, to be done by the drain
    /// timeout.
    fn start_drain(&self) {
        let deadline = Instant::now() + self.config.drain_timeout;
        self.draining.set(Some(deadline));
        self.stop_accepting.notify_one();
        for (_, conn) in self.conns.borrow().iter() {
            conn.close(
                CloseCode::GOING_AWAY,
                "server shutting down",
                deadline,
                false,
            );
        }
    }
}

/// The worker's main task: accept until drained, then wait for the connections to end.
pub(crate) async fn run(
    worker: Rc<Worker>,
    listener: std::net::TcpListener,
    inbox: mpsc::UnboundedReceiver<WorkerMsg>,
    admin: Option<std::net::TcpListener>,
) {
    uring::spawn(dispatch(worker.clone(), inbox));
    uring::spawn(sweep_loop(worker.clone()));
    if let Some(admin) = admin {
        match Listener::from_std(admin) {
            Ok(admin) => {
                uring::spawn(crate::admin::serve(worker.clone(), admin));
            }
            Err(err) => warn!(error = %err, "admin listener failed"),
        }
    }
    let listener = match Listener::from_std(listener) {
        Ok(listener) => listener,
        Err(err) => {
            warn!(error = %err, "listener failed");
            return;
        }
    };
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    uring::spawn(connection::serve(worker.clone(), stream, peer));
                }
                Err(err) => {
                    warn!(error = %err, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            _ = worker.stop_accepting.notified() => break,
        }
    }
    listener.close();
    let deadline = worker.draining.get().unwrap_or_else(Instant::now) + worker.config.close_timeout;
    while (!worker.conns.borrow().is_empty() || worker.handshaking.get() > 0)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (_, conn) in worker.conns.borrow().iter() {
        conn.stream.abort();
    }
    // Let the connection tasks see their sockets shut and end.
    tokio::time::sleep(Duration::from_millis(20)).await;
}

/// The worker's inbox: publishes to fan out, and the drain order.
async fn dispatch(worker: Rc<Worker>, mut inbox: mpsc::UnboundedReceiver<WorkerMsg>) {
    while let Some(msg) = inbox.recv().await {
        match msg {
            WorkerMsg::Publish {
                topic,
                broadcast,
                ack,
            } => {
                worker.hub.links[worker.index]
                    .pending
                    .fetch_sub(1, Ordering::Relaxed);
                let _ = ack.send(worker.fanout(&topic, &broadcast));
            }
            WorkerMsg::Drain => worker.start_drain(),
        }
    }
}

async fn sweep_loop(worker: Rc<Worker>) {
    let config = &worker.config;
    let period = [
        config.ping_interval,
        config.pong_timeout,
        config.close_timeout,
    ]
    .into_iter()
    .min()
    .unwrap_or(Duration::from_secs(1))
    .div_f64(4.0)
    .clamp(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        tokio::time::sleep(period).await;
        worker.sweep(Instant::now());
    }
}
