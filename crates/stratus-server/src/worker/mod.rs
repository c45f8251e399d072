//! A worker thread: one io_uring ([`Ring`]) it drives itself, its connections, its
//! pub/sub state, and its inbox of publishes. This is the driver: it moves bytes and
//! events between the ring and the layers below, and holds no pub/sub logic of its own
//! (that is [`pubsub`], which runs without a ring).
//!
//! Each turn of the loop waits for completions, handles them all (accepts, received
//! bytes, finished sends, a wake-up for the inbox), then settles every connection the
//! turn changed: at most one `sendmsg` per connection carrying everything queued for it
//! (replies, broadcasts of several publishes), FIN, receive re-arming, freeing. Sends are
//! batched across the whole turn this way, and nothing waits per connection: an idle
//! connection is a slab entry and one multishot receive parked in the kernel. The sweep
//! runs a few times a second (one timer per worker, not one per connection).
//!
//! Invariants a change must keep:
//! - Every connection changed in a turn is settled by its end: [`conns::Conns`] queues a
//!   connection whenever it is reached for a change, so no handler marks one itself.
//! - A connection's slot is freed only once the ring has nothing in flight on it (its
//!   receive ended, its send completed); a completion for a freed slot carries an id
//!   whose generation no longer matches, and finds nothing.
//! - At most one send is in flight per connection; what is queued meanwhile goes in the
//!   next.
//! - Every publish the hub put in the inbox is taken off the hub's backlog once, when it
//!   is read (or when the worker ends with it unread).
//! - The clock is read once per turn ([`Clock`]) and handlers get that time passed in;
//!   only the publish-latency metric (at the submit) and the sweep's token expiry (wall
//!   clock) read their own.
//!
//! Owns the ring and the connections; must not reach another worker's state (only the
//! hub, which is shared, and the inboxes it keeps).

mod conns;
mod hooks;
mod pending_replies;
pub(crate) mod pubsub;
mod receive;
mod settle;
mod sweep;
mod unupgraded;
mod users;

use std::io;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use stratus_uring::{Event, Ring, Wake};
use tokio::sync::mpsc;
use tracing::warn;

use crate::config::Config;
use crate::messages::WorkerMsg;
use crate::model::conn_id::ConnId;
use crate::node::hub::Hub;
use conns::Conns;
use pubsub::{Context, PubSub};
use unupgraded::Unupgraded;

/// Most publishes a worker fans out in one turn before it sends (see `read_inbox`).
const MAX_PUBLISHES_PER_TURN: usize = 256;
/// The listener's token (no connection slot reaches it).
const LISTENER: u64 = u32::MAX as u64;
/// How long a drain waits beyond its deadline for the last operations to finish.
const EXIT_GRACE: Duration = Duration::from_secs(1);

/// The worker's time: read once per turn, passed to every handler.
#[derive(Debug, Clone, Copy)]
struct Clock {
    /// Where the millisecond clock of message budgets starts.
    epoch: Instant,
    /// This turn's time.
    now: Instant,
}

impl Clock {
    /// Milliseconds from the epoch, wrapping: the clock of connections' token buckets.
    fn now_ms(self) -> u32 {
        self.now.saturating_duration_since(self.epoch).as_millis() as u32
    }

    /// What a handler gets: the node, the settings, and this turn's time.
    fn context<'a>(self, hub: &'a Hub, config: &'a Config) -> Context<'a> {
        Context {
            hub,
            config,
            now: self.now,
            now_ms: self.now_ms(),
        }
    }
}

