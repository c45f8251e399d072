//! Several nodes sharing topics through a real Redis: three `stratus serve` processes with
//! `--broker`, subscribers on each, publishes on each, Redis stopped and restarted. Needs `redis-server` on the PATH
//! (`scripts/test.sh` installs it); each test starts its own on a free loopback port and
//! fails if it cannot.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::node::{Node, subscriber};
use common::proxy::{Faults, Proxy};
use common::{Peer, admin, signal};
use stratus_proto::{CloseCode, Message};
use stratus_server::{Config, PublishError, Reach, Server};
use stratus_testkit::Redis;

/// Each node publishes `count` messages `"{node}:{seq}:{tag}"` to `topic`, all three at
/// once (one thread per node, each waiting for every answer before the next publish);
/// each publish must reach `nodes` nodes.
fn publish_from_every_node(nodes: &[Node], topic: &str, count: usize, tag: &str, reach: usize) {
    std::thread::scope(|scope| {
        for (index, node) in nodes.iter().enumerate() {
            scope.spawn(move || {
                for seq in 0..count {
                    let (status, body) = node.publish(topic, &format!("{index}:{seq}:{tag}"));
                    assert_eq!(status, 200, "{body}");
                    assert_eq!(body, format!("{{\"nodes\":{reach}}}"));
                }
            });
        }
    });
}

/// Reads `publishers * count` messages tagged `tag` from `peer` and checks that each
/// publisher's arrived exactly once and in order.
fn expect_in_order(peer: &mut Peer, publishers: usize, count: usize, tag: &str) {
    let mut next = vec![0; publishers];
    for _ in 0..publishers * count {
        let Some(Message::Text(text)) = peer.recv() else {
            panic!("a subscriber stopped receiving; got so far {next:?}");
        };
        let text = std::str::from_utf8(&text).unwrap();
        let mut parts = text.split(':');
        let (node, seq, got_tag) = (
            parts.next().unwrap().parse::<usize>().unwrap(),
            parts.next().unwrap().parse::<usize>().unwrap(),
            parts.next().unwrap(),
        );
        assert_eq!(got_tag, tag, "{text}");
        assert_eq!(
            seq, next[node],
            "node {node}'s messages out of order: {text}"
        );
        next[node] += 1;
    }
    assert_eq!(next, vec![count; publishers]);
}

/// Publishes a marker and checks it is the next message: nothing extra arrived before.
fn expect_nothing_more(nodes: &[Node], topic: &str, peers: &mut [Peer]) {
    let (status, _) = nodes[0].publish(topic, "end");
    assert_eq!(status, 200);
    for peer in peers {
        assert_eq!(
            peer.recv(),
            Some(Message::text("end")),
            "a duplicate arrived"
        );
    }
}

#[test]
fn publishes_on_every_node_reach_every_subscriber_on_every_node_once_and_in_order() {
    let redis = Redis::start();
    let nodes: Vec<Node> = (0..3).map(|_| Node::start(&redis)).collect();
    let mut peers: Vec<Peer> = nodes
        .iter()
        .flat_map(|node| [node.subscriber("orders"), node.subscriber("orders")])
        .collect();
    let mut solo = nodes[1].subscriber("solo");
    for node in &nodes {
        node.wait_topics(if node.ws == nodes[1].ws { 2 } else { 1 });
    }
    assert_eq!(
        redis.subscribers("orders"),
        3,
        "one Redis subscription per node"
    );
    assert_eq!(
        redis.subscribers("solo"),
        1,
        "only the node with a subscriber"
    );

    publish_from_every_node(&nodes, "orders", 200, "a", 3);
    for peer in &mut peers {
        expect_in_order(peer, 3, 200, "a");
    }
    expect_nothing_more(&nodes, "orders", &mut peers);

    // A topic with subscribers on one node reaches only that node, and only its
    // subscribers.
    let (status, body) = nodes[2].publish("solo", "just one");
    assert_eq!((status, body.as_str()), (200, "{\"nodes\":1}"));
    assert_eq!(solo.recv(), Some(Message::text("just one")));

    // The last subscriber leaving unsubscribes the node in Redis.
    drop(solo);
    nodes[1].wait_topics(1);
    assert_eq!(redis.subscribers("solo"), 0);
    let (status, body) = nodes[0].publish("solo", "nobody");
    assert_eq!((status, body.as_str()), (200, "{\"nodes\":0}"));

    // A node that dies does not disturb the others.
    let mut nodes = nodes;
    drop(nodes.pop());
    let mut survivors: Vec<Peer> = peers.drain(..4).collect();
    redis.wait_subscribers("orders", 2);
    publish_from_every_node(&nodes, "orders", 50, "b", 2);
    for peer in &mut survivors {
        expect_in_order(peer, 2, 50, "b");
    }
    for node in &nodes {
        assert_eq!(node.metric("stratus_broker_up"), 1);
        assert_eq!(node.metric("stratus_broker_disconnects_total"), 0);
    }
}

