//! User-level control on one node (the admin API's `/users/{user}`): the connections of
//! two users with JWT auth, listed, subscribed server-side (then reached by a publish),
//! unsubscribed (v1 told with a notice, raw mode not), and disconnected with a close code
//! and reason the clients see; bad requests get 400/404/405, no token 401.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Peer, admin, frame, sample};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use stratus_proto::{CloseCode, Message};
use stratus_server::{App, Auth, AuthAlgorithm, Server};

const SECRET: &[u8] = b"a test secret of at least thirty-two bytes";
const ADMIN_TOKEN: &str = "s3cret";

fn token(user: &str, topics: &[&str]) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let claims = json!({"sub": user, "exp": exp, "topics": topics});
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

fn start() -> Server {
    common::start_with(|c| {
        c.app = App::PubSub;
        c.auth = Some(Auth::new(AuthAlgorithm::Hs256, SECRET, None, None).unwrap());
        c.admin_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        c.admin_token = Some(ADMIN_TOKEN.into());
    })
}

/// A connection of `user` (v1 if `v1`) at `path` (its query may name topics).
fn connect(server: &Server, user: &str, v1: bool, query: &str) -> Peer {
    let topics = ["news.*", "chat"];
    let path = format!("/ws?token={}{query}", token(user, &topics));
    let protocol = if v1 {
        "Sec-WebSocket-Protocol: stratus.v1\r\n"
    } else {
        ""
    };
    let mut peer = Peer::connect(server.local_addr());
    peer.send(common::upgrade_request_with(&path, protocol).as_bytes());
    let head = peer.read_head();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    peer
}

fn recv_json(peer: &mut Peer) -> Value {
    match peer.recv() {
        Some(Message::Text(text)) => serde_json::from_slice(&text).unwrap(),
        other => panic!("expected JSON text, got {other:?}"),
    }
}

fn recv_text(peer: &mut Peer) -> String {
    match peer.recv() {
        Some(Message::Text(text)) => String::from_utf8(text.to_vec()).unwrap(),
        other => panic!("expected text, got {other:?}"),
    }
}

