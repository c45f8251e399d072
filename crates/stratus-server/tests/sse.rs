//! Server-Sent Events (`GET /sse`) against the library server: the response and its
//! events (text, JSON over several lines, binary as base64), ids only where the topic
//! keeps history, heartbeats, resuming with `Last-Event-ID`, the checks an upgrade gets
//! (token, Origin, topic cap), a slow reader under the close policy, the drain, and
//! WebSocket subscribers of the same topic alongside. A stream is subscribed before its
//! response head is sent (no broker here), so a test publishes as soon as it has read it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Peer, header, start_push as start};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;
use stratus_proto::Message;
use stratus_server::{Auth, AuthAlgorithm, Namespace, NamespaceOptions, Server, SlowConsumer};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

/// One event as a client parses it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Event {
    name: String,
    id: Option<String>,
    data: String,
}

/// An event-stream client over a raw TCP peer.
struct Stream {
    peer: Peer,
    head: String,
}

impl Stream {
    /// Sends `GET target` with `headers` (lines ending in CRLF); returns the stream after
    /// the response head, whatever its status.
    fn open(addr: SocketAddr, target: &str, headers: &str) -> Self {
        let mut peer = Peer::connect(addr);
        let request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\n{headers}\r\n");
        peer.send(request.as_bytes());
        let head = peer.read_head();
        Self { peer, head }
    }

    /// Opens a stream that must be accepted.
    fn accepted(addr: SocketAddr, target: &str, headers: &str) -> Self {
        let stream = Self::open(addr, target, headers);
        assert!(
            stream.head.starts_with("HTTP/1.1 200 OK\r\n"),
            "{}",
            stream.head
        );
        stream
    }

    fn status(&self) -> u16 {
        self.head[9..12].parse().unwrap()
    }

    /// The next block (an event or a comment), through its blank line; `None` at EOF.
    fn block(&mut self) -> Option<String> {
        self.peer.read_through(b"\n\n")
    }

    /// The next event, skipping heartbeats; `None` at EOF.
    fn event(&mut self) -> Option<Event> {
        loop {
            let block = self.block()?;
            if block.starts_with(':') {
                continue;
            }
            let mut event = Event {
                name: String::new(),
                id: None,
                data: String::new(),
            };
            let mut lines = Vec::new();
            for line in block.trim_end_matches('\n').split('\n') {
                let (field, value) = line.split_once(": ").unwrap_or((line, ""));
                match field {
                    "event" => event.name = value.to_owned(),
                    "id" => event.id = Some(value.to_owned()),
                    "data" => lines.push(value),
                    other => panic!("unexpected field {other:?} in {block:?}"),
                }
            }
            event.data = lines.join("\n");
            return Some(event);
        }
    }

    /// Expects the server to end the stream with nothing more than heartbeats.
    fn expect_end(&mut self) {
        assert_eq!(self.event(), None);
    }
}

fn event(name: &str, id: Option<&str>, data: &str) -> Event {
    Event {
        name: name.into(),
        id: id.map(str::to_owned),
        data: data.into(),
    }
}

fn publish(server: &Server, topic: &str, text: &str) {
    server
        .publish(topic, Message::text(text.to_owned()))
        .unwrap()
        .wait()
        .unwrap();
}

#[test]
fn a_stream_gets_each_publication_as_an_event() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut stream = Stream::accepted(addr, "/sse?topic=a&topic=b", "");
    let head = stream.head.clone();
    assert_eq!(header(&head, "content-type"), Some("text/event-stream"));
    assert_eq!(header(&head, "cache-control"), Some("no-cache"));
    assert_eq!(header(&head, "x-accel-buffering"), Some("no"));
    publish(&server, "a", "hello");
    server
        .publish_json("b", "{\"x\":\n1}", None)
        .unwrap()
        .wait()
        .unwrap();
    server
        .publish("a", Message::binary(vec![0u8, 1, 255]))
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(stream.event(), Some(event("a", None, "hello")));
    assert_eq!(
        stream.event(),
        Some(event("b", None, "{\"x\":\n1}")),
        "JSON over two data lines, joined again"
    );
    assert_eq!(stream.event(), Some(event("a", None, "AAH/")), "base64");
    // Input after the request is read and dropped.
    stream.peer.send(b"anything at all\r\n");
    publish(&server, "b", "still here");
    assert_eq!(stream.event(), Some(event("b", None, "still here")));
    server.stop().unwrap();
}

