//! A worker thread: one io_uring ([`Ring`]) it drives itself, its connections, its topic
//! table, and its inbox of publishes.
//!
//! Each turn of the loop waits for completions, handles them all (accepts, received
//! bytes, finished sends, a wake-up for the inbox), then settles every connection the
//! turn touched: at most one `sendmsg` per connection carrying everything queued for it
//! (replies, broadcasts of several publishes), FIN, receive re-arming, freeing. Sends are
//! batched across the whole turn this way, and nothing waits per connection: an idle
//! connection is a slab entry and one multishot receive parked in the kernel.
//!
//! The sweep runs a few times a second: it pings silent connections, closes those whose
//! ping went unanswered, and ends those whose handshake or close deadline passed. One
//! timer per worker instead of one per connection.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use slab::Slab;
use stratus_proto::{CloseCode, Message, Session};
use stratus_uring::{Event, Ring, Wake};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::auth::Grant;
use crate::broadcast::Broadcast;
use crate::broker::{BrokerRequest, HistoryRead, Recovered};
use crate::commands::{self, Command};
use crate::config::{App, COMMAND_COST, Config, SlowConsumer};
use crate::connection::{Conn, Counted, Delivered, Phase, queue_transmit};
use crate::history::{HistoryDest, Offset, Phase as RecoveryPhase, Recovery, Since};
use crate::hub::{Hub, WorkerMsg};
use crate::metrics::{self, WorkerStats};
use crate::pending_replies::PendingReplies;
use crate::rate::TokenBucket;
use crate::status_page;
use crate::tls_conn::TlsConn;
use crate::topic::{self, TopicTable};
use crate::unupgraded::Unupgraded;
use crate::upgrade::upgrade;
use stratus_proto::handshake::{Request, http_error};

/// Most frames per `sendmsg`.
const MAX_IOV: usize = 512;
/// Most a partial frame's buffer reserves beyond the bytes it holds.
const PARTIAL_RESERVE: usize = 64 << 10;
/// Sends submitted at a time when a turn has many.
const SETTLE_CHUNK: usize = 1024;
/// How long a recovery may take (a reader that never reads, a broker that never answers):
/// past it, the held messages are dropped and the client gets a gap notice.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(60);
/// Most publishes a worker fans out in one turn before it sends (see `read_inbox`).
const MAX_PUBLISHES_PER_TURN: usize = 256;
/// Emptied send batches kept for reuse.
const SPARE_BATCHES: usize = 256;
/// The listener's token (no connection slot reaches it).
const LISTENER: u64 = u32::MAX as u64;
/// How long a drain waits beyond its deadline for the last operations to finish.
const EXIT_GRACE: Duration = Duration::from_secs(1);

fn token(slot: usize, generation: u64) -> u64 {
    (generation & 0xFF_FFFF) << 32 | slot as u64
}

fn slot(token: u64) -> usize {
    (token & 0xFFFF_FFFF) as usize
}

fn find(slab: &mut Slab<Box<Conn>>, token: u64) -> Option<&mut Conn> {
    slab.get_mut(slot(token))
        .filter(|c| c.token == token)
        .map(|c| &mut **c)
}

/// Connections of one worker, looked up by token (a stale token finds nothing).
#[derive(Default)]
struct Conns {
    /// Boxed: the slab grows by doubling, and a doubled array of whole connections
    /// leaves the old one behind in the allocator (measured: about 450 B per connection
    /// of resident memory after a burst of connects); an array of pointers leaves 16 B.
    slab: Slab<Box<Conn>>,
    /// Tokens touched this turn, settled at its end.
    dirty: Vec<u64>,
}

impl Conns {
    fn get(&mut self, token: u64) -> Option<&mut Conn> {
        find(&mut self.slab, token)
    }

    /// Queues `conn` for the end-of-turn pass.
    fn mark(dirty: &mut Vec<u64>, conn: &mut Conn) {
        if !conn.io.dirty {
            conn.io.dirty = true;
            dirty.push(conn.token);
        }
    }
}

/// The worker's topic table and the hub's view of it, kept in step, with the subscribe
/// replies waiting for the broker, and the number of the worker's last history read.
struct Subscriptions<'a> {
    table: &'a mut TopicTable,
    pending: &'a mut PendingReplies,
    requests: &'a mut u64,
    /// Now, in milliseconds on the worker's clock, and the messages allowed a second.
    clock_ms: u32,
    rate: u32,
    /// Bytes of live messages a recovery may hold (the send-queue cap).
    max_held: usize,
    /// Now.
    now: Instant,
    hub: &'a Hub,
    worker: usize,
    max: usize,
}

