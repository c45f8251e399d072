//! Presence on one node (docs/protocol.md, presence): occupancy counts connections and
//! distinct users, members are listed up to the cap with the token's `info`, joins and
//! leaves reach v1 subscribers coalesced per interval (counts past the cap), occupancy is
//! pushed where a namespace asks, raw-mode subscribers get none of it, and the admin API
//! answers the same.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Peer, V1, admin};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use stratus_proto::Message;
use stratus_server::{Auth, AuthAlgorithm, Namespace, NamespaceOptions, PresenceMode, Server};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn bearer(sub: &str, name: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let claims = json!({"sub": sub, "exp": exp, "topics": ["*"], "info": {"name": name}});
    let token = jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap();
    format!("Authorization: Bearer {token}\r\n")
}

fn namespace(prefix: &str, options: NamespaceOptions) -> Namespace {
    Namespace {
        prefix: prefix.into(),
        options,
    }
}

fn start() -> Server {
    common::start_push(|c| {
        c.auth = Some(Auth::new(AuthAlgorithm::Hs256, SECRET, None, None).unwrap());
        c.presence_interval = Duration::from_millis(100);
        c.namespaces = vec![
            namespace(
                "room:",
                NamespaceOptions {
                    presence: Some(PresenceMode::Members),
                    presence_events: Some(true),
                    presence_max_members: Some(6),
                    ..NamespaceOptions::default()
                },
            ),
            namespace(
                "live:",
                NamespaceOptions {
                    occupancy_push: Some(Duration::from_millis(100)),
                    ..NamespaceOptions::default()
                },
            ),
            namespace(
                "quiet:",
                NamespaceOptions {
                    presence: Some(PresenceMode::Off),
                    ..NamespaceOptions::default()
                },
            ),
        ];
    })
}

fn subscribe(client: &mut V1, id: u64, topic: &str) {
    let reply = client.ask(json!({"id": id, "op": "subscribe", "topic": topic}));
    assert_eq!(reply["type"], "reply", "{reply}");
}

fn get(server: &Server, path: &str) -> (u16, Value) {
    let (status, body) = admin(
        server.admin_addr().unwrap(),
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    );
    (status, serde_json::from_str(&body).unwrap())
}