/// An admin request with the token: the status and the JSON body.
fn ask(server: &Server, method: &str, path: &str) -> (u16, Value) {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let (status, body) = admin(server.admin_addr().unwrap(), &request);
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn publish(server: &Server, topic: &str, text: &str) -> Value {
    let request = format!(
        "POST /publish/{topic} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
    let (status, body) = admin(server.admin_addr().unwrap(), &request);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// A v1 ping round trip: the connection is open and has nothing else queued before it.
fn ping(peer: &mut Peer, id: u64) {
    let command = json!({"op": "ping", "id": id}).to_string();
    peer.send(&frame(true, 0, 0x1, command.as_bytes()));
    let reply = recv_json(peer);
    assert_eq!(
        (reply["op"].clone(), reply["id"].clone()),
        (json!("ping"), json!(id)),
        "{reply}"
    );
}

#[test]
fn a_users_connections_are_listed_subscribed_unsubscribed_and_disconnected() {
    let server = start();
    let mut a1 = connect(&server, "alice", true, "");
    let mut a2 = connect(&server, "alice", true, "&topic=chat");
    let mut raw = connect(&server, "alice", false, "&topic=chat");
    let mut bob = connect(&server, "bob", true, "");
    ping(&mut a1, 1);
    ping(&mut a2, 1);
    ping(&mut bob, 1);

    // Listed, with where each is, what it speaks and what it listens to.
    let (status, list) = ask(&server, "GET", "/users/alice");
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["affected"], 3, "{list}");
    assert_eq!(list["nodes"], json!({"answered": 1, "up": 1}));
    let conns = list["connections"].as_array().unwrap();
    let mut protocols: Vec<&str> = conns
        .iter()
        .map(|c| c["protocol"].as_str().unwrap())
        .collect();
    protocols.sort_unstable();
    assert_eq!(protocols, ["raw", "v1", "v1"]);
    let subscribed = conns
        .iter()
        .filter(|c| c["topics"] == json!(["chat"]))
        .count();
    assert_eq!(subscribed, 2, "{list}");
    for conn in conns {
        assert_eq!(conn["remote"], "127.0.0.1");
        assert!(conn["connected_since_ms"].as_u64().unwrap() > 1_700_000_000_000);
        assert!(
            conn["client_id"]
                .as_str()
                .unwrap()
                .starts_with(conn["node"].as_str().unwrap())
        );
    }
    let (_, nobody) = ask(&server, "GET", "/users/carol");
    assert_eq!(
        (nobody["affected"].clone(), nobody["connections"].clone()),
        (json!(0), json!([]))
    );

    // Subscribed server-side: v1 is told, then a publish reaches all three, not bob.
    let (status, body) = ask(&server, "POST", "/users/alice/subscribe/news.a");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["affected"].clone(), body["refused"].clone()),
        (json!(3), json!(0))
    );
    for peer in [&mut a1, &mut a2] {
        assert_eq!(
            recv_json(peer),
            json!({"type": "subscribed", "topic": "news.a"})
        );
    }
    assert_eq!(publish(&server, "news.a", "hello")["recipients"], 3);
    for peer in [&mut a1, &mut a2] {
        let push = recv_json(peer);
        assert_eq!(
            (push["type"].clone(), push["data"].clone()),
            (json!("pub"), json!("hello"))
        );
    }
    assert_eq!(recv_text(&mut raw), "hello", "raw mode: as published");
    // Once more: already subscribed. A topic the token does not allow: refused.
    let (_, again) = ask(&server, "POST", "/users/alice/subscribe/news.a");
    assert_eq!(
        again["refused_by_reason"],
        json!({"already_subscribed": 3}),
        "{again}"
    );
    let (_, sport) = ask(&server, "POST", "/users/alice/subscribe/sport");
    assert_eq!(
        (
            sport["affected"].clone(),
            sport["refused_by_reason"].clone()
        ),
        (json!(0), json!({"not_allowed": 3}))
    );

    // Unsubscribed: v1 gets the notice, raw mode nothing; publishes no longer reach them.
    let (status, body) = ask(&server, "POST", "/users/alice/unsubscribe/news.a");
    assert_eq!(
        (status, body["affected"].clone()),
        (200, json!(3)),
        "{body}"
    );
    for peer in [&mut a1, &mut a2] {
        assert_eq!(
            recv_json(peer),
            json!({"type": "unsubscribed", "topic": "news.a", "reason": "unsubscribed by the server"})
        );
    }
    assert_eq!(publish(&server, "news.a", "gone")["recipients"], 0);
    let (_, body) = ask(&server, "POST", "/users/alice/unsubscribe/news.a");
    assert_eq!(body["refused_by_reason"], json!({"not_subscribed": 3}));
    // The raw connection still gets what it listens to, and nothing came before it.
    assert_eq!(publish(&server, "chat", "still")["recipients"], 2);
    assert_eq!(recv_text(&mut raw), "still");
    assert_eq!(recv_json(&mut a2)["data"], "still");

    // Bad requests say what is wrong; without the token, 401.
    for (method, path, want) in [
        ("POST", "/users/alice/disconnect?code=1001", 400),
        ("POST", "/users/alice/disconnect?code=5000", 400),
        ("POST", "/users/alice/disconnect?code=x", 400),
        (
            "POST",
            &format!("/users/alice/disconnect?reason={}", "x".repeat(124)),
            400,
        ),
        ("POST", "/users/alice/subscribe/bad%20topic", 400),
        ("POST", "/users//disconnect", 400),
        ("GET", "/users/alice/disconnect", 405),
        ("POST", "/users/alice", 405),
        ("POST", "/users/alice/explode", 404),
    ] {
        let (status, body) = ask(&server, method, path);
        assert_eq!(status, want, "{method} {path}: {body}");
    }
    let bare = "GET /users/alice HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    assert_eq!(admin(server.admin_addr().unwrap(), bare).0, 401);

    // Disconnected with the code and reason asked for; bob is untouched.
    let (status, body) = ask(
        &server,
        "POST",
        "/users/alice/disconnect?code=4001&reason=kicked%20out",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["affected"].clone(), body["code"].clone()),
        (json!(3), json!(4001))
    );
    for peer in [&mut a1, &mut a2, &mut raw] {
        match peer.recv() {
            Some(Message::Close(Some(close))) => {
                assert_eq!(
                    (close.code(), close.reason()),
                    (CloseCode(4001), "kicked out")
                );
            }
            other => panic!("expected Close 4001, got {other:?}"),
        }
    }
    drop((a1, a2, raw));
    ping(&mut bob, 2);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, list) = ask(&server, "GET", "/users/alice");
        if list["affected"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "still listed: {list}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_, list) = ask(&server, "GET", "/users/bob");
    assert_eq!(list["affected"], 1);
    // The default close: 4000.
    let (_, body) = ask(&server, "POST", "/users/bob/disconnect");
    assert_eq!(
        (body["code"].clone(), body["reason"].clone()),
        (json!(4000), json!("disconnected by the server"))
    );
    match bob.recv() {
        Some(Message::Close(Some(close))) => assert_eq!(close.code(), CloseCode(4000)),
        other => panic!("expected Close 4000, got {other:?}"),
    }

    let page = admin(
        server.admin_addr().unwrap(),
        &format!("GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nConnection: close\r\n\r\n"),
    )
    .1;
    assert_eq!(
        sample(&page, "stratus_user_commands_total{action=\"disconnect\"}"),
        2
    );
    assert_eq!(
        sample(&page, "stratus_user_commands_total{action=\"subscribe\"}"),
        3
    );
    assert_eq!(
        sample(&page, "stratus_user_commands_total{action=\"unsubscribe\"}"),
        2
    );
    assert!(sample(&page, "stratus_user_commands_total{action=\"list\"}") >= 4);
    server.stop().unwrap();
}
