//! Hostile peers (TESTPLAN, "every resource bounded"): each test is a way one client, one
//! publisher or one unauthenticated admin connection could make the server hold memory,
//! stall, or panic, and checks the bound or the specific refusal instead.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::admin;
use stratus_server::{App, Config, Server};

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

/// Reads what the server sends until it closes TCP or `within` passes; the text, and
/// whether it closed.
fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (String, bool) {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let closed = loop {
        match stream.read(&mut chunk) {
            Ok(0) => break true,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

// The admin API.

#[test]
fn admin_refuses_a_request_without_the_token_before_reading_its_body() {
    let server = start(|c| c.admin_token = Some("s3cret".into()));
    let mut stream = TcpStream::connect(server.admin_addr().unwrap()).unwrap();
    // A megabyte announced, none of it sent: the answer must not wait for it.
    stream
        .write_all(b"POST /publish/t HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
        .unwrap();
    let (response, closed) = read_until_closed(&mut stream, Duration::from_secs(5));
    assert!(response.starts_with("HTTP/1.1 401 "), "{response:?}");
    assert!(
        closed,
        "the unread body leaves the connection unusable: closed"
    );
    server.stop().unwrap();
}

#[test]
fn admin_refuses_unknown_paths_and_methods_before_reading_a_body() {
    let server = start(|_| {});
    for (request, status) in [
        (
            "POST /nothing HTTP/1.1\r\nContent-Length: 500000\r\n\r\n",
            404,
        ),
        (
            "PUT /publish/t HTTP/1.1\r\nContent-Length: 500000\r\n\r\n",
            405,
        ),
    ] {
        let mut stream = TcpStream::connect(server.admin_addr().unwrap()).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let (response, closed) = read_until_closed(&mut stream, Duration::from_secs(5));
        assert!(
            response.starts_with(&format!("HTTP/1.1 {status} ")),
            "{response:?}"
        );
        assert!(closed);
    }
    server.stop().unwrap();
}

#[test]
fn admin_content_length_must_be_plain_digits() {
    let server = start(|_| {});
    let addr = server.admin_addr().unwrap();
    for length in ["+5", "5, 5", "0x5", "-1"] {
        let request = format!(
            "POST /publish/t HTTP/1.1\r\nContent-Type: text/plain\r\n\
             Content-Length: {length}\r\nConnection: close\r\n\r\nhello"
        );
        let (status, body) = admin(addr, &request);
        assert_eq!(status, 400, "Content-Length: {length}: {body}");
        assert!(body.contains("plain digits"), "{body}");
    }
    let two = "POST /publish/t HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 4\r\n\
               Connection: close\r\n\r\nhello";
    assert_eq!(admin(addr, two).0, 400);
    let none = "POST /publish/t HTTP/1.1\r\nConnection: close\r\n\r\n";
    assert_eq!(admin(addr, none).0, 411);
    server.stop().unwrap();
}

#[test]
fn an_admin_request_trickled_a_byte_at_a_time_gets_408_at_its_deadline() {
    let server = start(|c| c.admin_request_timeout = Duration::from_secs(1));
    let mut stream = TcpStream::connect(server.admin_addr().unwrap()).unwrap();
    let request = b"POST /publish/t HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n";
    let started = Instant::now();
    let mut answered = String::new();
    // Each byte well within any per-read timeout; the request as a whole is late.
    for &byte in request.iter().chain([b'x'; 100].iter()) {
        if stream.write_all(&[byte]).is_err() {
            break;
        }
        stream
            .set_read_timeout(Some(Duration::from_millis(150)))
            .unwrap();
        let mut chunk = [0u8; 512];
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => answered.push_str(&String::from_utf8_lossy(&chunk[..n])),
            Err(_) => {}
        }
        if !answered.is_empty() || started.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    assert!(answered.starts_with("HTTP/1.1 408 "), "{answered:?}");
    let (_, closed) = read_until_closed(&mut stream, Duration::from_secs(5));
    assert!(closed, "closed after the 408");
    server.stop().unwrap();
}

#[test]
fn admin_connections_beyond_the_cap_get_503_and_the_rest_keep_working() {
    let server = start(|c| c.admin_max_connections = 4);
    let addr = server.admin_addr().unwrap();
    let held: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(addr).unwrap()).collect();
    // Every held connection has been taken in by the server before the next one.
    std::thread::sleep(Duration::from_millis(200));
    let mut over = TcpStream::connect(addr).unwrap();
    let (response, closed) = read_until_closed(&mut over, Duration::from_secs(5));
    assert!(response.starts_with("HTTP/1.1 503 "), "{response:?}");
    assert!(response.contains("Retry-After: 1"), "{response:?}");
    assert!(closed);
    // A held connection is served; once they are gone there is room again.
    let mut first = held.into_iter().next().unwrap();
    first
        .write_all(b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (response, _) = read_until_closed(&mut first, Duration::from_secs(5));
    assert!(response.starts_with("HTTP/1.1 200 "), "{response:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, page) = admin(addr, "GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n");
        if status == 200 {
            assert_eq!(common::sample(&page, "stratus_admin_refused_total"), 1);
            break;
        }
        assert!(Instant::now() < deadline, "the cap never freed up");
        std::thread::sleep(Duration::from_millis(50));
    }
    server.stop().unwrap();
}
