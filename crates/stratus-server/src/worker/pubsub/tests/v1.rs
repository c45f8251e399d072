//! Protocol v1: commands with ids, replies and errors with codes, pushes that name their
//! topic, history, client publish, token refresh, conflation.

use serde_json::{Value, json};

use super::*;
use crate::config::{ClientPublish, Namespace, NamespaceOptions};
use crate::messages::{Published, Reach};
use crate::model::auth::{Auth, AuthAlgorithm};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

impl World {
    /// A new protocol v1 connection, with what `grant` allows.
    fn connect_v1(&mut self, grant: Option<Grant>) -> ConnId {
        self.connect_speaking(Protocol::V1, grant)
    }

    /// Connection `id` sends `command` (JSON).
    fn send_json(&mut self, id: ConnId, command: Value) {
        self.command(id, &command.to_string());
    }

    /// The JSON messages connection `id` was sent since the last look.
    fn json(&mut self, id: ConnId) -> Vec<Value> {
        self.texts(id)
            .iter()
            .map(|t| serde_json::from_str(t).expect("JSON"))
            .collect()
    }
}

/// The code of an error reply, checking it names command `id`.
fn code(reply: &Value, id: u64) -> &str {
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["id"], id, "{reply}");
    reply["code"].as_str().unwrap_or_default()
}

fn namespace(prefix: &str, options: NamespaceOptions) -> Namespace {
    Namespace {
        prefix: prefix.into(),
        options,
    }
}

