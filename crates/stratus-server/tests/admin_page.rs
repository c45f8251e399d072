//! The admin page on the admin listener: `GET /` answers the page (HTML, with its
//! Content-Security-Policy) without the admin token, because it holds no data; the API
//! the page reads still refuses every call without the token. The page's behaviour in a
//! browser is tested by `e2e/admin-page.mjs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::{header, start_with};
use stratus_server::App;

const TOKEN: &str = "s3cret-admin-token";

/// Sends `request` on a new connection to the admin listener; the status, the head and
/// the body.
fn exchange(addr: SocketAddr, request: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (
        head[9..12].parse().unwrap(),
        head.to_owned(),
        body.to_owned(),
    )
}

fn request(method: &str, path: &str, token: Option<&str>) -> String {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n")
}

#[test]
fn the_page_is_served_without_the_token_with_its_policy_and_the_api_still_needs_it() {
    let server = start_with(|c| {
        c.app = App::PubSub;
        c.admin_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        c.admin_token = Some(TOKEN.into());
    });
    let addr = server.admin_addr().unwrap();

    let (status, head, page) = exchange(addr, &request("GET", "/", None));
    assert_eq!(status, 200, "{head}");
    assert_eq!(
        header(&head, "Content-Type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(
        header(&head, "Content-Length"),
        Some(page.len().to_string().as_str())
    );
    let policy = header(&head, "Content-Security-Policy").unwrap();
    assert!(
        policy.starts_with("default-src 'none'; script-src 'sha256-"),
        "{policy}"
    );
    assert!(policy.contains("connect-src 'self'"), "{policy}");
    assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
    assert!(!policy.contains("unsafe"), "{policy}");
    assert_eq!(header(&head, "Cache-Control"), Some("no-store"));
    assert_eq!(header(&head, "X-Content-Type-Options"), Some("nosniff"));
    assert_eq!(header(&head, "Referrer-Policy"), Some("no-referrer"));
    assert!(page.starts_with("<!doctype html>"), "{page}");
    assert!(page.contains("<title>Stratus admin</title>"));

    // The page holds no data: not the node's id (which the API answers with the token),
    // nor the token.
    let (status, _, topics) = exchange(addr, &request("GET", "/topics", Some(TOKEN)));
    assert_eq!(status, 200, "{topics}");
    let topics: serde_json::Value = serde_json::from_str(&topics).unwrap();
    let node = topics["node"].as_str().unwrap();
    assert!(!page.contains(node) && !page.contains(TOKEN));

    // Every call the page makes still needs the token; with it, each answers.
    for (method, path) in [
        ("GET", "/metrics"),
        ("GET", "/topics?limit=20"),
        ("GET", "/nodes"),
        ("GET", "/users/alice"),
        ("POST", "/users/alice/disconnect?code=4001"),
    ] {
        let (status, head, body) = exchange(addr, &request(method, path, None));
        assert_eq!(status, 401, "{method} {path}: {body}");
        assert_eq!(header(&head, "WWW-Authenticate"), Some("Bearer"));
        let (status, _, body) = exchange(addr, &request(method, path, Some("wrong")));
        assert_eq!(status, 401, "{method} {path} with a wrong token: {body}");
        let (status, _, body) = exchange(addr, &request(method, path, Some(TOKEN)));
        assert_eq!(status, 200, "{method} {path} with the token: {body}");
    }
    let publish = "POST /publish/news HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\n\
                   Content-Length: 2\r\nConnection: close\r\n\r\nhi";
    assert_eq!(exchange(addr, publish).0, 401);

    // Only GET: the page takes nothing.
    let (status, head, _) = exchange(addr, &request("POST", "/", Some(TOKEN)));
    assert_eq!(status, 405);
    assert_eq!(header(&head, "Allow"), Some("GET"));
    server.stop().unwrap();
}