#[test]
fn ids_come_with_history_and_last_event_id_resumes_then_goes_live() {
    let server = start(|c| {
        c.history = 100;
        c.ping_interval = Duration::from_millis(200);
    });
    let addr = server.local_addr();
    let mut first = Stream::accepted(addr, "/sse?topic=h", "");
    publish(&server, "h", "one");
    let one = first.event().unwrap();
    assert_eq!((one.name.as_str(), one.data.as_str()), ("h", "one"));
    let id = one.id.expect("an id where the topic keeps history");
    // Silence: heartbeats.
    assert_eq!(first.block().as_deref(), Some(": heartbeat\n\n"));
    drop(first);
    publish(&server, "h", "two");
    publish(&server, "h", "three");
    let mut resumed = Stream::accepted(addr, "/sse?topic=h", &format!("Last-Event-ID: {id}\r\n"));
    let missed: Vec<String> = (0..2).map(|_| resumed.event().unwrap().data).collect();
    assert_eq!(missed, ["two", "three"], "exactly what was missed");
    publish(&server, "h", "four");
    let live = resumed.event().unwrap();
    assert_eq!(live.data, "four");
    assert!(live.id.is_some());
    // `since` in the query does the same.
    let mut by_query = Stream::accepted(addr, &format!("/sse?topic=h&since={id}"), "");
    let again: Vec<String> = (0..3).map(|_| by_query.event().unwrap().data).collect();
    assert_eq!(again, ["two", "three", "four"]);
    server.stop().unwrap();
}

#[test]
fn one_resume_point_for_several_topics_is_a_moment_missing_nothing_and_no_false_gap() {
    let server = start(|c| c.history = 100);
    let addr = server.local_addr();
    let mut first = Stream::accepted(addr, "/sse?topic=a&topic=b", "");
    publish(&server, "a", "a1");
    // Offsets are per topic: two topics' first publications in one millisecond share one
    // (a moment that is both; see docs/protocol.md section 21).
    std::thread::sleep(Duration::from_millis(3));
    publish(&server, "b", "b1");
    let a1 = first.event().unwrap();
    let b1 = first.event().unwrap();
    assert_eq!((a1.data.as_str(), b1.data.as_str()), ("a1", "b1"));
    drop(first);
    // Resumed from b1 (the newest seen, not an offset of topic a): a has nothing newer
    // and is no gap; b goes on from b1.
    let since = b1.id.expect("an id");
    let resume = format!("Last-Event-ID: {since}\r\n");
    let mut resumed = Stream::accepted(addr, "/sse?topic=a&topic=b", &resume);
    publish(&server, "a", "a2");
    publish(&server, "b", "b2");
    let live: Vec<(String, String)> = (0..2)
        .map(|_| resumed.event().unwrap())
        .map(|e| (e.name, e.data))
        .collect();
    let expected = [("a", "a2"), ("b", "b2")].map(|(n, d)| (n.to_owned(), d.to_owned()));
    assert_eq!(live, expected, "no gap event, nothing twice");
    drop(resumed);
    // Resumed from a1: b1, b2 and a2 were published after it, and come once each.
    let since = a1.id.expect("an id");
    let resume = format!("Last-Event-ID: {since}\r\n");
    let mut older = Stream::accepted(addr, "/sse?topic=a&topic=b", &resume);
    let mut missed: Vec<String> = (0..3).map(|_| older.event().unwrap().data).collect();
    missed.sort();
    assert_eq!(missed, ["a2", "b1", "b2"]);
    publish(&server, "a", "a3");
    assert_eq!(older.event().unwrap().data, "a3", "then live, no gap");
    drop(older);
    // One `since` per topic (what the SDK sends): each from its own; `$` starts live.
    let each = format!("/sse?topic=a&since={since}&topic=b&since=%24");
    let mut own = Stream::accepted(addr, &each, "");
    let replayed: Vec<String> = (0..2).map(|_| own.event().unwrap().data).collect();
    assert_eq!(replayed, ["a2", "a3"], "a from a1, b from now");
    publish(&server, "b", "b3");
    assert_eq!(own.event().unwrap().data, "b3");
    server.stop().unwrap();
}

#[test]
fn a_resume_on_a_topic_without_history_is_a_gap() {
    let server = start(|_| {});
    let mut stream = Stream::accepted(
        server.local_addr(),
        "/sse?topic=t",
        "Last-Event-ID: 1-0\r\n",
    );
    let gap = stream.event().unwrap();
    assert_eq!(gap.name, "gap");
    let notice: serde_json::Value = serde_json::from_str(&gap.data).unwrap();
    assert_eq!(
        (&notice["type"], &notice["topic"]),
        (&json!("gap"), &json!("t"))
    );
    server.stop().unwrap();
}

