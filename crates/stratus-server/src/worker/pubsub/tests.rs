//! The worker's pub/sub driven directly: connections in a map, a hub over inboxes the
//! test reads, a broker link whose requests the test answers, and the time passed in.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use stratus_proto::Message;
use tokio::sync::mpsc;

use super::*;
use crate::config::{Config, SlowConsumer};
use crate::messages::WorkerMsg;
use crate::model::auth::Grant;
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
    config: Config,
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
        Self::new(config, None)
    }

    /// A worker of a node with a Redis broker keeping `history` messages per topic.
    fn with_broker(config: Config, history: usize) -> Self {
        Self::new(config, Some(history))
    }

    fn new(config: Config, broker: Option<usize>) -> Self {
        let (hub, mut inboxes, broker) = testing::hub(1, broker, 1 << 20);
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

    /// A new connection, upgraded, with what `grant` allows.
    fn connect(&mut self, grant: Option<Grant>) -> ConnId {
        self.next_slot += 1;
        let id = ConnId::new(self.next_slot, 1);
        let client = testing::open_client(&self.config, self.now, grant);
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
        let broadcast = Arc::new(Broadcast::new(
            Message::text(text.to_owned()),
            offset,
            self.now,
        ));
        self.with(|pubsub, clients, ctx| pubsub.fan_out(ctx, clients, topic, &broadcast))
    }

    /// The broker confirms `topic` for the node, and the confirmation reaches the worker.
    fn confirm(&mut self, topic: &str, arrival: u64) {
        let topic: Arc<str> = Arc::from(topic);
        self.hub.confirm(&topic, arrival);
        while let Ok(msg) = self.inbox.try_recv() {
            if let WorkerMsg::Confirmed(topic) = msg {
                self.with(|pubsub, clients, ctx| pubsub.on_confirmed(ctx, clients, &topic));
            }
        }
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
    commands::ok_reply(op, topic)
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
            .map(|&(ms, text)| (offset(ms), Message::text(text.to_owned())))
            .collect(),
        gap: None,
        floor: offset(floor),
        more,
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

#[test]
fn subscribe_deliver_and_unsubscribe_on_the_local_broker() {
    let mut world = World::local(Config::default());
    let (a, b) = (world.connect(None), world.connect(None));
    world.command(a, r#"{"op":"subscribe","topic":"t"}"#);
    assert_eq!(world.texts(a), [ok("subscribe", "t")]);
    assert_eq!(
        world.hub.topic_count(),
        1,
        "the hub knows the worker has a subscriber"
    );
    let fanout = world.publish("t", "hello", None);
    assert_eq!(
        fanout,
        Fanout {
            queued: 1,
            ..Fanout::default()
        }
    );
    assert_eq!(world.texts(a), ["hello"]);
    assert!(world.texts(b).is_empty(), "b is not subscribed");
    assert_eq!(world.hub.stats.delivered.load(Ordering::Relaxed), 1);
    world.command(a, r#"{"op":"subscribe","topic":"t"}"#);
    assert_eq!(world.texts(a), [ok("subscribe", "t")], "idempotent");
    assert_eq!(
        world.publish("t", "once", None).queued,
        1,
        "still one subscription"
    );
    world.texts(a);
    world.command(a, r#"{"op":"unsubscribe","topic":"t"}"#);
    assert_eq!(world.texts(a), [ok("unsubscribe", "t")]);
    assert_eq!(world.hub.topic_count(), 0);
    assert_eq!(world.publish("t", "gone", None).queued, 0);
    assert!(world.texts(a).is_empty());
}

#[test]
fn refused_commands_get_error_replies_that_say_why() {
    let config = Config {
        max_topics_per_connection: 2,
        ..Config::default()
    };
    let mut world = World::local(config);
    let grant = Grant::new("u", &["news.*", "a", "b", "c"], u64::MAX);
    let a = world.connect(Some(grant));
    let refusals = [
        (
            r#"{"op":"subscribe","topic":"a b"}"#,
            "topic has a character other than letters, digits and - _ . : /",
        ),
        (
            r#"{"op":"subscribe","topic":"secret"}"#,
            "the token does not allow this topic",
        ),
        (r#"{"op":"unsubscribe","topic":"a"}"#, "not subscribed"),
        (
            r#"{"op":"subscribe","topic":"a","since":"$"}"#,
            "no history is kept (the nodes need --broker and --history)",
        ),
    ];
    for (command, why) in refusals {
        world.command(a, command);
        let replies = world.texts(a);
        assert_eq!(replies.len(), 1, "{command}: {replies:?}");
        assert_eq!(error_of(&replies[0]), why, "{command}");
    }
    world.command(a, r#"{"op":"subscribe","topic":"a"}"#);
    world.command(a, r#"{"op":"subscribe","topic":"b"}"#);
    world.command(a, r#"{"op":"subscribe","topic":"c"}"#);
    let replies = world.texts(a);
    assert_eq!(error_of(&replies[2]), "at most 2 topics per connection");
    world.send(a, Message::Binary(Bytes::from_static(b"{}")));
    assert_eq!(
        error_of(&world.texts(a)[0]),
        "binary messages are not commands"
    );
    world.command(a, "not json");
    assert!(error_of(&world.texts(a)[0]).starts_with("expected {"));
    world.send(a, Message::Pong(Bytes::new()));
    assert!(world.texts(a).is_empty(), "control messages get no reply");
}

#[test]
fn commands_past_the_message_budget_are_refused_until_it_refills() {
    // Each command costs COMMAND_COST (10) messages: 25 a second allows two at once.
    let config = Config {
        message_rate: 25,
        ..Config::default()
    };
    let mut world = World::local(config);
    let a = world.connect(None);
    for topic in ["x", "y", "z"] {
        world.command(a, &format!(r#"{{"op":"subscribe","topic":"{topic}"}}"#));
    }
    let replies = world.texts(a);
    assert_eq!(replies[..2], [ok("subscribe", "x"), ok("subscribe", "y")]);
    assert_eq!(
        error_of(&replies[2]),
        "rate limited: at most 2 commands a second"
    );
    assert_eq!(
        world.hub.workers[0]
            .commands_limited
            .load(Ordering::Relaxed),
        1
    );
    world.now_ms += 1000;
    world.command(a, r#"{"op":"subscribe","topic":"z"}"#);
    assert_eq!(
        world.texts(a),
        [ok("subscribe", "z")],
        "refilled a second later"
    );
}

#[test]
fn with_a_broker_the_subscribe_reply_waits_for_the_topics_confirmation() {
    let mut world = World::with_broker(Config::default(), 0);
    let (a, b) = (world.connect(None), world.connect(None));
    world.command(a, r#"{"op":"subscribe","topic":"t"}"#);
    assert!(
        world.texts(a).is_empty(),
        "not before Redis has the subscription"
    );
    assert!(matches!(&world.requests()[..], [BrokerRequest::Add(t, 0)] if &**t == "t"));
    world.command(b, r#"{"op":"subscribe","topic":"t"}"#);
    assert!(world.requests().is_empty(), "the node asks once");
    world.confirm("t", 7);
    assert!(
        world.texts(a).is_empty(),
        "a confirmation for another arrival is not this one's"
    );
    world.confirm("t", 0);
    assert_eq!(world.texts(a), [ok("subscribe", "t")]);
    assert_eq!(world.texts(b), [ok("subscribe", "t")]);
    world.confirm("t", 0);
    assert!(world.texts(a).is_empty(), "answered once");
    let c = world.connect(None);
    world.command(c, r#"{"op":"subscribe","topic":"t"}"#);
    assert_eq!(
        world.texts(c),
        [ok("subscribe", "t")],
        "a confirmed topic answers at once"
    );
}

#[test]
fn an_unsubscribe_first_answers_the_subscribe_still_waiting() {
    let mut world = World::with_broker(Config::default(), 0);
    let a = world.connect(None);
    world.command(a, r#"{"op":"subscribe","topic":"t"}"#);
    world.command(a, r#"{"op":"unsubscribe","topic":"t"}"#);
    assert_eq!(
        world.texts(a),
        [ok("subscribe", "t"), ok("unsubscribe", "t")]
    );
    let requests = world.requests();
    assert!(
        matches!(&requests[..], [BrokerRequest::Add(..), BrokerRequest::Remove(t)] if &**t == "t")
    );
    world.confirm("t", 0);
    assert!(
        world.texts(a).is_empty(),
        "nothing more for an unsubscribed topic"
    );
}

#[test]
fn a_connection_that_leaves_gives_its_topics_and_waiting_replies_back() {
    let mut world = World::with_broker(Config::default(), 0);
    let (a, b) = (world.connect(None), world.connect(None));
    world.command(a, r#"{"op":"subscribe","topic":"t"}"#);
    world.command(a, r#"{"op":"subscribe","topic":"u"}"#);
    world.command(b, r#"{"op":"subscribe","topic":"u"}"#);
    world.requests();
    let gone = world.clients.0.remove(&a).expect("a");
    world.with(|pubsub, _, ctx| pubsub.on_left(ctx, a, &gone));
    let removed: Vec<String> = world
        .requests()
        .into_iter()
        .filter_map(|r| match r {
            BrokerRequest::Remove(t) => Some(t.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(removed, ["t"], "u still has b");
    assert!(
        world.pubsub.pending.take("t").is_empty(),
        "its waiting reply is forgotten"
    );
    assert_eq!(world.hub.topic_count(), 1);
    world.confirm("u", 1);
    assert_eq!(world.texts(b), [ok("subscribe", "u")]);
}

#[test]
fn a_recovery_sends_the_history_then_the_live_messages_held_meanwhile_each_once() {
    let mut world = World::with_broker(Config::default(), 100);
    let a = world.connect(None);
    world.command(a, r#"{"op":"subscribe","topic":"t","since":"5-0"}"#);
    world.confirm("t", 0);
    assert_eq!(world.texts(a), [ok("subscribe", "t")]);
    let reads = world.history_reads();
    let [(topic, read)] = &reads[..] else {
        panic!("one history read: {reads:?}");
    };
    assert_eq!((&**topic, read.after, read.fetched), ("t", offset(5), 0));
    assert_eq!(
        read.budget,
        Config::default().max_send_queue,
        "the queue's room"
    );
    // Live messages while the history is read are held.
    world.publish("t", "seven", Some(offset(7)));
    world.publish("t", "eight", Some(offset(8)));
    assert!(world.texts(a).is_empty(), "held during the recovery");
    // The page overlaps what was held: each message goes out once, in order.
    world.answer("t", *read, page(&[(6, "six"), (7, "seven")], 5, false));
    let texts = world.texts(a);
    assert_eq!(data(&texts), ["six", "seven", "eight"]);
    assert_eq!(
        offsets(&texts),
        ["6-0", "7-0", "8-0"],
        "each message after its offset notice"
    );
    // Live messages the history already had are skipped; the first newer ends it.
    world.publish("t", "eight", Some(offset(8)));
    world.publish("t", "nine", Some(offset(9)));
    assert_eq!(data(&world.texts(a)), ["nine"]);
    assert!(
        world
            .client(a)
            .recoveries_mut()
            .iter()
            .all(|r| !r.is_recovering())
    );
}

#[test]
fn a_history_reply_to_an_earlier_read_is_dropped_and_a_gap_is_named() {
    let mut world = World::with_broker(Config::default(), 100);
    let a = world.connect(None);
    world.command(a, r#"{"op":"subscribe","topic":"t","since":"5-0"}"#);
    let first = world.history_reads()[0].1;
    // Resuming again replaces the recovery: the first read's answer is stale.
    world.command(a, r#"{"op":"subscribe","topic":"t","since":"6-0"}"#);
    let second = world.history_reads()[0].1;
    assert_ne!(first.to.request, second.to.request);
    world.confirm("t", 0);
    world.texts(a);
    world.answer("t", first, page(&[(6, "stale")], 5, false));
    assert!(world.texts(a).is_empty(), "a stale page is dropped");
    let mut trimmed = page(&[(9, "nine")], 8, false);
    trimmed.gap = Some("the history no longer reaches back to the offset");
    world.answer("t", second, trimmed);
    let texts = world.texts(a);
    let gap: serde_json::Value = serde_json::from_str(&texts[0]).expect("JSON");
    assert_eq!(
        (gap["op"].as_str(), gap["topic"].as_str()),
        (Some("gap"), Some("t"))
    );
    assert_eq!(data(&texts), ["nine"]);
}

#[test]
fn a_long_history_is_read_a_page_at_a_time_at_the_readers_pace() {
    let (mut world, a, read) = resuming(4096);
    // More than half the queue's cap in one page: the rest waits for the next page.
    let big = "x".repeat(1500);
    let entries = [(1, big.as_str()), (2, big.as_str()), (3, big.as_str())];
    world.answer("t", read, page(&entries, 0, true));
    assert!(
        world.history_reads().is_empty(),
        "no next page while the queue is half full"
    );
    assert_eq!(world.client(a).recoveries_mut()[0].fetched, 2);
    // The reader takes what was queued: the next page is read from where this one stopped.
    assert_eq!(data(&world.texts(a)).len(), 2);
    world.with(|pubsub, clients, ctx| {
        let client = clients.client(a).expect("a");
        pubsub.on_sent(ctx, a, client);
    });
    let reads = world.history_reads();
    let [(_, next)] = &reads[..] else {
        panic!("the next page is read: {reads:?}");
    };
    assert_eq!((next.after, next.fetched), (offset(2), 2));
    assert!(next.average >= 1500, "sized from the entries so far");
    world.answer("t", *next, page(&[(3, big.as_str())], 2, false));
    assert_eq!(offsets(&world.texts(a)), ["3-0"]);
}

#[test]
fn live_messages_past_the_hold_end_the_recovery_with_a_gap_notice() {
    let (mut world, a, read) = resuming(2048);
    let big = "y".repeat(1000);
    for ms in 1..=4 {
        world.publish("t", &big, Some(offset(ms)));
    }
    let recovery = &world.client(a).recoveries_mut()[0];
    assert!(
        recovery.held.len() == 2 && recovery.overflowed,
        "its bytes are capped at the queue's"
    );
    world.answer("t", read, page(&[], 0, false));
    let texts = world.texts(a);
    assert_eq!(data(&texts).len(), 1, "what the queue had room for");
    let gap = texts.iter().find(|t| t.contains(r#""op":"gap""#));
    assert!(
        gap.is_some_and(|g| g.contains("more came during the recovery")),
        "{texts:?}"
    );
}

#[test]
fn the_slow_consumer_policy_drops_or_closes_past_the_queue_cap() {
    for (policy, closes) in [(SlowConsumer::Drop, false), (SlowConsumer::Close, true)] {
        let config = Config {
            max_send_queue: 1024,
            slow_consumer: policy,
            ..Config::default()
        };
        let mut world = World::local(config);
        let a = world.connect(None);
        world.command(a, r#"{"op":"subscribe","topic":"t"}"#);
        let big = "z".repeat(600);
        let first = world.publish("t", &big, None);
        let second = world.publish("t", &big, None);
        assert_eq!(first.queued, 1);
        assert_eq!(
            (second.dropped, second.closed),
            (u64::from(!closes), u64::from(closes))
        );
        let sent = testing::sent_to(world.client(a));
        let close = sent.iter().find_map(|m| match m {
            Message::Close(frame) => frame.as_ref().map(|f| f.code().0),
            _ => None,
        });
        assert_eq!(close, closes.then_some(1008), "{policy:?}");
    }
}

#[test]
fn an_overdue_recovery_is_given_up_with_a_gap_notice() {
    let (mut world, a, _) = resuming(Config::default().max_send_queue);
    let later = world.now + Duration::from_secs(61);
    let config = world.config.clone();
    let tick = world.client(a).tick(&config, later, 0, None);
    assert_eq!(tick, crate::connection::Tick::Changed);
    let texts = world.texts(a);
    assert!(
        texts[0].contains("the recovery did not finish in time"),
        "{texts:?}"
    );
    world.publish("t", "live", Some(offset(1)));
    assert_eq!(data(&world.texts(a)), ["live"], "live messages flow again");
}
