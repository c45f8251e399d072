//! Token auth at the upgrade (TESTPLAN: "missing/invalid/expired token -> 401"): where the
//! token may come from, the three algorithms, what it grants, and its expiry.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{Peer, frame, start_with, upgrade_request_with};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use stratus_proto::{CloseCode, Message};
use stratus_server::{App, Auth, AuthAlgorithm, Reach, Server};

const SECRET: &[u8] = b"a test secret of at least thirty-two bytes";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn key(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// A token for subject `alice` with `topics`, expiring at `exp`, signed with `alg`.
fn token(alg: Algorithm, topics: &[&str], exp: u64) -> String {
    let signing = match alg {
        Algorithm::HS256 => EncodingKey::from_secret(SECRET),
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&key("rs256-private.pem")).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&key("es256-private.pem")).unwrap(),
        other => panic!("no test key for {other:?}"),
    };
    let claims = json!({"sub": "alice", "exp": exp, "topics": topics});
    jsonwebtoken::encode(&Header::new(alg), &claims, &signing).unwrap()
}

fn hs256_token(topics: &[&str]) -> String {
    token(Algorithm::HS256, topics, now() + 3600)
}

fn push_server(auth: Auth) -> Server {
    start_with(|c| {
        c.app = App::PubSub;
        c.auth = Some(auth);
    })
}

fn hs256_server() -> Server {
    push_server(Auth::new(AuthAlgorithm::Hs256, SECRET, None, None).unwrap())
}

/// Sends an upgrade for `path` with `headers`; returns the peer and the response head.
fn upgrade(server: &Server, path: &str, headers: &str) -> (Peer, String) {
    let mut peer = Peer::connect(server.local_addr());
    peer.send(upgrade_request_with(path, headers).as_bytes());
    let head = peer.read_head();
    (peer, head)
}

fn send_text(peer: &mut Peer, text: &str) {
    peer.send(&frame(true, 0, 0x1, text.as_bytes()));
}

fn recv_json(peer: &mut Peer) -> Value {
    match peer.recv() {
        Some(Message::Text(text)) => serde_json::from_slice(&text).unwrap(),
        other => panic!("expected a text reply, got {other:?}"),
    }
}

#[test]
fn missing_invalid_or_expired_tokens_get_401_and_open_connections_are_unaffected() {
    let server = hs256_server();
    let good = hs256_token(&["news"]);
    let (mut open, head) = upgrade(
        &server,
        "/ws?topic=news",
        &format!("Authorization: Bearer {good}\r\n"),
    );
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");

    let forged = {
        let claims = json!({"sub": "mallory", "exp": now() + 3600, "topics": ["*"]});
        let other = EncodingKey::from_secret(b"some other secret, also 32 bytes long");
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &other).unwrap()
    };
    let expired = token(Algorithm::HS256, &["news"], now() - 3600);
    let wrong_algorithm = token(Algorithm::ES256, &["news"], now() + 3600);
    let no_subject = {
        let claims = json!({"exp": now() + 3600});
        let signing = EncodingKey::from_secret(SECRET);
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &signing).unwrap()
    };
    let cases = [
        ("no token", String::new()),
        ("garbage", "Authorization: Bearer not.a.jwt\r\n".to_owned()),
        ("forged", format!("Authorization: Bearer {forged}\r\n")),
        ("expired", format!("Authorization: Bearer {expired}\r\n")),
        (
            "ES256",
            format!("Authorization: Bearer {wrong_algorithm}\r\n"),
        ),
        ("no sub", format!("Authorization: Bearer {no_subject}\r\n")),
        ("not bearer", format!("Authorization: Basic {good}\r\n")),
    ];
    for (case, headers) in cases {
        let (mut peer, head) = upgrade(&server, "/ws?topic=news", &headers);
        assert!(head.starts_with("HTTP/1.1 401 "), "{case}: {head}");
        assert!(
            head.contains("WWW-Authenticate: Bearer"),
            "{case}: a challenge says how to authenticate: {head}"
        );
        peer.read_to_end();
    }

    let delivered = server.publish("news", Message::text("still here")).unwrap();
    assert_eq!(
        delivered.wait(),
        Ok(Reach::Subscribers(1)),
        "the open connection still receives"
    );
    assert_eq!(open.recv(), Some(Message::text("still here")));
    server.stop().unwrap();
}

#[test]
fn a_token_in_the_header_the_query_or_a_subprotocol_opens_the_connection() {
    let server = hs256_server();
    let t = hs256_token(&["news"]);
    let (_, head) = upgrade(&server, "/ws", &format!("authorization: bearer {t}\r\n"));
    assert!(head.starts_with("HTTP/1.1 101 "), "header: {head}");
    assert!(!head.contains("Sec-WebSocket-Protocol"), "{head}");

    let (_, head) = upgrade(&server, &format!("/ws?topic=news&token={t}"), "");
    assert!(head.starts_with("HTTP/1.1 101 "), "query: {head}");

    // A browser offers the token as a subprotocol, with the one it wants answered.
    let offer = format!("Sec-WebSocket-Protocol: stratus, bearer.{t}\r\n");
    let (_, head) = upgrade(&server, "/ws", &offer);
    assert!(head.starts_with("HTTP/1.1 101 "), "subprotocol: {head}");
    assert!(
        head.contains("Sec-WebSocket-Protocol: stratus\r\n"),
        "an offered protocol is echoed, as RFC 6455 requires: {head}"
    );
    let offer = format!("Sec-WebSocket-Protocol: bearer.{t}\r\n");
    let (_, head) = upgrade(&server, "/ws", &offer);
    assert!(
        head.contains(&format!("Sec-WebSocket-Protocol: bearer.{t}\r\n")),
        "the only offered protocol is echoed: {head}"
    );
    server.stop().unwrap();
}

