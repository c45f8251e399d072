//! The protocol side of one connection, with no socket: where it is in its life (reading
//! the upgrade, exchanging frames, or a last response on its way out), what waits to be
//! sent, its deadlines, its subscriptions and recoveries, and its message budget. Every
//! change goes through a method here; the worker moves bytes to and from it, and the
//! pub/sub logic works on it without a ring or a socket (and is tested so).
//!
//! The server closes TCP itself after a Close: once the Close handshake is done (or a last
//! response is queued) the client asks for FIN behind its last frame ([`Client::wants_fin`]),
//! and the peer has until the close deadline to close its side.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use stratus_proto::handshake::{HandshakeLimits, Request, RequestReader, UpgradeRequest};
use stratus_proto::{CloseCode, Message, Session};
use stratus_uring::SendQueue;

use crate::config::Config;
use crate::connection::conflation::Conflation;
use crate::connection::sse::Stream;
use crate::connection::tls::TlsConn;
use crate::connection::topic_list::TopicList;
use crate::connection::upgrade::{Refusal, Upgrade};
use crate::model::auth::Grant;
use crate::model::broadcast::FrameChoice;
use crate::model::moment::Moment;
use crate::model::protocol::{Notice, Protocol, sse};
use crate::model::rate::TokenBucket;
use crate::model::recovery::{RECOVERY_TIMEOUT, Recovery};

/// Moves `session`'s outgoing bytes to `queue`, frame boundaries marked (a pong as a
/// pong, which a later one may replace); returns how many bytes that was.
pub(crate) fn queue_transmit(session: &mut Session, queue: &mut SendQueue) -> usize {
    let mut moved = 0;
    if let Some(pong) = session.poll_pong() {
        let len = pong.len();
        if queue.push_pong(pong) {
            moved += len;
        }
    }
    while let Some((part, starts_frame)) = session.poll_transmit_part() {
        moved += part.len();
        queue.push_part(part, starts_frame);
    }
    moved
}

/// Where a connection is in its life.
// Nearly every connection is `Open`: boxing the session would add an allocation (and its
// header) to each of them to save bytes on the few still handshaking.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Phase {
    /// Reading the HTTP upgrade request.
    Handshake(RequestReader),
    /// Exchanging WebSocket frames.
    Open(Session),
    /// An HTTP response (a refusal, or the status page) is queued; the connection ends
    /// after it.
    Answered,
    /// The request is read and waits for the connect hook's answer (within the
    /// handshake deadline); what arrives meanwhile waits undecoded.
    Authorizing(Box<Asked>),
    /// An open Server-Sent Events stream (`connection::sse`): events go out unframed,
    /// heartbeats instead of pings, input is read and dropped; a close ends it with FIN
    /// behind what is queued. Nothing goes out, its 200 included, while `starting` of
    /// its topics wait for the broker's confirmation (see [`Client::hold_stream_start`]).
    Stream { starting: u16 },
}

/// A request waiting for the connect hook: an upgrade, or an event stream (judged as the
/// upgrade `request`, with what the stream adds).
pub(crate) struct Asked {
    pub(crate) request: UpgradeRequest,
    pub(crate) stream: Option<Stream>,
}

/// What a connection's deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deadline {
    /// The opening handshake must be done by then.
    Handshake,
    /// A message begun must be finished by then.
    Message,
    /// The peer must have closed TCP by then (a Close or a last response was sent).
    Close,
}

/// What only some connections need, boxed out of every connection's entry: made the first
/// time one of them is needed.
#[derive(Debug, Default)]
pub(crate) struct Extras {
    /// What its token allows (with auth on).
    pub(crate) grant: Option<Grant>,
    /// Recoveries in progress, one per topic: live messages on their topics go through
    /// them.
    pub(crate) recoveries: Vec<Recovery>,
    /// Its publish budget (protocol v1), from its first publish on.
    publishes: Option<TokenBucket>,
    /// It was asked to refresh its token (protocol v1).
    refresh_asked: bool,
    /// What the `conflate` policy holds while its queue is full.
    pub(crate) conflation: Option<Conflation>,
}

