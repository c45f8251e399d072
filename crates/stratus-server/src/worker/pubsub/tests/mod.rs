//! The worker's pub/sub driven directly: connections in a map, a hub over inboxes the
//! test reads, a broker link whose requests the test answers, and the time passed in.
//! `raw` drives raw mode's commands and recoveries, `v1` protocol v1's.

mod hooked;
mod raw;
mod sse;
mod v1;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use stratus_proto::Message;
use tokio::sync::mpsc;

use super::*;
use crate::config::{Config, SlowConsumer};
use crate::messages::{BrokerRequest, WorkerMsg};
use crate::model::auth::Grant;
use crate::model::publication::Publication;
use crate::testing::{self, BrokerEnds};

/// The connections, as the worker's table would hand them over.
#[derive(Default)]
struct Map(HashMap<ConnId, Client>);

impl Clients for Map {
    fn client(&mut self, id: ConnId) -> Option<&mut Client> {
        self.0.get_mut(&id)
    }
}

/// One worker's pub/sub, its connections, and the node around it.
struct World {
    config: Arc<Config>,
    hub: Hub,
    inbox: mpsc::UnboundedReceiver<WorkerMsg>,
    broker: Option<BrokerEnds>,
    pubsub: PubSub,
    clients: Map,
    now: Instant,
    now_ms: u32,
    next_slot: usize,
}

impl World {
    /// A worker of a node with the local broker.
    fn local(config: Config) -> Self {
        Self::new(config, false)
    }

    /// A worker of a node with a Redis broker, its topics keeping `history` messages.
    fn with_broker(config: Config, history: usize) -> Self {
        Self::new(Config { history, ..config }, true)
    }

    fn new(config: Config, broker: bool) -> Self {
        let config = Arc::new(config);
        let (hub, mut inboxes, broker) = testing::hub(1, broker, config.clone());
        Self {
            config,
            hub,
            inbox: inboxes.remove(0),
            broker,
            pubsub: PubSub::new(0),
            clients: Map::default(),
            now: Instant::now(),
            now_ms: 0,
            next_slot: 0,
        }
    }

