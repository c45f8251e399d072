//! Two nodes over two Redis shards (`--broker redis://a,redis://b`): each topic lives on
//! the shard its name hashes to, and each shard fails and recovers on its own.
//!
//! - The second shard killed: the first shard's topics keep delivering across the nodes
//!   with no gap notice and their publishes succeed, while the killed shard's topics answer
//!   503; once it is back on its port, its topics' subscribers get a gap notice (no
//!   history) and deliver again.
//! - The first shard killed: the second shard's topics carry on the same way, while what
//!   is node-wide and lives on the first shard (`GET /nodes`, presence, user-level control)
//!   answers 503 and readiness says `degraded`; all of it answers again once it is back.
//! - The second shard blackholed for one node (a fault proxy): on that node the first
//!   shard's topics keep publishing and delivering promptly, the second shard's publishes
//!   answer 503 within the response timeout (never a hang), and the shard comes back once
//!   let through.
//! - With a history: a topic's stream lives on its shard's Redis only, and a v1 client
//!   resuming from an offset (or `GET /history/{topic}`) gets exactly what it missed, in
//!   order, from there.
//!
//! Needs `redis-server` on the PATH (`scripts/test.sh` installs it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::node::{
    Node, expect_gap, expect_next, history_after, offset_of, poll_json, pushed, pushes, wait_broker,
};
use common::proxy::{Cut, Faults, Proxy};
use common::{Peer, V1, spawn_server};
use serde_json::{Value, json};
use stratus_proto::Message;
use stratus_testkit::Redis;

/// A topic on the first of two shards, and one on the second (`model::shard`'s unit tests
/// pin both; this test checks them against where Redis has the subscriptions).
const ON_FIRST: &str = "news";
const ON_SECOND: &str = "chat:1";
/// Another topic on the second shard (pinned too), with no subscriber: the publishes
/// refused while that shard is cut off go here, since one the node sent before it
/// noticed may still reach Redis once the cut heals.
const PROBE_ON_SECOND: &str = "a";
/// The longest a message on a healthy shard may take from its publish to its subscribers
/// while another shard is cut off (it takes milliseconds).
const PROMPT: Duration = Duration::from_secs(1);
/// How long a publish to a cut-off shard that the node has not yet noticed may wait for
/// its 503: the broker's response timeout (2 s), and room for a busy machine.
const REFUSED_WITHIN: Duration = Duration::from_secs(4);
/// How soon a node must notice by itself that a shard stopped answering: the ping's
/// interval (1 s) and timeout (2 s), and room for a busy machine.
const NOTICED_WITHIN: Duration = Duration::from_secs(4);

/// A node over the shards `list` with more flags, once `/readyz` says every shard is up.
fn start(list: &str, extra: &[&str]) -> Node {
    let args = ["serve", "--workers", "2", "--broker", list];
    let (child, ws, admin) = spawn_server(&[&args[..], &["--log-level", "warn"], extra].concat());
    let node = Node { child, ws, admin };
    wait_broker(&node, "up", &["up", "up"]);
    node
}

/// How many connections listen on `channel` in `redis`.
fn listeners(redis: &Redis, channel: &str) -> usize {
    let mut conn = redis.connection().unwrap();
    let counts: Vec<(String, usize)> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query(&mut conn)
        .unwrap();
    counts[0].1
}