/// One worker's state.
pub(crate) struct Worker {
    index: usize,
    hub: Arc<Hub>,
    config: Arc<Config>,
    ring: Ring,
    wake: Arc<Wake>,
    inbox: mpsc::UnboundedReceiver<WorkerMsg>,
    listener: TcpListener,
    /// The multishot accept is armed.
    accepting: bool,
    conns: Conns,
    pubsub: PubSub,
    /// Sockets that have not finished the upgrade, capped.
    unupgraded: Unupgraded,
    /// The inbox holds more than the last turn took: read it again without waiting.
    inbox_waiting: bool,
    clock: Clock,
    /// The read buffer lent to a connection that has no partial frame of its own.
    scratch: BytesMut,
    /// Emptied send batches kept for reuse.
    spare_batches: Vec<Vec<Bytes>>,
    /// When each publish fanned out since the last settle was published: its latency
    /// is taken once the sends for it are submitted.
    unsent_publishes: Vec<Instant>,
    /// When the drain must be done, once one has begun.
    draining: Option<Instant>,
    /// The listener's TLS settings (`wss://`).
    tls: Option<Arc<rustls::ServerConfig>>,
    /// Its connections by user, for user-level control.
    users: users::Users,
}

impl Worker {
    /// Sets the worker up; call on its own thread (the ring has a single issuer).
    pub(crate) fn new(
        index: usize,
        hub: Arc<Hub>,
        config: Arc<Config>,
        listener: TcpListener,
        inbox: mpsc::UnboundedReceiver<WorkerMsg>,
        wake: Arc<Wake>,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> io::Result<Self> {
        let ring = Ring::new(config.ring)?;
        // Each worker takes its share of the caps (connections spread over the workers).
        let share = |cap: usize| cap.div_ceil(config.workers.max(1));
        let unupgraded = Unupgraded::new(
            share(config.max_unupgraded),
            share(config.max_unupgraded_per_ip),
        );
        let now = Instant::now();
        Ok(Self {
            index,
            hub,
            config,
            ring,
            wake,
            inbox,
            listener,
            accepting: false,
            conns: Conns::default(),
            pubsub: PubSub::new(index),
            unupgraded,
            inbox_waiting: false,
            clock: Clock { epoch: now, now },
            scratch: BytesMut::new(),
            spare_batches: Vec::new(),
            unsent_publishes: Vec::new(),
            draining: None,
            tls,
            users: users::Users::default(),
        })
    }

    /// Runs until drained.
    pub(crate) fn run(mut self) -> io::Result<()> {
        self.arm_accept();
        self.ring.arm_wake(self.wake.as_raw_fd());
        let period = sweep::period(&self.config);
        let mut next_sweep = self.clock.now + period;
        let mut last_busy = self.clock.now;
        loop {
            let now = self.clock.now;
            let has_work = self.conns.has_dirty() || self.inbox_waiting;
            let wait = if has_work || now - last_busy < self.config.busy_poll {
                Duration::ZERO
            } else {
                next_sweep.saturating_duration_since(now)
            };
            self.ring.submit_and_wait(wait)?;
            self.clock.now = Instant::now();
            if self.handle_events()? > 0 {
                last_busy = self.clock.now;
            }
            if self.clock.now >= next_sweep {
                self.sweep();
                next_sweep = self.clock.now + period;
            }
            if self.inbox_waiting {
                self.read_inbox();
            }
            self.settle()?;
            if self.is_drained() {
                return Ok(());
            }
        }
    }

    /// Handles every completion waiting; returns how many.
    fn handle_events(&mut self) -> io::Result<usize> {
        let mut events = 0usize;
        while let Some(event) = self.ring.next_event() {
            self.on_event(event);
            events += 1;
            // Replies leave as the turn goes, not all at its end: after the 1st, 2nd, 4th,
            // 8th... event, so a big turn costs few extra submits and a client whose
            // message came first does not wait for the whole batch. Measured at 10
            // connections x 16 KiB: 111k -> 150k msgs/s.
            if events.is_power_of_two() {
                self.settle()?;
                self.ring.submit()?;
            }
        }
        Ok(events)
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Accepted { result, more, .. } => {
                self.accepting &= more;
                match result {
                    Ok(fd) => self.on_accepted(fd),
                    // Out of descriptors, most likely: the sweep re-arms the accept.
                    Err(err) if self.draining.is_none() => warn!(error = %err, "accept failed"),
                    Err(_) => {}
                }
            }
            Event::Received {
                token,
                result,
                more,
            } => self.on_received(ConnId::from_token(token), result, more),
            Event::Sent {
                token,
                result,
                frames,
            } => self.on_sent(ConnId::from_token(token), result, frames),
            Event::Woken => {
                self.wake.clear();
                self.read_inbox();
                self.ring.arm_wake(self.wake.as_raw_fd());
            }
        }
    }

