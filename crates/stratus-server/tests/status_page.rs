//! The status page on the WebSocket listener: a plain `GET /` on the pub/sub app gets the
//! page with its headers and then FIN; every other plain request keeps its refusal.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Peer, header, start_with, upgrade_request};
use stratus_server::{App, Server};

fn pubsub() -> Server {
    start_with(|c| c.app = App::PubSub)
}

/// Sends `request` on a new connection; everything the server sent before closing TCP.
fn exchange(server: &Server, request: &str) -> String {
    let mut peer = Peer::connect(server.local_addr());
    peer.send(request.as_bytes());
    peer.read_to_end()
}

fn browser_request(method: &str, target: &str) -> String {
    format!(
        "{method} {target} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: test\r\n\
         Accept: text/html\r\nConnection: keep-alive\r\n\r\n"
    )
}

#[test]
fn get_root_answers_200_with_the_page_and_its_headers_then_closes() {
    let server = pubsub();
    for target in ["/", "/index.html", "/?topic=a"] {
        let response = exchange(&server, &browser_request("GET", target));
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{target}: {head}");
        assert_eq!(
            header(head, "Content-Type"),
            Some("text/html; charset=utf-8")
        );
        assert_eq!(
            header(head, "Content-Length"),
            Some(&*body.len().to_string())
        );
        assert_eq!(header(head, "Cache-Control"), Some("no-cache"));
        assert_eq!(header(head, "X-Content-Type-Options"), Some("nosniff"));
        assert_eq!(header(head, "Connection"), Some("close"));
        let policy = header(head, "Content-Security-Policy").unwrap();
        for directive in [
            "default-src 'none'",
            "script-src 'sha256-",
            "style-src 'sha256-",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(policy.contains(directive), "{directive} in {policy}");
        }
        assert!(body.starts_with("<!doctype html>"), "{body}");
        assert!(body.contains("<title>Stratus status</title>"));
        assert!(body.contains("data-testid=\"subscribe\""));
        assert!(body.trim_end().ends_with("</html>"));
    }
    server.stop().unwrap();
}

#[test]
fn head_root_answers_the_headers_alone() {
    let server = pubsub();
    let get = exchange(&server, &browser_request("GET", "/"));
    let head = exchange(&server, &browser_request("HEAD", "/"));
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.ends_with("\r\n\r\n"), "no body after the head: {head}");
    assert_eq!(Some(head.as_str()), get.get(..head.len()));
    server.stop().unwrap();
}

#[test]
fn other_plain_requests_keep_their_refusals() {
    let server = pubsub();
    let status = |request: &str| {
        let response = exchange(&server, request);
        response.lines().next().unwrap_or_default().to_owned()
    };
    let other = exchange(&server, &browser_request("GET", "/other"));
    assert!(other.starts_with("HTTP/1.1 426 "), "{other}");
    assert!(other.contains("Sec-WebSocket-Version: 13\r\n"), "{other}");
    assert!(status(&browser_request("GET", "/ws")).contains(" 426 "));
    assert!(status(&browser_request("HEAD", "/other")).contains(" 405 "));
    assert!(status(&browser_request("POST", "/")).contains(" 405 "));
    let http_1_0 = browser_request("GET", "/").replace("HTTP/1.1", "HTTP/1.0");
    assert!(status(&http_1_0).contains(" 400 "));
    // A broken upgrade at / is still a broken upgrade, not a page request.
    let no_upgrade = upgrade_request("/").replace("Upgrade: websocket\r\n", "");
    assert!(status(&no_upgrade).contains(" 426 "));
    let mut peer = Peer::connect(server.local_addr());
    peer.send(upgrade_request("/ws?topic=a").as_bytes());
    assert!(peer.read_head().starts_with("HTTP/1.1 101 "));
    server.stop().unwrap();
}

#[test]
fn the_echo_app_has_no_page() {
    let server = start_with(|_| {});
    let response = exchange(&server, &browser_request("GET", "/"));
    assert!(response.starts_with("HTTP/1.1 426 "), "{response}");
    server.stop().unwrap();
}