/// Reads `client`'s pushes until `done` says the ones seen are enough (10 s at most).
fn pushes_until(client: &mut V1, mut done: impl FnMut(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while !done(&seen) {
        assert!(Instant::now() < deadline, "not seen in time: {seen:?}");
        seen.push(client.recv());
    }
    seen
}

/// Sends `command` and returns its reply or error, past any push that comes first.
fn answer(client: &mut V1, command: Value) -> Value {
    client.send(command.clone());
    pushes_until(client, |seen| {
        seen.last()
            .is_some_and(|m| m["id"] == command["id"] && m["type"] != "presence")
    })
    .pop()
    .unwrap()
}

/// The `user`s of the members listed under `field` in the presence pushes among `seen`.
fn users_in(seen: &[Value], field: &str) -> Vec<String> {
    let mut users: Vec<String> = seen
        .iter()
        .filter(|p| p["type"] == "presence")
        .flat_map(|p| p[field].as_array().cloned().unwrap_or_default())
        .map(|m| m["user"].as_str().unwrap().to_owned())
        .collect();
    users.sort();
    users
}

#[test]
fn occupancy_and_members_are_counted_listed_and_their_changes_pushed_once_per_interval() {
    let server = start();
    let mut watcher = V1::open(&server, &bearer("watcher", "W"));
    subscribe(&mut watcher, 1, "room:1");
    let mut raw = Peer::connect(server.local_addr());
    raw.send(common::upgrade_request_with("/ws?topic=room:1", &bearer("raw", "R")).as_bytes());
    assert!(raw.read_head().starts_with("HTTP/1.1 101 "));
    let mut members: Vec<V1> = [("alice", "A"), ("alice", "A2"), ("bob", "B")]
        .iter()
        .map(|(sub, name)| {
            let mut c = V1::open(&server, &bearer(sub, name));
            subscribe(&mut c, 1, "room:1");
            c
        })
        .collect();

    // The watcher hears the joins (its own and the raw client's too), coalesced.
    let seen = pushes_until(&mut watcher, |seen| users_in(seen, "joins").len() >= 5);
    assert_eq!(
        users_in(&seen, "joins"),
        ["alice", "alice", "bob", "raw", "watcher"]
    );
    assert!(
        seen.len() < 4,
        "at most one push per interval, not one per join: {seen:?}"
    );
    let info = seen
        .iter()
        .flat_map(|p| p["joins"].as_array().cloned().unwrap_or_default())
        .find(|m| m["user"] == "bob")
        .unwrap();
    assert_eq!(info["info"], json!({"name": "B"}));
    assert!(
        info["client"]
            .as_str()
            .is_some_and(|c| c.split('.').count() == 3)
    );

    let occupancy = answer(
        &mut watcher,
        json!({"id": 2, "op": "occupancy", "topic": "room:1"}),
    );
    assert_eq!(
        (
            &occupancy["type"],
            &occupancy["connections"],
            &occupancy["users"]
        ),
        (&json!("reply"), &json!(5), &json!(4)),
        "{occupancy}"
    );
    let presence = answer(
        &mut watcher,
        json!({"id": 3, "op": "presence", "topic": "room:1"}),
    );
    assert_eq!(presence["connections"], 5, "{presence}");
    assert_eq!(presence["members"].as_array().unwrap().len(), 5);
    assert_eq!(presence["complete"], true);

    // A leave, then the admin API's view.
    members.pop();
    let seen = pushes_until(&mut watcher, |seen| !users_in(seen, "leaves").is_empty());
    assert_eq!(users_in(&seen, "leaves"), ["bob"]);
    let (status, body) = get(&server, "/presence/room:1");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["connections"], &body["users"]),
        (&json!(4), &json!(3))
    );
    assert_eq!(body["members"].as_array().unwrap().len(), 4, "{body}");
    let (status, body) = get(&server, "/occupancy/room%3A1");
    assert_eq!((status, &body["connections"]), (200, &json!(4)), "{body}");
    let (_, body) = get(&server, "/topics?limit=5");
    assert_eq!(body["topics"][0]["topic"], "room:1", "{body}");

    // Past the cap in one interval: the watcher gets the counts instead of a list. 14
    // subscribes sent at once fall in at most two intervals, one of them with more joins
    // than the cap of 6.
    let mut crowd: Vec<V1> = (0..14)
        .map(|i| V1::open(&server, &bearer(&format!("u{i}"), "U")))
        .collect();
    for c in &mut crowd {
        c.send(json!({"id": 1, "op": "subscribe", "topic": "room:1"}));
    }
    pushes_until(&mut watcher, |seen| {
        seen.iter().any(|p| p["type"] == "occupancy")
    });
    let presence = answer(
        &mut watcher,
        json!({"id": 4, "op": "presence", "topic": "room:1"}),
    );
    assert_eq!(presence["connections"], 18, "{presence}");
    assert_eq!(presence["members"].as_array().unwrap().len(), 6, "the cap");
    assert_eq!(presence["complete"], false, "eighteen members, six listed");
    drop(crowd);

    // The raw-mode subscriber got no presence push, only what was published.
    let (status, _) = admin(
        server.admin_addr().unwrap(),
        "POST /publish/room:1 HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\
         Content-Length: 5\r\nConnection: close\r\n\r\nhello",
    );
    assert_eq!(status, 200);
    assert_eq!(raw.recv(), Some(Message::text("hello")));
    drop(members);
    server.stop().unwrap();
}

#[test]
fn occupancy_is_pushed_where_asked_and_presence_is_refused_where_off() {
    let server = start();
    let mut client = V1::open(&server, &bearer("carol", "C"));
    subscribe(&mut client, 1, "live:scores");
    let push = pushes_until(&mut client, |seen| {
        seen.iter().any(|p| p["type"] == "occupancy")
    })
    .pop()
    .unwrap();
    assert_eq!(
        push,
        json!({"type": "occupancy", "topic": "live:scores", "connections": 1, "users": 1})
    );
    // Counts only outside a members namespace; nothing where presence is off.
    client.refused(
        json!({"id": 2, "op": "presence", "topic": "live:scores"}),
        "no_presence",
    );
    client.refused(
        json!({"id": 3, "op": "occupancy", "topic": "quiet:x"}),
        "no_presence",
    );
    let (status, _) = get(&server, "/occupancy/quiet:x");
    assert_eq!(status, 404);
    let (status, _) = get(&server, "/presence/live:scores");
    assert_eq!(status, 404);
    let (status, _) = get(&server, "/occupancy/not%20a%20topic");
    assert_eq!(status, 400);
    server.stop().unwrap();
}