impl Subscriptions<'_> {
    /// Subscribes connection `slot` (whose topics are `mine`, and whose token grants
    /// `grant`) to `name` (idempotent), or says why not. `Ok(Some(name))`: the
    /// subscription waits for the broker's confirmation (the reply goes out with it).
    fn subscribe(
        &mut self,
        mine: &mut Vec<Arc<str>>,
        grant: Option<&Grant>,
        slot: usize,
        name: &str,
    ) -> Result<Option<Arc<str>>, String> {
        topic::validate(name).map_err(|e| e.to_string())?;
        if grant.is_some_and(|g| !g.allows(name)) {
            return Err("the token does not allow this topic".into());
        }
        if let Some(name) = mine.iter().find(|t| &***t == name) {
            return Ok((!self.hub.is_confirmed(name)).then(|| name.clone()));
        }
        if mine.len() >= self.max {
            return Err(format!("at most {} topics per connection", self.max));
        }
        let (name, first) = self.table.subscribe(name, slot);
        let confirmed = if first {
            self.hub.set_interest(&name, self.worker, true)
        } else {
            self.hub.is_confirmed(&name)
        };
        mine.push(name.clone());
        Ok((!confirmed).then_some(name))
    }

    /// Unsubscribes connection `slot` from `name`, or says why not. `Ok(true)`: its
    /// subscribe reply was still waiting for the broker (it is due now, before this one's).
    fn unsubscribe(
        &mut self,
        mine: &mut Vec<Arc<str>>,
        (slot, token): (usize, u64),
        name: &str,
    ) -> Result<bool, String> {
        topic::validate(name).map_err(|e| e.to_string())?;
        let Some(at) = mine.iter().position(|t| &**t == name) else {
            return Err("not subscribed".into());
        };
        let t = mine.swap_remove(at);
        Ok(self.remove(&t, slot, token))
    }

    /// Takes connection `slot` (`token`) off `name`, and its reply off the waiting ones;
    /// `true` if one was waiting.
    fn remove(&mut self, name: &Arc<str>, slot: usize, token: u64) -> bool {
        let waited = self.pending.forget(name, token);
        if self.table.unsubscribe(name, slot) {
            self.hub.set_interest(name, self.worker, false);
        }
        waited
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
    topics: TopicTable,
    /// Subscribe replies waiting for the broker's confirmation.
    pending: PendingReplies,
    /// Sockets that have not finished the upgrade, capped.
    unupgraded: Unupgraded,
    /// The inbox holds more than the last turn took: read it again without waiting.
    inbox_waiting: bool,
    /// Numbers the worker's history reads (see `HistoryDest`).
    next_request: u64,
    /// Where the worker's millisecond clock starts (see [`clock_ms`]).
    epoch: Instant,
    generation: u64,
    /// The read buffer lent to a connection that has no partial frame of its own.
    scratch: BytesMut,
    spare_batches: Vec<Vec<Bytes>>,
    /// When each publish fanned out since the last settle was published: its latency
    /// is taken once the sends for it are submitted.
    unsent_publishes: Vec<Instant>,
    draining: Option<Instant>,
    /// The listener's TLS settings (`wss://`).
    tls: Option<Arc<rustls::ServerConfig>>,
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
            topics: TopicTable::default(),
            pending: PendingReplies::default(),
            unupgraded,
            inbox_waiting: false,
            next_request: 0,
            epoch: Instant::now(),
            generation: 0,
            scratch: BytesMut::new(),
            spare_batches: Vec::new(),
            unsent_publishes: Vec::new(),
            draining: None,
            tls,
        })
    }

    /// Runs until drained.
    pub(crate) fn run(mut self) -> io::Result<()> {
        self.arm_accept();
        self.ring.arm_wake(self.wake.as_raw_fd());
        let period = sweep_period(&self.config);
        let mut next_sweep = Instant::now() + period;
        let mut last_busy = Instant::now();
        loop {
            let now = Instant::now();
            let pending_work = !self.conns.dirty.is_empty() || self.inbox_waiting;
            let wait = if now - last_busy < self.config.busy_poll || pending_work {
                Duration::ZERO
            } else {
                next_sweep.saturating_duration_since(now)
            };
            self.ring.submit_and_wait(wait)?;
            let mut events = 0usize;
            while let Some(event) = self.ring.next_event() {
                self.on_event(event);
                events += 1;
                // Replies leave as the turn goes, not all at its end: after the 1st, 2nd,
                // 4th, 8th... event, so a big turn costs few extra submits and a client
                // whose message came first does not wait for the whole batch. Measured
                // at 10 connections x 16 KiB: 111k -> 150k msgs/s.
                if events.is_power_of_two() {
                    self.settle()?;
                    self.ring.submit()?;
                }
            }
            let now = Instant::now();
            if events > 0 {
                last_busy = now;
            }
            if now >= next_sweep {
                self.sweep(now);
                next_sweep = now + period;
            }
            if self.inbox_waiting {
                self.read_inbox();
            }
            self.settle()?;
            if self.finished(now) {
                return Ok(());
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

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Accepted { result, more, .. } => {
                self.accepting &= more;
                match result {
                    Ok(fd) => self.admit(fd),
                    // Out of descriptors, most likely: the sweep re-arms the accept.
                    Err(err) if self.draining.is_none() => warn!(error = %err, "accept failed"),
                    Err(_) => {}
                }
            }
            Event::Received {
                token,
                result,
                more,
            } => self.on_received(token, result, more),
            Event::Sent {
                token,
                result,
                frames,
            } => self.on_sent(token, result, frames),
            Event::Woken => {
                self.wake.clear();
                self.read_inbox();
                self.ring.arm_wake(self.wake.as_raw_fd());
            }
        }
    }

    fn admit(&mut self, fd: OwnedFd) {
        let socket = TcpStream::from(fd);
        let ip = socket
            .peer_addr()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
        self.generation += 1;
        let token = token(self.conns.slab.vacant_key(), self.generation);
        if self.unupgraded.admit(token, ip).is_err() {
            // Past its address's share of sockets mid-upgrade: closed at once.
            metrics::add(&self.hub.workers[self.index].unupgraded_refused, 1);
            return;
        }
        let _ = socket.set_nodelay(true);
        let tls = match self.tls.clone().map(TlsConn::new).transpose() {
            Ok(tls) => tls.map(Box::new),
            Err(err) => {
                warn!(error = %err, "TLS connection setup failed");
                self.unupgraded.finished(ip);
                return;
            }
        };
        let deadline = Instant::now() + self.config.handshake_timeout;
        let limits = self.config.handshake_limits;
        let mut conn = Conn::new(socket, ip, token, limits, deadline, tls);
        self.ring.recv_multishot(conn.socket.as_raw_fd(), token);
        conn.io.receiving = true;
        conn.io.counted = Counted::Unupgraded;
        self.conns.slab.insert(Box::new(conn));
        self.shed_unupgraded();
    }

    /// Past the cap on sockets mid-upgrade, closes the oldest of them.
    fn shed_unupgraded(&mut self) {
        let Conns { slab, dirty } = &mut self.conns;
        let is_live = |slab: &Slab<Box<Conn>>, token| {
            slab.get(slot(token))
                .is_some_and(|c| c.token == token && c.io.counted == Counted::Unupgraded)
        };
        while let Some(token) = self.unupgraded.shed(|t| is_live(slab, t)) {
            if let Some(conn) = find(slab, token) {
                conn.io.counted = Counted::Nothing;
                self.unupgraded.finished(conn.ip);
                conn.kill();
                Conns::mark(dirty, conn);
                metrics::add(&self.hub.workers[self.index].unupgraded_shed, 1);
            }
        }
        self.unupgraded.compact(|t| is_live(slab, t));
    }

    fn on_received(&mut self, token: u64, result: io::Result<usize>, more: bool) {
        let Some(conn) = self.conns.get(token) else {
            return;
        };
        if !more {
            conn.io.receiving = false;
            conn.io.recv_cancelled = false;
        }
        match result {
            Ok(0) => conn.io.peer_done = true,
            Ok(_) => self.on_data(slot(token)),
            // Out of buffers (the pool grew) or paused: re-armed when settled.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::ECANCELED)) => {}
            Err(_) => {
                conn.io.peer_done = true;
                conn.kill();
            }
        }
        if let Some(conn) = self.conns.slab.get_mut(slot(token)) {
            Conns::mark(&mut self.conns.dirty, conn);
        }
    }

    /// Feeds the bytes just received to connection `slot`.
    fn on_data(&mut self, slot: usize) {
        let conn = &mut self.conns.slab[slot];
        // A connection with no partial frame keeps no buffer: it borrows the scratch one.
        let lent = conn.read_buf.is_empty();
        let mut buf = if lent {
            std::mem::take(&mut self.scratch)
        } else {
            std::mem::take(&mut conn.read_buf)
        };
        let received = self.ring.received();
        match &mut conn.tls {
            _ if conn.io.fin_sent || conn.io.dead || matches!(conn.phase, Phase::Answered) => {}
            None => buf.extend_from_slice(received),
            Some(tls) => match tls.receive(received, &mut buf) {
                Ok(closed) => conn.io.peer_done |= closed,
                Err(err) => {
                    metrics::add(&self.hub.workers[self.index].tls_errors, 1);
                    conn.fail_tls(&err, Instant::now() + self.config.close_timeout);
                }
            },
        }
        if conn.io.fin_sent || conn.io.dead || matches!(conn.phase, Phase::Answered) {
            buf.clear();
        } else if matches!(conn.phase, Phase::Handshake(_)) {
            self.handshake(slot, &mut buf);
        } else {
            self.decode(slot, &mut buf);
        }
        let conn = &mut self.conns.slab[slot];
        if !lent {
            // An emptied buffer still shares the allocation of the payloads taken from it:
            // an idle connection keeps none.
            conn.read_buf = if buf.is_empty() { BytesMut::new() } else { buf };
            return;
        }
        if !buf.is_empty() {
            // The rest of a frame: a buffer of its own, sized for the whole frame (up to a
            // bound, so a header alone cannot reserve much) so the rest lands without a
            // reallocation.
            let want = conn.session().map_or(0, |s| s.wanted_len());
            let mut own =
                BytesMut::with_capacity(want.clamp(buf.len(), buf.len() + PARTIAL_RESERVE));
            own.extend_from_slice(&buf);
            conn.read_buf = own;
            buf.clear();
        }
        self.scratch = buf;
    }

    fn handshake(&mut self, slot: usize, buf: &mut BytesMut) {
        let config = &self.config;
        let counters = &self.hub.workers[self.index];
        let close_deadline = Instant::now() + config.close_timeout;
        let conn = &mut self.conns.slab[slot];
        let refusal = match conn.read_request(buf) {
            Ok(None) => return,
            Ok(Some(Request::Plain(request))) => match status_page::answer(&request, config.app) {
                Ok(page) => {
                    conn.answer(page, close_deadline);
                    buf.clear();
                    return;
                }
                Err(refusal) => Err(refusal),
            },
            Ok(Some(Request::Upgrade(request))) => {
                match upgrade(&request, config, self.draining.is_some()) {
                    Ok(accepted) => {
                        let caps = (config.max_connections, config.max_connections_per_ip);
                        match self.hub.admit(conn.ip, caps.0, caps.1) {
                            Ok(()) => Ok(accepted),
                            Err((status, why)) => {
                                let response = http_error(status, "Retry-After: 5\r\n", why);
                                Err((status, response, why.to_owned()))
                            }
                        }
                    }
                    Err(refusal) => Err(refusal),
                }
            }
            Err(refusal) => Err(refusal),
        };
        let mut accepted = match refusal {
            Ok(accepted) => accepted,
            Err((status, response, why)) => {
                counters.refused(status);
                conn.refuse(response, &why, close_deadline);
                buf.clear();
                return;
            }
        };
        let topics = std::mem::take(&mut accepted.topics);
        if conn.io.counted == Counted::Unupgraded {
            self.unupgraded.finished(conn.ip);
        }
        let rate = config.message_rate;
        let now = Instant::now();
        conn.open(accepted, TokenBucket::full(rate, clock_ms(self.epoch, now)));
        if let Some(grant) = &conn.grant {
            debug!(conn = conn.token, subject = %grant.subject, "token accepted");
        }
        conn.io.counted = Counted::Open;
        metrics::add(&counters.opened, 1);
        let mut subs = Subscriptions {
            table: &mut self.topics,
            pending: &mut self.pending,
            requests: &mut self.next_request,
            clock_ms: clock_ms(self.epoch, now),
            rate: self.config.message_rate,
            max_held: self.config.max_send_queue,
            now,
            hub: &self.hub,
            worker: self.index,
            max: config.max_topics_per_connection,
        };
        for t in &topics {
            // Validated, within the per-connection cap and the token's topics, by `upgrade`.
            let _ = subs.subscribe(&mut conn.topics, None, slot, t);
        }
        self.decode(slot, buf);
    }

    /// The WebSocket phase: decode, answer, act. Stops while the connection's queue is at
    /// its cap (what the client's messages make the server send waits in that queue) or
    /// its message budget is used up: the rest of its input waits in `buf` (and reading
    /// pauses) until the queue drains or the budget refills; see [`Worker::resume_input`].
    fn decode(&mut self, slot: usize, buf: &mut BytesMut) {
        let config = &self.config;
        let now = Instant::now();
        let now_ms = clock_ms(self.epoch, now);
        let close_deadline = now + config.close_timeout;
        let conn: &mut Conn = &mut self.conns.slab[slot];
        if conn.is_input_held(config, now_ms) {
            conn.io.input_waiting = true;
            return;
        }
        let Conn {
            phase,
            queue,
            topics,
            token,
            grant,
            recoveries,
            offsets,
            tls,
            io,
            inbound,
            last_seen,
            ping_sent,
            ..
        } = conn;
        let Phase::Open(session) = phase else {
            buf.clear();
            return;
        };
        let counters = &self.hub.workers[self.index];
        let mut subs = Subscriptions {
            table: &mut self.topics,
            pending: &mut self.pending,
            requests: &mut self.next_request,
            clock_ms: clock_ms(self.epoch, now),
            rate: self.config.message_rate,
            max_held: self.config.max_send_queue,
            now,
            hub: &self.hub,
            worker: self.index,
            max: config.max_topics_per_connection,
        };
        loop {
            let queued = queue.queued_bytes() + tls.as_ref().map_or(0, |t| t.out.queued_bytes());
            // Past its queue's cap, or its message budget, its input waits.
            let over_rate = !session.close_sent() && !inbound.is_ready(now_ms, config.message_rate);
            if queued >= config.max_send_queue || over_rate {
                io.input_waiting = true;
                break;
            }
            match session.handle_read(buf) {
                Ok(Some(message)) => {
                    inbound.take(1, now_ms, config.message_rate);
                    // Only whole messages count as signs of life: a peer that trickles
                    // a frame a byte at a time still gets pinged.
                    *last_seen = now;
                    *ping_sent = None;
                    metrics::add(&counters.messages_in, 1);
                    metrics::add(&counters.bytes_in, message.payload_len() as u64);
                    let subscriber = Subscriber {
                        topics: &mut *topics,
                        grant: grant.as_deref(),
                        recoveries: &mut *recoveries,
                        offsets: &mut *offsets,
                        token: *token,
                        slot,
                        room: config.max_send_queue.saturating_sub(queued),
                        inbound: &mut *inbound,
                    };
                    if let Some(t) = on_message(config.app, session, message, &mut subs, subscriber)
                    {
                        subs.pending.wait(t, *token);
                    }
                    // Answer each message before decoding the next: every ping of a burst
                    // gets its pong (up to a few waiting; past them, the latest ping's).
                    queue_transmit(session, queue);
                }
                Ok(None) => break,
                Err(err) => {
                    debug!(conn = *token, error = %err, code = err.close_code().0, "protocol error");
                    break;
                }
            }
        }
        let midway = !buf.is_empty() || session.is_mid_message();
        conn.transmit(close_deadline);
        conn.time_message(midway, now + config.message_timeout);
    }

    /// Decodes the input that waited for connection `slot`'s queue to drain.
    fn resume_input(&mut self, slot: usize) {
        let conn = &mut self.conns.slab[slot];
        conn.io.input_waiting = false;
        let mut buf = std::mem::take(&mut conn.read_buf);
        self.decode(slot, &mut buf);
        let conn = &mut self.conns.slab[slot];
        conn.read_buf = if buf.is_empty() { BytesMut::new() } else { buf };
        Conns::mark(&mut self.conns.dirty, conn);
    }

    fn on_sent(&mut self, token: u64, result: io::Result<usize>, mut frames: Vec<Bytes>) {
        let Conns { slab, dirty } = &mut self.conns;
        let mut paused = false;
        if let Some(conn) = find(slab, token) {
            paused = conn
                .recoveries
                .iter()
                .any(|r| matches!(r.phase, RecoveryPhase::Paused { .. }));
            conn.io.sending = false;
            match result {
                Ok(n) => {
                    metrics::add(&self.hub.workers[self.index].bytes_out, n as u64);
                    conn.sent(&mut frames, n);
                }
                Err(_) => {
                    frames.clear();
                    conn.kill();
                }
            }
            Conns::mark(dirty, conn);
        }
        frames.clear();
        if self.spare_batches.len() < SPARE_BATCHES {
            self.spare_batches.push(frames);
        }
        if paused {
            self.read_next_pages(token);
        }
    }

    /// The end-of-turn pass over the connections this turn touched.
    ///
    /// A fanout to many connections is sent in chunks, and publishes that arrived in
    /// the meantime are queued between chunks: the connections not yet sent to carry
    /// them in the same `sendmsg`, instead of every publish waiting for the whole fanout
    /// before it (one publisher flat out, 10,000 subscribers: 248k -> 1.58M deliveries/s).
    fn settle(&mut self) -> io::Result<()> {
        let dirty = std::mem::take(&mut self.conns.dirty);
        let mut sends = 0usize;
        // Chunks well inside the completion queue: each chunk's completions are taken
        // out of the kernel's queue before the next is submitted, so a fanout to more
        // sockets than the queue holds never overflows it.
        let chunk = SETTLE_CHUNK.min(self.ring.completion_capacity() / 4).max(1);
        for &token in &dirty {
            if self.settle_one(token) {
                sends += 1;
                if sends.is_multiple_of(chunk) {
                    self.ring.submit()?;
                    self.ring.reap();
                    self.read_inbox();
                }
            }
        }
        let mut dirty = dirty;
        dirty.clear();
        if self.conns.dirty.is_empty() {
            self.conns.dirty = dirty;
            if !self.unsent_publishes.is_empty() {
                self.ring.submit()?;
                let now = Instant::now();
                let histogram = &self.hub.workers[self.index].publish_latency;
                for published in self.unsent_publishes.drain(..) {
                    histogram.observe(now - published);
                }
            }
        }
        Ok(())
    }

    /// Settles one connection; `true` if it started a send.
    fn settle_one(&mut self, token: u64) -> bool {
        let Some(conn) = self.conns.get(token) else {
            return false;
        };
        let mut started = false;
        conn.io.dirty = false;
        let fd = conn.socket.as_raw_fd();
        if !conn.io.dead {
            if !conn.io.sending && conn.has_pending() {
                let mut batch = self.spare_batches.pop().unwrap_or_default();
                conn.take_batch(&mut batch, MAX_IOV);
                self.ring.send(fd, token, batch);
                conn.io.sending = true;
                started = true;
            }
            let flushed = !conn.io.sending;
            if flushed && conn.io.fin_after_flush && !conn.io.fin_sent {
                conn.send_fin();
            }
            // Once the peer has sent FIN, what it sent before is still answered (input
            // that waited for the budget or the queue), then the connection ends.
            if flushed && conn.io.peer_done && !conn.io.input_waiting {
                conn.kill();
            }
        }
        if conn.io.dead {
            if !conn.io.receiving && !conn.io.sending {
                self.free(slot(token));
            }
            return started;
        }
        let backlog = conn.is_input_held(&self.config, clock_ms(self.epoch, Instant::now()));
        if conn.io.input_waiting && !backlog {
            self.resume_input(slot(token));
            return started;
        }
        if !conn.io.receiving && !conn.io.peer_done && !backlog {
            // A connection that has used much of its message budget is read a buffer at
            // a time: what the kernel hands over (and the server then holds) stays small
            // while it sends more than it may.
            if conn.is_sparing_input(&self.config, clock_ms(self.epoch, Instant::now())) {
                self.ring.recv_once(fd, token);
            } else {
                self.ring.recv_multishot(fd, token);
            }
            conn.io.receiving = true;
        } else if conn.io.receiving && !conn.io.recv_cancelled && backlog {
            self.ring.cancel_recv(token);
            conn.io.recv_cancelled = true;
        }
        started
    }

    /// Forgets a connection whose operations have all finished, closing its socket.
    fn free(&mut self, slot: usize) {
        let now = Instant::now();
        let conn = self.conns.slab.remove(slot);
        if conn.io.counted == Counted::Unupgraded {
            self.unupgraded.finished(conn.ip);
        }
        let mut subs = Subscriptions {
            table: &mut self.topics,
            pending: &mut self.pending,
            requests: &mut self.next_request,
            clock_ms: clock_ms(self.epoch, now),
            rate: self.config.message_rate,
            max_held: self.config.max_send_queue,
            now,
            hub: &self.hub,
            worker: self.index,
            max: 0,
        };
        for t in &conn.topics {
            let _ = subs.remove(t, slot, conn.token);
        }
        if conn.io.counted == Counted::Open {
            self.hub
                .release(conn.ip, self.config.max_connections_per_ip);
            let code = match &conn.phase {
                Phase::Open(session) => session.close_code(),
                _ => None,
            };
            self.hub.workers[self.index].closed(code);
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
            match msg {
                WorkerMsg::Publish {
                    topic,
                    broadcast,
                    ack,
                } => {
                    self.hub.taken(self.index, broadcast.cost());
                    let _ = ack.send(self.fanout(&topic, &broadcast));
                    taken += 1;
                    bytes += broadcast.plain.len();
                    if taken >= MAX_PUBLISHES_PER_TURN || bytes >= budget {
                        self.inbox_waiting = true;
                        return;
                    }
                }
                WorkerMsg::Confirmed(topic) => self.confirmed(&topic),
                WorkerMsg::History {
                    to,
                    topic,
                    recovered,
                } => self.recovered(to, &topic, recovered),
                WorkerMsg::Drain => self.start_drain(),
            }
        }
    }

    /// The broker confirmed `topic`: answers the subscribe commands that waited for it (a
    /// connection that has left, or unsubscribed meanwhile, gets no reply).
    fn confirmed(&mut self, topic: &Arc<str>) {
        // A confirmation from before an outage, or for an earlier arrival of the topic,
        // may still be in the inbox: only the hub's current state counts.
        if !self.hub.is_confirmed(topic) {
            return;
        }
        let close_deadline = Instant::now() + self.config.close_timeout;
        let Conns { slab, dirty } = &mut self.conns;
        for token in self.pending.take(topic) {
            if let Some(conn) = find(slab, token)
                && let Some(session) = conn.session()
            {
                let _ = session.send(&Message::text(commands::ok_reply("subscribe", topic)));
                conn.transmit(close_deadline);
                Conns::mark(dirty, conn);
            }
        }
    }

    /// A page of a connection's history is in (a reply to an earlier read, since
    /// replaced, is dropped): a gap notice if some is missing, then the missed messages.
    /// With more to come, the next page is read once the connection's queue has room;
    /// after the last, the live messages held meanwhile that the history did not have. A
    /// replay that passes the send-queue cap stops there: with the `close` policy the
    /// connection is closed as a slow consumer, with `drop` it gets a gap notice.
    fn recovered(&mut self, to: HistoryDest, topic: &Arc<str>, page: Recovered) {
        let config = &self.config;
        let cap = (config.max_send_queue, config.slow_consumer);
        let deadline = Instant::now() + config.close_timeout;
        let counters = &self.hub.workers[self.index];
        let Conns { slab, dirty } = &mut self.conns;
        let Some(conn) = find(slab, to.token) else {
            return;
        };
        let Some(at) = conn
            .recoveries
            .iter()
            .position(|r| r.topic == *topic && r.awaits(to.request))
        else {
            return;
        };
        Conns::mark(dirty, conn);
        if let Some(reason) = page.gap {
            conn.push_notice(commands::gap_notice(topic, reason), deadline);
        }
        // After the first page, the page starts after what was sent: a page that came
        // back empty (a read that failed) must not send any of it again.
        let mut last = match conn.recoveries[at].phase {
            RecoveryPhase::Fetching { after, .. } if conn.recoveries[at].fetched > 0 => {
                page.floor.max(after)
            }
            _ => page.floor,
        };
        let mut cut_short = false;
        // The page was cut to the queue's room when it was asked for; the queue may have
        // filled since. What does not fit under half the cap waits for the next page.
        let mut more = page.more;
        for (offset, message) in page.entries {
            if offset <= last {
                continue;
            }
            if conn.queued_bytes() >= config.max_send_queue / 2 {
                more = true;
                break;
            }
            last = offset;
            conn.recoveries[at].sent(message.payload_len());
            let broadcast = Arc::new(Broadcast::new(message, Some(offset)));
            match conn.push_broadcast(topic, &broadcast, cap, deadline, counters) {
                Delivered::Queued | Delivered::Skipped => {}
                Delivered::Dropped => {
                    cut_short = true;
                    break;
                }
                Delivered::ClosedSlow => {
                    conn.recoveries.clear();
                    return;
                }
            }
        }
        if more && !cut_short {
            conn.recoveries[at].phase = RecoveryPhase::Paused { after: last };
            self.read_next_pages(to.token);
            return;
        }
        finish_recovery(conn, at, last, cut_short, (cap, deadline, counters));
    }

    /// Reads the next page of connection `token`'s paused recoveries, each once its
    /// send queue has half its cap free: the replay goes at the reader's pace.
    fn read_next_pages(&mut self, token: u64) {
        let cap = self.config.max_send_queue;
        let Some(broker) = &self.hub.broker else {
            return;
        };
        let Some(conn) = find(&mut self.conns.slab, token) else {
            return;
        };
        let room = cap.saturating_sub(conn.queued_bytes());
        if room < cap / 2 {
            return;
        }
        // The room is shared by the recoveries that read a page now.
        let paused = conn
            .recoveries
            .iter()
            .filter(|r| matches!(r.phase, RecoveryPhase::Paused { .. }))
            .count();
        let budget = room / paused.max(1);
        for recovery in &mut conn.recoveries {
            let RecoveryPhase::Paused { after } = recovery.phase else {
                continue;
            };
            self.next_request += 1;
            let request = self.next_request;
            recovery.phase = RecoveryPhase::Fetching { request, after };
            let to = HistoryDest {
                worker: self.index,
                token,
                request,
            };
            let read = HistoryRead {
                after,
                to,
                budget,
                fetched: recovery.fetched,
                average: recovery.average(),
            };
            broker.request(BrokerRequest::History {
                topic: recovery.topic.clone(),
                read,
            });
        }
    }

    /// Queues a broadcast on every local subscriber of `topic`; returns how many got it.
    fn fanout(&mut self, topic: &str, broadcast: &Arc<Broadcast>) -> usize {
        let Some(subscribers) = self.topics.subscribers(topic) else {
            return 0;
        };
        let config = &self.config;
        let counters = &self.hub.workers[self.index];
        let deadline = Instant::now() + config.close_timeout;
        let (mut queued, mut dropped, mut closed) = (0, 0, 0);
        let Conns { slab, dirty } = &mut self.conns;
        for &id in subscribers {
            let Some(conn) = slab.get_mut(id) else {
                continue;
            };
            let cap = (config.max_send_queue, config.slow_consumer);
            match conn.deliver(topic, broadcast, cap, deadline, counters) {
                Delivered::Queued => queued += 1,
                Delivered::Dropped => dropped += 1,
                Delivered::ClosedSlow => closed += 1,
                Delivered::Skipped => continue,
            }
            Conns::mark(dirty, conn);
        }
        let stats = &self.hub.stats;
        stats.delivered.fetch_add(queued, Ordering::Relaxed);
        stats.dropped.fetch_add(dropped, Ordering::Relaxed);
        stats
            .slow_consumer_closes
            .fetch_add(closed, Ordering::Relaxed);
        if queued > 0 {
            self.unsent_publishes.push(broadcast.published);
        }
        queued as usize
    }

    /// Pings silent connections, closes unresponsive ones, ends those past a deadline.
    fn sweep(&mut self, now: Instant) {
        self.arm_accept();
        let config = &self.config;
        let hard_stop = self
            .draining
            .map(|deadline| deadline + config.close_timeout);
        let wall_clock = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut queued_bytes = 0;
        let Conns { slab, dirty } = &mut self.conns;
        for (_, conn) in slab.iter_mut() {
            queued_bytes += conn.queued_bytes() as u64;
            if conn.io.dead {
                continue;
            }
            if conn.io.input_waiting && !conn.is_input_held(config, clock_ms(self.epoch, now)) {
                // Its message budget has refilled: its input is read again.
                Conns::mark(dirty, conn);
            }
            if conn
                .recoveries
                .iter()
                .any(|r| r.is_overdue(now, RECOVERY_TIMEOUT))
            {
                for recovery in conn.recoveries.iter_mut() {
                    if recovery.is_overdue(now, RECOVERY_TIMEOUT) && recovery.abandon() {
                        let why = "the recovery did not finish in time";
                        let notice = commands::gap_notice(&recovery.topic, why);
                        if let Phase::Open(session) = &mut conn.phase {
                            let _ = session.send(&Message::text(notice));
                        }
                    }
                }
                conn.transmit(now + config.close_timeout);
                Conns::mark(dirty, conn);
            }
            let past = |deadline: Instant| now >= deadline;
            // A message's deadline (not while its input waits for the server's own
            // queue: then the client is not the one holding the message up).
            if conn.deadline.is_some_and(past)
                && conn.is_timing_message()
                && hard_stop.is_none_or(|stop| !past(stop))
            {
                if !conn.is_queue_full(config) {
                    let deadline = now + config.close_timeout;
                    conn.close(
                        CloseCode::POLICY,
                        "message not completed in time",
                        deadline,
                        false,
                    );
                    Conns::mark(dirty, conn);
                }
                continue;
            }
            if conn.deadline.is_some_and(past) || hard_stop.is_some_and(past) {
                if matches!(conn.phase, Phase::Handshake(_)) {
                    metrics::add(&self.hub.workers[self.index].handshake_timeouts, 1);
                }
                conn.kill();
                Conns::mark(dirty, conn);
                continue;
            }
            // Handshaking or closing: no pings. A message under way still gets pinged.
            if conn.deadline.is_some() && !conn.is_timing_message() {
                continue;
            }
            if conn
                .grant
                .as_ref()
                .is_some_and(|g| g.is_expired(wall_clock))
            {
                let deadline = now + config.close_timeout;
                conn.close(CloseCode::POLICY, "token expired", deadline, false);
                Conns::mark(dirty, conn);
                continue;
            }
            match conn.ping_sent {
                Some(sent) if now - sent >= config.pong_timeout => {
                    let deadline = now + config.close_timeout;
                    conn.close(CloseCode::GOING_AWAY, "pong timeout", deadline, true);
                }
                None if now - conn.last_seen >= config.ping_interval => {
                    let Some(session) = conn.session() else {
                        continue;
                    };
                    if session.send(&Message::Ping(Bytes::new())).is_ok() {
                        conn.transmit(now + config.close_timeout);
                        conn.ping_sent = Some(now);
                    }
                }
                _ => continue,
            }
            Conns::mark(dirty, conn);
        }
        let counters = &self.hub.workers[self.index];
        counters.queued_bytes.store(queued_bytes, Ordering::Relaxed);
        let unupgraded = self.unupgraded.len() as u64;
        counters.unupgraded.store(unupgraded, Ordering::Relaxed);
        counters
            .ring_overflows
            .store(self.ring.overflows(), Ordering::Relaxed);
        counters
            .ring_lost
            .store(self.ring.lost_completions(), Ordering::Relaxed);
    }

    /// Stops accepting and closes every connection with 1001, to be done by the drain
    /// timeout (upgrades still in their handshake get 503).
    fn start_drain(&mut self) {
        let deadline = Instant::now() + self.config.drain_timeout;
        self.draining = Some(deadline);
        let _ = socket2::SockRef::from(&self.listener).shutdown(Shutdown::Both);
        if self.accepting {
            self.ring.cancel_accept(LISTENER);
        }
        let Conns { slab, dirty } = &mut self.conns;
        for (_, conn) in slab.iter_mut() {
            conn.close(
                CloseCode::GOING_AWAY,
                "server shutting down",
                deadline,
                false,
            );
            Conns::mark(dirty, conn);
        }
    }

    /// Drained: every connection gone (or the drain's hard stop long past).
    fn finished(&self, now: Instant) -> bool {
        let Some(deadline) = self.draining else {
            return false;
        };
        (self.conns.slab.is_empty() && !self.accepting)
            || now >= deadline + self.config.close_timeout + EXIT_GRACE
    }
}

