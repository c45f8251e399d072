//! `stratus serve` processes with a broker, for the tests of several nodes (`cluster.rs`,
//! `broker_faults.rs`): started on free ports, asked through the admin API, killed when
//! dropped.

use std::net::SocketAddr;
use std::process::Child;
use std::time::{Duration, Instant};

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
