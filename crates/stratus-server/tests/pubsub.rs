//! The push server end to end over loopback, with the Stratus client as subscribers:
//! fan-out, order, slow consumers, subscription commands, the admin API, idle pings.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use common::{Peer, admin, frame, sample};
use stratus_client::{ClientConfig, connect, connect_with};
use stratus_proto::{CloseCode, Message};
use stratus_server::{App, Config, Reach, Server, SlowConsumer};

fn push_config() -> Config {
    Config {
        app: App::PubSub,
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        workers: 2,
        close_timeout: Duration::from_millis(500),
        drain_timeout: Duration::from_millis(500),
        ..Config::default()
    }
}

fn start(edit: impl FnOnce(&mut Config)) -> Server {
    let mut config = push_config();
    edit(&mut config);
    Server::start(config).unwrap()
}

fn payload(seq: u32) -> String {
    format!(
        "{{\"seq\":{seq},\"topic\":\"prices\",\"pad\":\"{}\"}}",
        "x".repeat(80)
    )
}

fn seq_of(message: &Message) -> u32 {
    let Message::Text(text) = message else {
        panic!("expected text, got {message:?}");
    };
    let text = std::str::from_utf8(text).unwrap();
    let rest = text.strip_prefix("{\"seq\":").unwrap();
    rest[..rest.find(',').unwrap()].parse().unwrap()
}

