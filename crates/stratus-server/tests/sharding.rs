//! Two nodes over two Redis shards (`--broker redis://a,redis://b`): each topic lives on
//! the shard its name hashes to, and each shard fails and recovers on its own. With one
//! shard killed, the other shard's topics keep delivering across the nodes with no gap
//! notice and their publishes succeed, while the killed shard's topics answer 503; once
//! it is back on its port, its topics' subscribers get a gap notice (no history) and
//! deliver again. Needs `redis-server` on the PATH (`scripts/test.sh` installs it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::node::Node;
use common::{Peer, spawn_server};
use stratus_proto::Message;
use stratus_testkit::Redis;

/// A topic on the first of two shards, and one on the second (`model::shard`'s unit tests
/// pin both; this test checks them against where Redis has the subscriptions).
const ON_FIRST: &str = "news";
const ON_SECOND: &str = "chat:1";

/// A node over the shards `list`, once `/readyz` says every shard is up.
fn start(list: &str) -> Node {
    let args = ["serve", "--workers", "2", "--broker", list];
    let (child, ws, admin) = spawn_server(&[&args[..], &["--log-level", "warn"]].concat());
    let node = Node { child, ws, admin };
    wait_broker(&node, "up", &["up", "up"]);
    node
}

/// Waits until the node's `/readyz` says the broker is `state` (`up`, `degraded`,
/// `down`) and each shard as `shards` says; it stays ready (200) unless every shard is
/// down.
fn wait_broker(node: &Node, state: &str, shards: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let shards = serde_json::to_string(shards).unwrap();
    loop {
        let (status, body) = node.get("/readyz");
        let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
        if seen["broker"] == state {
            assert_eq!(seen["shards"].to_string(), shards, "{body}");
            assert_eq!(status, if state == "down" { 503 } else { 200 }, "{body}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the broker never became {state}: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
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

/// Reads the next message of each of `peers`: it must be `text`.
fn expect_next(peers: &mut [Peer], text: &str) {
    for peer in peers {
        assert_eq!(peer.recv(), Some(Message::text(text)));
    }
}

#[test]
fn a_shard_down_fails_only_its_own_topics_and_recovers_on_its_own() {
    let (first, second) = (Redis::start(), Redis::start());
    let list = format!("{},{}", first.url(), second.url());
    let nodes = [start(&list), start(&list)];
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
        assert_eq!(node.metric("stratus_broker_shard_topics{shard=\"0\"}"), 1);
        assert_eq!(node.metric("stratus_broker_shard_topics{shard=\"1\"}"), 1);
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