#[test]
fn commands_are_answered_by_id_and_pushes_name_their_topic() {
    let mut world = World::local(Config::default());
    let a = world.connect_v1(None);
    world.send_json(a, json!({"id": 1, "op": "subscribe", "topic": "t"}));
    world.send_json(a, json!({"id": "p", "op": "ping"}));
    assert_eq!(
        world.json(a),
        [
            json!({"type": "reply", "id": 1, "op": "subscribe", "topic": "t", "offset": null, "recovering": false}),
            json!({"type": "reply", "id": "p", "op": "ping"}),
        ]
    );
    world.publish("t", "hello", None);
    let json_publication = Publication::json(Bytes::from_static(br#"{"p":1.5}"#)).expect("JSON");
    world.publish_publication("t", json_publication, None);
    assert_eq!(
        world.json(a),
        [
            json!({"type": "pub", "topic": "t", "data": "hello"}),
            json!({"type": "pub", "topic": "t", "data": {"p": 1.5}}),
        ]
    );
    let binary = Publication::from_message(Message::Binary(Bytes::from_static(b"\x00\x01")))
        .expect("binary");
    world.publish_publication("t", binary, None);
    let sent = testing::sent_to(world.client(a));
    assert_eq!(
        sent,
        [Message::Binary(Bytes::from_static(
            b"\x01\x01t\x00\x00\x00\x01"
        ))]
    );
    world.send_json(a, json!({"id": 2, "op": "unsubscribe", "topic": "t"}));
    assert_eq!(
        world.json(a),
        [json!({"type": "reply", "id": 2, "op": "unsubscribe", "topic": "t"})]
    );
    assert_eq!(world.publish("t", "gone", None).queued, 0);
}

#[test]
fn every_refusal_names_its_command_and_a_stable_code() {
    let config = Config {
        max_topics_per_connection: 2,
        message_rate: 1000,
        namespaces: vec![namespace(
            "room:",
            NamespaceOptions {
                max_subscribers: Some(1),
                ..NamespaceOptions::default()
            },
        )],
        ..Config::default()
    };
    let mut world = World::local(config);
    let grant = Grant::new("u", &["a", "b", "c", "room:*"], u64::MAX);
    let a = world.connect_v1(Some(grant.clone()));
    let cases = [
        (
            json!({"id": 1, "op": "subscribe", "topic": "a b"}),
            "invalid_topic",
        ),
        (
            json!({"id": 2, "op": "subscribe", "topic": "secret"}),
            "forbidden",
        ),
        (
            json!({"id": 3, "op": "unsubscribe", "topic": "a"}),
            "not_subscribed",
        ),
        (
            json!({"id": 4, "op": "subscribe", "topic": "a", "since": "5-0"}),
            "no_history",
        ),
        (
            json!({"id": 5, "op": "history", "topic": "a"}),
            "no_history",
        ),
        (
            json!({"id": 6, "op": "publish", "topic": "a", "data": 1}),
            "forbidden",
        ),
        (json!({"id": 7, "op": "fly"}), "bad_request"),
        (json!({"id": 8, "op": "refresh", "token": "x"}), "forbidden"),
    ];
    for (command, expected) in cases {
        world.send_json(a, command.clone());
        let replies = world.json(a);
        assert_eq!(replies.len(), 1, "{command}: {replies:?}");
        let id = command["id"].as_u64().expect("an id");
        assert_eq!(code(&replies[0], id), expected, "{command}");
        assert_eq!(replies[0]["op"], command["op"], "{command}");
    }
    world.send_json(a, json!({"id": 9, "op": "subscribe", "topic": "room:1"}));
    world.send_json(a, json!({"id": 10, "op": "subscribe", "topic": "b"}));
    world.send_json(a, json!({"id": 11, "op": "subscribe", "topic": "c"}));
    let replies = world.json(a);
    assert_eq!(code(&replies[2], 11), "too_many_topics");
    let b = world.connect_v1(Some(grant));
    world.send_json(b, json!({"id": 12, "op": "subscribe", "topic": "room:1"}));
    assert_eq!(
        code(&world.json(b)[0], 12),
        "topic_full",
        "one subscriber per room"
    );
    world.send(b, Message::Binary(Bytes::from_static(b"{}")));
    let binary = world.json(b);
    assert_eq!(
        (binary[0]["code"].as_str(), &binary[0]["id"]),
        (Some("bad_request"), &Value::Null)
    );
}

#[test]
fn commands_past_the_budget_are_refused_with_rate_limited() {
    let config = Config {
        message_rate: 25,
        ..Config::default()
    };
    let mut world = World::local(config);
    let a = world.connect_v1(None);
    for id in 1..=3 {
        world.send_json(
            a,
            json!({"id": id, "op": "subscribe", "topic": format!("t{id}")}),
        );
    }
    let replies = world.json(a);
    assert_eq!(code(&replies[2], 3), "rate_limited");
    world.send_json(a, json!({"id": 4, "op": "ping"}));
    assert_eq!(
        world.json(a)[0]["type"],
        "reply",
        "a ping is not a costly command"
    );
}

#[test]
fn a_subscribe_with_history_says_where_it_starts_and_a_resume_gets_the_rest_once() {
    let mut world = World::local(Config {
        history: 10,
        ..Config::default()
    });
    let a = world.connect_v1(None);
    world.send_json(a, json!({"id": 1, "op": "subscribe", "topic": "t"}));
    world.pump();
    let reply = world.json(a).remove(0);
    assert_eq!(
        reply,
        json!({"type": "reply", "id": 1, "op": "subscribe", "topic": "t", "offset": "0-0", "recovering": false}),
        "nothing published yet: it starts before everything"
    );
    let offsets: Vec<Offset> = ["m1", "m2", "m3"]
        .iter()
        .map(|m| {
            world
                .publish_through_node("t", Publication::text(m))
                .expect("an offset")
        })
        .collect();
    let pubs = world.json(a);
    let got: Vec<&str> = pubs
        .iter()
        .map(|p| p["offset"].as_str().unwrap_or_default())
        .collect();
    let want: Vec<String> = offsets.iter().map(Offset::to_string).collect();
    assert_eq!(got, want);
    // Another connection resumes from m1: the reply, then m2 and m3, once each.
    let b = world.connect_v1(None);
    let since = offsets[0].to_string();
    world.send_json(
        b,
        json!({"id": 2, "op": "subscribe", "topic": "t", "since": since}),
    );
    world.pump();
    let resumed = world.json(b);
    assert_eq!(resumed[0]["recovering"], true, "{resumed:?}");
    assert_eq!(resumed[0]["offset"], since.as_str());
    let data: Vec<&str> = resumed[1..]
        .iter()
        .map(|p| p["data"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(data, ["m2", "m3"]);
    world.publish_through_node("t", Publication::text("m4"));
    assert_eq!(
        world.json(b)[0]["data"],
        "m4",
        "then live, without a repeat"
    );
}

#[test]
fn the_history_command_reads_pages() {
    let mut world = World::local(Config {
        history: 10,
        ..Config::default()
    });
    let a = world.connect_v1(None);
    let offsets: Vec<Offset> = (0..3)
        .map(|i| {
            world
                .publish_through_node("t", Publication::text(&format!("m{i}")))
                .expect("offset")
        })
        .collect();
    world.send_json(
        a,
        json!({"id": 1, "op": "history", "topic": "t", "limit": 2}),
    );
    world.pump();
    let reply = world.json(a).remove(0);
    assert_eq!(reply["type"], "reply");
    assert_eq!(
        reply["publications"][0],
        json!({"data": "m0", "offset": offsets[0].to_string()})
    );
    assert_eq!(reply["publications"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        (&reply["more"], &reply["gap"]),
        (&json!(true), &Value::Null)
    );
    let since = offsets[1].to_string();
    world.send_json(
        a,
        json!({"id": 2, "op": "history", "topic": "t", "since": since}),
    );
    world.pump();
    let reply = world.json(a).remove(0);
    assert_eq!(
        reply["publications"],
        json!([{"data": "m2", "offset": offsets[2].to_string()}])
    );
    assert_eq!(reply["more"], false);
}

#[test]
fn client_publishes_follow_the_namespace_and_are_answered_with_their_offset() {
    let config = Config {
        client_publish_rate: 2,
        namespaces: vec![
            namespace(
                "chat:",
                NamespaceOptions {
                    publish: Some(ClientPublish::Subscribers),
                    history: Some(10),
                    max_message: Some(32),
                    ..NamespaceOptions::default()
                },
            ),
            namespace(
                "claims:",
                NamespaceOptions {
                    publish: Some(ClientPublish::Claim),
                    ..NamespaceOptions::default()
                },
            ),
        ],
        ..Config::default()
    };
    let mut world = World::local(config);
    let grant = Grant::new("u", &["*"], u64::MAX).publishing(&["claims:ok"]);
    let a = world.connect_v1(Some(grant));
    let b = world.connect_v1(None);
    for id in [a, b] {
        world.send_json(id, json!({"id": 1, "op": "subscribe", "topic": "chat:1"}));
    }
    world.pump();
    world.json(a);
    world.json(b);
    world.send_json(
        a,
        json!({"id": 2, "op": "publish", "topic": "chat:1", "data": {"x": 1}, "key": "k"}),
    );
    world.pump();
    let replies = world.json(a);
    let reply = replies
        .iter()
        .find(|r| r["type"] == "reply")
        .expect("a reply");
    assert_eq!((&reply["id"], &reply["op"]), (&json!(2), &json!("publish")));
    let offset = reply["offset"]
        .as_str()
        .expect("an offset from the history");
    let pushed = world.json(b);
    assert_eq!(
        pushed,
        [json!({"type": "pub", "topic": "chat:1", "data": {"x": 1}, "offset": offset, "key": "k"})]
    );
    let cases = [
        (
            json!({"id": 3, "op": "publish", "topic": "chat:2", "text": "hi"}),
            "forbidden",
        ),
        (
            json!({"id": 4, "op": "publish", "topic": "news", "text": "hi"}),
            "forbidden",
        ),
        (
            json!({"id": 5, "op": "publish", "topic": "claims:no", "text": "hi"}),
            "forbidden",
        ),
        (
            json!({"id": 6, "op": "publish", "topic": "chat:1", "text": "x".repeat(33)}),
            "too_large",
        ),
    ];
    for (command, expected) in cases {
        world.send_json(a, command.clone());
        let replies = world.json(a);
        let id = command["id"].as_u64().expect("an id");
        assert_eq!(code(&replies[0], id), expected, "{command}");
    }
    world.send_json(
        a,
        json!({"id": 7, "op": "publish", "topic": "claims:ok", "text": "hi"}),
    );
    world.pump();
    assert_eq!(world.json(a)[0]["type"], "reply", "the claim allows it");
    world.send_json(
        a,
        json!({"id": 8, "op": "publish", "topic": "claims:ok", "text": "hi"}),
    );
    assert_eq!(code(&world.json(a)[0], 8), "rate_limited", "two a second");
    assert_eq!(
        world.hub.workers[0]
            .publishes_limited
            .load(Ordering::Relaxed),
        1
    );
    assert_eq!(
        world.hub.workers[0]
            .client_publishes
            .load(Ordering::Relaxed),
        2
    );
}

#[test]
fn with_a_broker_a_client_publish_is_answered_when_redis_has_answered() {
    let config = Config {
        client_publish: ClientPublish::Subscribers,
        ..Config::default()
    };
    let mut world = World::with_broker(config, 0);
    let a = world.connect_v1(None);
    world.send_json(a, json!({"id": 1, "op": "subscribe", "topic": "t"}));
    world.confirm("t", 0);
    world.json(a);
    world.send_json(
        a,
        json!({"id": 2, "op": "publish", "topic": "t", "text": "hi"}),
    );
    assert!(world.json(a).is_empty(), "not before Redis answers");
    let outgoing = world
        .broker
        .as_mut()
        .expect("a broker")
        .publishes
        .try_recv()
        .expect("on its way to Redis");
    outgoing.answer(Ok(Published::by_broker(2, Some(Offset(9, 0)))), &world.hub);
    world.pump();
    assert_eq!(
        world.json(a),
        [json!({"type": "reply", "id": 2, "op": "publish", "topic": "t", "offset": "9-0"})]
    );
    world.send_json(
        a,
        json!({"id": 3, "op": "publish", "topic": "t", "text": "again"}),
    );
    let outgoing = world
        .broker
        .as_mut()
        .expect("a broker")
        .publishes
        .try_recv()
        .expect("sent");
    outgoing.answer(Err(PublishError::BrokerUnavailable), &world.hub);
    world.pump();
    assert_eq!(code(&world.json(a)[0], 3), "unavailable");
    assert!(matches!(Reach::Nodes(1), Reach::Nodes(_)));
}

/// A token for `sub` allowing `topics`, expiring at `exp`.
fn token(sub: &str, topics: &[&str], exp: u64) -> String {
    let claims = json!({"sub": sub, "exp": exp, "topics": topics});
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET);
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).expect("a token")
}

#[test]
fn a_refresh_replaces_the_topics_and_ends_what_the_new_token_no_longer_allows() {
    let auth = Auth::new(AuthAlgorithm::Hs256, SECRET, None, None).expect("auth");
    let config = Config {
        auth: Some(auth),
        refresh_lead: Duration::from_secs(60),
        ..Config::default()
    };
    let mut world = World::local(config);
    let exp = 4_000_000_000;
    let a = world.connect_v1(Some(Grant::new("u", &["a", "b"], exp)));
    world.send_json(a, json!({"id": 1, "op": "subscribe", "topic": "a"}));
    world.send_json(a, json!({"id": 2, "op": "subscribe", "topic": "b"}));
    world.json(a);
    // The sweep asks for a refresh within the lead, once.
    let sweep = |world: &mut World, unix_s| {
        let (config, now) = (world.config.clone(), world.now);
        world.client(a).tick(&config, now, unix_s, None)
    };
    assert_eq!(sweep(&mut world, exp - 61), crate::connection::Tick::Quiet);
    assert_eq!(
        sweep(&mut world, exp - 60),
        crate::connection::Tick::Changed
    );
    assert_eq!(world.json(a), [json!({"type": "refresh", "expires": exp})]);
    assert_eq!(
        sweep(&mut world, exp - 59),
        crate::connection::Tick::Quiet,
        "once"
    );
    let other = token("v", &["a"], exp + 3600);
    world.send_json(a, json!({"id": 3, "op": "refresh", "token": other}));
    assert_eq!(
        code(&world.json(a)[0], 3),
        "invalid_token",
        "another subject"
    );
    world.send_json(a, json!({"id": 4, "op": "refresh", "token": "garbage"}));
    assert_eq!(code(&world.json(a)[0], 4), "invalid_token");
    let fresh = token("u", &["a"], exp + 3600);
    world.send_json(a, json!({"id": 5, "op": "refresh", "token": fresh}));
    assert_eq!(
        world.json(a),
        [
            json!({"type": "unsubscribed", "topic": "b", "reason": "the new token does not allow this topic"}),
            json!({"type": "reply", "id": 5, "op": "refresh", "expires": exp + 3600}),
        ]
    );
    assert_eq!(
        world.publish("b", "x", None).queued,
        0,
        "no longer subscribed to b"
    );
    assert_eq!(world.publish("a", "x", None).queued, 1);
    assert_eq!(
        sweep(&mut world, exp + 1),
        crate::connection::Tick::Quiet,
        "not expired: refreshed"
    );
}

#[test]
fn conflation_keeps_the_newest_per_key_for_a_lagging_subscriber_and_says_what_it_skipped() {
    let config = Config {
        max_send_queue: 2048,
        slow_consumer: SlowConsumer::Conflate,
        ..Config::default()
    };
    let mut world = World::local(config);
    let (slow, prompt) = (world.connect_v1(None), world.connect_v1(None));
    for id in [slow, prompt] {
        world.send_json(id, json!({"id": 1, "op": "subscribe", "topic": "prices"}));
        world.json(id);
    }
    let mut prompt_got = Vec::new();
    for i in 0..40u64 {
        let key = if i % 2 == 0 { "eur" } else { "usd" };
        let payload = format!("{key}-{i}-{}", "x".repeat(100));
        let publication = Publication::text(&payload)
            .with_key(Some(key))
            .expect("key");
        world.publish_publication("prices", publication, Some(Offset(i + 1, 0)));
        // The prompt subscriber reads everything as it comes.
        prompt_got.extend(world.json(prompt));
    }
    assert_eq!(prompt_got.len(), 40, "the prompt subscriber misses nothing");
    assert!(world.hub.stats.conflated.load(Ordering::Relaxed) > 0);
    // The slow one reads what its queue held, then its queue drains.
    let first = world.json(slow);
    assert!(!first.is_empty() && first.len() < 40, "{}", first.len());
    world.sent(slow);
    let rest = world.json(slow);
    let skips: Vec<&Value> = rest.iter().filter(|m| m["type"] == "skip").collect();
    let pubs: Vec<&Value> = rest.iter().filter(|m| m["type"] == "pub").collect();
    assert_eq!(pubs.len(), 2, "the newest of each key: {rest:?}");
    assert_eq!(pubs[0]["key"], "eur");
    assert!(
        pubs.iter()
            .any(|p| p["data"].as_str().is_some_and(|d| d.starts_with("usd-39")))
    );
    assert!(
        pubs.iter()
            .any(|p| p["data"].as_str().is_some_and(|d| d.starts_with("eur-38")))
    );
    let skipped: u64 = skips
        .iter()
        .map(|s| s["skipped"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(
        first.len() as u64 + skipped + 2,
        40,
        "every message is sent or told skipped"
    );
    assert!(client_is_open(&mut world, slow), "never closed");
}

fn client_is_open(world: &mut World, id: ConnId) -> bool {
    world.client(id).is_open_for_messages()
}