#[test]
fn a_redis_outage_gives_503s_and_full_delivery_after_it() {
    let redis = Redis::start();
    let nodes: Vec<Node> = (0..3).map(|_| Node::start(&redis)).collect();
    let mut peers: Vec<Peer> = nodes.iter().map(|n| n.subscriber("feed")).collect();
    for node in &nodes {
        node.wait_topics(1);
    }
    publish_from_every_node(&nodes, "feed", 20, "before", 3);
    for peer in &mut peers {
        expect_in_order(peer, 3, 20, "before");
    }

    let port = redis.stop();
    for node in &nodes {
        node.wait_ready(false);
        let (status, body) = node.publish("feed", "lost?");
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("broker is unavailable"), "{body}");
        assert_eq!(node.metric("stratus_broker_up"), 0);
        assert!(node.metric("stratus_broker_publish_errors_total") >= 1);
        assert_eq!(node.metric("stratus_broker_disconnects_total"), 1);
    }
    // Subscriptions made during the outage are kept and made in Redis when it returns.
    let mut late = nodes[0].subscriber("late");

    let redis = Redis::start_on(port);
    for node in &nodes {
        node.wait_ready(true);
    }
    assert_eq!(redis.subscribers("feed"), 3, "every node resubscribed");
    assert_eq!(redis.subscribers("late"), 1);
    // Each subscriber is told that it may have missed messages.
    for (peer, topic) in peers
        .iter_mut()
        .map(|p| (p, "feed"))
        .chain([(&mut late, "late")])
    {
        let Some(Message::Text(notice)) = peer.recv() else {
            panic!("expected a gap notice");
        };
        let notice: serde_json::Value = serde_json::from_slice(&notice).unwrap();
        assert_eq!(
            (notice["op"].as_str(), notice["topic"].as_str()),
            (Some("gap"), Some(topic))
        );
    }
    publish_from_every_node(&nodes, "feed", 50, "after", 3);
    for peer in &mut peers {
        expect_in_order(peer, 3, 50, "after");
    }
    expect_nothing_more(&nodes, "feed", &mut peers);
    let (status, _) = nodes[2].publish("late", "welcome");
    assert_eq!(status, 200);
    assert_eq!(late.recv(), Some(Message::text("welcome")));
}

#[test]
fn an_in_band_subscribe_is_answered_once_redis_has_the_subscription() {
    let redis = Redis::start();
    let (a, b) = (Node::start(&redis), Node::start(&redis));
    let mut peer = Peer::connect(a.ws);
    peer.send(common::upgrade_request("/ws").as_bytes());
    assert!(peer.read_head().starts_with("HTTP/1.1 101 "));

    // While Redis is stopped it cannot confirm, so no reply may come.
    redis.signal("STOP");
    let command = br#"{"op":"subscribe","topic":"fresh"}"#;
    peer.send(&common::frame(true, 0, 0x1, command));
    peer.stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut byte = [0u8; 1];
    let early = peer.stream.peek(&mut byte);
    assert!(
        matches!(&early, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a reply came before Redis confirmed: {early:?}"
    );
    peer.stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    redis.signal("CONT");
    assert_eq!(
        peer.recv(),
        Some(Message::text(
            r#"{"ok":true,"op":"subscribe","topic":"fresh"}"#
        ))
    );
    // After the reply, a publish on any node reaches the subscriber.
    let (status, body) = b.publish("fresh", "first");
    assert_eq!((status, body.as_str()), (200, "{\"nodes\":1}"));
    assert_eq!(peer.recv(), Some(Message::text("first")));

    // A second subscribe to a confirmed topic is answered at once.
    let mut second = Peer::connect(a.ws);
    second.send(common::upgrade_request("/ws").as_bytes());
    assert!(second.read_head().starts_with("HTTP/1.1 101 "));
    second.send(&common::frame(true, 0, 0x1, command));
    assert_eq!(
        second.recv(),
        Some(Message::text(
            r#"{"ok":true,"op":"subscribe","topic":"fresh"}"#
        ))
    );
}

/// A client that upgrades with no topic and sends `command`.
fn commanding(ws: SocketAddr, command: &str) -> Peer {
    let mut peer = Peer::connect(ws);
    peer.send(common::upgrade_request("/ws").as_bytes());
    assert!(peer.read_head().starts_with("HTTP/1.1 101 "));
    peer.send(&common::frame(true, 0, 0x1, command.as_bytes()));
    peer
}

/// The next message as JSON.
fn recv_json(peer: &mut Peer) -> serde_json::Value {
    let Some(Message::Text(text)) = peer.recv() else {
        panic!("expected a text message");
    };
    serde_json::from_slice(&text).unwrap()
}

/// The next offset notice for `topic` and the message after it: (offset, text).
fn recv_with_offset(peer: &mut Peer, topic: &str) -> (String, String) {
    let notice = recv_json(peer);
    assert_eq!(notice["op"], "offset", "{notice}");
    assert_eq!(notice["topic"], topic, "{notice}");
    let Some(Message::Text(text)) = peer.recv() else {
        panic!("expected the message after {notice}");
    };
    let offset = notice["offset"].as_str().unwrap().to_owned();
    (offset, String::from_utf8(text.to_vec()).unwrap())
}

fn subscribe_since(topic: &str, since: &str) -> String {
    format!(r#"{{"op":"subscribe","topic":"{topic}","since":"{since}"}}"#)
}

#[test]
fn a_subscriber_resuming_from_its_last_offset_gets_what_it_missed_once_and_in_order() {
    let redis = Redis::start();
    let a = Node::start_with(&redis, &["--history", "100"]);
    let b = Node::start_with(&redis, &["--history", "100"]);
    let mut first = commanding(a.ws, &subscribe_since("orders", "$"));
    assert_eq!(recv_json(&mut first)["ok"], true);
    for i in 0..5 {
        assert_eq!(b.publish("orders", &format!("m{i}")).0, 200);
    }
    let seen: Vec<(String, String)> = (0..5)
        .map(|_| recv_with_offset(&mut first, "orders"))
        .collect();
    let texts: Vec<&str> = seen.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(texts, ["m0", "m1", "m2", "m3", "m4"]);
    drop(first);

    // Published while the client is away (no node has a subscriber: the history keeps them).
    a.wait_topics(0);
    for i in 5..10 {
        let (status, body) = b.publish("orders", &format!("m{i}"));
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!((status, &body["nodes"]), (200, &serde_json::json!(0)));
        assert!(
            body["offset"].is_string(),
            "with a history, the publish's offset: {body}"
        );
    }
    let mut back = commanding(a.ws, &subscribe_since("orders", &seen[2].0));
    assert_eq!(recv_json(&mut back)["ok"], true);
    let mut offsets = vec![seen[2].0.clone()];
    for i in 3..10 {
        let (offset, text) = recv_with_offset(&mut back, "orders");
        assert_eq!(
            text,
            format!("m{i}"),
            "missed messages in order, none twice"
        );
        if let Some((before, _)) = seen.get(i) {
            assert_eq!(&offset, before, "the same offsets as the first time");
        }
        offsets.push(offset);
    }
    assert_eq!(b.publish("orders", "live").0, 200);
    let (offset, text) = recv_with_offset(&mut back, "orders");
    assert_eq!(text, "live");
    offsets.push(offset);
    let parsed: Vec<(u64, u64)> = offsets
        .iter()
        .map(|o| {
            let (ms, seq) = o.split_once('-').unwrap();
            (ms.parse().unwrap(), seq.parse().unwrap())
        })
        .collect();
    assert!(parsed.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");

    // Without a history, `since` is refused with the reason.
    let plain = Node::start(&redis);
    let mut refused = commanding(plain.ws, &subscribe_since("orders", "$"));
    let reply = recv_json(&mut refused);
    assert_eq!(reply["ok"], false);
    assert!(
        reply["error"].as_str().unwrap().contains("--history"),
        "{reply}"
    );
}

#[test]
fn a_resume_while_messages_keep_coming_misses_none_and_repeats_none() {
    let redis = Redis::start();
    let a = Node::start_with(&redis, &["--history", "1000"]);
    let b = Node::start_with(&redis, &["--history", "1000"]);
    // Keeps the topic subscribed on `a`, so live messages reach it during the recovery.
    let mut watcher = commanding(a.ws, &subscribe_since("busy", "$"));
    assert_eq!(recv_json(&mut watcher)["ok"], true);
    assert_eq!(b.publish("busy", "m0").0, 200);
    let (start, _) = recv_with_offset(&mut watcher, "busy");
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for i in 1..300 {
                assert_eq!(b.publish("busy", &format!("m{i}")).0, 200);
            }
        });
        std::thread::sleep(Duration::from_millis(50));
        // Part of what it missed is history, the rest arrives live while that is fetched.
        let mut back = commanding(a.ws, &subscribe_since("busy", &start));
        assert_eq!(recv_json(&mut back)["ok"], true);
        for i in 1..300 {
            let (_, text) = recv_with_offset(&mut back, "busy");
            assert_eq!(text, format!("m{i}"));
        }
    });
    for i in 1..300 {
        assert_eq!(recv_with_offset(&mut watcher, "busy").1, format!("m{i}"));
    }
}

