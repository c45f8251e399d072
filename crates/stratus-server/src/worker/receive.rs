//! The input side of the driver: accepting a socket (within the caps on sockets
//! mid-upgrade), received bytes (through TLS, if any) into the handshake or the frame
//! decoder, and what each whole message sets off. Input stops while a connection's queue
//! is at its cap or its message budget is used up, and resumes from the settle.

use std::io;
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::os::fd::OwnedFd;

use bytes::{Bytes, BytesMut};
use stratus_proto::handshake::Request;
use tracing::{debug, warn};

use crate::config::App;
use crate::connection::client::Asked;
use crate::connection::tls::TlsConn;
use crate::connection::upgrade::{Refusal, Upgrade, needs_connect_hook};
use crate::connection::{Client, Conn, Counted, sse, status_page};
use crate::model::conn_id::ConnId;
use crate::model::rate::TokenBucket;
use crate::stats;
use crate::worker::Worker;
use crate::worker::conns::Conns;
use crate::worker::hooks;
use crate::worker::pubsub;

impl Worker {
    /// A new socket: counted among those mid-upgrade (or closed at once, past its
    /// address's share), its receive armed by the settle.
    pub(super) fn on_accepted(&mut self, fd: OwnedFd) {
        let socket = TcpStream::from(fd);
        let ip = socket
            .peer_addr()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
        let id = self.conns.next_id();
        if self.unupgraded.admit(id, ip).is_err() {
            // Past its address's share of sockets mid-upgrade: closed at once.
            stats::add(&self.hub.workers[self.index].unupgraded_refused, 1);
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
        let now = self.clock.now;
        let deadline = now + self.config.handshake_timeout;
        let client = Client::new(self.config.handshake_limits, now, deadline, tls);
        self.conns
            .insert(Conn::new(socket, ip, id, client, Counted::Unupgraded));
        self.shed_unupgraded();
    }

    /// Past the cap on sockets mid-upgrade, closes the oldest of them.
    fn shed_unupgraded(&mut self) {
        let (conns, unupgraded) = (&mut self.conns, &mut self.unupgraded);
        let counters = &self.hub.workers[self.index];
        let is_live = |conns: &Conns, id| {
            conns
                .peek(id)
                .is_some_and(|c| c.counted() == Counted::Unupgraded)
        };
        while let Some(id) = unupgraded.shed(|id| is_live(conns, id)) {
            if let Some(conn) = conns.get(id) {
                conn.count_in(Counted::Nothing);
                unupgraded.finished(conn.ip());
                conn.kill();
                stats::add(&counters.unupgraded_shed, 1);
            }
        }
        unupgraded.compact(|id| is_live(conns, id));
    }

    pub(super) fn on_received(&mut self, id: ConnId, result: io::Result<usize>, more: bool) {
        let Some(conn) = self.conns.get(id) else {
            return;
        };
        conn.on_receive(&result, more);
        if matches!(result, Ok(n) if n > 0) {
            self.on_data(id);
        }
    }

    /// Feeds the bytes just received to connection `id`.
    fn on_data(&mut self, id: ConnId) {
        let close_deadline = self.clock.now + self.config.close_timeout;
        let Some(conn) = self.conns.get(id) else {
            return;
        };
        let mut input = conn.take_input(&mut self.scratch);
        if conn.takes_input() {
            match conn
                .client_mut()
                .receive(self.ring.received(), &mut input.buf)
            {
                Ok(true) => conn.peer_closed(),
                Ok(false) => {}
                Err(err) => {
                    debug!(conn = %id, error = %err, "TLS failed");
                    stats::add(&self.hub.workers[self.index].tls_errors, 1);
                    conn.client_mut().fail_tls(close_deadline);
                }
            }
        }
        if !conn.takes_input() {
            input.buf.clear();
        } else if conn.client().is_handshaking() {
            self.handshake(id, &mut input.buf);
        } else {
            self.decode(id, &mut input.buf);
        }
        if let Some(conn) = self.conns.get(id) {
            conn.return_input(input, &mut self.scratch);
        }
    }

    /// The HTTP phase: the status page, a refusal, or the upgrade (within the connection
    /// caps), then the topics the request asked for, then any frames that came with it.
    fn handshake(&mut self, id: ConnId, buf: &mut BytesMut) {
        let ctx = self.clock.context(&self.hub, &self.config);
        let config = ctx.config;
        let Some(conn) = self.conns.get(id) else {
            return;
        };
        let draining = self.draining.is_some();
        // The origin of an event stream's page, which may read a refusal.
        let mut page = None;
        let asked = match conn.client_mut().read_request(buf) {
            Ok(None) => return,
            Ok(Some((Request::Plain(request), head))) if sse::is_sse(&request) => {
                // An event stream: judged as the upgrade it stands for.
                page = sse::page_origin(&request, config);
                sse::as_upgrade(&request, config).map(|(request, stream)| {
                    let asked = Asked {
                        request,
                        stream: Some(stream),
                    };
                    (asked, head)
                })
            }
            Ok(Some((Request::Plain(request), _))) => {
                match status_page::answer(&request, config.app) {
                    Ok(page) => {
                        conn.client_mut().answer(page, ctx.close_deadline());
                        buf.clear();
                        return;
                    }
                    Err(refusal) => Err(refusal),
                }
            }
            Ok(Some((Request::Upgrade(request), head))) => {
                let asked = Asked {
                    request,
                    stream: None,
                };
                Ok((asked, head))
            }
            Err(refusal) => Err(refusal),
        };
        let accepted = asked.and_then(|(asked, head)| {
            match needs_connect_hook(&asked.request, config, draining)? {
                // The connection waits for the backend's answer (`worker::hooks`).
                true => hooks::ask_connect(&self.hub, self.index, conn, asked, &head, ctx.now)
                    .map(|()| None),
                false => {
                    hooks::accept(&self.hub, conn.ip(), config, draining, asked, None).map(Some)
                }
            }
        });
        let accepted = match accepted {
            Ok(None) => return,
            Ok(Some(accepted)) => Ok(accepted),
            Err(refusal) => Err(sse::readable(refusal, page.as_deref())),
        };
        self.finish_handshake(id, accepted, buf);
    }

    /// The end of the HTTP phase: the refusal, or the upgrade with the topics the request
    /// (or the connect hook) asked for, then any frames that came with it.
    pub(super) fn finish_handshake(
        &mut self,
        id: ConnId,
        accepted: Result<Upgrade, Refusal>,
        buf: &mut BytesMut,
    ) {
        let ctx = self.clock.context(&self.hub, &self.config);
        let config = ctx.config;
        let counters = &self.hub.workers[self.index];
        let Some(conn) = self.conns.get(id) else {
            return;
        };
        let mut accepted = match accepted {
            Ok(accepted) => accepted,
            Err(refusal) => {
                counters.refused(refusal.status);
                debug!(conn = %id, why = refusal.why, "handshake refused");
                let response = Bytes::from(refusal.response);
                conn.client_mut().answer(response, ctx.close_deadline());
                buf.clear();
                return;
            }
        };
        let mut topics = std::mem::take(&mut accepted.topics);
        let chosen = std::mem::take(&mut accepted.chosen);
        let resume = accepted.resume.take();
        if conn.counted() == Counted::Unupgraded {
            self.unupgraded.finished(conn.ip());
        }
        let budget = TokenBucket::full(config.message_rate, ctx.now_ms);
        conn.client_mut().open(accepted, budget);
        if let Some(grant) = conn.client().grant() {
            debug!(conn = %id, subject = %grant.subject, "token accepted");
            self.users.opened(&grant.subject, id);
        }
        conn.count_in(Counted::Open);
        stats::add(&counters.opened, 1);
        // URL topics whose subscribes ask the backend wait for it; the connect hook's
        // own choices do not ask again.
        pubsub::ask_upgrade_topics(&mut self.pubsub, &ctx, id, conn.client_mut(), &mut topics);
        if conn.client().is_streaming() {
            topics.extend(chosen);
            self.pubsub
                .on_stream(&ctx, id, conn.client_mut(), &topics, resume);
        } else {
            self.pubsub
                .on_upgrade_with(&ctx, id, conn.client_mut(), &topics, &chosen);
        }
        self.decode(id, buf);
    }

    /// The WebSocket phase: decode, answer, act. Stops while the connection's queue is at
    /// its cap (what the client's messages make the server send waits in that queue) or
    /// its message budget is used up: the rest of its input waits in `buf` (and reading
    /// pauses) until the queue drains or the budget refills; see
    /// [`Worker::resume_input`].
    fn decode(&mut self, id: ConnId, buf: &mut BytesMut) {
        let ctx = self.clock.context(&self.hub, &self.config);
        let config = ctx.config;
        let counters = &self.hub.workers[self.index];
        let Some(conn) = self.conns.get(id) else {
            return;
        };
        if conn.client().is_input_held(config, ctx.now_ms) {
            conn.hold_input();
            return;
        }
        if !conn.client().is_open() {
            buf.clear();
            return;
        }
        let client = conn.client_mut();
        let mut held = false;
        loop {
            // Past its queue's cap, or its message budget, its input waits.
            if client.is_input_held(config, ctx.now_ms) {
                held = true;
                break;
            }
            let Some(session) = client.session() else {
                break;
            };
            match session.handle_read(buf) {
                Ok(Some(message)) => {
                    let _ = client.spend(1, ctx.now_ms, config.message_rate);
                    // Only whole messages count as signs of life: a peer that trickles
                    // a frame a byte at a time still gets pinged.
                    client.seen(ctx.now);
                    stats::add(&counters.messages_in, 1);
                    stats::add(&counters.bytes_in, message.payload_len() as u64);
                    match config.app {
                        App::Echo if message.is_data() => {
                            if let Some(session) = client.session() {
                                let _ = session.send(&message);
                            }
                        }
                        App::Echo => {}
                        App::PubSub => self.pubsub.on_message(&ctx, id, client, &message),
                    }
                    // Answer each message before decoding the next: every ping of a burst
                    // gets its pong (up to a few waiting; past them, the latest ping's).
                    client.flush_session();
                }
                Ok(None) => break,
                Err(err) => {
                    debug!(conn = %id, error = %err, code = err.close_code().0, "protocol error");
                    break;
                }
            }
        }
        let midway = !buf.is_empty() || client.is_mid_message();
        client.transmit(ctx.close_deadline());
        client.time_message(midway, ctx.now + config.message_timeout);
        if held {
            conn.hold_input();
        }
    }

    /// Decodes the input that waited for connection `id`'s queue to drain or its budget
    /// to refill.
    pub(super) fn resume_input(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get(id) else {
            return;
        };
        let mut input = conn.take_input(&mut self.scratch);
        self.decode(id, &mut input.buf);
        if let Some(conn) = self.conns.get(id) {
            conn.return_input(input, &mut self.scratch);
        }
    }
}
