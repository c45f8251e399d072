//! Two nodes over a 3-master Redis Cluster (`--broker redis+cluster://...`, sharded
//! pub/sub): each topic lives on the master that serves its slot, and each master fails
//! and recovers on its own.
//!
//! - Topics on every master deliver across the nodes, over sharded channels
//!   (`SSUBSCRIBE`: `PUBSUB SHARDNUMSUB` on the topic's master counts both nodes, classic
//!   `PUBSUB NUMSUB` none); with a history, a topic's stream is on the same master as its
//!   channel, and a v1 resume and `GET /history` read what was missed from there; what is
//!   node-wide (the node list, presence, user-level control, the occupied events) works
//!   on the node-wide slot's master, nothing crossing slots.
//! - A master killed: its topics answer 503 promptly, the other masters' topics keep
//!   delivering, readiness says `degraded`; restarted on its port (its `nodes.conf`
//!   kept, so it rejoins with its slots), its topics deliver again, and each of their
//!   subscribers gets one gap notice per topic.
//! - A slot moved (`CLUSTER SETSLOT ... NODE`) under a subscribed topic, or under the
//!   control channel: the old master's unasked `sunsubscribe` ends the node's session with
//!   it (its disconnects counted), and that master stays down for the node.
//!
//! Needs `redis-server` and `redis-cli` on the PATH (`scripts/install-redis.sh`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::node::{
    Node, expect_gap, expect_next, history_after, offset_of, poll_json, pushed, pushes, wait_broker,
};
use common::{Peer, V1, spawn_server};
use serde_json::json;
use stratus_testkit::RedisCluster;

/// How long a publish to a master that was just killed may take to be refused: the
/// broker's response timeout (2 s), and room for a busy machine.
const REFUSED_WITHIN: Duration = Duration::from_secs(4);

/// A node over `cluster` with more flags, once `/readyz` says every master is up.
fn start(cluster: &RedisCluster, extra: &[&str]) -> Node {
    let url = cluster.url();
    let args = ["serve", "--workers", "2", "--broker", &url];
    let (child, ws, admin) = spawn_server(&[&args[..], &["--log-level", "warn"], extra].concat());
    let node = Node { child, ws, admin };
    wait_broker(&node, "up", &vec!["up"; cluster.len()]);
    node
}

/// `per_master` topics on each master of `cluster` (by their channel's slot, as Redis
/// computes it): `topics[master]`.
fn topics_by_master(cluster: &RedisCluster, per_master: usize) -> Vec<Vec<String>> {
    let mut topics = vec![Vec::new(); cluster.len()];
    for i in 0.. {
        if topics.iter().all(|t: &Vec<String>| t.len() == per_master) {
            return topics;
        }
        let topic = format!("room:{i}");
        let master = cluster.master_of(&format!("stratus:{{{topic}}}"));
        if topics[master].len() < per_master {
            topics[master].push(topic);
        }
    }
    unreachable!()
}

/// How many connections listen on `channel` on master `index`: sharded (`PUBSUB
/// SHARDNUMSUB`) and classic (`PUBSUB NUMSUB`).
fn listeners(cluster: &RedisCluster, index: usize, channel: &str) -> (usize, usize) {
    let mut conn = cluster.connection(index);
    let count = |sub: &str, conn: &mut redis::Connection| {
        let counts: Vec<(String, usize)> = redis::cmd("PUBSUB")
            .arg(sub)
            .arg(channel)
            .query(conn)
            .unwrap();
        counts[0].1
    };
    (count("SHARDNUMSUB", &mut conn), count("NUMSUB", &mut conn))
}