#[test]
fn the_upgrade_checks_apply_token_origin_and_topic_cap() {
    let auth = Auth::new(AuthAlgorithm::Hs256, SECRET, None, None).unwrap();
    let server = start(|c| {
        c.auth = Some(auth);
        c.max_topics_per_connection = 2;
    });
    let addr = server.local_addr();
    let without = Stream::open(addr, "/sse?topic=t", "");
    assert_eq!(without.status(), 401, "{}", without.head);
    assert!(header(&without.head, "www-authenticate").is_some());
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let claims = json!({"sub": "ann", "exp": exp, "topics": ["t", "u", "v"]});
    let token = jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap();
    let bearer = format!("Authorization: Bearer {token}\r\n");
    Stream::accepted(addr, "/sse?topic=t", &bearer);
    Stream::accepted(addr, &format!("/sse?topic=t&token={token}"), "");
    let denied = Stream::open(addr, "/sse?topic=secret", &bearer);
    assert_eq!(denied.status(), 403, "a topic the token does not allow");
    let foreign = format!("{bearer}Origin: http://evil.example\r\n");
    let refused = Stream::open(addr, "/sse?topic=t", &foreign);
    assert_eq!(refused.status(), 403, "{}", refused.head);
    assert_eq!(header(&refused.head, "access-control-allow-origin"), None);
    let own = format!("{bearer}Origin: http://{addr}\r\n");
    let opened = Stream::accepted(addr, "/sse?topic=t", &own);
    let page = format!("http://{addr}");
    let allowed = header(&opened.head, "access-control-allow-origin");
    assert_eq!(allowed, Some(page.as_str()));
    // A refusal is readable by the page too: it can tell 401 from 503.
    let tokenless = format!("Origin: http://{addr}\r\n");
    let unauthorized = Stream::open(addr, "/sse?topic=t", &tokenless);
    assert_eq!(unauthorized.status(), 401, "{}", unauthorized.head);
    let allowed = header(&unauthorized.head, "access-control-allow-origin");
    assert_eq!(allowed, Some(page.as_str()));
    let many = Stream::open(addr, "/sse?topic=t&topic=u&topic=v", &bearer);
    assert_eq!(many.status(), 400, "past --max-topics");
    server.stop().unwrap();
}

#[test]
fn a_slow_reader_under_close_is_ended_and_websocket_subscribers_get_everything() {
    let server = start(|c| {
        c.max_send_queue = 64 << 10;
        c.slow_consumer = SlowConsumer::Close;
    });
    let addr = server.local_addr();
    let mut slow = Stream::accepted(addr, "/sse?topic=t", "");
    let mut ws = Peer::connect(addr);
    ws.send(common::upgrade_request("/ws?topic=t").as_bytes());
    assert!(ws.read_head().starts_with("HTTP/1.1 101"));
    let pad = "y".repeat(4096);
    let read = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let reading = read.clone();
    let reader = std::thread::spawn(move || {
        for seq in 0..2000u32 {
            let Some(Message::Text(text)) = ws.recv() else {
                panic!("message {seq} missing");
            };
            assert!(text.starts_with(format!("{seq} ").as_bytes()));
            reading.store(seq + 1, Ordering::Release);
        }
    });
    // 2000 x 4 KiB: far more than the queue cap plus what the kernel buffers. Published
    // at the WebSocket reader's pace (at most 8 ahead of it, well within the cap), so a
    // busy machine that starves the reader thread does not make it a slow consumer too.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    for seq in 0..2000u32 {
        while seq > read.load(Ordering::Acquire) + 8 {
            assert!(
                std::time::Instant::now() < deadline,
                "the reader stopped at {seq}"
            );
            assert!(!reader.is_finished(), "the reader ended early");
            std::thread::sleep(Duration::from_millis(1));
        }
        publish(&server, "t", &format!("{seq} {pad}"));
    }
    reader.join().unwrap();
    assert_eq!(
        server.stats().slow_consumer_closes.load(Ordering::Relaxed),
        1
    );
    // The slow reader finds the events written before the cap, then the end.
    let mut seen = 0;
    while let Some(event) = slow.event() {
        assert!(event.data.starts_with(&format!("{seen} ")), "in order");
        seen += 1;
    }
    assert!(seen < 2000, "ended before the end");
    // The server goes on.
    let mut next = Stream::accepted(addr, "/sse?topic=t", "");
    publish(&server, "t", "after");
    assert_eq!(next.event().unwrap().data, "after");
    server.stop().unwrap();
}

#[test]
fn a_drain_ends_the_stream_after_what_was_queued() {
    let server = start(|_| {});
    let mut stream = Stream::accepted(server.local_addr(), "/sse?topic=t", "");
    publish(&server, "t", "last");
    let stopping = std::thread::spawn(move || server.stop());
    assert_eq!(stream.event(), Some(event("t", None, "last")));
    stream.expect_end();
    stopping.join().unwrap().unwrap();
}

#[test]
fn occupancy_events_arrive_named_for_their_type() {
    let server = start(|c| {
        c.presence_interval = Duration::from_millis(100);
        c.namespaces = vec![Namespace {
            prefix: "live:".into(),
            options: NamespaceOptions {
                occupancy_push: Some(Duration::from_millis(100)),
                ..NamespaceOptions::default()
            },
        }];
    });
    let mut stream = Stream::accepted(server.local_addr(), "/sse?topic=live:1", "");
    let occupancy = stream.event().unwrap();
    assert_eq!((occupancy.name.as_str(), occupancy.id), ("occupancy", None));
    let push: serde_json::Value = serde_json::from_str(&occupancy.data).unwrap();
    assert_eq!(
        (&push["type"], &push["topic"], &push["connections"]),
        (&json!("occupancy"), &json!("live:1"), &json!(1)),
        "the v1 push as data"
    );
    server.stop().unwrap();
}
