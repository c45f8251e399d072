//! Protocol v1 over the wire (docs/protocol.md): negotiation, every command with its reply
//! and its errors, every push and notice, resuming after a disconnect on one node (the
//! node's own history), history bounds, client publish, token refresh, and conflation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Peer, V1, admin, frame};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use stratus_proto::{CloseCode, Message};
use stratus_server::{
    Auth, AuthAlgorithm, ClientPublish, Namespace, NamespaceOptions, Server, SlowConsumer,
};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

use common::start_push as start;

fn publish(server: &Server, topic: &str, content_type: &str, body: &str) -> Value {
    let request = format!(
        "POST /publish/{topic} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, body) = admin(server.admin_addr().unwrap(), &request);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn token(sub: &str, topics: &[&str], exp: u64) -> String {
    let claims = json!({"sub": sub, "exp": exp, "topics": topics, "publish": topics});
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn a_client_that_asks_for_nothing_gets_raw_mode_and_v1_is_negotiated() {
    let server = start(|_| {});
    let mut raw = Peer::connect(server.local_addr());
    raw.send(common::upgrade_request("/ws").as_bytes());
    let head = raw.read_head();
    assert!(
        !head.to_ascii_lowercase().contains("sec-websocket-protocol"),
        "{head}"
    );
    raw.send(&frame(true, 0, 0x1, br#"{"op":"subscribe","topic":"t"}"#));
    let Some(Message::Text(reply)) = raw.recv() else {
        panic!("a raw reply");
    };
    assert_eq!(&reply[..], br#"{"ok":true,"op":"subscribe","topic":"t"}"#);
    let mut v1 = V1::open(&server, "");
    assert_eq!(
        v1.ask(json!({"id": 1, "op": "subscribe", "topic": "t"})),
        json!({"type": "reply", "id": 1, "op": "subscribe", "topic": "t", "offset": null, "recovering": false})
    );
    publish(&server, "t", "text/plain", "hello");
    let Some(Message::Text(raw_push)) = raw.recv() else {
        panic!("a raw push");
    };
    assert_eq!(&raw_push[..], b"hello", "raw mode: as published");
    assert_eq!(
        v1.recv(),
        json!({"type": "pub", "topic": "t", "data": "hello"})
    );
    server.stop().unwrap();
}

#[test]
fn every_command_is_answered_by_id_and_every_push_names_its_topic() {
    let server = start(|c| {
        c.history = 100;
        c.client_publish = ClientPublish::Subscribers;
    });
    let mut a = V1::open(&server, "");
    let mut b = V1::open(&server, "");
    for (client, id) in [(&mut a, json!(1)), (&mut b, json!("x"))] {
        let reply = client.ask(json!({"id": id, "op": "subscribe", "topic": "prices"}));
        assert_eq!(
            (&reply["type"], &reply["id"], &reply["recovering"]),
            (&json!("reply"), &json!(id), &json!(false))
        );
        assert!(
            reply["offset"].is_string(),
            "where the subscription starts: {reply}"
        );
    }
    assert_eq!(
        a.ask(json!({"id": 2, "op": "ping"})),
        json!({"type": "reply", "id": 2, "op": "ping"})
    );
    // From the admin API: JSON embedded as a value, text as a string.
    let published = publish(&server, "prices", "application/json", r#"{"eur":1.08}"#);
    let offset = published["offset"].as_str().unwrap().to_owned();
    for client in [&mut a, &mut b] {
        assert_eq!(
            client.recv(),
            json!({"type": "pub", "topic": "prices", "data": {"eur": 1.08}, "offset": offset})
        );
    }
    publish(&server, "prices", "text/plain", "closed");
    assert_eq!(a.recv()["data"], "closed");
    assert_eq!(b.recv()["data"], "closed");
    // Binary: a binary frame with the topic, offset and key before the payload.
    let request = "POST /publish/prices?key=k HTTP/1.1\r\nHost: x\r\nContent-Type: \
                   application/octet-stream\r\nContent-Length: 2\r\nConnection: close\r\n\r\n\x00\x7f";
    let (status, body) = admin(server.admin_addr().unwrap(), request);
    assert_eq!(status, 200, "{body}");
    let offset: Value = serde_json::from_str(&body).unwrap();
    let offset = offset["offset"].as_str().unwrap();
    let Some(Message::Binary(pushed)) = a.peer.recv() else {
        panic!("a binary push");
    };
    let mut expected = vec![1, 6];
    expected.extend_from_slice(b"prices");
    expected.push(offset.len() as u8);
    expected.extend_from_slice(offset.as_bytes());
    expected.extend_from_slice(&[1, b'k', 0x00, 0x7f]);
    assert_eq!(&pushed[..], &expected[..]);
    b.peer.recv();
    // A client publish reaches the other subscriber, and its reply has the offset.
    a.send(json!({"id": 3, "op": "publish", "topic": "prices", "data": [1, 2], "key": "k"}));
    let (mut reply, mut echo) = (a.recv(), a.recv());
    if reply["type"] == "pub" {
        std::mem::swap(&mut reply, &mut echo);
    }
    assert_eq!((&reply["type"], &reply["id"]), (&json!("reply"), &json!(3)));
    let offset = reply["offset"].as_str().unwrap();
    assert_eq!(
        echo,
        json!({"type": "pub", "topic": "prices", "data": [1, 2], "offset": offset, "key": "k"})
    );
    assert_eq!(b.recv(), echo);
    // History: pages of what was published, oldest first.
    let history = a.ask(json!({"id": 4, "op": "history", "topic": "prices", "limit": 2}));
    assert_eq!(
        (&history["type"], &history["more"]),
        (&json!("reply"), &json!(true))
    );
    let publications = history["publications"].as_array().unwrap();
    assert_eq!(publications[0]["data"], json!({"eur": 1.08}));
    assert_eq!(publications[1]["data"], "closed");
    let next = a.ask(
        json!({"id": 5, "op": "history", "topic": "prices", "since": publications[1]["offset"]}),
    );
    let rest = next["publications"].as_array().unwrap();
    assert_eq!(
        (rest.len(), &rest[0]["encoding"], &rest[0]["data"]),
        (2, &json!("base64"), &json!("AH8="))
    );
    assert_eq!(
        a.ask(json!({"id": 6, "op": "unsubscribe", "topic": "prices"})),
        json!({"type": "reply", "id": 6, "op": "unsubscribe", "topic": "prices"})
    );
    server.stop().unwrap();
}

#[test]
fn every_refusal_has_its_id_and_a_stable_code() {
    let server = start(|c| {
        c.max_topics_per_connection = 2;
        c.message_rate = 100;
        c.namespaces = vec![Namespace {
            prefix: "room:".into(),
            options: NamespaceOptions {
                max_subscribers: Some(1),
                publish: Some(ClientPublish::Subscribers),
                max_message: Some(8),
                ..NamespaceOptions::default()
            },
        }];
    });
    let mut a = V1::open(&server, "");
    a.refused(
        json!({"id": 1, "op": "subscribe", "topic": "no spaces"}),
        "invalid_topic",
    );
    a.refused(
        json!({"id": 2, "op": "unsubscribe", "topic": "t"}),
        "not_subscribed",
    );
    a.refused(
        json!({"id": 3, "op": "subscribe", "topic": "t", "since": "1-0"}),
        "no_history",
    );
    a.refused(
        json!({"id": 4, "op": "publish", "topic": "t", "text": "x"}),
        "forbidden",
    );
    a.refused(json!({"id": 5, "op": "refresh", "token": "x"}), "forbidden");
    a.refused(json!({"id": 6, "op": "teleport"}), "bad_request");
    let malformed = a.ask(json!("not an object"));
    assert_eq!(
        (&malformed["code"], &malformed["id"]),
        (&json!("bad_request"), &Value::Null)
    );
    // Each costly command takes 10 of the 100 messages a second: wait for a full budget.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        a.ask(json!({"id": 7, "op": "subscribe", "topic": "room:1"}))["type"],
        "reply"
    );
    a.refused(
        json!({"id": 8, "op": "publish", "topic": "room:1", "text": "123456789"}),
        "too_large",
    );
    assert_eq!(
        a.ask(json!({"id": 9, "op": "subscribe", "topic": "u"}))["type"],
        "reply"
    );
    a.refused(
        json!({"id": 10, "op": "subscribe", "topic": "w"}),
        "too_many_topics",
    );
    let limited = (11..20)
        .map(|id| a.ask(json!({"id": id, "op": "history", "topic": "t"})))
        .find(|reply| reply["code"] == "rate_limited");
    assert!(limited.is_some(), "past the budget: rate_limited");
    let mut b = V1::open(&server, "");
    b.refused(
        json!({"id": 1, "op": "subscribe", "topic": "room:1"}),
        "topic_full",
    );
    // A full topic asked for in the upgrade URL closes the connection with 1013 naming it.
    let mut c = Peer::connect(server.local_addr());
    c.send(common::upgrade_request_with("/ws?topic=room:1", "").as_bytes());
    assert!(c.read_head().starts_with("HTTP/1.1 101 "));
    match c.recv() {
        Some(Message::Close(Some(close))) => {
            assert_eq!(close.code(), CloseCode::TRY_AGAIN_LATER);
            assert!(close.reason().contains("room:1"), "{}", close.reason());
        }
        other => panic!("expected Close 1013, got {other:?}"),
    }
    server.stop().unwrap();
}

/// Receives publications on `client` until `n` have come; their data as text.
fn texts(client: &mut V1, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let push = client.recv();
            assert_eq!(push["type"], "pub", "{push}");
            push["data"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[test]
fn a_subscriber_that_misses_a_thousand_messages_gets_each_once_in_order_on_one_node() {
    let server = start(|c| c.history = 2000);
    let mut first = V1::open(&server, "");
    let reply = first.ask(json!({"id": 1, "op": "subscribe", "topic": "feed"}));
    assert_eq!(reply["type"], "reply");
    for i in 0..10 {
        server
            .publish("feed", Message::text(format!("m{i}")))
            .unwrap();
    }
    let mut last = String::new();
    for i in 0..10 {
        let push = first.recv();
        assert_eq!(push["data"], format!("m{i}"));
        last = push["offset"].as_str().unwrap().to_owned();
    }
    drop(first);
    for i in 10..1010 {
        server
            .publish("feed", Message::text(format!("m{i}")))
            .unwrap();
    }
    let mut back = V1::open(&server, "");
    let reply = back.ask(json!({"id": 2, "op": "subscribe", "topic": "feed", "since": last}));
    assert_eq!(
        (&reply["recovering"], &reply["offset"]),
        (&json!(true), &json!(last))
    );
    // Live messages published during the replay come after it, none twice.
    for i in 1010..1020 {
        server
            .publish("feed", Message::text(format!("m{i}")))
            .unwrap();
    }
    let got = texts(&mut back, 1010);
    let want: Vec<String> = (10..1020).map(|i| format!("m{i}")).collect();
    assert_eq!(got, want);
    server.stop().unwrap();
}

#[test]
fn past_the_history_size_or_age_a_resume_gets_a_gap_first() {
    let server = start(|c| {
        c.history = 5;
        c.history_ttl = Some(Duration::from_millis(300));
    });
    let offsets: Vec<String> = (0..10)
        .map(|i| {
            let delivery = server
                .publish("feed", Message::text(format!("m{i}")))
                .unwrap();
            let published = stratus_uring::run(delivery.published());
            published.unwrap().unwrap().offset.unwrap()
        })
        .collect();
    // m0 .. m4 went for the size: resuming from m1 misses m2 .. m4.
    let mut sized = V1::open(&server, "");
    sized.send(json!({"id": 1, "op": "subscribe", "topic": "feed", "since": offsets[1]}));
    assert_eq!(sized.recv()["type"], "reply");
    let gap = sized.recv();
    assert_eq!(
        (&gap["type"], &gap["topic"]),
        (&json!("gap"), &json!("feed"))
    );
    assert_eq!(texts(&mut sized, 5), ["m5", "m6", "m7", "m8", "m9"]);
    // Past the age, everything goes: a resume from m8 gets a gap and nothing else.
    std::thread::sleep(Duration::from_millis(400));
    let mut aged = V1::open(&server, "");
    aged.send(json!({"id": 1, "op": "subscribe", "topic": "feed", "since": offsets[8]}));
    assert_eq!(aged.recv()["recovering"], false);
    assert_eq!(aged.recv()["type"], "gap");
    assert_eq!(
        aged.ask(json!({"id": 2, "op": "ping"}))["type"],
        "reply",
        "nothing was replayed"
    );
    server.stop().unwrap();
}

#[test]
fn a_token_is_refreshed_before_it_expires_and_a_narrower_one_ends_subscriptions() {
    let server = start(|c| {
        c.auth = Some(Auth::new(AuthAlgorithm::Hs256, SECRET, None, None).unwrap());
        c.refresh_lead = Duration::from_secs(3600);
        c.ping_interval = Duration::from_millis(200);
    });
    let exp = now_s() + 120;
    let bearer = format!(
        "Authorization: Bearer {}\r\n",
        token("alice", &["a", "b"], exp)
    );
    let mut client = V1::open(&server, &bearer);
    for (id, topic) in [(1, "a"), (2, "b")] {
        assert_eq!(
            client.ask(json!({"id": id, "op": "subscribe", "topic": topic}))["type"],
            "reply"
        );
    }
    // Within the lead: the server asks once.
    let notice = loop {
        match client.peer.recv() {
            Some(Message::Text(text)) => break serde_json::from_slice::<Value>(&text).unwrap(),
            Some(Message::Ping(_)) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(notice, json!({"type": "refresh", "expires": exp}));
    client.refused(
        json!({"id": 3, "op": "refresh", "token": token("mallory", &["a"], exp + 60)}),
        "invalid_token",
    );
    let fresh = token("alice", &["a"], exp + 3600);
    client.send(json!({"id": 4, "op": "refresh", "token": fresh}));
    let mut messages = vec![client.recv(), client.recv()];
    messages.sort_by_key(|m| m["type"].as_str().map(str::to_owned));
    assert_eq!(
        messages,
        [
            json!({"type": "reply", "id": 4, "op": "refresh", "expires": exp + 3600}),
            json!({"type": "unsubscribed", "topic": "b", "reason": "the new token does not allow this topic"}),
        ]
    );
    server.stop().unwrap();
}

#[test]
fn a_conflating_subscriber_at_a_tenth_of_the_rate_gets_the_newest_per_key_and_never_closes() {
    let server = start(|c| {
        c.max_send_queue = 64 << 10;
        c.slow_consumer = SlowConsumer::Conflate;
    });
    let mut prompt = V1::open(&server, "");
    // The slow reader's kernel buffers are small, so what it does not read soon waits in
    // the server's queue.
    let mut slow = V1 {
        peer: Peer::connect_with_receive_buffer(server.local_addr(), 4096),
    };
    slow.peer.send(
        common::upgrade_request_with("/ws", "Sec-WebSocket-Protocol: stratus.v1\r\n").as_bytes(),
    );
    assert!(slow.peer.read_head().starts_with("HTTP/1.1 101 "));
    for client in [&mut prompt, &mut slow] {
        assert_eq!(
            client.ask(json!({"id": 1, "op": "subscribe", "topic": "ticks"}))["type"],
            "reply"
        );
    }
    // 2,000 publications over 8 keys, 4 KiB each; the slow reader reads one for every ten
    // published, the prompt one all of them as they come.
    let (total, keys) = (2000u64, 8);
    let started = Instant::now();
    let mut prompt_seen = 0;
    let mut slow_messages: Vec<Value> = Vec::new();
    for i in 0..total {
        let key = format!("k{}", i % keys);
        let body = format!(
            "{{\"key\":\"{key}\",\"i\":{i},\"pad\":\"{}\"}}",
            "x".repeat(4000)
        );
        server.publish_json("ticks", body, Some(&key)).unwrap();
        while prompt_seen <= i {
            assert_eq!(prompt.recv()["type"], "pub");
            prompt_seen += 1;
        }
        if i % 10 == 0 {
            slow_messages.push(slow.recv());
        }
    }
    // Then it reads what is left, until every key's newest has come.
    let newest_of = |messages: &[Value]| {
        let mut newest = vec![None; keys as usize];
        for m in messages.iter().filter(|m| m["type"] == "pub") {
            let i = m["data"]["i"].as_u64().unwrap();
            newest[(i % keys) as usize] = Some(i);
        }
        newest
    };
    while newest_of(&slow_messages)
        .iter()
        .any(|n| n.is_none_or(|i| i < total - keys))
    {
        slow_messages.push(slow.recv());
    }
    let pubs = slow_messages.iter().filter(|m| m["type"] == "pub").count() as u64;
    let skipped: u64 = slow_messages
        .iter()
        .filter(|m| m["type"] == "skip")
        .map(|m| m["skipped"].as_u64().unwrap())
        .sum();
    eprintln!(
        "conflation: the slow reader got {pubs} of {total} publications and was told of \
         {skipped} skipped ({:?}); the prompt reader got {prompt_seen}",
        started.elapsed()
    );
    assert_eq!(prompt_seen, total, "the prompt subscriber misses nothing");
    assert!(skipped > 0, "the slow one was told what it skipped");
    assert_eq!(
        pubs + skipped,
        total,
        "every message came or was counted as skipped"
    );
    assert_eq!(
        slow.ask(json!({"id": 2, "op": "ping"}))["type"],
        "reply",
        "never closed"
    );
    server.stop().unwrap();
}