/// Waits until `count` connections listen on `channel` (sharded) on master `index`.
fn wait_listeners(cluster: &RedisCluster, index: usize, channel: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (sharded, classic) = listeners(cluster, index, channel);
        assert_eq!(classic, 0, "{channel} has classic subscribers");
        if sharded == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{channel} never had {count} sharded subscribers on master {index}: {sharded}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The length of `topic`'s history stream on master `index` (the key is in a slot it
/// serves, or Redis answers MOVED and this fails).
fn history_len(cluster: &RedisCluster, index: usize, topic: &str) -> usize {
    let mut conn = cluster.connection(index);
    let key = format!("stratus:history:{{{topic}}}");
    redis::cmd("XLEN").arg(&key).query(&mut conn).unwrap()
}

#[test]
fn topics_on_every_master_deliver_across_nodes_on_sharded_channels_with_their_history_beside() {
    let cluster = RedisCluster::start(3);
    let flags = [
        "--history",
        "100",
        "--occupancy-events",
        "--presence-interval",
        "0.2",
        "--presence-lease",
        "1",
    ];
    let nodes = [start(&cluster, &flags), start(&cluster, &flags)];
    let topics = topics_by_master(&cluster, 1);
    let mut peers: Vec<Vec<Peer>> = topics
        .iter()
        .map(|t| nodes.iter().map(|n| n.subscriber(&t[0])).collect())
        .collect();

    // Each topic's channel is a sharded one on its master, listened to by both nodes; the
    // control channel too, on the master of the node-wide slot.
    for (master, t) in topics.iter().enumerate() {
        wait_listeners(&cluster, master, &format!("stratus:{{{}}}", t[0]), 2);
    }
    let control = "{stratus!}control";
    wait_listeners(&cluster, cluster.master_of(control), control, 2);

    // Published on one node, each reaches both nodes' subscribers; its history is on the
    // master of its channel.
    for (master, (t, peers)) in topics.iter().zip(&mut peers).enumerate() {
        for (i, from) in nodes.iter().enumerate() {
            let text = format!("hello {i}");
            offset_of(from, &t[0], &text);
            expect_next(peers, &text);
        }
        assert_eq!(history_len(&cluster, master, &t[0]), 2, "{}", t[0]);
    }

    // What is node-wide, from each node: both nodes listed, a topic's presence summed
    // over them, a user-level command heard and answered by both.
    for node in &nodes {
        let listed = poll_json(node, "/nodes", |j| {
            j["nodes"].as_array().is_some_and(|n| n.len() == 2)
        });
        assert!(listed["nodes"].as_array().is_some(), "{listed}");
        for t in &topics {
            let path = format!("/occupancy/{}", t[0]);
            let presence = poll_json(node, &path, |j| j["connections"] == 2);
            assert_eq!(presence["topic"], json!(t[0]), "{presence}");
        }
        let users = poll_json(node, "/users/alice", |_| true);
        assert_eq!(
            (&users["action"], &users["nodes"]),
            (&json!("list"), &json!({"answered": 2, "up": 2})),
            "{users}"
        );
    }
    // Each topic occupied once over the cluster, in the node-wide stream.
    let occupied = |j: &serde_json::Value| {
        let mut topics: Vec<String> = j["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["event"] == "occupied")
            .map(|e| e["topic"].as_str().unwrap_or_default().to_owned())
            .collect();
        topics.sort();
        topics
    };
    let mut all: Vec<String> = topics.iter().map(|t| t[0].clone()).collect();
    all.sort();
    let events = poll_json(&nodes[1], "/events?since=0-0&limit=1000", |j| {
        occupied(j).len() >= all.len()
    });
    assert_eq!(occupied(&events), all, "{events}");
    let stream = "{stratus!}events";
    let mut conn = cluster.connection(cluster.master_of(stream));
    let kept: usize = redis::cmd("XLEN").arg(stream).query(&mut conn).unwrap();
    assert_eq!(kept, all.len());
    drop(peers);

    // A v1 client resumes on the other node from the last offset it saw: what it missed,
    // each once and in order, from the topic's master, then live.
    let topic = &topics[1][0];
    let mut client = V1::connect(nodes[0].ws, "");
    let reply = client.ask(json!({"id": 1, "op": "subscribe", "topic": topic}));
    assert_eq!((&reply["type"], &reply["id"]), (&json!("reply"), &json!(1)));
    wait_listeners(&cluster, 1, &format!("stratus:{{{topic}}}"), 1);
    offset_of(&nodes[1], topic, "seen");
    let last = client.recv()["offset"].as_str().unwrap().to_owned();
    drop(client);
    let missed: Vec<String> = (0..4).map(|i| format!("m{i}")).collect();
    for (i, text) in missed.iter().enumerate() {
        offset_of(&nodes[i % 2], topic, text);
    }
    let mut back = V1::connect(nodes[1].ws, "");
    let reply = back.ask(json!({"id": 2, "op": "subscribe", "topic": topic, "since": last}));
    assert_eq!(
        (&reply["type"], &reply["recovering"]),
        (&json!("reply"), &json!(true)),
        "{reply}"
    );
    assert_eq!(
        pushes(&mut back, topic, missed.len()),
        missed,
        "each once, in order"
    );
    offset_of(&nodes[0], topic, "live");
    assert_eq!(pushed(&back.recv(), topic), "live", "then live");
    let (data, page) = history_after(&nodes[0], topic, &last);
    assert_eq!(data, ["m0", "m1", "m2", "m3", "live"], "{page}");
    assert_eq!(history_len(&cluster, 1, topic), 8);
}

#[test]
fn a_master_down_fails_only_its_topics_and_each_gets_one_gap_notice_when_it_is_back() {
    let mut cluster = RedisCluster::start(3);
    let nodes = [start(&cluster, &[]), start(&cluster, &[])];
    // The master to lose: one that does not carry what is node-wide. The node lists the
    // node-wide master first, then the others by address.
    let node_wide = cluster.master_of("{stratus!}control");
    let mut order: Vec<usize> = (0..cluster.len()).filter(|&m| m != node_wide).collect();
    order.sort_by_key(|&m| cluster.port(m));
    order.insert(0, node_wide);
    let lost = order[1];
    let topics = topics_by_master(&cluster, 2);
    let mut peers: Vec<Vec<Vec<Peer>>> = topics
        .iter()
        .map(|ts| {
            ts.iter()
                .map(|t| nodes.iter().map(|n| n.subscriber(t)).collect())
                .collect()
        })
        .collect();
    for (master, ts) in topics.iter().enumerate() {
        for t in ts {
            wait_listeners(&cluster, master, &format!("stratus:{{{t}}}"), 2);
        }
    }

    cluster.kill(lost);
    // Its topics are refused promptly (a publish sent before the node noticed fails
    // with the connection), on both nodes.
    for node in &nodes {
        for t in &topics[lost] {
            let began = Instant::now();
            let (status, body) = node.publish(t, "lost?");
            assert_eq!(status, 503, "{body}");
            assert!(body.contains("broker is unavailable"), "{body}");
            assert!(began.elapsed() < REFUSED_WITHIN, "{:?}", began.elapsed());
        }
    }
    let mut degraded = vec!["up"; cluster.len()];
    degraded[1] = "down";
    for node in &nodes {
        wait_broker(node, "degraded", &degraded);
        assert_eq!(node.metric("stratus_ready"), 1);
    }
    // The other masters' topics carry on, from both nodes, with no gap notice.
    for master in (0..cluster.len()).filter(|&m| m != lost) {
        for (t, peers) in topics[master].iter().zip(&mut peers[master]) {
            for (i, node) in nodes.iter().enumerate() {
                let text = format!("during {i}");
                let (status, body) = node.publish(t, &text);
                assert_eq!((status, body.as_str()), (200, "{\"nodes\":2}"));
                expect_next(peers, &text);
            }
        }
    }

    // Back on its port with its slots: one gap notice per topic for each subscriber, then
    // its topics deliver again.
    cluster.restart(lost);
    for node in &nodes {
        wait_broker(node, "up", &vec!["up"; cluster.len()]);
    }
    for (t, peers) in topics[lost].iter().zip(&mut peers[lost]) {
        wait_listeners(&cluster, lost, &format!("stratus:{{{t}}}"), 2);
        expect_gap(peers, t);
        let (status, body) = nodes[0].publish(t, "back");
        assert_eq!((status, body.as_str()), (200, "{\"nodes\":2}"));
        expect_next(peers, "back");
    }
    // Nothing reached the other masters' subscribers in between: no gap notice.
    for master in (0..cluster.len()).filter(|&m| m != lost) {
        for (t, peers) in topics[master].iter().zip(&mut peers[master]) {
            let (status, _) = nodes[1].publish(t, "after");
            assert_eq!(status, 200);
            expect_next(peers, "after");
        }
    }
    for node in &nodes {
        assert_eq!(
            node.metric("stratus_broker_shard_disconnects_total{shard=\"1\"}"),
            1
        );
        for shard in [0, 2] {
            let name = format!("stratus_broker_shard_disconnects_total{{shard=\"{shard}\"}}");
            assert_eq!(node.metric(&name), 0, "{name}");
        }
    }
}

/// The id of master `index` (`CLUSTER MYID`).
fn node_id(cluster: &RedisCluster, index: usize) -> String {
    redis::cmd("CLUSTER")
        .arg("MYID")
        .query(&mut cluster.connection(index))
        .unwrap()
}

#[test]
fn a_slot_moved_under_a_subscribed_topic_ends_its_masters_session() {
    let cluster = RedisCluster::start(3);
    let node = start(&cluster, &[]);
    // A master that does not carry what is node-wide: the node's shard 1 (the node lists
    // the node-wide master first, then the others by address).
    let node_wide = cluster.master_of("{stratus!}control");
    let mut order: Vec<usize> = (0..cluster.len()).filter(|&m| m != node_wide).collect();
    order.sort_by_key(|&m| cluster.port(m));
    let (from, to) = (order[0], order[1]);
    let topics = topics_by_master(&cluster, 1);
    let topic = &topics[from][0];
    let channel = format!("stratus:{{{topic}}}");
    let mut peer = vec![node.subscriber(topic)];
    wait_listeners(&cluster, from, &channel, 1);
    let (status, _) = node.publish(topic, "before");
    assert_eq!(status, 200);
    expect_next(&mut peer, "before");

    // Moved (no keys on it: no history), assigned on both masters: the old one ends the
    // node's subscription there, a `sunsubscribe` the node never asked for.
    let slot = cluster.slot(&channel);
    let target = node_id(&cluster, to);
    for master in [to, from] {
        let answer: String = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("NODE")
            .arg(&target)
            .query(&mut cluster.connection(master))
            .unwrap();
        assert_eq!(answer, "OK");
    }
    assert_eq!(listeners(&cluster, from, &channel), (0, 0));
    // The session ends (counted once: resubscribing the moved channel there is refused,
    // so the master stays down for the node, as the README says, until it is restarted);
    // the other masters are untouched.
    node.wait_metric("stratus_broker_shard_disconnects_total{shard=\"1\"}", 1);
    wait_broker(&node, "degraded", &["up", "down", "up"]);
    for shard in [0, 2] {
        let name = format!("stratus_broker_shard_disconnects_total{{shard=\"{shard}\"}}");
        assert_eq!(node.metric(&name), 0, "{name}");
    }
    let (status, body) = node.publish(topic, "after");
    assert_eq!(status, 503, "{body}");
}

#[test]
fn the_control_channel_moved_ends_the_node_wide_masters_session() {
    let cluster = RedisCluster::start(3);
    let node = start(&cluster, &[]);
    let from = cluster.master_of("{stratus!}control");
    let to = (from + 1) % cluster.len();
    let slot = cluster.slot("{stratus!}control");
    let target = node_id(&cluster, to);
    // The old master refuses to give the slot away while it holds keys there (the node
    // list, presence), which the node may write again meanwhile: try a few times.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut conn = cluster.connection(from);
        let keys: Vec<String> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(1000)
            .query(&mut conn)
            .unwrap();
        for key in keys {
            let _: i64 = redis::cmd("DEL").arg(&key).query(&mut conn).unwrap();
        }
        let _: String = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("NODE")
            .arg(&target)
            .query(&mut cluster.connection(to))
            .unwrap();
        let moved: redis::RedisResult<String> = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("NODE")
            .arg(&target)
            .query(&mut conn);
        match moved {
            Ok(answer) => {
                assert_eq!(answer, "OK");
                break;
            }
            Err(err) => assert!(Instant::now() < deadline, "{err}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Not a topic's channel, yet the node cannot run without it: the session ends.
    node.wait_metric("stratus_broker_shard_disconnects_total{shard=\"0\"}", 1);
    for shard in [1, 2] {
        let name = format!("stratus_broker_shard_disconnects_total{{shard=\"{shard}\"}}");
        assert_eq!(node.metric(&name), 0, "{name}");
    }
}
