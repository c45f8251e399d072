//! Connection churn (TESTPLAN: "many thousands of connect/close cycles, with aborts and
//! resets -> fd count, memory and topic tables return to baseline"), against the
//! `stratus` binary so its file descriptors and RSS can be read from /proc.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::process::Child;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Peer, admin, frame, sample, spawn_server, upgrade_request_with};
use jsonwebtoken::{EncodingKey, Header};
use stratus_proto::{CloseCode, CloseFrame, Message};

const SECRET: &str = "churn test secret, thirty-two bytes or more";
const THREADS: usize = 4;

/// Kills the server when the test ends, passing or not.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the server holds: open fds, resident bytes, and its `/metrics` page.
struct Usage {
    fds: usize,
    rss: u64,
    page: String,
}

fn usage(pid: u32, admin_addr: SocketAddr) -> Usage {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let (_, page) = admin(
        admin_addr,
        "GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    Usage {
        fds,
        rss: rss_kib * 1024,
        page,
    }
}

/// Waits until the server has no connections and its fd count has stopped falling
/// (sockets still in their handshake or close deadline hold fds but are not counted as
/// connections), and, given `fds`, is at most that.
fn settled(pid: u32, admin_addr: SocketAddr, fds: Option<usize>) -> Usage {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = usize::MAX;
    loop {
        let now = usage(pid, admin_addr);
        let steady = now.fds == last && fds.is_none_or(|f| now.fds <= f);
        if sample(&now.page, "stratus_connections") == 0 && steady {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "connections or fds never went back: {} fds\n{}",
            now.fds,
            now.page
        );
        last = now.fds;
        // Longer than the close timeout (0.5 s): whatever was closing has closed.
        std::thread::sleep(Duration::from_millis(700));
    }
}

fn token(valid: bool) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let claims = serde_json::json!({"sub": "churn", "exp": exp, "topics": ["*"]});
    let secret: &[u8] = if valid {
        SECRET.as_bytes()
    } else {
        b"not the server's secret, but as long"
    };
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// Ends the connection with a TCP reset instead of FIN.
fn reset(peer: Peer) {
    socket2::SockRef::from(&peer.stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
}

/// One connect-to-close cycle of kind `i % 5`: a clean close, a reset after subscribing,
/// a handshake abandoned halfway, an auth failure, a reset in the middle of a frame.
fn cycle(ws: SocketAddr, i: usize, good: &str, bad: &str) {
    let auth = format!("Authorization: Bearer {good}\r\n");
    let topics = format!("/ws?topic=shared.{}&topic=own.{i}", i % 50);
    let mut peer = Peer::connect(ws);
    match i % 5 {
        0 => {
            peer.send(upgrade_request_with(&topics, &auth).as_bytes());
            assert!(peer.read_head().starts_with("HTTP/1.1 101 "));
            let command = format!(r#"{{"op":"subscribe","topic":"cmd.{i}"}}"#);
            peer.send(&frame(true, 0, 0x1, command.as_bytes()));
            assert!(matches!(peer.recv(), Some(Message::Text(_))));
            let close = Message::Close(Some(CloseFrame::new(CloseCode::NORMAL, "")));
            let mut encoder = stratus_proto::Encoder::client([7; 32]);
            peer.send(&encoder.message(&close));
            peer.expect_close(CloseCode::NORMAL);
        }
        1 => {
            peer.send(upgrade_request_with(&topics, &auth).as_bytes());
            assert!(peer.read_head().starts_with("HTTP/1.1 101 "));
            reset(peer);
        }
        2 => {
            let request = upgrade_request_with(&topics, &auth);
            peer.send(&request.as_bytes()[..request.len() / 2]);
            if i.is_multiple_of(2) {
                reset(peer);
            }
        }
        3 => {
            let auth = format!("Authorization: Bearer {bad}\r\n");
            peer.send(upgrade_request_with(&topics, &auth).as_bytes());
            assert!(peer.read_head().starts_with("HTTP/1.1 401 "));
            peer.read_to_end();
        }
        _ => {
            peer.send(upgrade_request_with(&topics, &auth).as_bytes());
            assert!(peer.read_head().starts_with("HTTP/1.1 101 "));
            // A binary frame announcing 100 bytes, and only 10 of them.
            peer.send(&frame(true, 0, 0x2, &[0; 100])[..16]);
            reset(peer);
        }
    }
}

/// `count` cycles spread over threads, cycle numbers from `first`.
fn churn(ws: SocketAddr, first: usize, count: usize) {
    let (good, bad) = (token(true), token(false));
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (good, bad) = (&good, &bad);
            s.spawn(move || {
                for i in (first + t..first + count).step_by(THREADS) {
                    cycle(ws, i, good, bad);
                }
            });
        }
    });
}

#[test]
fn ten_thousand_connect_close_cycles_leave_fds_memory_and_topics_at_baseline() {
    let dir = std::env::temp_dir().join(format!("stratus-churn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("secret");
    std::fs::write(&key_file, SECRET).unwrap();
    let (child, ws, admin_addr) = spawn_server(&[
        "serve",
        "--workers",
        "2",
        "--auth",
        "hs256",
        "--auth-key-file",
        key_file.to_str().unwrap(),
        "--close-timeout",
        "0.5",
        "--handshake-timeout",
        "1",
    ]);
    let server = Server(child);
    let pid = server.0.id();

    // Warm up first, so pools that grow once (receive buffers, slabs, the allocator's
    // pages) are part of the baseline rather than counted as a leak.
    churn(ws, 0, 1_000);
    let before = settled(pid, admin_addr, None);
    churn(ws, 1_000, 10_000);
    let after = settled(pid, admin_addr, Some(before.fds));

    let opened = |u: &Usage| sample(&u.page, "stratus_connections_opened_total");
    let closed_with = |u: &Usage, code: &str| {
        sample(
            &u.page,
            &format!("stratus_connections_closed_total{{code=\"{code}\"}}"),
        )
    };
    let refused = |u: &Usage| sample(&u.page, "stratus_handshake_refusals_total{status=\"401\"}");
    eprintln!(
        "churn: fds {} -> {}, RSS {} KiB -> {} KiB, topics {} -> {}",
        before.fds,
        after.fds,
        before.rss / 1024,
        after.rss / 1024,
        sample(&before.page, "stratus_topics"),
        sample(&after.page, "stratus_topics"),
    );
    // The mix really ran: 6,000 upgrades (clean, reset, reset mid-frame), 2,000 refusals.
    assert_eq!(opened(&after) - opened(&before), 6_000);
    assert_eq!(
        closed_with(&after, "1000") - closed_with(&before, "1000"),
        2_000
    );
    assert_eq!(
        closed_with(&after, "1006") - closed_with(&before, "1006"),
        4_000
    );
    assert_eq!(refused(&after) - refused(&before), 2_000);
    // Everything given back.
    assert_eq!(after.fds, before.fds, "file descriptors");
    assert_eq!(sample(&after.page, "stratus_topics"), 0, "topic table");
    // 10,000 cycles: a leak of 100 bytes a cycle would show as 1 MB.
    assert!(
        after.rss <= before.rss + (1 << 20),
        "RSS grew from {} to {} bytes",
        before.rss,
        after.rss
    );
    std::fs::remove_dir_all(dir).unwrap();
}