#[test]
fn a_shard_down_fails_only_its_own_topics_and_recovers_on_its_own() {
    let (first, second) = (Redis::start(), Redis::start());
    let list = format!("{},{}", first.url(), second.url());
    let nodes = [start(&list, &[]), start(&list, &[])];
    let mut on_first: Vec<Peer> = nodes.iter().map(|n| n.subscriber(ON_FIRST)).collect();
    let mut on_second: Vec<Peer> = nodes.iter().map(|n| n.subscriber(ON_SECOND)).collect();

    // Each topic is subscribed on its own shard only, by both nodes; only the first shard
    // carries the control channel.
    first.wait_subscribers(ON_FIRST, 2);
    second.wait_subscribers(ON_SECOND, 2);
    assert_eq!(first.subscribers(ON_SECOND), 0);
    assert_eq!(second.subscribers(ON_FIRST), 0);
    assert_eq!(listeners(&first, "stratus!control"), 2);
    assert_eq!(listeners(&second, "stratus!control"), 0);
    for node in &nodes {
        node.wait_metric("stratus_broker_shard_topics{shard=\"0\"}", 1);
        node.wait_metric("stratus_broker_shard_topics{shard=\"1\"}", 1);
    }

    // Topics on both shards deliver across the nodes.
    for (topic, from, peers) in [
        (ON_FIRST, &nodes[0], &mut on_first),
        (ON_SECOND, &nodes[1], &mut on_second),
    ] {
        let (status, body) = from.publish(topic, "hello");
        assert_eq!((status, body.as_str()), (200, "{\"nodes\":2}"));
        expect_next(peers, "hello");
    }

    // The second shard dies.
    let port = second.stop();
    for node in &nodes {
        wait_broker(node, "degraded", &["up", "down"]);
        assert_eq!(node.metric("stratus_broker_shard_up{shard=\"0\"}"), 1);
        assert_eq!(node.metric("stratus_broker_shard_up{shard=\"1\"}"), 0);
        assert_eq!(node.metric("stratus_broker_up"), 0, "not every shard is up");
        assert_eq!(node.metric("stratus_ready"), 1);
        let (status, body) = node.publish(ON_SECOND, "lost?");
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("broker is unavailable"), "{body}");
    }
    // The first shard's topic carries on, from both nodes, with no gap notice.
    for (index, node) in nodes.iter().enumerate() {
        let text = format!("during {index}");
        let (status, body) = node.publish(ON_FIRST, &text);
        assert_eq!((status, body.as_str()), (200, "{\"nodes\":2}"));
        expect_next(&mut on_first, &text);
    }

    // It comes back on its port: its topic's subscribers are told they may have missed
    // messages (no history to replay), then it delivers again.
    let second = Redis::start_on(port);
    for node in &nodes {
        wait_broker(node, "up", &["up", "up"]);
    }
    second.wait_subscribers(ON_SECOND, 2);
    for peer in &mut on_second {
        let Some(Message::Text(notice)) = peer.recv() else {
            panic!("expected a gap notice");
        };
        let notice: serde_json::Value = serde_json::from_slice(&notice).unwrap();
        assert_eq!(
            (notice["op"].as_str(), notice["topic"].as_str()),
            (Some("gap"), Some(ON_SECOND)),
            "{notice}"
        );
    }
    let (status, body) = nodes[0].publish(ON_SECOND, "back");
    assert_eq!((status, body.as_str()), (200, "{\"nodes\":2}"));
    expect_next(&mut on_second, "back");
    // Nothing reached the first shard's subscribers in between: no gap notice.
    let (status, _) = nodes[1].publish(ON_FIRST, "after");
    assert_eq!(status, 200);
    expect_next(&mut on_first, "after");
    for node in &nodes {
        assert_eq!(
            node.metric("stratus_broker_shard_disconnects_total{shard=\"0\"}"),
            0
        );
        assert_eq!(
            node.metric("stratus_broker_shard_disconnects_total{shard=\"1\"}"),
            1
        );
        assert!(node.metric("stratus_broker_shard_publish_errors_total{shard=\"1\"}") >= 1);
        assert_eq!(
            node.metric("stratus_broker_shard_publish_errors_total{shard=\"0\"}"),
            0
        );
    }
}

/// What is node-wide and lives on the first shard, as the admin API serves it: the node
/// list, a topic's presence (of a topic on the second shard: presence is the node's, not
/// the topic's shard's), and user-level control.
const NODE_WIDE: [&str; 4] = [
    "/nodes",
    "/presence/chat:1",
    "/occupancy/chat:1",
    "/users/alice",
];