impl Drop for Worker {
    /// A worker that ends with connections still open (a drain's hard stop, an io_uring
    /// failure) gives back what they hold in the hub: their counts (global and per
    /// address), their topics' interest, and the publishes left in its inbox.
    fn drop(&mut self) {
        // Publishes left in the inbox no longer wait: the node's backlog must not count
        // them for ever (it would refuse every publish).
        while let Ok(msg) = self.inbox.try_recv() {
            if let WorkerMsg::Publish { broadcast, .. } = msg {
                self.hub.taken(self.index, broadcast.cost());
            }
        }
        let slots: Vec<usize> = self.conns.slab.iter().map(|(slot, _)| slot).collect();
        for slot in slots {
            self.free(slot);
        }
    }
}

/// The parts of a connection a subscription command works on.
struct Subscriber<'a> {
    topics: &'a mut Vec<Arc<str>>,
    grant: Option<&'a Grant>,
    recoveries: &'a mut Vec<Recovery>,
    offsets: &'a mut bool,
    token: u64,
    slot: usize,
    /// Bytes its send queue has room for.
    room: usize,
    /// Its message budget.
    inbound: &'a mut TokenBucket,
}

/// Subscribes with `since`: offsets from now on, and first what came after the given
/// offset (asked of the broker after the subscription, so nothing falls between). A
/// recovery of the topic already under way is replaced: a reply to its read is stale.
fn subscribe_since(
    subs: &mut Subscriptions<'_>,
    conn: Subscriber<'_>,
    topic: &str,
    since: Since,
) -> Result<Option<Arc<str>>, String> {
    let Some(broker) = subs.hub.broker.as_ref().filter(|b| b.keeps_history()) else {
        return Err("no history is kept (the nodes need --broker and --history)".into());
    };
    let pending = subs.subscribe(conn.topics, conn.grant, conn.slot, topic)?;
    *conn.offsets = true;
    if let Since::After(after) = since
        && let Some(name) = conn.topics.iter().find(|t| &***t == topic)
    {
        conn.recoveries.retain(|r| *r.topic != *topic);
        *subs.requests += 1;
        let to = HistoryDest {
            worker: subs.worker,
            token: conn.token,
            request: *subs.requests,
        };
        conn.recoveries.push(Recovery::new(
            name.clone(),
            (to.request, after),
            subs.max_held,
            subs.now,
        ));
        let read = HistoryRead {
            after,
            to,
            budget: conn.room,
            fetched: 0,
            average: 0,
        };
        broker.request(BrokerRequest::History {
            topic: name.clone(),
            read,
        });
    }
    Ok(pending)
}