    fn arm_accept(&mut self) {
        if !self.accepting && self.draining.is_none() {
            self.ring
                .accept_multishot(self.listener.as_raw_fd(), LISTENER);
            self.accepting = true;
        }
    }

    /// Publishes to fan out, and the drain order. Takes at most a turn's worth of
    /// publishes ([`MAX_PUBLISHES_PER_TURN`], or a quarter of the send-queue cap in bytes);
    /// the rest stay in the inbox for the next turn, after this one's sends. So a worker
    /// that cannot keep up lets publishes pile up in its inbox, where they count against
    /// the publish backlog (and publishers are refused), never in its subscribers' queues,
    /// where a prompt reader would be closed as a slow consumer.
    fn read_inbox(&mut self) {
        let budget = self.config.max_send_queue / 4;
        let (mut taken, mut bytes) = (0, 0);
        self.inbox_waiting = false;
        while let Ok(msg) = self.inbox.try_recv() {
            let ctx = self.clock.context(&self.hub, &self.config);
            match msg {
                WorkerMsg::Publish { broadcast, ack } => {
                    self.hub.taken(self.index, broadcast.cost());
                    let fanout = self.pubsub.fan_out(&ctx, &mut self.conns, &broadcast);
                    if fanout.queued > 0 {
                        self.unsent_publishes.push(broadcast.published);
                    }
                    let _ = ack.send(fanout.queued as usize);
                    taken += 1;
                    bytes += broadcast.len();
                    if taken >= MAX_PUBLISHES_PER_TURN || bytes >= budget {
                        self.inbox_waiting = true;
                        return;
                    }
                }
                WorkerMsg::Confirmed(topic) => {
                    self.pubsub.on_confirmed(&ctx, &mut self.conns, &topic);
                    self.on_user_topic_confirmed(&topic);
                }
                WorkerMsg::History { to, topic, page } => {
                    self.pubsub
                        .on_history_page(&ctx, &mut self.conns, to, &topic, page);
                }
                WorkerMsg::Gap { topic, reason } => {
                    self.pubsub.on_gap(&ctx, &mut self.conns, &topic, reason);
                }
                WorkerMsg::Published { to, topic, result } => {
                    self.pubsub
                        .on_published(&ctx, &mut self.conns, to, &topic, result);
                }
                WorkerMsg::Drain => self.start_drain(),
                WorkerMsg::Presence { to, topic, answer } => {
                    self.pubsub
                        .on_presence(&ctx, &mut self.conns, to, &topic, answer);
                }
                WorkerMsg::Hooked { to, answer } => self.on_hooked(to, answer),
                WorkerMsg::User { command, reply } => self.on_user_command(&command, reply),
            }
        }
    }

    /// Drained: every connection gone (or the drain's hard stop long past).
    fn is_drained(&self) -> bool {
        let Some(deadline) = self.draining else {
            return false;
        };
        (self.conns.is_empty() && !self.accepting)
            || self.clock.now >= deadline + self.config.close_timeout + EXIT_GRACE
    }
}

impl Drop for Worker {
    /// A worker that ends with connections still open (a drain's hard stop, an io_uring
    /// failure) gives back what they hold in the hub: their counts (global and per
    /// address), their topics' interest, and the publishes left in its inbox. The ring,
    /// dropped after, cancels and waits for what it still has in flight.
    fn drop(&mut self) {
        // Publishes left in the inbox no longer wait: the node's backlog must not count
        // them for ever (it would refuse every publish).
        while let Ok(msg) = self.inbox.try_recv() {
            if let WorkerMsg::Publish { broadcast, .. } = msg {
                self.hub.taken(self.index, broadcast.cost());
            }
        }
        for id in self.conns.ids() {
            self.free(id);
        }
    }
}