/// Waits until every node-wide endpoint on `node` answers for the whole cluster of
/// `nodes` nodes, with `on_second` subscribers of [`ON_SECOND`] over them.
fn wait_node_wide(node: &Node, nodes: usize, on_second: u64) {
    let listed = poll_json(node, NODE_WIDE[0], |j| {
        j["nodes"].as_array().is_some_and(|n| n.len() == nodes)
    });
    let listed_nodes = listed["nodes"].as_array().unwrap();
    assert!(
        listed_nodes.iter().any(|n| n["node"] == listed["node"]),
        "the node lists itself: {listed}"
    );
    for path in &NODE_WIDE[1..3] {
        let presence = poll_json(node, path, |j| j["connections"] == on_second);
        assert_eq!(presence["topic"], ON_SECOND, "{presence}");
    }
    let users = poll_json(node, NODE_WIDE[3], |_| true);
    assert_eq!(
        (&users["action"], &users["affected"], &users["nodes"]),
        (
            &json!("list"),
            &json!(0),
            &json!({"answered": nodes, "up": nodes})
        ),
        "every node heard and answered: {users}"
    );
}

#[test]
fn the_first_shard_down_fails_what_is_node_wide_while_the_other_shards_topics_carry_on() {
    let (first, second) = (Redis::start(), Redis::start());
    let list = format!("{},{}", first.url(), second.url());
    let flags = [
        "--presence",
        "members",
        "--presence-interval",
        "0.2",
        "--presence-lease",
        "1",
    ];
    let nodes = [start(&list, &flags), start(&list, &flags)];
    let mut on_first: Vec<Peer> = nodes.iter().map(|n| n.subscriber(ON_FIRST)).collect();
    let mut on_second: Vec<Peer> = nodes.iter().map(|n| n.subscriber(ON_SECOND)).collect();
    first.wait_subscribers(ON_FIRST, 2);
    second.wait_subscribers(ON_SECOND, 2);
    for node in &nodes {
        wait_node_wide(node, 2, 2);
    }

    // The first shard dies.
    let port = first.stop();
    for node in &nodes {
        wait_broker(node, "degraded", &["down", "up"]);
        assert_eq!(node.metric("stratus_broker_shard_up{shard=\"0\"}"), 0);
        assert_eq!(node.metric("stratus_broker_shard_up{shard=\"1\"}"), 1);
        assert_eq!(node.metric("stratus_broker_up"), 0, "not every shard is up");
        assert_eq!(node.metric("stratus_ready"), 1);
        let (status, body) = node.publish(ON_FIRST, "lost?");
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("broker is unavailable"), "{body}");
        // What is node-wide is refused, not answered from this node alone.
        for path in NODE_WIDE {
            node.assert_unavailable(path);
        }
    }
    // The second shard's topic carries on, from both nodes, with no gap notice.
    for (index, node) in nodes.iter().enumerate() {
        let text = format!("during {index}");
        let (status, body) = node.publish(ON_SECOND, &text);
        assert_eq!((status, body.as_str()), (200, "{\"nodes\":2}"));
        expect_next(&mut on_second, &text);
    }

    // It comes back on its port: its topic's subscribers get a gap notice, and
    // everything node-wide answers again, for both nodes.
    let first = Redis::start_on(port);
    for node in &nodes {
        wait_broker(node, "up", &["up", "up"]);
    }
    first.wait_subscribers(ON_FIRST, 2);
    assert_eq!(listeners(&first, "stratus!control"), 2);
    expect_gap(&mut on_first, ON_FIRST);
    let (status, body) = nodes[1].publish(ON_FIRST, "back");
    assert_eq!((status, body.as_str()), (200, "{\"nodes\":2}"));
    expect_next(&mut on_first, "back");
    let (status, _) = nodes[0].publish(ON_SECOND, "after");
    assert_eq!(status, 200);
    expect_next(&mut on_second, "after");
    for node in &nodes {
        wait_node_wide(node, 2, 2);
        assert_eq!(
            node.metric("stratus_broker_shard_disconnects_total{shard=\"0\"}"),
            1
        );
        assert_eq!(
            node.metric("stratus_broker_shard_disconnects_total{shard=\"1\"}"),
            0
        );
        assert_eq!(
            node.metric("stratus_broker_shard_publish_errors_total{shard=\"1\"}"),
            0
        );
    }
}