/// What the sweep found a connection to need (see [`Client::tick`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tick {
    /// Nothing.
    Quiet,
    /// Changed: it may have something to send (a ping, a Close, a gap notice), so it is
    /// settled.
    Changed,
    /// Past its deadline (`handshake`: the handshake's): it ends at once.
    Expired { handshake: bool },
}

/// The protocol side of a connection, owned by its worker inside its `Conn`.
pub(crate) struct Client {
    pub(super) phase: Phase,
    pub(super) queue: SendQueue,
    /// TLS, on a `wss://` listener: the queue holds plaintext, sealed when sent.
    tls: Option<Box<TlsConn>>,
    pub(super) frames: FrameChoice,
    /// The topics it is subscribed to.
    topics: TopicList,
    /// What only some connections need (a token's grant, recoveries), boxed so that the
    /// others do not pay for it.
    pub(super) extras: Option<Box<Extras>>,
    /// The protocol it speaks.
    pub(super) protocol: Protocol,
    /// Whether each message comes with its offset notice (asked for with `since`).
    pub(super) offsets: bool,
    /// The messages it may still send (refilled at the message rate).
    inbound: TokenBucket,
    /// When it last sent a whole message or, once pinged (`pinged`), when the ping
    /// since was sent.
    last_seen: Moment,
    pinged: bool,
    /// What its deadline is for, and when it falls.
    deadline: Option<(Deadline, Moment)>,
    /// Send FIN once everything queued is written.
    fin_due: bool,
}

impl Client {
    /// A new connection, reading its upgrade request until `deadline`.
    pub(crate) fn new(
        limits: HandshakeLimits,
        now: Instant,
        deadline: Instant,
        tls: Option<Box<TlsConn>>,
    ) -> Self {
        Self {
            phase: Phase::Handshake(RequestReader::new(limits)),
            queue: SendQueue::default(),
            tls,
            frames: FrameChoice::Plain,
            topics: TopicList::default(),
            extras: None,
            protocol: Protocol::Raw,
            offsets: false,
            inbound: TokenBucket::full(0, 0),
            last_seen: Moment::of(now),
            pinged: false,
            deadline: Some((Deadline::Handshake, Moment::of(deadline))),
            fin_due: false,
        }
    }

    // Getters.

    /// The session, once upgraded.
    pub(crate) fn session(&mut self) -> Option<&mut Session> {
        match &mut self.phase {
            Phase::Open(session) => Some(session),
            _ => None,
        }
    }

    /// Whether it is reading the upgrade request.
    pub(crate) fn is_handshaking(&self) -> bool {
        matches!(self.phase, Phase::Handshake(_))
    }

    /// Whether a last HTTP response is on its way (nothing more is read).
    pub(crate) fn is_answered(&self) -> bool {
        matches!(self.phase, Phase::Answered)
    }