#[test]
fn rs256_and_es256_tokens_verify_with_their_public_keys() {
    for (alg, algorithm, public) in [
        (Algorithm::RS256, AuthAlgorithm::Rs256, "rs256-public.pem"),
        (Algorithm::ES256, AuthAlgorithm::Es256, "es256-public.pem"),
    ] {
        let server = push_server(Auth::new(algorithm, &key(public), None, None).unwrap());
        let good = token(alg, &["news"], now() + 3600);
        let (_, head) = upgrade(&server, &format!("/ws?token={good}"), "");
        assert!(head.starts_with("HTTP/1.1 101 "), "{alg:?}: {head}");
        let hs = hs256_token(&["news"]);
        let (_, head) = upgrade(&server, &format!("/ws?token={hs}"), "");
        assert!(
            head.starts_with("HTTP/1.1 401 "),
            "{alg:?} refuses an HS256 token: {head}"
        );
        server.stop().unwrap();
    }
}

#[test]
fn issuer_and_audience_are_checked_when_configured() {
    let auth = Auth::new(AuthAlgorithm::Hs256, SECRET, Some("issuer"), Some("push")).unwrap();
    let server = push_server(auth);
    let signing = EncodingKey::from_secret(SECRET);
    let mint = |claims: Value| {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &signing).unwrap()
    };
    let exp = now() + 3600;
    let right = mint(json!({"sub": "a", "exp": exp, "iss": "issuer", "aud": "push"}));
    let wrong_aud = mint(json!({"sub": "a", "exp": exp, "iss": "issuer", "aud": "other"}));
    let no_iss = mint(json!({"sub": "a", "exp": exp, "aud": "push"}));
    let (_, head) = upgrade(&server, &format!("/ws?token={right}"), "");
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    for bad in [wrong_aud, no_iss] {
        let (_, head) = upgrade(&server, &format!("/ws?token={bad}"), "");
        assert!(head.starts_with("HTTP/1.1 401 "), "{head}");
    }
    server.stop().unwrap();
}

#[test]
fn a_subscribe_outside_the_tokens_topics_gets_an_error_and_no_subscription() {
    let server = hs256_server();
    let t = hs256_token(&["news.*", "chat"]);
    let (_, head) = upgrade(&server, &format!("/ws?topic=secret&token={t}"), "");
    assert!(
        head.starts_with("HTTP/1.1 403 "),
        "a topic in the request outside the token: {head}"
    );

    let (mut peer, head) = upgrade(&server, &format!("/ws?topic=chat&token={t}"), "");
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    send_text(&mut peer, r#"{"op":"subscribe","topic":"secret"}"#);
    let reply = recv_json(&mut peer);
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["topic"], "secret");
    send_text(&mut peer, r#"{"op":"subscribe","topic":"news.sport"}"#);
    assert_eq!(recv_json(&mut peer)["ok"], true);

    assert_eq!(
        server.publish("secret", Message::text("x")).unwrap().wait(),
        Ok(Reach::Subscribers(0)),
        "no subscription was made"
    );
    assert_eq!(
        server
            .publish("news.sport", Message::text("goal"))
            .unwrap()
            .wait(),
        Ok(Reach::Subscribers(1))
    );
    assert_eq!(peer.recv(), Some(Message::text("goal")));
    server.stop().unwrap();
}

#[test]
fn a_connection_is_closed_with_1008_when_its_token_expires() {
    let server = hs256_server();
    // Verification allows 30 s of clock skew, so a token a second from expiry opens.
    let t = token(Algorithm::HS256, &["news"], now() + 1);
    let (mut peer, head) = upgrade(&server, &format!("/ws?token={t}"), "");
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    // Before the ping interval or any other timeout: 1008 says why.
    peer.expect_close(CloseCode::POLICY);
    server.stop().unwrap();
}

#[test]
fn extreme_claims_are_refused_or_accepted_without_a_panic() {
    let server = hs256_server();
    let signing = EncodingKey::from_secret(SECRET);
    let sign = |claims: Value| jsonwebtoken::encode(&Header::default(), &claims, &signing).unwrap();
    // Expiring at the end of time: a valid token, and the worker that checks it lives on.
    let forever = sign(json!({"sub": "alice", "exp": u64::MAX, "topics": ["news"]}));
    let (mut peer, head) = upgrade(
        &server,
        "/ws?topic=news",
        &format!("Authorization: Bearer {forever}\r\n"),
    );
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    // Not valid before the end of time: refused.
    let later = sign(json!({"sub": "alice", "exp": u64::MAX, "nbf": u64::MAX - 1}));
    let (_, head) = upgrade(
        &server,
        "/ws",
        &format!("Authorization: Bearer {later}\r\n"),
    );
    assert!(head.starts_with("HTTP/1.1 401 "), "{head}");
    // A topics claim as long as the request head allows costs what the head costs.
    let many: Vec<String> = (0..500).map(|i| format!("t{i}")).collect();
    let big = sign(json!({"sub": "alice", "exp": now() + 60, "topics": many}));
    let (_, head) = upgrade(
        &server,
        "/ws?topic=t499",
        &format!("Authorization: Bearer {big}\r\n"),
    );
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    // Every worker still serves: a publish reaches the first connection.
    let reach = server
        .publish("news", Message::text("still here"))
        .unwrap()
        .wait();
    assert_eq!(reach, Ok(Reach::Subscribers(1)));
    assert_eq!(peer.recv(), Some(Message::text("still here")));
    server.stop().unwrap();
}