/// Publishes to [`PROBE_ON_SECOND`] on `node`, whose second shard is cut off: it must
/// answer 503 within [`REFUSED_WITHIN`]; how long it took.
fn refused(node: &Node) -> Duration {
    let asked = Instant::now();
    let (status, body) = node.publish(PROBE_ON_SECOND, "lost?");
    let took = asked.elapsed();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("broker is unavailable"), "{body}");
    assert!(took < REFUSED_WITHIN, "the 503 took {took:?}");
    took
}

#[test]
fn a_blackholed_shard_holds_up_only_its_own_topics_and_recovers_when_let_through() {
    let (first, second) = (Redis::start(), Redis::start());
    let proxy = Proxy::start(
        SocketAddr::from(([127, 0, 0, 1], second.port())),
        Faults::default(),
    );
    // Node 0 reaches the second shard through the proxy; node 1 directly.
    let nodes = [
        start(&format!("{},redis://{}/0", first.url(), proxy.addr), &[]),
        start(&format!("{},{}", first.url(), second.url()), &[]),
    ];
    let mut on_first: Vec<Peer> = nodes.iter().map(|n| n.subscriber(ON_FIRST)).collect();
    let mut on_second: Vec<Peer> = nodes.iter().map(|n| n.subscriber(ON_SECOND)).collect();
    first.wait_subscribers(ON_FIRST, 2);
    second.wait_subscribers(ON_SECOND, 2);

    proxy.cut(Cut::Blackhole);
    let cut_at = Instant::now();
    let (first_refusal, noticed, rounds) = std::thread::scope(|scope| {
        // On the cut node, the second shard's publishes: refused at once, before the
        // node has noticed (at the response timeout, never a hang), and after.
        let probing = scope.spawn(|| {
            let first_refusal = refused(&nodes[0]);
            wait_broker(&nodes[0], "degraded", &["up", "down"]);
            let noticed = cut_at.elapsed();
            let then = refused(&nodes[0]);
            assert!(then < PROMPT, "once noticed, refused at once: {then:?}");
            (first_refusal, noticed)
        });
        // Meanwhile the first shard's topic, published on either node, reaches both
        // nodes' subscribers promptly: each publish answered and delivered within PROMPT.
        let mut rounds = 0;
        while !probing.is_finished() || rounds < 10 {
            let text = format!("while cut {rounds}");
            let asked = Instant::now();
            let (status, body) = nodes[rounds % 2].publish(ON_FIRST, &text);
            assert_eq!((status, body.as_str()), (200, "{\"nodes\":2}"));
            expect_next(&mut on_first, &text);
            let took = asked.elapsed();
            assert!(took < PROMPT, "{text}: published and delivered in {took:?}");
            rounds += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        let (first_refusal, noticed) = probing.join().unwrap();
        (first_refusal, noticed, rounds)
    });
    assert!(noticed < NOTICED_WITHIN, "noticed after {noticed:?}");
    // The other node's link to the second shard is whole: it publishes and delivers
    // there (its own subscriber only), and stays up.
    let asked = Instant::now();
    let (status, body) = nodes[1].publish(ON_SECOND, "during");
    assert_eq!(status, 200, "{body}");
    expect_next(&mut on_second[1..], "during");
    assert!(asked.elapsed() < PROMPT, "{:?}", asked.elapsed());
    let (status, body) = nodes[1].get("/readyz");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"shards\":[\"up\",\"up\"]"), "{body}");

    // Let through: the cut node's second shard comes back by itself; its subscriber there
    // is told it may have missed messages, then both deliver again.
    proxy.restore();
    let restored_at = Instant::now();
    wait_broker(&nodes[0], "up", &["up", "up"]);
    let recovered = restored_at.elapsed();
    expect_gap(&mut on_second[..1], ON_SECOND);
    let (status, body) = nodes[0].publish(ON_SECOND, "back");
    assert_eq!(status, 200, "{body}");
    expect_next(&mut on_second, "back");
    let (status, body) = nodes[0].publish(ON_FIRST, "after");
    assert_eq!((status, body.as_str()), (200, "{\"nodes\":2}"));
    expect_next(&mut on_first, "after");
    // The probes counted against the second shard (the probe topic is on it), and only
    // the cut node lost a session, to the second shard only.
    assert!(nodes[0].metric("stratus_broker_shard_publish_errors_total{shard=\"1\"}") >= 2);
    for (index, node) in nodes.iter().enumerate() {
        assert_eq!(
            node.metric("stratus_broker_shard_publish_errors_total{shard=\"0\"}"),
            0
        );
        assert_eq!(
            node.metric("stratus_broker_shard_disconnects_total{shard=\"0\"}"),
            0
        );
        assert_eq!(
            node.metric("stratus_broker_shard_disconnects_total{shard=\"1\"}"),
            u64::from(index == 0)
        );
    }
    eprintln!(
        "blackholed shard: first publish refused after {first_refusal:?}, noticed after \
         {noticed:?}, {rounds} prompt rounds on the other shard meanwhile, up again \
         {recovered:?} after the restore"
    );
}