/// What the application does with a message: echo it, or run a subscription command.
/// Returns a topic whose subscribe reply waits for the broker's confirmation.
fn on_message(
    app: App,
    session: &mut Session,
    message: Message,
    subs: &mut Subscriptions<'_>,
    conn: Subscriber<'_>,
) -> Option<Arc<str>> {
    let reply = match (app, &message) {
        (App::Echo, m) if m.is_data() => {
            let _ = session.send(&message);
            return None;
        }
        (App::PubSub, Message::Text(text)) => match commands::parse(text) {
            // Each command may cost a broker round trip and a history read: it counts as
            // COMMAND_COST messages of the connection's budget, and past it is refused.
            Ok(command)
                if !conn
                    .inbound
                    .take(COMMAND_COST - 1, subs.clock_ms, subs.rate) =>
            {
                metrics::add(&subs.hub.workers[subs.worker].commands_limited, 1);
                let (op, topic) = match &command {
                    Command::Subscribe { topic, .. } => ("subscribe", topic),
                    Command::Unsubscribe(topic) => ("unsubscribe", topic),
                };
                let why = format!(
                    "rate limited: at most {} commands a second",
                    subs.rate / COMMAND_COST
                );
                commands::error_reply(Some(op), Some(topic), &why)
            }
            Ok(Command::Subscribe { topic: t, since }) => {
                let subscribed = match since {
                    None => subs.subscribe(conn.topics, conn.grant, conn.slot, &t),
                    Some(since) => subscribe_since(subs, conn, &t, since),
                };
                match subscribed {
                    Ok(None) => commands::ok_reply("subscribe", &t),
                    Ok(Some(pending)) => return Some(pending),
                    Err(e) => commands::error_reply(Some("subscribe"), Some(&t), &e),
                }
            }
            Ok(Command::Unsubscribe(t)) => {
                match subs.unsubscribe(conn.topics, (conn.slot, conn.token), &t) {
                    Ok(waited) => {
                        // Every command gets its reply: a subscribe still waiting for the
                        // broker is answered first (it held until this unsubscribe).
                        if waited {
                            let reply = commands::ok_reply("subscribe", &t);
                            let _ = session.send(&Message::text(reply));
                        }
                        conn.recoveries.retain(|r| *r.topic != *t);
                        commands::ok_reply("unsubscribe", &t)
                    }
                    Err(e) => commands::error_reply(Some("unsubscribe"), Some(&t), &e),
                }
            }
            Err(reply) => reply,
        },
        (App::PubSub, Message::Binary(_)) => {
            commands::error_reply(None, None, "binary messages are not commands")
        }
        _ => return None,
    };
    let _ = session.send(&Message::text(reply));
    None
}

