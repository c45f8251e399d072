//! What the unit tests share: a connection that has upgraded, what it was sent as its
//! peer reads it, and a hub (with or without a broker link) over inboxes the test holds.
//! No ring, no thread, no clock: the tests pass the time in.

use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use stratus_proto::{Limits, Message, Session};
use stratus_uring::Wake;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::connection::upgrade::Upgrade;
use crate::connection::{Client, Conn, Counted};
use crate::messages::{BrokerRequest, Outgoing, WorkerMsg};
use crate::model::auth::Grant;
use crate::model::broadcast::FrameChoice;
use crate::model::conn_id::ConnId;
use crate::model::history::{HistoryDest, HistoryRead, PAGE};
use crate::model::offset::Since;
use crate::model::protocol::Protocol;
use crate::model::rate::TokenBucket;
use crate::node::broker_link::{BrokerLink, ShardLink};
use crate::node::hub::{Hub, WorkerLink};
use crate::stats::BrokerStats;

/// A raw-mode connection upgraded at `now` (its 101 already sent), with what `grant`
/// allows.
pub(crate) fn open_client(config: &Config, now: Instant, grant: Option<Grant>) -> Client {
    open_client_speaking(Protocol::Raw, config, now, grant)
}

/// A connection speaking `protocol`, upgraded at `now`, with what `grant` allows.
pub(crate) fn open_client_speaking(
    protocol: Protocol,
    config: &Config,
    now: Instant,
    grant: Option<Grant>,
) -> Client {
    let deadline = now + config.handshake_timeout;
    let mut client = Client::new(config.handshake_limits, now, deadline, None);
    let upgrade = Upgrade {
        session: Session::server(config.limits),
        frames: FrameChoice::Plain,
        response: b"HTTP/1.1 101 Switching Protocols\r\n\r\n".to_vec(),
        topics: Vec::new(),
        grant,
        protocol,
        chosen: Vec::new(),
        resume: None,
    };
    client.open(upgrade, TokenBucket::full(config.message_rate, 0));
    take_output(&mut client);
    client
}

/// An upgraded connection named `id` on one end of a loopback socket pair, and the other
/// end.
pub(crate) fn loopback_conn(id: ConnId) -> (Conn, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let peer = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (socket, addr) = listener.accept().expect("accept");
    let client = open_client(&Config::default(), Instant::now(), None);
    (
        Conn::new(socket, addr.ip(), id, client, Counted::Open),
        peer,
    )
}

/// Everything `client` has queued, as if it were all sent.
pub(crate) fn take_output(client: &mut Client) -> BytesMut {
    let mut out = BytesMut::new();
    loop {
        let mut batch = Vec::new();
        client.take_batch(&mut batch, 1024);
        if batch.is_empty() {
            return out;
        }
        let written = batch.iter().map(Bytes::len).sum();
        for frame in &batch {
            out.extend_from_slice(frame);
        }
        client.sent(&mut batch, written);
    }
}

/// The messages `client` was sent since the last call, as its peer reads them.
pub(crate) fn sent_to(client: &mut Client) -> Vec<Message> {
    let mut out = take_output(client);
    let mut peer = Session::client(Limits::default(), [7; 32]);
    let mut messages = Vec::new();
    while let Ok(Some(message)) = peer.handle_read(&mut out) {
        messages.push(message);
    }
    assert!(out.is_empty(), "a partial frame was left: {out:?}");
    messages
}

/// The text messages `client` was sent since the last call.
pub(crate) fn texts_to(client: &mut Client) -> Vec<String> {
    sent_to(client)
        .into_iter()
        .filter_map(|m| match m {
            Message::Text(t) => Some(String::from_utf8_lossy(&t).into_owned()),
            _ => None,
        })
        .collect()
}

/// A first read of a history from `from`, with room for `budget` bytes, by connection 1
/// of worker 0.
pub(crate) fn history_read(from: Since, budget: usize) -> HistoryRead {
    HistoryRead {
        from,
        to: HistoryDest {
            worker: 0,
            conn: ConnId::new(1, 1),
            request: 1,
        },
        budget,
        fetched: 0,
        average: 0,
        page: PAGE,
        limit: 1000,
        resumes: true,
        shared_start: false,
    }
}

/// The broker thread's ends of a hub's broker link.
pub(crate) struct BrokerEnds {
    pub(crate) requests: mpsc::UnboundedReceiver<BrokerRequest>,
    pub(crate) publishes: mpsc::UnboundedReceiver<Outgoing>,
    pub(crate) stats: Arc<BrokerStats>,
}

impl BrokerEnds {
    /// The requests sent to the broker since the last call.
    pub(crate) fn requests(&mut self) -> Vec<BrokerRequest> {
        std::iter::from_fn(|| self.requests.try_recv().ok()).collect()
    }
}

/// A hub over `workers` inboxes the test reads, with `config`; with `broker`, a broker
/// link (connected) whose other ends the test holds.
pub(crate) fn hub(
    workers: usize,
    broker: bool,
    config: impl Into<Arc<Config>>,
) -> (
    Hub,
    Vec<mpsc::UnboundedReceiver<WorkerMsg>>,
    Option<BrokerEnds>,
) {
    let (hub, inboxes, ends) = sharded_hub(workers, usize::from(broker), config);
    (hub, inboxes, ends.into_iter().next())
}

/// A hub over `workers` inboxes the test reads, with `config`, and a broker link over
/// `shards` shards (each connected; none: no broker) whose other ends the test holds, in
/// shard order.
pub(crate) fn sharded_hub(
    workers: usize,
    shards: usize,
    config: impl Into<Arc<Config>>,
) -> (
    Hub,
    Vec<mpsc::UnboundedReceiver<WorkerMsg>>,
    Vec<BrokerEnds>,
) {
    let (links, inboxes) = (0..workers)
        .map(|_| {
            let (tx, rx) = mpsc::unbounded_channel();
            let wake = Arc::new(Wake::new().expect("an eventfd"));
            let backlog = AtomicUsize::new(0);
            (WorkerLink { tx, wake, backlog }, rx)
        })
        .unzip();
    let (mut shard_links, ends): (Vec<ShardLink>, Vec<BrokerEnds>) = (0..shards)
        .map(|_| {
            let (publish_tx, publishes) = mpsc::unbounded_channel();
            let (request_tx, requests) = mpsc::unbounded_channel();
            let stats = Arc::new(BrokerStats::default());
            stats.up.store(true, std::sync::atomic::Ordering::Release);
            let link = ShardLink::new(publish_tx, request_tx, stats.clone());
            let ends = BrokerEnds {
                requests,
                publishes,
                stats,
            };
            (link, ends)
        })
        .unzip();
    let link = match shard_links.is_empty() {
        true => None,
        false => {
            let first = shard_links.remove(0);
            Some(BrokerLink::new(first, shard_links))
        }
    };
    (Hub::new(links, link, config.into()), inboxes, ends)
}