/// `subscribers` clients on `topic` each receive `count` messages, exactly once and in
/// order, while a publisher thread publishes them.
fn fanout(subscribers: usize, count: u32, deflate: bool) {
    let server = start(|_| {});
    let url = format!("ws://{}/ws?topic=prices", server.local_addr());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let clients = std::thread::spawn(move || {
        stratus_uring::run(async move {
            let mut clients = Vec::new();
            for _ in 0..subscribers {
                let config = ClientConfig {
                    deflate,
                    ..ClientConfig::default()
                };
                clients.push(connect_with(&url, config).await.unwrap());
            }
            ready_tx.send(()).unwrap();
            let tasks: Vec<_> = clients
                .into_iter()
                .map(|mut client| {
                    stratus_uring::spawn(async move {
                        for expected in 0..count {
                            let message = client.recv().await.unwrap().unwrap();
                            assert_eq!(seq_of(&message), expected, "in order, exactly once");
                        }
                        client.close(CloseCode::NORMAL, "").await.unwrap();
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        })
        .unwrap();
    });
    ready_rx.recv().unwrap();
    let mut workers = 0;
    for seq in 0..count {
        let delivery = server
            .publish("prices", Message::text(payload(seq)))
            .unwrap();
        workers = workers.max(delivery.workers());
        assert_eq!(
            delivery.wait(),
            Ok(Reach::Subscribers(subscribers)),
            "every subscriber got message {seq}"
        );
    }
    clients.join().unwrap();
    assert_eq!(workers, 2, "subscribers were spread over both workers");
    assert_eq!(
        server
            .stats()
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    server.stop().unwrap();
}

#[test]
fn thousand_subscribers_get_thousand_messages_in_order_plain() {
    fanout(1000, 1000, false);
}

#[test]
fn thousand_subscribers_get_thousand_messages_in_order_compressed() {
    fanout(1000, 1000, true);
}

/// A subscriber that never reads, next to ones that do, under each policy.
fn slow_consumer(policy: SlowConsumer) -> (Server, Peer) {
    let server = start(|c| {
        c.max_send_queue = 64 << 10;
        c.slow_consumer = policy;
        // Long enough for the Close to get through once the slow peer reads again.
        c.close_timeout = Duration::from_secs(10);
    });
    let addr = server.local_addr();
    let mut slow = Peer::connect(addr);
    slow.send(common::upgrade_request("/ws?topic=t").as_bytes());
    assert!(slow.read_head().starts_with("HTTP/1.1 101"));
    let url = format!("ws://{addr}/ws?topic=t");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let readers = std::thread::spawn(move || {
        stratus_uring::run(async move {
            let mut clients = Vec::new();
            for _ in 0..10 {
                clients.push(connect(&url).await.unwrap());
            }
            ready_tx.send(()).unwrap();
            for mut c in clients {
                for expected in 0..2000u32 {
                    let m = c.recv().await.unwrap().unwrap();
                    assert_eq!(seq_of(&m), expected);
                }
            }
        })
        .unwrap();
    });
    ready_rx.recv().unwrap();
    // 2000 x 4 KiB: far more than the queue cap plus what the kernel buffers.
    let pad = "y".repeat(4096);
    for seq in 0..2000u32 {
        let text = format!("{{\"seq\":{seq},\"pad\":\"{pad}\"}}");
        server
            .publish("t", Message::text(text))
            .unwrap()
            .wait()
            .unwrap();
    }
    readers.join().unwrap();
    (server, slow)
}

#[test]
fn slow_consumer_is_closed_with_1008_and_others_get_everything() {
    let (server, mut slow) = slow_consumer(SlowConsumer::Close);
    let stats = server.stats();
    assert_eq!(
        stats
            .slow_consumer_closes
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // The slow peer finds the frames written before the cap, then Close 1008; once it
    // answers, the server closes TCP.
    loop {
        match slow.recv() {
            Some(Message::Close(Some(f))) => {
                assert_eq!(f.code(), CloseCode::POLICY);
                assert_eq!(f.reason(), "slow consumer");
                break;
            }
            Some(Message::Text(_)) => {}
            other => panic!("expected data then Close 1008, got {other:?}"),
        }
    }
    slow.send(&frame(true, 0, 8, &1008u16.to_be_bytes()));
    slow.expect_eof();
    server.stop().unwrap();
}

#[test]
fn slow_consumer_with_drop_policy_loses_messages_and_stays() {
    let (server, mut slow) = slow_consumer(SlowConsumer::Drop);
    let dropped = server
        .stats()
        .dropped
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(dropped > 0, "the drop counter rose");
    assert_eq!(
        server
            .stats()
            .slow_consumer_closes
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    // Still connected: after catching up it receives the next publish.
    let mut received = 0u32;
    let handle = std::thread::spawn(move || {
        loop {
            match slow.recv() {
                Some(m) if seq_of(&m) == 99_999 => return (received, slow),
                Some(_) => received += 1,
                None => panic!("connection closed"),
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    server
        .publish("t", Message::text(payload(99_999)))
        .unwrap()
        .wait()
        .unwrap();
    let (got, _slow) = handle.join().unwrap();
    assert!(
        u64::from(got) + dropped == 2000,
        "received {got} + dropped {dropped} = 2000"
    );
    server.stop().unwrap();
}

async fn command(client: &mut stratus_client::Client, json: &str) -> String {
    client.send(&Message::text(json)).await.unwrap();
    match client.recv().await.unwrap().unwrap() {
        Message::Text(t) => String::from_utf8(t.to_vec()).unwrap(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn subscribe_unsubscribe_and_bad_topics() {
    let server = Rc::new(start(|c| c.max_topics_per_connection = 2));
    let url = format!("ws://{}/ws", server.local_addr());
    let srv = server.clone();
    stratus_uring::run(async move {
        let mut c = connect(&url).await.unwrap();
        assert_eq!(
            command(&mut c, r#"{"op":"subscribe","topic":"news"}"#).await,
            r#"{"ok":true,"op":"subscribe","topic":"news"}"#
        );
        assert_eq!(
            srv.publish("news", Message::text("hello"))
                .unwrap()
                .reach()
                .await,
            Ok(Reach::Subscribers(1))
        );
        assert_eq!(c.recv().await.unwrap(), Some(Message::text("hello")));
        let bad = command(&mut c, r#"{"op":"subscribe","topic":"bad topic"}"#).await;
        assert!(
            bad.contains(r#""ok":false"#) && bad.contains("character"),
            "{bad}"
        );
        let long = command(
            &mut c,
            &format!(r#"{{"op":"subscribe","topic":"{}"}}"#, "a".repeat(200)),
        )
        .await;
        assert!(long.contains("longer than 128"), "{long}");
        assert!(
            command(&mut c, r#"{"op":"subscribe","topic":"two"}"#)
                .await
                .contains(r#""ok":true"#)
        );
        let capped = command(&mut c, r#"{"op":"subscribe","topic":"three"}"#).await;
        assert!(capped.contains("at most 2 topics"), "{capped}");
        let garbage = command(&mut c, "not json").await;
        assert!(garbage.contains(r#""ok":false"#), "{garbage}");
        let unknown = command(&mut c, r#"{"op":"dance","topic":"news"}"#).await;
        assert!(unknown.contains("unknown op"), "{unknown}");
        assert!(
            command(&mut c, r#"{"op":"unsubscribe","topic":"news"}"#)
                .await
                .contains(r#""ok":true"#)
        );
        let again = command(&mut c, r#"{"op":"unsubscribe","topic":"news"}"#).await;
        assert!(again.contains("not subscribed"), "{again}");
        assert_eq!(
            srv.publish("news", Message::text("gone"))
                .unwrap()
                .reach()
                .await,
            Ok(Reach::Subscribers(0))
        );
        c.close(CloseCode::NORMAL, "").await.unwrap();
    })
    .unwrap();
    // The topic table is empty again once the client left.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while server.topic_count() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(server.topic_count(), 0);
    Rc::try_unwrap(server).ok().unwrap().stop().unwrap();
}

#[test]
fn upgrade_with_bad_topic_or_path_is_refused() {
    let server = start(|_| {});
    for (target, status) in [
        ("/ws?topic=bad%20topic", "400"),
        ("/elsewhere", "404"),
        ("/ws?topic=a&topic=b&topic=c&topic=d", "101"),
    ] {
        let mut peer = Peer::connect(server.local_addr());
        peer.send(common::upgrade_request(target).as_bytes());
        let head = peer.read_head();
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status} ")),
            "{target}: {head}"
        );
    }
    server.stop().unwrap();
}

/// A raw HTTP request to the admin API; returns (status, body).
fn post(topic: &str, body: &str, extra: &str) -> String {
    format!(
        "POST /publish/{topic} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    )
}

#[test]
fn admin_api_publishes_and_reports_recipients() {
    let server = start(|_| {});
    let admin_addr = server.admin_addr().unwrap();
    let url = format!("ws://{}/ws?topic=orders", server.local_addr());
    stratus_uring::run(async move {
        let mut a = connect(&url).await.unwrap();
        let mut b = connect(&url).await.unwrap();
        let published =
            std::thread::spawn(move || admin(admin_addr, &post("orders", r#"{"id":1}"#, "")));
        assert_eq!(a.recv().await.unwrap(), Some(Message::text(r#"{"id":1}"#)));
        assert_eq!(b.recv().await.unwrap(), Some(Message::text(r#"{"id":1}"#)));
        assert_eq!(
            published.join().unwrap(),
            (200, r#"{"recipients":2}"#.to_owned())
        );
    })
    .unwrap();
    let addr = server.admin_addr().unwrap();
    assert_eq!(admin(addr, &post("bad topic", "x", "")).0, 400);
    assert_eq!(
        admin(addr, "GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n").0,
        200
    );
    assert_eq!(
        admin(addr, "GET /readyz HTTP/1.1\r\nConnection: close\r\n\r\n").0,
        200
    );
    assert_eq!(
        admin(addr, "GET /nothing HTTP/1.1\r\nConnection: close\r\n\r\n").0,
        404
    );
    assert_eq!(
        admin(addr, "GET /publish/x HTTP/1.1\r\nConnection: close\r\n\r\n").0,
        405
    );
    server.stop().unwrap();
}

#[test]
fn metrics_count_connections_publishes_deliveries_and_refusals() {
    let server = start(|_| {});
    let admin_addr = server.admin_addr().unwrap();
    let url = format!("ws://{}/ws?topic=m", server.local_addr());
    let mut refused = Peer::connect(server.local_addr());
    refused.send(common::upgrade_request("/elsewhere").as_bytes());
    assert!(refused.read_head().starts_with("HTTP/1.1 404 "));
    stratus_uring::run(async move {
        let mut a = connect(&url).await.unwrap();
        let mut b = connect(&url).await.unwrap();
        let published = std::thread::spawn(move || admin(admin_addr, &post("m", "hello", "")));
        assert_eq!(a.recv().await.unwrap(), Some(Message::text("hello")));
        assert_eq!(b.recv().await.unwrap(), Some(Message::text("hello")));
        assert_eq!(published.join().unwrap().0, 200);
        // Both clients negotiated shared-mode compression: this one is compressed once.
        let long = "compressible ".repeat(100);
        let body = long.clone();
        let published = std::thread::spawn(move || admin(admin_addr, &post("m", &body, "")));
        assert_eq!(a.recv().await.unwrap(), Some(Message::text(long.clone())));
        assert_eq!(b.recv().await.unwrap(), Some(Message::text(long.clone())));
        assert_eq!(published.join().unwrap().0, 200);
        let (status, page) = admin(
            admin_addr,
            "GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(status, 200);
        assert_eq!(sample(&page, "stratus_connections"), 2);
        assert_eq!(sample(&page, "stratus_connections_opened_total"), 2);
        assert_eq!(sample(&page, "stratus_publishes_total"), 2);
        assert_eq!(sample(&page, "stratus_deliveries_total"), 4);
        assert_eq!(sample(&page, "stratus_deflate_in_bytes_total"), 1300);
        let out = sample(&page, "stratus_deflate_out_bytes_total");
        assert!(out > 0 && out < 100, "{out} bytes out");
        let ratio = page
            .lines()
            .find_map(|l| l.strip_prefix("stratus_deflate_ratio "))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap();
        assert!((ratio - 1300.0 / out as f64).abs() < 0.01, "{ratio}");
        // The long one, compressed once for both; "hello" is under the threshold.
        assert_eq!(sample(&page, "stratus_deflate_compressions_total"), 1);
        assert!(page.contains("\nstratus_deflate_compressions_per_publish 0.500\n"));
        // Each publish is timed once per worker it reached (the two clients may share one).
        let timed = sample(&page, "stratus_publish_to_send_seconds_count");
        assert!((2..=4).contains(&timed), "{timed}");
        assert_eq!(
            sample(&page, "stratus_publish_to_send_seconds_bucket{le=\"+Inf\"}"),
            timed
        );
        assert_eq!(sample(&page, "stratus_topics"), 1);
        assert_eq!(
            sample(&page, "stratus_handshake_refusals_total{status=\"404\"}"),
            1
        );
        assert_eq!(
            sample(&page, "stratus_handshake_refusals_total{status=\"400\"}"),
            0
        );
        assert!(
            sample(&page, "stratus_sent_bytes_total") >= 2 * 7,
            "two frames at least"
        );
        a.close(stratus_proto::CloseCode::NORMAL, "").await.unwrap();
    })
    .unwrap();
    let page = (0..100)
        .map(|_| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            admin(
                admin_addr,
                "GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n",
            )
            .1
        })
        .find(|page| sample(page, "stratus_connections") == 0)
        .expect("every connection ends");
    // a closed with 1000; b's client was dropped without a Close.
    assert_eq!(
        sample(&page, "stratus_connections_closed_total{code=\"1000\"}"),
        1
    );
    assert_eq!(
        sample(&page, "stratus_connections_closed_total{code=\"1006\"}"),
        1
    );
    assert_eq!(sample(&page, "stratus_send_queue_bytes"), 0);
    assert!(
        sample(&page, "stratus_messages_received_total") >= 1,
        "a's Close"
    );
    server.stop().unwrap();
}

#[test]
fn publish_and_metrics_without_the_admin_token_are_401() {
    let server = start(|c| c.admin_token = Some("s3cret".into()));
    let addr = server.admin_addr().unwrap();
    let metrics = "GET /metrics HTTP/1.1\r\nConnection: close\r\n";
    assert_eq!(admin(addr, &format!("{metrics}\r\n")).0, 401);
    let (status, page) = admin(
        addr,
        &format!("{metrics}Authorization: Bearer s3cret\r\n\r\n"),
    );
    assert_eq!((status, sample(&page, "stratus_connections")), (200, 0));
    assert_eq!(admin(addr, &post("t", "x", "")).0, 401);
    assert_eq!(
        admin(addr, &post("t", "x", "Authorization: Bearer wrong\r\n")).0,
        401
    );
    assert_eq!(
        admin(addr, &post("t", "x", "Authorization: Bearer s3cret\r\n")),
        (200, r#"{"recipients":0}"#.to_owned())
    );
    server.stop().unwrap();
}

#[test]
fn admin_listener_off_loopback_needs_a_token() {
    let err = Server::start(Config {
        admin_listen: Some(SocketAddr::from(([0, 0, 0, 0], 0))),
        ..push_config()
    })
    .err()
    .expect("refused");
    assert!(err.to_string().contains("needs an admin token"), "{err}");
}

#[test]
fn silent_peer_is_pinged_then_closed_after_the_pong_timeout() {
    let server = start(|c| {
        c.ping_interval = Duration::from_millis(200);
        c.pong_timeout = Duration::from_millis(300);
    });
    let mut peer = Peer::connect(server.local_addr());
    peer.send(common::upgrade_request("/ws?topic=t").as_bytes());
    assert!(peer.read_head().starts_with("HTTP/1.1 101"));
    // A raw peer never answers pings.
    assert_eq!(peer.recv(), Some(Message::Ping(Bytes::new())));
    match peer.recv() {
        Some(Message::Close(Some(f))) => assert_eq!(f.reason(), "pong timeout"),
        other => panic!("{other:?}"),
    }
    peer.expect_eof();
    // A peer that answers stays connected across many intervals.
    let mut live = Peer::connect(server.local_addr());
    live.send(common::upgrade_request("/ws?topic=t").as_bytes());
    assert!(live.read_head().starts_with("HTTP/1.1 101"));
    for _ in 0..4 {
        assert_eq!(live.recv(), Some(Message::Ping(Bytes::new())));
        live.send(&frame(true, 0, 0xA, b""));
    }
    assert_eq!(
        server
            .publish("t", Message::text("still here"))
            .unwrap()
            .wait(),
        Ok(Reach::Subscribers(1))
    );
    assert_eq!(live.recv(), Some(Message::text("still here")));
    server.stop().unwrap();
}

#[test]
fn reset_connections_free_their_subscriptions() {
    let server = start(|_| {});
    let peers: Vec<Peer> = (0..20)
        .map(|i| {
            let mut p = Peer::connect(server.local_addr());
            p.send(common::upgrade_request(&format!("/ws?topic=r{i}&topic=shared")).as_bytes());
            assert!(p.read_head().starts_with("HTTP/1.1 101"));
            p
        })
        .collect();
    assert_eq!(server.topic_count(), 21);
    // Half reset mid-frame (part of a frame, then RST), half reset between frames.
    for (i, mut p) in peers.into_iter().enumerate() {
        if i % 2 == 0 {
            p.send(&frame(true, 0, 1, b"partial")[..5]);
        }
        socket2::SockRef::from(&p.stream)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    }
    // A publish while the resets land disturbs nothing.
    let _ = server
        .publish("shared", Message::text("during resets"))
        .unwrap()
        .wait()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while (server.topic_count() > 0 || server.connections() > 0)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(server.topic_count(), 0);
    assert_eq!(server.connections(), 0);
    server.stop().unwrap();
}