/// The length of `topic`'s history stream in `redis` (0: no stream there).
fn history_len(redis: &Redis, topic: &str) -> usize {
    let mut conn = redis.connection().unwrap();
    let key = format!("stratus:history:{topic}");
    let kind: String = redis::cmd("TYPE").arg(&key).query(&mut conn).unwrap();
    assert!(kind == "stream" || kind == "none", "{key} is a {kind}");
    redis::cmd("XLEN").arg(&key).query(&mut conn).unwrap()
}

#[test]
fn a_topics_history_lives_on_its_shard_and_a_resume_reads_what_was_missed_there() {
    let (first, second) = (Redis::start(), Redis::start());
    let list = format!("{},{}", first.url(), second.url());
    let flags = ["--history", "100"];
    let nodes = [start(&list, &flags), start(&list, &flags)];
    let mut client = V1::connect(nodes[0].ws, "");
    let reply = client.ask(json!({"id": 1, "op": "subscribe", "topic": ON_SECOND}));
    assert_eq!((&reply["type"], &reply["id"]), (&json!("reply"), &json!(1)));
    second.wait_subscribers(ON_SECOND, 1);
    let mut last = String::new();
    for i in 0..3 {
        let text = format!("m{i}");
        offset_of(&nodes[1], ON_SECOND, &text);
        let push = client.recv();
        assert_eq!(pushed(&push, ON_SECOND), text);
        last = push["offset"].as_str().unwrap().to_owned();
    }
    drop(client);

    // Published from both nodes while the client is away.
    let missed: Vec<String> = (3..8).map(|i| format!("m{i}")).collect();
    for (i, text) in missed.iter().enumerate() {
        offset_of(&nodes[i % 2], ON_SECOND, text);
    }
    // It resumes on the other node: what it missed, each once and in order, then live.
    let mut back = V1::connect(nodes[1].ws, "");
    let reply = back.ask(json!({"id": 2, "op": "subscribe", "topic": ON_SECOND, "since": last}));
    assert_eq!(
        (&reply["type"], &reply["recovering"], &reply["offset"]),
        (&json!("reply"), &json!(true), &json!(last)),
        "{reply}"
    );
    assert_eq!(
        pushes(&mut back, ON_SECOND, missed.len()),
        missed,
        "each once, in order"
    );
    offset_of(&nodes[0], ON_SECOND, "live");
    assert_eq!(pushed(&back.recv(), ON_SECOND), "live", "then live");

    // The admin API reads the same history from the same shard.
    let (data, page) = history_after(&nodes[0], ON_SECOND, &last);
    assert_eq!(data, ["m3", "m4", "m5", "m6", "m7", "live"], "{page}");
    assert_eq!(page["gap"], Value::Null, "{page}");

    // The stream is on the second shard's Redis only; a first-shard topic's on the first.
    assert_eq!(history_len(&second, ON_SECOND), 9);
    assert_eq!(history_len(&first, ON_SECOND), 0);
    offset_of(&nodes[1], ON_FIRST, "elsewhere");
    assert_eq!(history_len(&first, ON_FIRST), 1);
    assert_eq!(history_len(&second, ON_FIRST), 0);
}
