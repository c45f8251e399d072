//! The "Opening handshake (server)" rows of TESTPLAN.md, over raw TCP.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::time::Duration;

use common::{Peer, frame, start_server, start_with, upgrade_request};
use stratus_proto::Message;

fn status_for(request: &str) -> String {
    let server = start_server();
    let mut peer = Peer::connect(server.local_addr());
    peer.send(request.as_bytes());
    let head = peer.read_head();
    let status = head.lines().next().unwrap_or_default().to_owned();
    if !status.contains(" 101 ") {
        // A refused handshake gets no WebSocket state: the server closes after the response.
        peer.read_to_end();
    }
    server.stop().unwrap();
    status + "\n" + &head
}

fn without(header: &str) -> String {
    upgrade_request("/")
        .split("\r\n")
        .filter(|l| !l.starts_with(header))
        .collect::<Vec<_>>()
        .join("\r\n")
}

#[test]
fn missing_upgrade_headers_get_426_with_version() {
    for header in ["Upgrade:", "Connection:"] {
        let response = status_for(&without(header));
        assert!(response.starts_with("HTTP/1.1 426 "), "{response}");
        assert!(
            response.contains("Sec-WebSocket-Version: 13\r\n"),
            "{response}"
        );
    }
}

#[test]
fn wrong_websocket_version_gets_426() {
    let request = upgrade_request("/").replace("Version: 13", "Version: 12");
    assert!(status_for(&request).starts_with("HTTP/1.1 426 "));
}

#[test]
fn post_gets_405() {
    let request = upgrade_request("/").replace("GET /", "POST /");
    assert!(status_for(&request).starts_with("HTTP/1.1 405 "));
}

#[test]
fn http_1_0_gets_400() {
    let request = upgrade_request("/").replace("HTTP/1.1", "HTTP/1.0");
    assert!(status_for(&request).starts_with("HTTP/1.1 400 "));
}

#[test]
fn bad_or_duplicate_key_gets_400() {
    let short = upgrade_request("/").replace(common::KEY, "c2hvcnQ=");
    assert!(status_for(&short).starts_with("HTTP/1.1 400 "));
    let twice = upgrade_request("/").replace(
        "Sec-WebSocket-Version",
        &format!(
            "Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version",
            common::KEY
        ),
    );
    assert!(status_for(&twice).starts_with("HTTP/1.1 400 "));
    assert!(status_for(&without("Sec-WebSocket-Key")).starts_with("HTTP/1.1 400 "));
}

#[test]
fn case_insensitive_tokens_and_comma_lists_get_101() {
    let request = upgrade_request("/")
        .replace("Upgrade: websocket", "upgrade: WebSocket")
        .replace("Connection: Upgrade", "connection: keep-alive, Upgrade");
    assert!(status_for(&request).starts_with("HTTP/1.1 101 "));
}

#[test]
fn oversized_headers_get_431_before_the_head_ends() {
    let server = start_server();
    let mut peer = Peer::connect(server.local_addr());
    peer.send(b"GET / HTTP/1.1\r\nX-Big: ");
    // Never send the blank line: the server must answer as soon as the limit is crossed.
    peer.send(&vec![b'a'; 9000]);
    let head = peer.read_head();
    assert!(head.starts_with("HTTP/1.1 431 "), "{head}");
    server.stop().unwrap();
}

#[test]
fn headers_one_byte_per_write_still_handshake() {
    let server = start_server();
    let mut peer = Peer::connect(server.local_addr());
    for byte in upgrade_request("/").bytes() {
        peer.stream.write_all(&[byte]).unwrap();
    }
    assert!(peer.read_head().starts_with("HTTP/1.1 101 "));
    server.stop().unwrap();
}

#[test]
fn upgrade_and_first_frame_in_one_segment_are_both_processed() {
    let server = start_server();
    let mut peer = Peer::connect(server.local_addr());
    let mut bytes = upgrade_request("/").into_bytes();
    bytes.extend(frame(true, 0, 1, b"early"));
    peer.send(&bytes);
    assert!(peer.read_head().starts_with("HTTP/1.1 101 "));
    assert_eq!(peer.recv(), Some(Message::text("early")));
    server.stop().unwrap();
}