#[test]
fn a_resume_from_an_offset_newer_than_the_history_gets_a_gap_and_every_live_message() {
    let redis = Redis::start();
    let node = Node::start_with(&redis, &["--history", "100"]);
    assert_eq!(node.publish("news", "old").0, 200);
    // An offset from the future (another Redis, say): nothing live may be swallowed.
    let mut peer = commanding(node.ws, &subscribe_since("news", "99999999999999-0"));
    assert_eq!(recv_json(&mut peer)["ok"], true);
    let gap = recv_json(&mut peer);
    assert_eq!(gap["op"], "gap", "{gap}");
    assert!(gap["reason"].as_str().unwrap().contains("newer"), "{gap}");
    assert_eq!(node.publish("news", "fresh").0, 200);
    assert_eq!(recv_with_offset(&mut peer, "news").1, "fresh");
}

#[test]
fn a_resume_from_before_the_kept_history_gets_a_gap_notice_first() {
    let redis = Redis::start();
    let node = Node::start_with(&redis, &["--history", "10"]);
    let mut first = commanding(node.ws, &subscribe_since("ticks", "$"));
    assert_eq!(recv_json(&mut first)["ok"], true);
    assert_eq!(node.publish("ticks", "t0").0, 200);
    let (oldest, _) = recv_with_offset(&mut first, "ticks");
    drop(first);
    // Redis trims in blocks of about 100 entries, so publish well past them.
    for i in 1..300 {
        assert_eq!(node.publish("ticks", &format!("t{i}")).0, 200);
    }
    let mut back = commanding(node.ws, &subscribe_since("ticks", &oldest));
    assert_eq!(recv_json(&mut back)["ok"], true);
    let gap = recv_json(&mut back);
    assert_eq!(gap["op"], "gap", "{gap}");
    assert!(
        gap["reason"]
            .as_str()
            .unwrap()
            .contains("no longer reaches"),
        "{gap}"
    );
    // What the history kept: the newest messages, in order, ending with the last one.
    let mut last = 0;
    loop {
        let (_, text) = recv_with_offset(&mut back, "ticks");
        let n: usize = text[1..].parse().unwrap();
        assert!(n > last, "in order: {n} after {last}");
        last = n;
        if n == 299 {
            break;
        }
    }
}

#[test]
fn a_redis_that_stops_answering_is_noticed_by_the_ping_and_rejoined() {
    let redis = Redis::start();
    let node = Node::start(&redis);
    let mut peer = node.subscriber("hung");
    node.wait_topics(1);
    redis.signal("STOP");
    node.wait_ready(false);
    let (status, body) = node.publish("hung", "lost?");
    assert_eq!(status, 503, "{body}");
    redis.signal("CONT");
    node.wait_ready(true);
    let Some(Message::Text(notice)) = peer.recv() else {
        panic!("expected a gap notice");
    };
    assert!(notice.starts_with(b"{\"op\":\"gap\""), "{notice:?}");
    assert_eq!(node.publish("hung", "back").0, 200);
    assert_eq!(peer.recv(), Some(Message::text("back")));
    assert_eq!(node.metric("stratus_broker_disconnects_total"), 1);
}

#[test]
fn the_library_api_publishes_through_redis_and_fails_fast_without_it() {
    let redis = Redis::start();
    let start = |url: String| {
        Server::start(Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_listen: None,
            workers: 2,
            broker: Some(url),
            ..Config::default()
        })
        .unwrap()
    };
    let server = start(redis.url());
    let mut peer = subscriber(server.local_addr(), "lib");
    redis.wait_subscribers("lib", 1);
    let reach = server
        .publish("lib", Message::text("hello"))
        .unwrap()
        .wait();
    assert_eq!(reach, Ok(Reach::Nodes(1)));
    assert_eq!(peer.recv(), Some(Message::text("hello")));
    drop(peer);
    server.stop().unwrap();

    // Nothing listens on the stopped Redis's port: publishing is refused, not dropped.
    let url = format!("redis://127.0.0.1:{}/0", redis.stop());
    let server = start(url);
    assert_eq!(
        server.publish("lib", Message::text("x")).unwrap_err(),
        PublishError::BrokerUnavailable
    );
    server.stop().unwrap();
}