/// Ends connection `conn`'s recovery `at` once the history is sent up to `last` (or cut
/// short): the held live messages the history did not have go out, each once, as far as
/// the queue has room (what does not fit, or did not fit in the hold, is dropped and a gap
/// notice says so: a prompt reader is not closed for the size of its backlog), and live
/// messages up to `last` are skipped from now on.
fn finish_recovery(
    conn: &mut Conn,
    at: usize,
    mut last: Offset,
    cut_short: bool,
    (cap, deadline, counters): ((usize, SlowConsumer), Instant, &WorkerStats),
) {
    let recovery = &mut conn.recoveries[at];
    let held = recovery.take_held();
    let mut overflowed = recovery.overflowed || cut_short;
    let topic = recovery.topic.clone();
    if !cut_short {
        for broadcast in held {
            match broadcast.offset {
                Some(offset) if offset <= last => continue,
                Some(offset) => last = offset,
                None => {}
            }
            if !conn.has_room_for(broadcast.plain.len(), cap.0) {
                overflowed = true;
                break;
            }
            if conn.push_broadcast(&topic, &broadcast, cap, deadline, counters)
                == Delivered::ClosedSlow
            {
                conn.recoveries.clear();
                return;
            }
        }
    }
    conn.recoveries[at].phase = RecoveryPhase::Live { sent_to: last };
    if overflowed {
        let why = "more came during the recovery than can be held or queued";
        conn.push_notice(commands::gap_notice(&topic, why), deadline);
    }
}

/// Milliseconds from `epoch` to `now`, wrapping: the clock of connections' token buckets.
fn clock_ms(epoch: Instant, now: Instant) -> u32 {
    now.saturating_duration_since(epoch).as_millis() as u32
}

/// How often the sweep runs: a quarter of the shortest timeout it enforces.
fn sweep_period(config: &Config) -> Duration {
    [
        config.handshake_timeout,
        config.message_timeout,
        config.ping_interval,
        config.pong_timeout,
        config.close_timeout,
    ]
    .into_iter()
    .min()
    .unwrap_or(Duration::from_secs(1))
    .div_f64(4.0)
    .clamp(Duration::from_millis(10), Duration::from_secs(1))
}