    /// Runs `f` with the pub/sub, the connections and a context for now.
    fn with<R>(&mut self, f: impl FnOnce(&mut PubSub, &mut Map, &Context<'_>) -> R) -> R {
        let ctx = Context {
            hub: &self.hub,
            config: &self.config,
            now: self.now,
            now_ms: self.now_ms,
        };
        f(&mut self.pubsub, &mut self.clients, &ctx)
    }

    /// A new raw-mode connection, upgraded, with what `grant` allows.
    fn connect(&mut self, grant: Option<Grant>) -> ConnId {
        self.connect_speaking(Protocol::Raw, grant)
    }

    /// A new connection speaking `protocol`, upgraded, with what `grant` allows.
    fn connect_speaking(&mut self, protocol: Protocol, grant: Option<Grant>) -> ConnId {
        self.next_slot += 1;
        let id = ConnId::new(self.next_slot, 1);
        let client = testing::open_client_speaking(protocol, &self.config, self.now, grant);
        self.clients.0.insert(id, client);
        id
    }

    fn client(&mut self, id: ConnId) -> &mut Client {
        self.clients.0.get_mut(&id).expect("connected")
    }

    /// Connection `id` sends `message`.
    fn send(&mut self, id: ConnId, message: Message) {
        self.with(|pubsub, clients, ctx| {
            let client = clients.0.get_mut(&id).expect("connected");
            pubsub.on_message(ctx, id, client, &message);
        });
    }

    /// Connection `id` sends the JSON command `text`.
    fn command(&mut self, id: ConnId, text: &str) {
        self.send(id, Message::text(text.to_owned()));
    }

    /// The text messages connection `id` was sent since the last look.
    fn texts(&mut self, id: ConnId) -> Vec<String> {
        testing::texts_to(self.client(id))
    }

    /// A broadcast on `topic` reaches this worker, at `offset` in its history.
    fn publish(&mut self, topic: &str, text: &str, offset: Option<Offset>) -> Fanout {
        self.publish_publication(topic, Publication::text(text), offset)
    }

    /// `publication` on `topic` reaches this worker, at `offset` in its history.
    fn publish_publication(
        &mut self,
        topic: &str,
        publication: Publication,
        offset: Option<Offset>,
    ) -> Fanout {
        let broadcast = Arc::new(Broadcast::new(
            Arc::from(topic),
            publication,
            offset,
            self.now,
        ));
        self.with(|pubsub, clients, ctx| pubsub.fan_out(ctx, clients, &broadcast))
    }

    /// The broker confirms `topic` for the node, and the confirmation reaches the worker.
    fn confirm(&mut self, topic: &str, arrival: u64) {
        let topic: Arc<str> = Arc::from(topic);
        self.hub.confirm(&topic, arrival);
        self.pump();
    }

    /// Hands the worker what waits in its inbox, as its loop would.
    fn pump(&mut self) {
        while let Ok(msg) = self.inbox.try_recv() {
            self.with(|pubsub, clients, ctx| match msg {
                WorkerMsg::Publish { broadcast, ack } => {
                    ctx.hub.taken(0, broadcast.cost());
                    let fanout = pubsub.fan_out(ctx, clients, &broadcast);
                    let _ = ack.send(fanout.queued as usize);
                }
                WorkerMsg::Confirmed(topic) => pubsub.on_confirmed(ctx, clients, &topic),
                WorkerMsg::Gap { topic, reason } => pubsub.on_gap(ctx, clients, &topic, reason),
                WorkerMsg::History { to, topic, page } => {
                    pubsub.on_history_page(ctx, clients, to, &topic, page);
                }
                WorkerMsg::Published { to, topic, result } => {
                    pubsub.on_published(ctx, clients, to, &topic, result);
                }
                WorkerMsg::Drain | WorkerMsg::User { .. } => {}
                WorkerMsg::Hooked { to, answer } => {
                    pubsub.on_hook_answer(ctx, clients, to.conn, answer);
                }
                WorkerMsg::Presence { to, topic, answer } => {
                    pubsub.on_presence(ctx, clients, to, &topic, answer);
                }
            });
        }
    }

    /// `publication` published on `topic` through the node (its history included), and
    /// handed to the worker.
    fn publish_through_node(&mut self, topic: &str, publication: Publication) -> Option<Offset> {
        let delivery = self.hub.publish(topic, publication).expect("published");
        self.pump();
        delivery.offset()
    }

    /// Connection `id` has sent what was queued for it: the worker's after-send work.
    fn sent(&mut self, id: ConnId) {
        self.with(|pubsub, clients, ctx| {
            let client = clients.client(id).expect("connected");
            pubsub.on_sent(ctx, id, client);
        });
    }

    /// The requests the worker sent the broker since the last look.
    fn requests(&mut self) -> Vec<BrokerRequest> {
        self.broker.as_mut().expect("a broker").requests()
    }

    /// The history reads among the requests since the last look.
    fn history_reads(&mut self) -> Vec<(Arc<str>, HistoryRead)> {
        self.requests()
            .into_iter()
            .filter_map(|r| match r {
                BrokerRequest::History { topic, read } => Some((topic, read)),
                _ => None,
            })
            .collect()
    }

    /// The broker answers `read` with `page`.
    fn answer(&mut self, topic: &str, read: HistoryRead, page: HistoryPage) {
        let topic: Arc<str> = Arc::from(topic);
        self.with(|pubsub, clients, ctx| {
            pubsub.on_history_page(ctx, clients, read.to, &topic, page)
        });
    }
}

/// A worker of a node keeping a history, with its send queues capped at `max_send_queue`,
/// and a connection resuming topic `t` from the start: its subscription confirmed (the
/// reply taken), its first history read asked for and not yet answered.
fn resuming(max_send_queue: usize) -> (World, ConnId, HistoryRead) {
    let config = Config {
        max_send_queue,
        ..Config::default()
    };
    let mut world = World::with_broker(config, 100);
    let a = world.connect(None);
    world.command(a, r#"{"op":"subscribe","topic":"t","since":"0-0"}"#);
    world.confirm("t", 0);
    assert_eq!(world.texts(a), [ok("subscribe", "t")]);
    let reads = world.history_reads();
    let [(_, read)] = &reads[..] else {
        panic!("one history read: {reads:?}");
    };
    (world, a, *read)
}

fn ok(op: &str, topic: &str) -> String {
    crate::model::protocol::raw::ok_reply(op, topic)
}

fn error_of(reply: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(reply).expect("JSON");
    assert_eq!(value["ok"], false, "{reply}");
    value["error"].as_str().unwrap_or_default().to_owned()
}

fn offset(ms: u64) -> Offset {
    Offset(ms, 0)
}

/// A page of the history: `entries` (offset ms, text), and whether more follows.
fn page(entries: &[(u64, &str)], floor: u64, more: bool) -> HistoryPage {
    HistoryPage {
        entries: entries
            .iter()
            .map(|&(ms, text)| (offset(ms), Publication::text(text)))
            .collect(),
        gap: None,
        floor: offset(floor),
        more,
        failed: false,
    }
}

/// The data messages among `texts` (offset notices and replies left out).
fn data(texts: &[String]) -> Vec<&str> {
    texts
        .iter()
        .filter(|t| !t.starts_with('{'))
        .map(String::as_str)
        .collect()
}

/// The offsets the offset notices among `texts` name.
fn offsets(texts: &[String]) -> Vec<String> {
    texts
        .iter()
        .filter_map(|t| serde_json::from_str::<serde_json::Value>(t).ok())
        .filter(|v| v["op"] == "offset")
        .map(|v| v["offset"].as_str().unwrap_or_default().to_owned())
        .collect()
}
