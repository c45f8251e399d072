//! `stratus serve` processes with a broker, for the tests of several nodes (`cluster.rs`,
//! `broker_faults.rs`): started on free ports, asked through the admin API, killed when
//! dropped.

use std::net::SocketAddr;
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use stratus_proto::Message;
use stratus_testkit::Redis;

use crate::common::{Peer, admin, sample, spawn_server};

/// A new client on `ws`, subscribed to `topic` at the upgrade.
pub fn subscriber(ws: SocketAddr, topic: &str) -> Peer {
    let mut peer = Peer::connect(ws);
    peer.send(crate::common::upgrade_request(&format!("/ws?topic={topic}")).as_bytes());
    let head = peer.read_head();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    peer
}

/// A `stratus serve` node with the broker, killed when dropped.
pub struct Node {
    pub child: Child,
    pub ws: SocketAddr,
    pub admin: SocketAddr,
}

impl Node {
    pub fn start(redis: &Redis) -> Self {
        Self::start_with(redis, &[])
    }

    /// A node with more flags.
    pub fn start_with(redis: &Redis, extra: &[&str]) -> Self {
        Self::start_on(&redis.url(), extra)
    }

    /// A node with the broker at `url` (a proxy before Redis, say).
    pub fn start_on(url: &str, extra: &[&str]) -> Self {
        let mut args = vec!["serve", "--workers", "2", "--broker", url];
        args.extend_from_slice(&["--log-level", "warn"]);
        args.extend_from_slice(extra);
        let (child, ws, admin) = spawn_server(&args);
        let node = Self { child, ws, admin };
        node.wait_ready(true);
        node
    }

    pub fn subscriber(&self, topic: &str) -> Peer {
        subscriber(self.ws, topic)
    }

    /// Publishes through the admin API: the status and the body.
    pub fn publish(&self, topic: &str, text: &str) -> (u16, String) {
        admin(
            self.admin,
            &format!(
                "POST /publish/{topic} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{text}",
                text.len()
            ),
        )
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        admin(
            self.admin,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        )
    }

    pub fn metric(&self, name: &str) -> u64 {
        sample(&self.get("/metrics").1, name)
    }

    /// Waits until metric `name` reads `value` (a gauge the broker thread updates once
    /// Redis answers, a moment after Redis itself shows the change).
    pub fn wait_metric(&self, name: &str, value: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = self.metric(name);
            if now == value {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} stayed {now}, not {value}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `/readyz` says `ready`.
    pub fn wait_ready(&self, ready: bool) {
        self.wait_ready_or(ready, String::new);
    }

    /// Waits until `/readyz` says `ready`; a failure adds what `explain` says (the node's
    /// log, say).
    pub fn wait_ready_or(&self, ready: bool, explain: impl Fn() -> String) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (status, body) = self.get("/readyz");
            if (status == 200) == ready {
                let broker = if ready { "up" } else { "down" };
                assert!(body.contains(&format!("\"broker\":\"{broker}\"")), "{body}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "readiness did not become {ready}: {status} {body}\n{}",
                explain()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Asserts that admin `path` is refused as unavailable: a 503 whose JSON body says
    /// why (what the broker cannot answer now, or at all).
    pub fn assert_unavailable(&self, path: &str) {
        let (status, body) = self.get(path);
        assert_eq!(status, 503, "{path}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{path}: {body}"
        );
    }

    /// Waits until this node is subscribed in Redis to `topics` topics.
    pub fn wait_topics(&self, topics: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.metric("stratus_broker_topics") != topics {
            assert!(
                Instant::now() < deadline,
                "broker topics never reached {topics}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the node's `/readyz` says the broker is `state` (`up`, `degraded`,
/// `down`) and each shard as `shards` says; it stays ready (200) unless every shard is
/// down.
pub fn wait_broker(node: &Node, state: &str, shards: &[&str]) {
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

/// Reads the next message of each of `peers`: it must be `text`.
pub fn expect_next(peers: &mut [Peer], text: &str) {
    for peer in peers {
        assert_eq!(peer.recv(), Some(Message::text(text)));
    }
}

/// Reads the next message of each of `peers`: it must be the gap notice of a node that
/// was cut off from `topic`'s shard.
pub fn expect_gap(peers: &mut [Peer], topic: &str) {
    for peer in peers {
        let Some(Message::Text(notice)) = peer.recv() else {
            panic!("expected a gap notice");
        };
        let notice: Value = serde_json::from_slice(&notice).unwrap();
        assert_eq!(
            (notice["op"].as_str(), notice["topic"].as_str()),
            (Some("gap"), Some(topic)),
            "{notice}"
        );
        assert!(
            notice["reason"]
                .as_str()
                .is_some_and(|r| r.contains("cut off from the broker")),
            "{notice}"
        );
    }
}

/// Publishes `text` to `topic` on `node` (a topic with a history); its offset.
pub fn offset_of(node: &Node, topic: &str, text: &str) -> String {
    let (status, body) = node.publish(topic, text);
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    body["offset"].as_str().unwrap().to_owned()
}

/// The data of a v1 push on `topic`.
pub fn pushed(push: &Value, topic: &str) -> String {
    assert_eq!(
        (&push["type"], &push["topic"]),
        (&json!("pub"), &json!(topic))
    );
    push["data"].as_str().unwrap().to_owned()
}

/// Polls `node`'s admin `path` until it answers 200 with JSON that `done` accepts (10 s
/// at most); the JSON.
pub fn poll_json(node: &Node, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = node.get(path);
        let json: Value = serde_json::from_str(&body).unwrap_or_default();
        if status == 200 && done(&json) {
            return json;
        }
        assert!(Instant::now() < deadline, "{path}: {status} {body}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The data of the next `count` v1 pushes `client` gets on `topic`.
pub fn pushes(client: &mut crate::common::V1, topic: &str, count: usize) -> Vec<String> {
    (0..count).map(|_| pushed(&client.recv(), topic)).collect()
}

/// `topic`'s history after offset `since` as `node`'s admin API reads it (`GET
/// /history`): the publications' data, and the page.
pub fn history_after(node: &Node, topic: &str, since: &str) -> (Vec<String>, Value) {
    let (status, body) = node.get(&format!("/history/{topic}?since={since}"));
    assert_eq!(status, 200, "{body}");
    let page: Value = serde_json::from_str(&body).unwrap();
    let data = page["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["data"].as_str().unwrap().to_owned())
        .collect();
    (data, page)
}