    /// Whether it is upgraded (even if closing).
    pub(crate) fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open(_))
    }

    /// The close code of its Close handshake, once one was sent or received.
    pub(crate) fn close_code(&self) -> Option<CloseCode> {
        match &self.phase {
            Phase::Open(session) => session.close_code(),
            _ => None,
        }
    }

    /// The length of the frame being read, as far as its header says (0 if none is).
    pub(crate) fn wanted_len(&self) -> usize {
        match &self.phase {
            Phase::Open(session) => session.wanted_len(),
            _ => 0,
        }
    }

    /// Whether a message has begun and not ended (part of a frame, or of a fragmented
    /// message, was read).
    pub(crate) fn is_mid_message(&self) -> bool {
        matches!(&self.phase, Phase::Open(session) if session.is_mid_message())
    }

    /// What its token grants (with auth on).
    pub(crate) fn grant(&self) -> Option<&Grant> {
        self.extras.as_ref()?.grant.as_ref()
    }

    /// The protocol it speaks.
    pub(crate) fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// From now on its token grants `grant` (a refresh): it may be asked again before
    /// the new one expires.
    pub(crate) fn set_grant(&mut self, grant: Grant) {
        let extras = self.extras_mut();
        extras.grant = Some(grant);
        extras.refresh_asked = false;
    }

    /// Takes a publish from its publish budget at `now_ms` (`rate` a second, 0: no
    /// limit), if it has one.
    pub(crate) fn spend_publish(&mut self, now_ms: u32, rate: u32) -> bool {
        self.extras_mut()
            .publishes
            .get_or_insert_with(|| TokenBucket::full(rate, now_ms))
            .take(1, now_ms, rate)
    }

    /// Queues a notice in its protocol (none if its protocol has no such notice).
    pub(crate) fn notify(&mut self, notice: &Notice<'_>, close_deadline: Instant) {
        if let Some(text) = notice.text(self.protocol) {
            self.send_text(text, close_deadline);
        }
    }

    /// Its extras, made on first use.
    pub(super) fn extras_mut(&mut self) -> &mut Extras {
        self.extras.get_or_insert_with(Box::default)
    }

    /// Its recoveries in progress.
    pub(crate) fn recoveries(&self) -> &[Recovery] {
        self.extras.as_ref().map_or(&[], |e| &e.recoveries)
    }

    /// The topics it is subscribed to.
    pub(crate) fn topics(&self) -> &[Arc<str>] {
        self.topics.as_slice()
    }

    /// It is subscribed to `topic` (the worker's topic table's name; not yet among its
    /// topics) from now on.
    pub(crate) fn add_topic(&mut self, topic: Arc<str>) {
        self.topics.push(topic);
    }

    /// It is no longer subscribed to `name`: its copy of the name, if it was.
    pub(crate) fn remove_topic(&mut self, name: &str) -> Option<Arc<str>> {
        self.topics.remove(name)
    }

    /// Its recoveries in progress, one per topic, to change.
    pub(crate) fn recoveries_mut(&mut self) -> &mut Vec<Recovery> {
        &mut self.extras_mut().recoveries
    }

    /// From now on, its messages come with their offset notices.
    pub(crate) fn ask_offsets(&mut self) {
        self.offsets = true;
    }

    /// Bytes queued or in flight: plaintext not yet sealed, and sealed records not yet
    /// written (what the cap and read backpressure act on).
    pub(crate) fn queued_bytes(&self) -> usize {
        self.queue.queued_bytes() + self.tls.as_ref().map_or(0, |t| t.out.queued_bytes())
    }

    /// Whether its input waits (reading pauses, and what was read stays undecoded): its
    /// queue is at the cap (until it drains), or it has used up its message budget (until
    /// it refills, at `now_ms`).
    pub(crate) fn is_input_held(&self, config: &Config, now_ms: u32) -> bool {
        self.is_queue_full(config)
            || self.is_over_message_rate(config, now_ms)
            || self.is_authorizing()
    }

    /// Whether its queue is at the cap (what the client's messages make the server send
    /// waits there, so its input waits too).
    pub(crate) fn is_queue_full(&self, config: &Config) -> bool {
        self.queued_bytes() >= config.max_send_queue
    }

    /// Whether it has used half its message budget or more: its input is then read a
    /// buffer at a time (the budget starts with the upgrade).
    pub(crate) fn is_sparing_input(&self, config: &Config, now_ms: u32) -> bool {
        self.is_open() && self.inbound.is_low(now_ms, config.message_rate)
    }

    /// Whether it has used up its message budget (once it is closing, only the peer's
    /// Close is wanted, and its input is read whatever the budget).
    pub(crate) fn is_over_message_rate(&self, config: &Config, now_ms: u32) -> bool {
        !self.inbound.is_ready(now_ms, config.message_rate) && self.is_open_for_messages()
    }

    /// Whether it is open and not closing: messages flow both ways.
    pub(crate) fn is_open_for_messages(&self) -> bool {
        matches!(&self.phase, Phase::Open(session) if !session.close_sent()) || self.is_streaming()
    }

    /// Whether it is an open event stream (not yet closing).
    pub(crate) fn is_streaming(&self) -> bool {
        matches!(self.phase, Phase::Stream { .. })
    }

    /// Holds the stream's start, its 200 and everything queued after it, until the broker
    /// confirms `topics` more of its topics: a client that has seen the 200 may count on
    /// every publish made after it (as on a subscribe's reply), and there is no in-band
    /// reply to wait for instead. A close lets what is queued go.
    pub(crate) fn hold_stream_start(&mut self, topics: usize) {
        if let Phase::Stream { starting } = &mut self.phase {
            let topics = u16::try_from(topics).unwrap_or(u16::MAX);
            *starting = starting.saturating_add(topics);
        }
    }

    /// The broker confirmed one of the topics the stream's start waits for.
    pub(crate) fn stream_topic_confirmed(&mut self) {
        if let Phase::Stream { starting } = &mut self.phase {
            *starting = starting.saturating_sub(1);
        }
    }

    /// Whether its output is held (an event stream's start, see
    /// [`Client::hold_stream_start`]).
    fn is_held(&self) -> bool {
        matches!(self.phase, Phase::Stream { starting } if starting > 0)
    }

    /// When its token expires, if a protocol v1 connection should now be asked (once)
    /// for a fresh one: within `refresh_lead` of the expiry, at `unix_s`.
    fn refresh_due(&mut self, config: &Config, unix_s: u64) -> Option<u64> {
        if self.protocol != Protocol::V1 {
            return None;
        }
        let extras = self.extras.as_mut()?;
        let expires = extras.grant.as_ref()?.expires;
        let lead = config.refresh_lead.as_secs();
        if extras.refresh_asked || unix_s.saturating_add(lead) < expires || unix_s >= expires {
            return None;
        }
        extras.refresh_asked = true;
        Some(expires)
    }

    /// Whether a deadline is set, for `what`.
    fn has_deadline(&self, what: Deadline) -> bool {
        self.deadline.is_some_and(|(what_for, _)| what_for == what)
    }

    /// Sets the deadline: `what` must be done by `at`.
    fn set_deadline(&mut self, what: Deadline, at: Instant) {
        self.deadline = Some((what, Moment::of(at)));
    }

    /// Whether the deadline set is a message's.
    pub(crate) fn is_timing_message(&self) -> bool {
        self.has_deadline(Deadline::Message)
    }

    /// Whether anything waits to be sent (on TLS: records rustls has to send, and the
    /// close_notify that goes before FIN).
    pub(crate) fn has_pending(&self) -> bool {
        if self.is_held() {
            return false;
        }
        self.queue.has_pending()
            || self.tls.as_ref().is_some_and(|t| {
                t.out.has_pending() || t.wants_write() || (self.fin_due && !t.notified())
            })
    }

    /// Whether it wants FIN sent once everything queued is written.
    pub(crate) fn wants_fin(&self) -> bool {
        self.fin_due
    }

    // Input.

    /// Takes `n` more messages' worth from its budget at `now_ms`, if it has them.
    pub(crate) fn spend(&mut self, n: u32, now_ms: u32, rate: u32) -> bool {
        self.inbound.take(n, now_ms, rate)
    }

    /// A whole message arrived at `now`: a sign of life.
    pub(crate) fn seen(&mut self, now: Instant) {
        self.last_seen = Moment::of(now);
        self.pinged = false;
    }

    /// Received ciphertext, on TLS: decrypts it into `plain`; `Ok(true)` once the peer has
    /// sent close_notify. Plain connections pass `received` through.
    pub(crate) fn receive(
        &mut self,
        received: &[u8],
        plain: &mut BytesMut,
    ) -> Result<bool, rustls::Error> {
        match &mut self.tls {
            None => {
                plain.extend_from_slice(received);
                Ok(false)
            }
            Some(tls) => tls.receive(received, plain),
        }
    }

    /// Reads the request from `buf`: the request and its head (split off `buf`) once
    /// complete, `Ok(None)` while incomplete, or the refusal to send.
    pub(crate) fn read_request(
        &mut self,
        buf: &mut BytesMut,
    ) -> Result<Option<(Request, BytesMut)>, Refusal> {
        let Phase::Handshake(reader) = &mut self.phase else {
            return Ok(None);
        };
        match reader.read_request(buf) {
            Ok(Some((request, head_len))) => Ok(Some((request, buf.split_to(head_len)))),
            Ok(None) => Ok(None),
            Err(err) => Err(Refusal::from(&err)),
        }
    }

    // Transitions.

    /// Upgrades to WebSocket with the 101 response queued first; `inbound` is its
    /// message budget, full.
    pub(crate) fn open(&mut self, upgrade: Upgrade, inbound: TokenBucket) {
        self.inbound = inbound;
        self.phase = match upgrade.protocol {
            Protocol::Sse => Phase::Stream { starting: 0 },
            _ => Phase::Open(upgrade.session),
        };
        self.frames = upgrade.frames;
        if let Some(grant) = upgrade.grant {
            self.extras_mut().grant = Some(grant);
        }
        self.protocol = upgrade.protocol;
        self.deadline = None;
        self.queue.push(Bytes::from(upgrade.response));
    }

    /// Waits for the connect hook with `asked` (read, not yet answered): its input is
    /// held until [`Client::take_authorizing`].
    pub(crate) fn authorize(&mut self, asked: Asked) {
        self.phase = Phase::Authorizing(Box::new(asked));
    }

    /// Whether it waits for the connect hook.
    pub(crate) fn is_authorizing(&self) -> bool {
        matches!(self.phase, Phase::Authorizing(_))
    }

    /// The request that waited for the connect hook, once it has answered; the caller
    /// then opens the connection or answers it (until then nothing more is read).
    pub(crate) fn take_authorizing(&mut self) -> Option<Asked> {
        match std::mem::replace(&mut self.phase, Phase::Answered) {
            Phase::Authorizing(asked) => Some(*asked),
            other => {
                self.phase = other;
                None
            }
        }
    }

    /// Sends a last HTTP response (a refusal, the status page), then FIN; the peer has
    /// until `deadline` to close.
    pub(crate) fn answer(&mut self, response: Bytes, deadline: Instant) {
        self.phase = Phase::Answered;
        self.queue.push(response);
        self.fin_due = true;
        self.set_deadline(Deadline::Close, deadline);
    }

    /// A TLS failure (bad record, failed handshake): the alert rustls queued goes out,
    /// then FIN; nothing more is read.
    pub(crate) fn fail_tls(&mut self, deadline: Instant) {
        self.phase = Phase::Answered;
        self.fin_due = true;
        self.set_deadline(Deadline::Close, deadline);
    }

    /// Moves the session's outgoing frames to the send queue, and notes a close in
    /// progress: FIN once the Close handshake is done, and a deadline for it. Once both
    /// Closes are exchanged the peer has at most `close_deadline` to close TCP, even if an
    /// earlier, longer deadline (a drain's) was set.
    pub(crate) fn transmit(&mut self, close_deadline: Instant) {
        let Phase::Open(session) = &mut self.phase else {
            return;
        };
        queue_transmit(session, &mut self.queue);
        if session.is_closed() {
            self.fin_due = true;
            let at = Moment::of(close_deadline);
            let at = match self.deadline {
                Some((Deadline::Close, set)) => set.earliest(at),
                _ => at,
            };
            self.deadline = Some((Deadline::Close, at));
        } else if session.close_sent() && !self.has_deadline(Deadline::Close) {
            self.set_deadline(Deadline::Close, close_deadline);
        }
    }

    /// Times the message in progress: while one has begun (part of a frame, or of a
    /// fragmented message, waits) it must be done by `deadline`, set when it began; once
    /// none is, there is no deadline. A connection that is closing keeps its close
    /// deadline.
    pub(crate) fn time_message(&mut self, midway: bool, deadline: Instant) {
        if !self.is_open_for_messages() {
            return;
        }
        if !midway {
            self.deadline = None;
        } else if !self.has_deadline(Deadline::Message) {
            self.set_deadline(Deadline::Message, deadline);
        }
    }

    /// Starts a server-side close with `code` (a message's deadline gives way to the
    /// close's). With `discard`, frames not yet sent are dropped so the Close goes next
    /// (a slow consumer would otherwise never see it).
    pub(crate) fn close(
        &mut self,
        code: CloseCode,
        reason: &str,
        deadline: Instant,
        discard: bool,
    ) {
        if self.is_timing_message() {
            self.deadline = None;
        }
        if self.is_streaming() {
            // An event stream has no Close: what is queued goes out (unless discarded),
            // then FIN.
            if discard {
                self.queue.discard_pending();
            }
            self.phase = Phase::Answered;
            self.fin_due = true;
            self.set_deadline(Deadline::Close, deadline);
            return;
        }
        let Phase::Open(session) = &mut self.phase else {
            return;
        };
        if session.close_sent() {
            return;
        }
        session.close(code, reason);
        if discard {
            self.queue.discard_pending();
        }
        self.transmit(deadline);
    }

    /// Pings it at `now` (a silent connection), unless it is closing.
    fn ping(&mut self, now: Instant, close_deadline: Instant) {
        if self.is_streaming() {
            // A heartbeat, which expects no answer; only on an idle stream (anything
            // queued keeps the stream alive already, and a slow reader's queue does not
            // grow with heartbeats).
            if !self.queue.has_pending() {
                self.queue.push(Bytes::from_static(sse::HEARTBEAT));
            }
            self.last_seen = Moment::of(now);
            return;
        }
        let Some(session) = self.session() else {
            return;
        };
        if session.send(&Message::Ping(Bytes::new())).is_ok() {
            self.transmit(close_deadline);
            self.last_seen = Moment::of(now);
            self.pinged = true;
        }
    }

    /// Queues a text message the server makes itself (a reply, a notice), unless it is
    /// closing. Past the send-queue cap too: a reply answers one of the client's own
    /// messages, whose input waits while the queue is full, and a gap notice (at most one
    /// per recovery) must reach a client that lost messages whatever the slow-consumer
    /// policy did.
    pub(crate) fn send_text(&mut self, text: String, close_deadline: Instant) {
        if self.is_streaming() {
            self.queue.push(Bytes::from(text));
            return;
        }
        if let Some(session) = self.session().filter(|s| !s.close_sent()) {
            let _ = session.send(&Message::text(text));
            self.transmit(close_deadline);
        }
    }

    /// The sweep's look at it at `now` (`unix_s` on the wall clock, for token expiry;
    /// `hard_stop`: a drain's end): gives up recoveries past their time, closes it past a
    /// message's deadline (unless its input waits for the server), with an expired token,
    /// or with a ping unanswered, pings it when silent, and says when it is past a
    /// deadline and must end at once.
    pub(crate) fn tick(
        &mut self,
        config: &Config,
        now: Instant,
        unix_s: u64,
        hard_stop: Option<Instant>,
    ) -> Tick {
        let close_deadline = now + config.close_timeout;
        let mut tick = Tick::Quiet;
        if self
            .recoveries()
            .iter()
            .any(|r| r.is_overdue(now, RECOVERY_TIMEOUT))
        {
            let mut abandoned = Vec::new();
            for recovery in self.recoveries_mut() {
                if recovery.is_overdue(now, RECOVERY_TIMEOUT) && recovery.abandon() {
                    abandoned.push(recovery.topic.clone());
                }
            }
            for topic in abandoned {
                let reason = "the recovery did not finish in time";
                self.notify(
                    &Notice::Gap {
                        topic: &topic,
                        reason,
                    },
                    close_deadline,
                );
            }
            tick = Tick::Changed;
        }
        let moment = Moment::of(now);
        let deadline_past = self.deadline.is_some_and(|(_, at)| at.is_reached(moment));
        // A message's deadline (not while its input waits for the server's own queue:
        // then the client is not the one holding the message up).
        let past = |at: Instant| now >= at;
        if deadline_past && self.is_timing_message() && hard_stop.is_none_or(|stop| !past(stop)) {
            if self.is_queue_full(config) {
                return tick;
            }
            let why = "message not completed in time";
            self.close(CloseCode::POLICY, why, close_deadline, false);
            return Tick::Changed;
        }
        if deadline_past || hard_stop.is_some_and(past) {
            return Tick::Expired {
                handshake: self.is_handshaking(),
            };
        }
        // Handshaking or closing: no pings. A message under way still gets pinged.
        if self.deadline.is_some() && !self.is_timing_message() {
            return tick;
        }
        if let Some(expires) = self.refresh_due(config, unix_s) {
            self.notify(&Notice::Refresh { expires }, close_deadline);
            return Tick::Changed;
        }
        if self.grant().is_some_and(|g| g.is_expired(unix_s)) {
            self.close(CloseCode::POLICY, "token expired", close_deadline, false);
            return Tick::Changed;
        }
        let silent = moment.since(self.last_seen);
        match self.pinged {
            true if silent >= config.pong_timeout => {
                self.close(CloseCode::GOING_AWAY, "pong timeout", close_deadline, true);
                Tick::Changed
            }
            false if silent >= config.ping_interval => {
                self.ping(now, close_deadline);
                Tick::Changed
            }
            _ => tick,
        }
    }

    // Output.

    /// Moves the next bytes to send into `batch` (empty): queued frames, or on TLS the
    /// records sealed from them (with close_notify once a FIN is due and all is sealed).
    pub(crate) fn take_batch(&mut self, batch: &mut Vec<Bytes>, max: usize) {
        if self.is_held() {
            return;
        }
        let Some(tls) = &mut self.tls else {
            self.queue.take_batch(batch, max);
            return;
        };
        tls.seal(&mut self.queue, batch);
        if self.fin_due && !self.queue.has_pending() {
            tls.close_notify();
        }
        tls.out.take_batch(batch, max);
    }

    /// Records that the first `written` bytes of `batch` (from
    /// [`take_batch`](Self::take_batch)) were sent.
    pub(crate) fn sent(&mut self, batch: &mut Vec<Bytes>, written: usize) {
        match &mut self.tls {
            Some(tls) => tls.out.sent(batch, written),
            None => self.queue.sent(batch, written),
        }
    }

    /// Moves what the session made (replies, pongs) to the queue; the bytes moved.
    pub(crate) fn flush_session(&mut self) -> usize {
        match &mut self.phase {
            Phase::Open(session) => queue_transmit(session, &mut self.queue),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::testing::{open_client, sent_to};

    /// The close code of the Close among `messages`, if there is one.
    fn close_code(messages: &[Message]) -> Option<u16> {
        messages.iter().find_map(|m| match m {
            Message::Close(frame) => frame.as_ref().map(|f| f.code().0),
            _ => None,
        })
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// The protocol side is most of a connection's box (see the worker's table): cold
    /// state (TLS, extras, queued frames, a frame cut across reads) stays behind pointers.
    #[test]
    fn a_client_leaves_room_in_the_224_byte_connection() {
        assert!(
            size_of::<Client>() <= 168,
            "a client is {} bytes",
            size_of::<Client>()
        );
    }

    #[test]
    fn a_silent_connection_is_pinged_then_closed_if_it_does_not_answer() {
        let config = Config::default();
        let start = Instant::now();
        let mut client = open_client(&config, start, None);
        let at = |s: u64| start + secs(s);
        assert_eq!(client.tick(&config, at(29), 0, None), Tick::Quiet);
        assert_eq!(client.tick(&config, at(30), 0, None), Tick::Changed);
        assert!(matches!(sent_to(&mut client)[..], [Message::Ping(_)]));
        assert_eq!(
            client.tick(&config, at(39), 0, None),
            Tick::Quiet,
            "the pong has 10 s"
        );
        // An answer (any whole message) is a sign of life.
        client.seen(at(39));
        assert_eq!(client.tick(&config, at(50), 0, None), Tick::Quiet);
        assert_eq!(
            client.tick(&config, at(69), 0, None),
            Tick::Changed,
            "pinged again"
        );
        sent_to(&mut client);
        assert_eq!(client.tick(&config, at(79), 0, None), Tick::Changed);
        assert_eq!(
            close_code(&sent_to(&mut client)),
            Some(1001),
            "pong timeout"
        );
        assert!(!client.is_open_for_messages(), "closing");
    }

    #[test]
    fn an_expired_token_closes_its_connection_with_1008() {
        let config = Config::default();
        let now = Instant::now();
        let grant = Grant::new("u", &["*"], 1_000);
        let mut client = open_client(&config, now, Some(grant));
        assert_eq!(client.tick(&config, now, 999, None), Tick::Quiet);
        assert_eq!(client.tick(&config, now, 1_000, None), Tick::Changed);
        assert_eq!(close_code(&sent_to(&mut client)), Some(1008));
    }

    #[test]
    fn a_message_begun_must_end_in_time_unless_its_input_waits_for_the_server() {
        let config = Config::default();
        let now = Instant::now();
        let mut client = open_client(&config, now, None);
        client.time_message(true, now + secs(30));
        client.time_message(true, now + secs(40));
        assert!(client.is_timing_message());
        assert_eq!(client.tick(&config, now + secs(29), 0, None), Tick::Quiet);
        assert_eq!(
            client.tick(&config, now + secs(30), 0, None),
            Tick::Changed,
            "from when it began"
        );
        assert_eq!(close_code(&sent_to(&mut client)), Some(1008));
        // With the server's queue full, the client is not the one holding it up.
        let mut waiting = open_client(&config, now, None);
        waiting.time_message(true, now + secs(30));
        waiting
            .queue
            .push(Bytes::from(vec![0; config.max_send_queue]));
        assert_eq!(waiting.tick(&config, now + secs(31), 0, None), Tick::Quiet);
        // A message that ended clears its deadline.
        let mut done = open_client(&config, now, None);
        done.time_message(true, now + secs(30));
        done.time_message(false, now + secs(30));
        assert!(!done.is_timing_message());
    }

    #[test]
    fn past_the_handshake_or_close_deadline_a_connection_ends_at_once() {
        let config = Config::default();
        let now = Instant::now();
        let limits = config.handshake_limits;
        let mut handshaking = Client::new(limits, now, now + secs(10), None);
        assert_eq!(
            handshaking.tick(&config, now + secs(9), 0, None),
            Tick::Quiet
        );
        assert_eq!(
            handshaking.tick(&config, now + secs(10), 0, None),
            Tick::Expired { handshake: true }
        );
        let mut closing = open_client(&config, now, None);
        closing.close(CloseCode::NORMAL, "bye", now + secs(3), false);
        assert!(closing.has_deadline(Deadline::Close));
        assert_eq!(
            closing.tick(&config, now + secs(2), 0, None),
            Tick::Quiet,
            "no pings while closing"
        );
        assert_eq!(
            closing.tick(&config, now + secs(3), 0, None),
            Tick::Expired { handshake: false }
        );
        // A drain's hard stop ends even a quiet connection.
        let mut open = open_client(&config, now, None);
        let stop = Some(now + secs(1));
        assert_eq!(
            open.tick(&config, now + secs(1), 0, stop),
            Tick::Expired { handshake: false }
        );
    }
}
