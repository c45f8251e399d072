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

// Send queues.

/// Resident bytes of process `pid`.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// Kills the server when the test ends, passing or not.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An upgraded connection that reads (almost) nothing: its receive buffer is as small as
/// the kernel allows, and the test never reads it.
fn deaf_peer(addr: SocketAddr, path: &str) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut stream: TcpStream = socket.into();
    stream
        .write_all(common::upgrade_request(path).as_bytes())
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101 "));
    stream
}

#[test]
fn a_ping_flood_that_never_reads_holds_a_bounded_queue() {
    const PEERS: usize = 8;
    const PINGS: usize = 1_500_000;
    // One worker with a small receive pool, so what the pool may take (4 MiB) is small
    // beside what the queues took before entries were charged their cost (about 35 MiB
    // for each peer: a 2-byte pong per slot of a 1 MiB cap of bytes).
    // No message budget: this is about what the queue holds when every ping is read.
    let (child, ws, admin_addr) = common::spawn_server(&[
        "serve",
        "--workers",
        "1",
        "--recv-buffers",
        "64",
        "--message-rate",
        "0",
    ]);
    let child = Child(child);
    let pid = child.0.id();
    let mut peers: Vec<TcpStream> = (0..PEERS).map(|_| deaf_peer(ws, "/ws")).collect();
    let baseline = rss(pid);
    let pings: Vec<u8> = common::frame(true, 0, 0x9, b"").repeat(100_000);
    for peer in &peers {
        peer.set_nonblocking(true).unwrap();
    }
    let mut sent = vec![0usize; PEERS];
    let deadline = Instant::now() + Duration::from_secs(60);
    while sent.iter().any(|&n| n < PINGS * 6) && Instant::now() < deadline {
        for (peer, sent) in peers.iter_mut().zip(&mut sent) {
            if *sent < PINGS * 6 {
                // Resume where the last partial write ended: frames stay whole.
                match peer.write(&pings[*sent % pings.len()..]) {
                    Ok(n) => *sent += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("write failed: {e}"),
                }
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // Everything sent has been read: the server answered (or coalesced) every ping.
    let page_received = |page: &str| common::sample(page, "stratus_messages_received_total");
    let settle = Instant::now() + Duration::from_secs(60);
    let page = loop {
        let (_, page) = admin(
            admin_addr,
            "GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n",
        );
        if page_received(&page) as usize >= PEERS * PINGS || Instant::now() > settle {
            break page;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let grown = rss(pid).saturating_sub(baseline);
    let queued = common::sample(&page, "stratus_send_queue_bytes");
    assert!(
        page_received(&page) as usize >= PEERS * PINGS,
        "the server read every ping ({} of {})",
        page_received(&page),
        PEERS * PINGS
    );
    // A few pongs wait per peer (the newest ones answering the latest pings).
    assert!(queued < (PEERS * 64 * 1024) as u64, "{queued} bytes queued");
    // The pool (4 MiB) and the allocator's slack; nothing per ping.
    assert!(grown < 32 << 20, "RSS grew by {} MiB", grown >> 20);
}

#[test]
fn echo_replies_past_the_cap_make_the_client_wait_and_none_is_lost() {
    let server = common::start_with(|c| c.max_send_queue = 16 << 10);
    let mut peer = common::Peer::open(server.local_addr());
    // 2,000 x 1 KiB asked for without reading: far past the cap and the kernel's
    // buffers. The server stops taking input at its cap instead of queueing the replies.
    let writer = peer.stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let mut writer = writer;
        for i in 0..2000u32 {
            let text = format!("{i:04}{}", "e".repeat(1020));
            writer
                .write_all(&common::frame(true, 0, 0x1, text.as_bytes()))
                .unwrap();
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..2000u32 {
        match peer.recv() {
            Some(stratus_proto::Message::Text(t)) => {
                assert_eq!(&t[..4], format!("{i:04}").as_bytes(), "in order, none lost");
            }
            other => panic!("echo {i}: {other:?}"),
        }
    }
    sender.join().unwrap();
    server.stop().unwrap();
}

// Compression.

#[test]
fn a_client_asking_for_a_smaller_window_in_shared_mode_gets_no_compressor_of_its_own() {
    const PEERS: usize = 300;
    let (child, ws, admin_addr) = common::spawn_server(&["serve", "--workers", "1"]);
    let child = Child(child);
    let pid = child.0.id();
    let offer = "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=9\r\n";
    let baseline = rss(pid);
    let mut peers = Vec::new();
    for _ in 0..PEERS {
        let mut peer = common::Peer::connect(ws);
        peer.send(common::upgrade_request_with("/ws?topic=z", offer).as_bytes());
        let head = peer.read_head();
        assert!(
            head.contains("server_max_window_bits=9"),
            "answered as asked: {head}"
        );
        peers.push(peer);
    }
    let message = "compressible text ".repeat(200);
    let post = format!(
        "POST /publish/z HTTP/1.1\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{message}",
        message.len()
    );
    assert_eq!(admin(admin_addr, &post).0, 200);
    for peer in &mut peers {
        let (rsv, payload) = peer.recv_raw().unwrap();
        assert_eq!(rsv, 0, "sent uncompressed");
        assert_eq!(payload, message.as_bytes());
    }
    let grown = rss(pid).saturating_sub(baseline);
    // A private zlib compressor is about 130 KiB: 300 of them would be 38 MiB.
    assert!(
        grown < (PEERS as u64) * (16 << 10),
        "RSS grew by {} KiB for {PEERS} connections",
        grown >> 10
    );
    let (_, page) = admin(
        admin_addr,
        "GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(
        common::sample(&page, "stratus_deflate_in_bytes_total"),
        0,
        "nothing compressed"
    );
}

// Slow peers.

/// A connection that trickles one frame of 100 bytes, a byte every 200 ms, until the
/// server closes; what it received.
fn trickle_a_frame(server: &Server) -> Vec<stratus_proto::Message> {
    let mut peer = common::Peer::open(server.local_addr());
    let frame = common::frame(true, 0, 0x1, &[b'x'; 100]);
    let writer = peer.stream.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        let mut writer = writer;
        for byte in frame {
            if writer.write_all(&[byte]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let mut got = Vec::new();
    while let Some(message) = peer.recv() {
        let close = matches!(message, stratus_proto::Message::Close(_));
        got.push(message);
        if close {
            // Answer it, as a client does; the server then closes TCP.
            let _ = peer
                .stream
                .write_all(&common::frame(true, 0, 0x8, &1008u16.to_be_bytes()));
        }
    }
    drop(peer);
    trickle.join().unwrap();
    got
}

fn close_of(messages: &[stratus_proto::Message]) -> Option<(u16, String)> {
    messages.iter().find_map(|m| match m {
        stratus_proto::Message::Close(Some(f)) => Some((f.code().0, f.reason().to_owned())),
        _ => None,
    })
}

#[test]
fn a_frame_trickled_a_byte_at_a_time_is_closed_at_the_message_deadline() {
    let server = common::start_with(|c| c.message_timeout = Duration::from_secs(1));
    let started = Instant::now();
    let got = trickle_a_frame(&server);
    assert_eq!(
        close_of(&got),
        Some((1008, "message not completed in time".into()))
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the 106-byte frame would have taken 21 s"
    );
    server.stop().unwrap();
}

#[test]
fn a_trickled_frame_is_no_sign_of_life_the_connection_is_pinged_and_closed() {
    let server = common::start_with(|c| {
        c.message_timeout = Duration::from_secs(60);
        c.ping_interval = Duration::from_millis(500);
        c.pong_timeout = Duration::from_millis(500);
    });
    let got = trickle_a_frame(&server);
    assert!(
        got.iter()
            .any(|m| matches!(m, stratus_proto::Message::Ping(_))),
        "{got:?}"
    );
    // Its pong would sit behind the unfinished frame: the ping goes unanswered.
    assert_eq!(close_of(&got), Some((1001, "pong timeout".into())));
    server.stop().unwrap();
}

/// Open descriptors of process `pid`.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// The descriptors `pid` holds once its start-up is over: the listener answers before
/// the worker has made its ring and the admin thread its sockets, so a count taken at once
/// can come out a few short (a baseline 1-2 low made the cap check below flaky). Waits,
/// boundedly, for two counts 100 ms apart to agree.
fn settled_fds(pid: u32) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = fds(pid);
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = fds(pid);
        if now == last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// A TCP connection from `local` that sends nothing.
fn idle_socket(addr: SocketAddr, local: [u8; 4]) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from((local, 0)).into()).unwrap();
    socket.connect(&addr.into()).unwrap();
    socket.into()
}

/// Whether the server has closed `stream` (EOF or a reset within a moment).
fn closed_by_server(stream: &TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    match (&*stream).read(&mut [0u8; 1]) {
        Ok(n) => n == 0,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn idle_sockets_that_never_upgrade_are_capped_and_shed_and_a_real_client_gets_in() {
    // Started with a soft limit of 256 descriptors, which the server raises to the hard
    // limit; the idle sockets below would take them all otherwise.
    let (ws, admin_addr) = (common::free_addr(), common::free_addr());
    let child = std::process::Command::new("sh")
        .args(["-c", "ulimit -Sn 256 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_stratus"))
        .args(["serve", "--workers", "1", "--log-level", "warn"])
        .args(["--max-unupgraded", "100", "--max-unupgraded-per-ip", "40"])
        .args([
            "--listen",
            &ws.to_string(),
            "--admin-listen",
            &admin_addr.to_string(),
        ])
        .spawn()
        .unwrap();
    let child = Child(child);
    let pid = child.0.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(ws).is_err() {
        assert!(Instant::now() < deadline, "the server did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let open_files: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        open_files[3], open_files[4],
        "soft limit raised to the hard one: {limits}"
    );
    let baseline = settled_fds(pid);
    // One address past its cap: the ones past it are closed at once.
    let one: Vec<TcpStream> = (0..60).map(|_| idle_socket(ws, [127, 0, 0, 2])).collect();
    std::thread::sleep(Duration::from_millis(300));
    let closed = one.iter().filter(|s| closed_by_server(s)).count();
    assert_eq!(closed, 20, "40 held, the rest closed");
    // Many addresses past the overall cap: the oldest are shed.
    let many: Vec<TcpStream> = (0..400)
        .map(|i| idle_socket(ws, [127, 0, 1, (i % 20) as u8 + 1]))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // A real client still gets in, and is served.
    let mut real = common::Peer::connect_from(ws, [127, 0, 2, 1].into());
    real.send(common::upgrade_request("/ws?topic=real").as_bytes());
    assert!(real.read_head().starts_with("HTTP/1.1 101 "));
    // The shed sockets are closed as the worker gets to them (a loaded machine may take
    // a while): wait, boundedly, for the count to come down to the cap.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut held = fds(pid);
    while held > baseline + 100 + 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        held = fds(pid);
    }
    assert!(
        held <= baseline + 100 + 5,
        "{held} descriptors held, from {baseline}: the cap is 100"
    );
    let (_, page) = admin(
        admin_addr,
        "GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(
        common::sample(&page, "stratus_unupgraded_refused_total"),
        20
    );
    // 440 idle and the real client arrived; 100 may wait.
    assert_eq!(common::sample(&page, "stratus_unupgraded_shed_total"), 341);
    drop((one, many));
}

// The worker's ring.

#[test]
fn a_fanout_to_more_sockets_than_the_completion_queue_holds_loses_no_completion() {
    // A completion queue of 64 and 600 subscribers on one worker: one publish is 600
    // sends in one turn.
    let server = start(|c| {
        c.workers = 1;
        c.ring.entries = 16;
    });
    let url = "/ws?topic=wide";
    let mut peers: Vec<common::Peer> = (0..600)
        .map(|_| {
            let mut p = common::Peer::connect(server.local_addr());
            p.send(common::upgrade_request(url).as_bytes());
            assert!(p.read_head().starts_with("HTTP/1.1 101 "));
            p
        })
        .collect();
    for round in 0..3 {
        let text = format!("round {round}");
        let reach = server.publish("wide", stratus_proto::Message::text(text.clone()));
        assert_eq!(
            reach.unwrap().wait(),
            Ok(stratus_server::Reach::Subscribers(600))
        );
        for peer in &mut peers {
            assert_eq!(
                peer.recv(),
                Some(stratus_proto::Message::text(text.clone()))
            );
        }
    }
    // The sweep has published the ring's counters by now (it runs several times a second).
    std::thread::sleep(Duration::from_millis(300));
    let (_, page) = admin(
        server.admin_addr().unwrap(),
        "GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(common::sample(&page, "stratus_ring_cq_overflows_total"), 0);
    assert_eq!(
        common::sample(&page, "stratus_ring_completions_lost_total"),
        0
    );
    server.stop().unwrap();
}

#[test]
fn a_flood_of_messages_is_read_at_the_message_rate_and_the_rest_waits_in_the_kernel() {
    let server = start(|c| {
        c.workers = 1;
        c.message_rate = 1000;
    });
    let admin_addr = server.admin_addr().unwrap();
    let mut flooder = common::Peer::connect(server.local_addr());
    flooder.send(common::upgrade_request("/ws").as_bytes());
    assert!(flooder.read_head().starts_with("HTTP/1.1 101 "));
    let mut honest = common::Peer::connect(server.local_addr());
    honest.send(common::upgrade_request("/ws?topic=h").as_bytes());
    assert!(honest.read_head().starts_with("HTTP/1.1 101 "));
    // 200,000 pings offered at once (1.2 MB): the kernel takes what its buffers hold.
    let pings = common::frame(true, 0, 0x9, b"").repeat(200_000);
    let writer = flooder.stream.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut writer = writer;
        let _ = writer.write_all(&pings);
    });
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    // The honest one is served meanwhile.
    let reach = server.publish("h", stratus_proto::Message::text("still served"));
    assert_eq!(
        reach.unwrap().wait(),
        Ok(stratus_server::Reach::Subscribers(1))
    );
    assert_eq!(
        honest.recv(),
        Some(stratus_proto::Message::text("still served"))
    );
    let (_, page) = admin(
        admin_addr,
        "GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    let read = common::sample(&page, "stratus_messages_received_total");
    // A burst of 1,000, then 1,000 a second (and the sweep's granularity on top).
    let allowed = 1000 + 1000 * started.elapsed().as_secs() + 2000;
    assert!(
        read <= allowed,
        "{read} messages read in {:?}",
        started.elapsed()
    );
    assert!(read >= 1000, "the burst was read: {read}");
    // Held back, not closed: it is still served, at its rate.
    flooder
        .stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert!(matches!(
        flooder.recv(),
        Some(stratus_proto::Message::Pong(_))
    ));
    let (_, page) = admin(
        admin_addr,
        "GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    // What the server holds for it stays small: the kernel keeps the rest.
    assert!(common::sample(&page, "stratus_send_queue_bytes") < 64 << 10);
    server.stop().unwrap();
}