#[test]
fn slowloris_is_closed_at_handshake_timeout_and_does_not_delay_others() {
    let server = start_with(|c| c.handshake_timeout = Duration::from_secs(2));
    let addr = server.local_addr();
    let mut slow: Vec<Peer> = (0..2000)
        .map(|_| {
            let mut p = Peer::connect(addr);
            p.send(b"GET / HTTP/1.1\r\nHost: x\r\n");
            p
        })
        .collect();
    // A good handshake (from another address: this one has used up its share of
    // sockets mid-upgrade) completes while two thousand incomplete ones are pending.
    let mut good = Peer::connect_from(addr, [127, 0, 0, 2].into());
    good.send(common::upgrade_request("/").as_bytes());
    assert!(good.read_head().starts_with("HTTP/1.1 101 "));
    good.send(&frame(true, 0, 1, b"hi"));
    assert_eq!(good.recv(), Some(Message::text("hi")));
    // The first slow socket is still open: the good handshake did not wait them out.
    slow[0].stream.set_nonblocking(true).unwrap();
    let pending = slow[0].stream.peek(&mut [0u8; 1]);
    assert!(
        matches!(&pending, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "{pending:?}"
    );
    slow[0].stream.set_nonblocking(false).unwrap();
    // Every slow socket is closed by the server, with no response.
    for p in &mut slow {
        assert_eq!(p.read_to_end(), "");
    }
    server.stop().unwrap();
}

/// Sends an upgrade with `extra` headers; the response's status line and headers.
fn upgrade(peer: &mut common::Peer, extra: &str) -> String {
    peer.send(common::upgrade_request_with("/", extra).as_bytes());
    peer.read_head()
}

#[test]
fn origin_outside_the_allow_list_gets_403() {
    let server = start_with(|c| c.allowed_origins = vec!["https://app.example".into()]);
    let addr = server.local_addr();
    let head = upgrade(&mut Peer::connect(addr), "Origin: https://evil.example\r\n");
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
    let head = upgrade(&mut Peer::connect(addr), "Origin: https://APP.example\r\n");
    assert!(
        head.starts_with("HTTP/1.1 101 "),
        "allowed, in any case: {head}"
    );
    let head = upgrade(&mut Peer::connect(addr), "");
    assert!(
        head.starts_with("HTTP/1.1 101 "),
        "no Origin (not a browser): {head}"
    );
    server.stop().unwrap();
}

#[test]
fn by_default_a_browser_from_another_origin_gets_403_naming_the_option() {
    let server = start_server();
    let addr = server.local_addr();
    // The request's Host is `localhost`: a page on another origin is refused.
    let head = upgrade(&mut Peer::connect(addr), "Origin: https://evil.example\r\n");
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
    let mut peer = Peer::connect(addr);
    let head = upgrade(&mut peer, "Origin: null\r\n");
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
    let body = peer.read_to_end();
    assert!(body.contains("--allowed-origins"), "{body}");
    let head = upgrade(&mut Peer::connect(addr), "Origin: http://localhost\r\n");
    assert!(
        head.starts_with("HTTP/1.1 101 "),
        "the server's own origin: {head}"
    );
    server.stop().unwrap();
    let any = start_with(|c| c.allowed_origins = vec!["*".into()]);
    let head = upgrade(
        &mut Peer::connect(any.local_addr()),
        "Origin: https://evil.example\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 101 "), "'*' allows any: {head}");
    any.stop().unwrap();
}

#[test]
fn connection_cap_gives_503_with_retry_after_and_frees_on_close() {
    let server = start_with(|c| c.max_connections = 2);
    let addr = server.local_addr();
    let first = Peer::open(addr);
    let mut second = Peer::open(addr);
    let head = upgrade(&mut Peer::connect(addr), "");
    assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
    assert!(head.contains("Retry-After: "), "{head}");
    second.send(&frame(true, 0, 1, b"still here"));
    assert_eq!(
        second.recv(),
        Some(Message::text("still here")),
        "existing connections are unaffected"
    );
    drop(first);
    wait_for(|| server.connections() == 1);
    let head = upgrade(&mut Peer::connect(addr), "");
    assert!(
        head.starts_with("HTTP/1.1 101 "),
        "a slot came free: {head}"
    );
    server.stop().unwrap();
}

#[test]
fn per_ip_cap_gives_429_with_retry_after_to_that_address_only() {
    let server = start_with(|c| c.max_connections_per_ip = 1);
    let addr = server.local_addr();
    let one: std::net::IpAddr = [127, 0, 0, 1].into();
    let two: std::net::IpAddr = [127, 0, 0, 2].into();
    let mut first = Peer::connect_from(addr, one);
    assert!(upgrade(&mut first, "").starts_with("HTTP/1.1 101 "));
    let head = upgrade(&mut Peer::connect_from(addr, one), "");
    assert!(head.starts_with("HTTP/1.1 429 "), "{head}");
    assert!(head.contains("Retry-After: "), "{head}");
    let mut other = Peer::connect_from(addr, two);
    let head = upgrade(&mut other, "");
    assert!(head.starts_with("HTTP/1.1 101 "), "another address: {head}");
    drop(first);
    wait_for(|| server.connections() == 1);
    let head = upgrade(&mut Peer::connect_from(addr, one), "");
    assert!(head.starts_with("HTTP/1.1 101 "), "freed on close: {head}");
    server.stop().unwrap();
}

/// Polls `done` for up to 5 s.
fn wait_for(done: impl Fn() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("condition not reached in 5 s");
}