#[test]
fn sigterm_on_a_node_with_a_broker_exits_0() {
    let redis = Redis::start();
    let mut node = Node::start(&redis);
    let mut peer = node.subscriber("t");
    node.wait_topics(1);
    signal(&node.child, "TERM");
    match peer.recv() {
        Some(Message::Close(Some(frame))) => assert_eq!(frame.code(), CloseCode::GOING_AWAY),
        other => panic!("expected Close 1001, got {other:?}"),
    }
    peer.send(&common::frame(true, 0, 0x8, &1001u16.to_be_bytes()));
    peer.expect_eof();
    drop(peer);
    let status = common::wait_exit(&mut node.child, Duration::from_secs(10));
    assert!(status.success(), "{status}");
}

/// A keep-alive admin connection that publishes `text` to `topic`; the status.
fn publish_keep_alive(stream: &mut std::net::TcpStream, topic: &str, text: &str) -> u16 {
    use std::io::{BufRead, Read, Write};
    let request = format!(
        "POST /publish/{topic} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\n\r\n{text}",
        text.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut reader = std::io::BufReader::new(&*stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    assert!(reader.buffer().is_empty(), "one response per request");
    status_line[9..12].parse().unwrap()
}

/// Flags that make a node count as behind as soon as one publish waits for its worker:
/// with six publishers flat out, it is, many times a second.
const SLOW_NODE: [&str; 2] = ["--max-publish-backlog", "1"];

/// Six publishers flat out on `publishing` for two seconds, 200 subscribers on
/// `subscribed`: every subscriber gets exactly the publishes that were accepted, each
/// publisher's in order, and none is closed. The refusals (503s) counted by the
/// publishers.
fn flat_out(publishing: &Node, subscribed: &Node) -> usize {
    const PUBLISHERS: usize = 6;
    const SUBSCRIBERS: usize = 200;
    let mut peers: Vec<Peer> = (0..SUBSCRIBERS)
        .map(|_| subscribed.subscriber("flat"))
        .collect();
    subscribed.wait_topics(1);
    let pad = "x".repeat(200);
    // Each publisher publishes as fast as answers come for two seconds, and keeps the
    // sequence numbers that were accepted; then an end marker, retried until accepted.
    let accepted: Vec<(Vec<usize>, usize)> = std::thread::scope(|scope| {
        let publishers: Vec<_> = (0..PUBLISHERS)
            .map(|p| {
                let (admin_addr, pad) = (publishing.admin, &pad);
                scope.spawn(move || {
                    let mut stream = std::net::TcpStream::connect(admin_addr).unwrap();
                    let (mut accepted, mut refused) = (Vec::new(), 0);
                    let until = Instant::now() + Duration::from_secs(2);
                    let mut seq = 0;
                    while Instant::now() < until {
                        match publish_keep_alive(&mut stream, "flat", &format!("{p}:{seq}:{pad}")) {
                            200 => accepted.push(seq),
                            503 => refused += 1,
                            other => panic!("publish answered {other}"),
                        }
                        seq += 1;
                    }
                    // The end marker's refusals count too (the node counts every 503).
                    loop {
                        match publish_keep_alive(&mut stream, "flat", &format!("{p}:end")) {
                            200 => break,
                            503 => refused += 1,
                            other => panic!("publish answered {other}"),
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    (accepted, refused)
                })
            })
            .collect();
        publishers.into_iter().map(|p| p.join().unwrap()).collect()
    });
    // Every subscriber gets exactly the accepted messages, each publisher's in order.
    std::thread::scope(|scope| {
        for peer in &mut peers {
            let accepted = &accepted;
            scope.spawn(move || {
                let mut got: Vec<Vec<usize>> = vec![Vec::new(); PUBLISHERS];
                let mut ended = 0;
                while ended < PUBLISHERS {
                    let Some(Message::Text(text)) = peer.recv() else {
                        panic!("a prompt subscriber lost its connection");
                    };
                    let text = std::str::from_utf8(&text).unwrap();
                    let mut parts = text.split(':');
                    let p: usize = parts.next().unwrap().parse().unwrap();
                    match parts.next().unwrap() {
                        "end" => ended += 1,
                        seq => got[p].push(seq.parse().unwrap()),
                    }
                }
                for (p, (sent, _)) in accepted.iter().enumerate() {
                    assert_eq!(
                        &got[p], sent,
                        "publisher {p}: every accepted message, in order"
                    );
                }
            });
        }
    });
    assert_eq!(subscribed.metric("stratus_slow_consumer_closes_total"), 0);
    let refused: usize = accepted.iter().map(|(_, r)| r).sum();
    eprintln!(
        "accepted {}, refused {refused}",
        accepted.iter().map(|(a, _)| a.len()).sum::<usize>()
    );
    refused
}

#[test]
fn a_publisher_flat_out_through_redis_is_refused_while_prompt_subscribers_get_everything() {
    let redis = Redis::start();
    let node = Node::start_with(&redis, &SLOW_NODE);
    let refused = flat_out(&node, &node);
    assert_eq!(
        node.metric("stratus_publishes_overloaded_total"),
        refused as u64
    );
    assert!(
        node.metric("stratus_publishes_paced_total") > 0,
        "the node fell behind, and the publishers waited for it"
    );
}

#[test]
fn a_node_that_cannot_keep_up_holds_back_the_publishers_on_the_other_nodes() {
    let redis = Redis::start();
    let publishing = Node::start(&redis);
    // The node with the subscribers falls behind first.
    let subscribed = Node::start_with(&redis, &SLOW_NODE);
    let refused = flat_out(&publishing, &subscribed);
    assert!(
        subscribed.metric("stratus_broker_overload_signals_total") > 0,
        "the subscribers' node said it was overloaded"
    );
    let held_back = publishing.metric("stratus_publishes_paced_total")
        + publishing.metric("stratus_publishes_overloaded_total");
    assert!(held_back > 0, "the other node's publishers were held back");
    assert_eq!(
        publishing.metric("stratus_publishes_overloaded_total"),
        refused as u64
    );
}

#[test]
fn a_history_reply_meant_for_an_earlier_resume_is_not_applied_to_a_later_one() {
    let redis = Redis::start();
    let node = Node::start_with(&redis, &["--history", "100"]);
    let mut watcher = commanding(node.ws, &subscribe_since("feed", "$"));
    assert_eq!(recv_json(&mut watcher)["ok"], true);
    for i in 0..20 {
        assert_eq!(node.publish("feed", &format!("m{i}")).0, 200);
    }
    let seen: Vec<(String, String)> = (0..20)
        .map(|_| recv_with_offset(&mut watcher, "feed"))
        .collect();
    // Resume from m4, think better of it, resume from m14: all in one write (so the first
    // resume's history cannot come back before the others are read).
    let mut peer = Peer::connect(node.ws);
    peer.send(common::upgrade_request("/ws").as_bytes());
    assert!(peer.read_head().starts_with("HTTP/1.1 101 "));
    let commands = [
        subscribe_since("feed", &seen[4].0),
        r#"{"op":"unsubscribe","topic":"feed"}"#.to_owned(),
        subscribe_since("feed", &seen[14].0),
    ];
    let frames: Vec<u8> = commands
        .iter()
        .flat_map(|c| common::frame(true, 0, 0x1, c.as_bytes()))
        .collect();
    peer.send(&frames);
    let mut replies = 0;
    let mut texts = Vec::new();
    while texts.len() < 5 {
        let message = recv_json_or_text(&mut peer);
        match message {
            Ok(json) if json["op"] == "offset" => {}
            Ok(json) => {
                assert_eq!(json["ok"], true, "{json}");
                replies += 1;
            }
            Err(text) => texts.push(text),
        }
    }
    assert_eq!(replies, 3);
    assert_eq!(
        texts,
        ["m15", "m16", "m17", "m18", "m19"],
        "after m14, once, in order"
    );
    assert_eq!(node.publish("feed", "live").0, 200);
    assert_eq!(
        recv_with_offset(&mut peer, "feed").1,
        "live",
        "nothing else came first"
    );
}

/// The next message: JSON (a reply or notice), or the text of a published one.
fn recv_json_or_text(peer: &mut Peer) -> Result<serde_json::Value, String> {
    let Some(Message::Text(text)) = peer.recv() else {
        panic!("expected a text message");
    };
    serde_json::from_slice(&text).map_err(|_| String::from_utf8(text.to_vec()).unwrap())
}

#[test]
fn subscription_churn_on_fresh_topics_neither_stalls_delivery_nor_the_broker() {
    let redis = Redis::start();
    // Every Redis round trip of this node takes 100 ms more each way: a node that waited
    // for each SUBSCRIBE before reading on would hold every topic's delivery up.
    let proxy = Proxy::start(
        SocketAddr::from(([127, 0, 0, 1], redis.port())),
        Faults {
            latency: Duration::from_millis(100),
            ..Faults::default()
        },
    );
    let url = format!("redis://{}/0", proxy.addr);
    let node = Node::start_on(&url, &["--message-rate", "500"]);
    let publisher = Node::start(&redis);
    let mut honest = node.subscriber("steady");
    node.wait_topics(1);
    // The churn: a client subscribing and unsubscribing fresh topics as fast as it can.
    let mut churner = commanding(node.ws, r#"{"op":"subscribe","topic":"fresh-0"}"#);
    let churn: Vec<u8> = (1..400)
        .flat_map(|i| {
            let op = if i % 2 == 0 {
                "subscribe"
            } else {
                "unsubscribe"
            };
            let command = format!(r#"{{"op":"{op}","topic":"fresh-{}"}}"#, i / 2);
            common::frame(true, 0, 0x1, command.as_bytes())
        })
        .collect();
    churner.send(&churn);
    // Meanwhile a message every 20 ms, each stamped with when it was published.
    let started = Instant::now();
    let published = std::thread::spawn(move || {
        for i in 0..100 {
            let stamp = started.elapsed().as_millis();
            assert_eq!(publisher.publish("steady", &format!("{i}:{stamp}")).0, 200);
            std::thread::sleep(Duration::from_millis(20));
        }
        publisher
    });
    let mut worst = Duration::ZERO;
    for i in 0..100 {
        let Some(Message::Text(text)) = honest.recv() else {
            panic!("the honest subscriber stopped receiving at {i}");
        };
        let text = std::str::from_utf8(&text).unwrap();
        let (seq, stamp) = text.split_once(':').unwrap();
        assert_eq!(seq.parse::<usize>().unwrap(), i, "in order, none missing");
        let late = started.elapsed() - Duration::from_millis(stamp.parse().unwrap());
        worst = worst.max(late);
    }
    let _publisher = published.join().unwrap();
    // 200 ms of proxy on the way, and room for a busy machine; waiting out the churn's
    // round trips one by one would have taken 400 x 200 ms.
    assert!(worst < Duration::from_secs(5), "a message waited {worst:?}");
    let mut limited = 0;
    for _ in 0..400 {
        let reply = recv_json(&mut churner);
        if reply["ok"] == false {
            // Refused for the rate, or an unsubscribe after a refused subscribe.
            let error = reply["error"].as_str().unwrap();
            if error.contains("rate limited") {
                limited += 1;
            } else {
                assert_eq!(error, "not subscribed", "{reply}");
            }
        }
    }
    assert!(limited > 0, "the churn outran the command rate");
    assert_eq!(node.metric("stratus_commands_limited_total"), limited);
    assert_eq!(node.metric("stratus_broker_disconnects_total"), 0);
    eprintln!("worst delivery {worst:?}, {limited} commands refused");
}

#[test]
fn a_history_read_slower_than_the_timeouts_fails_only_its_reader() {
    let redis = Redis::start();
    // The connection that asks for a history read gets its answers 6 s late from then
    // on: later than a response may take (2 s) and a history read (5 s).
    let proxy = Proxy::start(
        SocketAddr::from(([127, 0, 0, 1], redis.port())),
        Faults {
            slow_after: Some((b"XRANGE", Duration::from_secs(6))),
            ..Faults::default()
        },
    );
    let url = format!("redis://{}/0", proxy.addr);
    let node = Node::start_on(&url, &["--history", "100"]);
    let mut honest = commanding(node.ws, &subscribe_since("slow", "$"));
    assert_eq!(recv_json(&mut honest)["ok"], true);
    assert_eq!(node.publish("slow", "m0").0, 200);
    let (offset, _) = recv_with_offset(&mut honest, "slow");
    let mut resuming = commanding(node.ws, &subscribe_since("slow", &offset));
    assert_eq!(recv_json(&mut resuming)["ok"], true);
    // Live messages keep coming to everyone meanwhile.
    for i in 1..=3 {
        assert_eq!(node.publish("slow", &format!("m{i}")).0, 200);
        assert_eq!(recv_with_offset(&mut honest, "slow").1, format!("m{i}"));
        std::thread::sleep(Duration::from_millis(500));
    }
    let gap = recv_json(&mut resuming);
    assert_eq!(gap["op"], "gap", "{gap}");
    assert!(
        gap["reason"]
            .as_str()
            .unwrap()
            .contains("could not be read"),
        "{gap}"
    );
    // Then what it held meanwhile, and live.
    for i in 1..=3 {
        assert_eq!(recv_with_offset(&mut resuming, "slow").1, format!("m{i}"));
    }
    assert_eq!(node.metric("stratus_broker_disconnects_total"), 0);
    assert_eq!(node.metric("stratus_broker_history_errors_total"), 1);
    assert_eq!(node.publish("slow", "after").0, 200);
    assert_eq!(
        recv_with_offset(&mut honest, "slow").1,
        "after",
        "no gap for the others"
    );
}

#[test]
fn a_resume_larger_than_the_send_queue_comes_a_page_at_a_time_at_the_readers_pace() {
    let redis = Redis::start();
    let node = Node::start_with(&redis, &["--history", "5000", "--max-send-queue", "65536"]);
    let mut first = commanding(node.ws, &subscribe_since("big", "$"));
    assert_eq!(recv_json(&mut first)["ok"], true);
    assert_eq!(node.publish("big", "m0").0, 200);
    let (offset, _) = recv_with_offset(&mut first, "big");
    drop(first);
    node.wait_topics(0);
    // About 1 MB missed: sixteen times what the connection may have queued.
    let pad = "p".repeat(300);
    for i in 1..=3000 {
        assert_eq!(node.publish("big", &format!("m{i}:{pad}")).0, 200);
    }
    let mut back = commanding(node.ws, &subscribe_since("big", &offset));
    assert_eq!(recv_json(&mut back)["ok"], true);
    for i in 1..=3000 {
        let (_, text) = recv_with_offset(&mut back, "big");
        assert_eq!(text, format!("m{i}:{pad}"), "in order, none missing");
        if i % 1000 == 0 {
            // A slow reader: the replay waits for it rather than closing it.
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    assert_eq!(node.publish("big", "live").0, 200);
    assert_eq!(recv_with_offset(&mut back, "big").1, "live");
    assert_eq!(node.metric("stratus_slow_consumer_closes_total"), 0);
}

/// A protocol v1 client of `ws`: the next JSON message, and commands sent.
fn v1_client(ws: SocketAddr) -> Peer {
    let mut peer = Peer::connect(ws);
    let request = common::upgrade_request_with("/ws", "Sec-WebSocket-Protocol: stratus.v1\r\n");
    peer.send(request.as_bytes());
    assert!(peer.read_head().starts_with("HTTP/1.1 101 "));
    peer
}

fn v1_send(peer: &mut Peer, command: serde_json::Value) {
    peer.send(&common::frame(true, 0, 0x1, command.to_string().as_bytes()));
}

fn v1_recv(peer: &mut Peer) -> serde_json::Value {
    let Some(Message::Text(text)) = peer.recv() else {
        panic!("expected JSON text");
    };
    serde_json::from_slice(&text).unwrap()
}

/// Publishes `text` on `node`; its offset.
fn offset_of(node: &Node, topic: &str, text: &str) -> String {
    let (status, body) = node.publish(topic, text);
    assert_eq!(status, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    body["offset"].as_str().unwrap().to_owned()
}

#[test]
fn a_v1_subscriber_that_misses_a_thousand_messages_gets_each_once_in_order_on_three_nodes() {
    let redis = Redis::start();
    let nodes: Vec<Node> = (0..3)
        .map(|_| Node::start_with(&redis, &["--history", "2000"]))
        .collect();
    let mut first = v1_client(nodes[0].ws);
    v1_send(
        &mut first,
        serde_json::json!({"id": 1, "op": "subscribe", "topic": "feed"}),
    );
    let reply = v1_recv(&mut first);
    assert_eq!(
        (&reply["type"], &reply["id"]),
        (&serde_json::json!("reply"), &serde_json::json!(1))
    );
    let mut last = String::new();
    for i in 0..10 {
        offset_of(&nodes[1], "feed", &format!("m{i}"));
        let push = v1_recv(&mut first);
        assert_eq!(
            (&push["topic"], &push["data"]),
            (
                &serde_json::json!("feed"),
                &serde_json::json!(format!("m{i}"))
            )
        );
        last = push["offset"].as_str().unwrap().to_owned();
    }
    drop(first);
    nodes[0].wait_topics(0);
    // A thousand published from the other two nodes while it is away.
    for i in 10..1010 {
        offset_of(&nodes[1 + i % 2], "feed", &format!("m{i}"));
    }
    let mut back = v1_client(nodes[2].ws);
    v1_send(
        &mut back,
        serde_json::json!({"id": 2, "op": "subscribe", "topic": "feed", "since": last}),
    );
    let reply = v1_recv(&mut back);
    assert_eq!(
        (&reply["recovering"], &reply["offset"]),
        (&serde_json::json!(true), &serde_json::json!(last))
    );
    let got: Vec<String> = (10..1010)
        .map(|_| {
            let push = v1_recv(&mut back);
            assert_eq!(push["type"], "pub", "{push}");
            push["data"].as_str().unwrap().to_owned()
        })
        .collect();
    let want: Vec<String> = (10..1010).map(|i| format!("m{i}")).collect();
    assert_eq!(got, want, "each once, in order");
    offset_of(&nodes[0], "feed", "live");
    assert_eq!(v1_recv(&mut back)["data"], "live", "then live");
}

#[test]
fn past_the_redis_history_size_or_age_a_v1_resume_gets_a_gap_first() {
    let redis = Redis::start();
    let node = Node::start_with(&redis, &["--history", "5", "--history-ttl", "0.5"]);
    // Redis trims the count approximately (`MAXLEN ~`): publish well past it.
    let offsets: Vec<String> = (0..300)
        .map(|i| offset_of(&node, "feed", &format!("m{i}")))
        .collect();
    let mut sized = v1_client(node.ws);
    v1_send(
        &mut sized,
        serde_json::json!({"id": 1, "op": "subscribe", "topic": "feed", "since": offsets[1]}),
    );
    assert_eq!(v1_recv(&mut sized)["type"], "reply");
    let gap = v1_recv(&mut sized);
    assert_eq!(
        (&gap["type"], &gap["topic"]),
        (&serde_json::json!("gap"), &serde_json::json!("feed"))
    );
    // Past the age, the history has gone: a gap, and no replay.
    std::thread::sleep(Duration::from_millis(700));
    let mut aged = v1_client(node.ws);
    v1_send(
        &mut aged,
        serde_json::json!({"id": 1, "op": "subscribe", "topic": "feed", "since": offsets[298]}),
    );
    assert_eq!(v1_recv(&mut aged)["type"], "reply");
    assert_eq!(v1_recv(&mut aged)["type"], "gap");
    v1_send(&mut aged, serde_json::json!({"id": 2, "op": "ping"}));
    assert_eq!(v1_recv(&mut aged)["type"], "reply", "nothing was replayed");
}

#[test]
fn a_v1_history_command_reads_redis_without_a_subscription_and_is_refused_while_it_is_down() {
    let redis = Redis::start();
    let node = Node::start_with(&redis, &["--history", "100"]);
    let offsets: Vec<String> = (0..3)
        .map(|i| offset_of(&node, "feed", &format!("m{i}")))
        .collect();
    // No connection on the node is subscribed to the topic.
    let mut reader = v1_client(node.ws);
    v1_send(
        &mut reader,
        serde_json::json!({"id": 1, "op": "history", "topic": "feed", "since": offsets[0]}),
    );
    let reply = v1_recv(&mut reader);
    assert_eq!(reply["type"], "reply", "{reply}");
    let data: Vec<&str> = reply["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["data"].as_str().unwrap())
        .collect();
    assert_eq!(data, ["m1", "m2"], "{reply}");
    assert_eq!(reply["gap"], serde_json::Value::Null, "{reply}");

    let _port = redis.stop();
    node.wait_ready(false);
    // Without `since` as with it: a history that cannot be read is refused, not empty.
    for (id, command) in [
        (
            2,
            serde_json::json!({"id": 2, "op": "history", "topic": "feed"}),
        ),
        (
            3,
            serde_json::json!({"id": 3, "op": "history", "topic": "feed", "since": offsets[0]}),
        ),
    ] {
        v1_send(&mut reader, command);
        let refused = v1_recv(&mut reader);
        assert_eq!(
            (&refused["type"], &refused["id"], &refused["code"]),
            (
                &serde_json::json!("error"),
                &serde_json::json!(id),
                &serde_json::json!("unavailable")
            ),
            "{refused}"
        );
    }
    let (status, body) = node.get("/history/feed");
    assert_eq!(status, 503, "{body}");
}

/// The HS256 secret of the user-control nodes.
const USER_SECRET: &str = "a test secret of at least thirty-two bytes";

/// A protocol v1 client of `ws` whose token names `user` (topics `news*` allowed).
fn v1_user(ws: SocketAddr, user: &str) -> Peer {
    let claims = serde_json::json!({"sub": user, "exp": 4_000_000_000u64, "topics": ["news*"]});
    let key = jsonwebtoken::EncodingKey::from_secret(USER_SECRET.as_bytes());
    let token = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap();
    let mut peer = Peer::connect(ws);
    let request = common::upgrade_request_with(
        &format!("/ws?token={token}"),
        "Sec-WebSocket-Protocol: stratus.v1\r\n",
    );
    peer.send(request.as_bytes());
    assert!(peer.read_head().starts_with("HTTP/1.1 101 "));
    peer
}

/// A POST to `node`'s admin API: the status and the JSON body.
fn admin_post(node: &Node, path: &str) -> (u16, serde_json::Value) {
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let (status, body) = admin(node.admin, &request);
    (status, serde_json::from_str(&body).unwrap())
}

#[test]
fn user_control_asked_of_one_node_reaches_the_users_connections_on_every_node() {
    let redis = Redis::start();
    let flags = ["--auth", "hs256", "--auth-secret", USER_SECRET];
    let nodes: Vec<Node> = (0..3).map(|_| Node::start_with(&redis, &flags)).collect();
    // Alice: two connections on node 0, one on each of the others; Bob: one on node 1.
    let mut alice: Vec<Peer> = [0, 0, 1, 2]
        .iter()
        .map(|&n| v1_user(nodes[n].ws, "alice"))
        .collect();
    let mut bob = v1_user(nodes[1].ws, "bob");
    for (id, peer) in alice.iter_mut().chain([&mut bob]).enumerate() {
        v1_send(peer, serde_json::json!({"op": "ping", "id": id}));
        assert_eq!(v1_recv(peer)["op"], "ping");
    }

    let (status, list) = nodes[2].get("/users/alice");
    assert_eq!(status, 200, "{list}");
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list["affected"], 4, "{list}");
    assert_eq!(list["nodes"], serde_json::json!({"answered": 3, "up": 3}));
    let mut on: Vec<&str> = list["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["node"].as_str().unwrap())
        .collect();
    on.sort_unstable();
    on.dedup();
    assert_eq!(on.len(), 3, "on every node: {list}");

    // Subscribed server-side on every node: each is told once Redis has the topic, and a
    // publish on another node reaches all four.
    let (status, body) = admin_post(&nodes[1], "/users/alice/subscribe/news");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["affected"], &body["nodes"]["answered"]),
        (&serde_json::json!(4), &serde_json::json!(3))
    );
    for peer in &mut alice {
        assert_eq!(
            v1_recv(peer),
            serde_json::json!({"type": "subscribed", "topic": "news"})
        );
    }
    assert_eq!(nodes[2].publish("news", "hi").1, "{\"nodes\":3}");
    for peer in &mut alice {
        assert_eq!(v1_recv(peer)["data"], "hi");
    }

    // Disconnected from node 0's admin API: every connection on every node, counted.
    let (status, body) = admin_post(&nodes[0], "/users/alice/disconnect?code=4002&reason=bye");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["affected"], 4, "the total over the nodes: {body}");
    assert_eq!(body["nodes"], serde_json::json!({"answered": 3, "up": 3}));
    for peer in &mut alice {
        match peer.recv() {
            Some(Message::Close(Some(close))) => {
                assert_eq!((close.code(), close.reason()), (CloseCode(4002), "bye"));
            }
            other => panic!("expected Close 4002, got {other:?}"),
        }
    }
    v1_send(&mut bob, serde_json::json!({"op": "ping", "id": 9}));
    assert_eq!(v1_recv(&mut bob)["id"], 9, "bob is untouched");
    assert_eq!(
        nodes[0].metric("stratus_user_commands_total{action=\"disconnect\"}"),
        1
    );
    assert_eq!(
        nodes[1].metric("stratus_user_commands_total{action=\"disconnect\"}"),
        0
    );
}

/// Polls `node`'s admin `path` until `done` accepts its JSON (10 s at most); the JSON.
fn poll_json(
    node: &Node,
    path: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = node.get(path);
        let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if status == 200 && done(&json) {
            return json;
        }
        assert!(Instant::now() < deadline, "{path}: {status} {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn presence_spans_the_nodes_and_a_killed_nodes_members_vanish_with_its_lease() {
    let redis = Redis::start();
    let flags = [
        "--presence",
        "members",
        "--presence-events",
        "--presence-interval",
        "0.2",
        "--presence-lease",
        "1",
    ];
    let mut nodes: Vec<Node> = (0..3).map(|_| Node::start_with(&redis, &flags)).collect();
    let mut watcher = v1_client(nodes[0].ws);
    v1_send(
        &mut watcher,
        serde_json::json!({"id": 1, "op": "subscribe", "topic": "room"}),
    );
    assert_eq!(v1_recv(&mut watcher)["type"], "reply");
    // One subscriber on node 1, two on node 2.
    let mut others: Vec<Peer> = [1, 2, 2]
        .iter()
        .map(|&n| {
            let mut peer = v1_client(nodes[n].ws);
            v1_send(
                &mut peer,
                serde_json::json!({"id": 1, "op": "subscribe", "topic": "room"}),
            );
            assert_eq!(v1_recv(&mut peer)["type"], "reply");
            peer
        })
        .collect();
    // The watcher on node 0 hears every join, its own and the other nodes'.
    let mut joined = 0;
    while joined < 4 {
        let push = v1_recv(&mut watcher);
        assert_eq!(push["type"], "presence", "{push}");
        joined += push["joins"].as_array().unwrap().len();
    }
    assert_eq!(joined, 4);
    let all = poll_json(&nodes[1], "/presence/room", |j| j["connections"] == 4);
    let live = poll_json(&nodes[0], "/nodes", |j| {
        j["nodes"].as_array().is_some_and(|n| n.len() == 3)
    });
    let connections: u64 = live["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["connections"].as_u64().unwrap())
        .sum();
    assert_eq!(connections, 4, "{live}");
    assert_eq!(all["members"].as_array().unwrap().len(), 4, "{all}");
    assert_eq!(all["complete"], true, "{all}");
    v1_send(
        &mut others[0],
        serde_json::json!({"id": 2, "op": "occupancy", "topic": "room"}),
    );
    let occupancy = loop {
        let message = v1_recv(&mut others[0]);
        if message["type"] != "presence" {
            break message;
        }
    };
    assert_eq!(
        (&occupancy["type"], &occupancy["connections"]),
        (&serde_json::json!("reply"), &serde_json::json!(4)),
        "{occupancy}"
    );

    // Node 2 dies without a word: its two members vanish once its lease runs out.
    let killed = Instant::now();
    nodes[2].child.kill().unwrap();
    nodes[2].child.wait().unwrap();
    let after = poll_json(&nodes[0], "/presence/room", |j| j["connections"] == 2);
    eprintln!(
        "node 2's members vanished {:?} after SIGKILL",
        killed.elapsed()
    );
    let clients: Vec<&str> = after["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["client"].as_str().unwrap())
        .collect();
    assert_eq!(clients.len(), 2, "{after}");
    // The survivors still count each other.
    let occupancy = poll_json(&nodes[1], "/occupancy/room", |_| true);
    assert_eq!(occupancy["connections"], 2, "{occupancy}");
    let live = poll_json(&nodes[1], "/nodes", |_| true);
    assert_eq!(live["nodes"].as_array().unwrap().len(), 2, "{live}");
    drop(others);
}
