//! The `stratus` binary: shutdown on SIGTERM (every client gets Close 1001, an upgrade
//! that arrives during the drain gets 503, the process exits 0), and `stratus publish`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::{Peer, signal, spawn_server, upgrade_request, wait_exit};
use stratus_client::connect;
use stratus_proto::{CloseCode, Message};

#[test]
fn sigterm_sends_1001_to_every_client_and_exits_0() {
    let (mut child, ws, _) = spawn_server(&["serve", "--workers", "2", "--drain-timeout", "5"]);
    // Accepted before the drain, upgrading after it started.
    let mut late = Peer::connect(ws);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let clients = std::thread::spawn(move || {
        stratus_uring::run(async move {
            let mut clients = Vec::new();
            for _ in 0..50 {
                clients.push(connect(&format!("ws://{ws}/ws?topic=t")).await.unwrap());
            }
            ready_tx.send(()).unwrap();
            for mut c in clients {
                match c.recv().await.unwrap() {
                    Some(Message::Close(Some(f))) => assert_eq!(f.code(), CloseCode::GOING_AWAY),
                    other => panic!("expected Close 1001, got {other:?}"),
                }
                // The client echoed the Close; the server closes TCP.
                assert_eq!(c.recv().await.unwrap(), None);
            }
        })
        .unwrap();
    });
    ready_rx.recv().unwrap();
    signal(&child, "TERM");
    std::thread::sleep(Duration::from_millis(200));
    late.send(upgrade_request("/ws?topic=t").as_bytes());
    let head = late.read_head();
    assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
    clients.join().unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(15));
    assert!(status.success(), "exit status {status}");
    // The listeners are closed.
    assert!(TcpStream::connect(ws).is_err());
}

#[test]
fn a_client_that_answers_close_but_keeps_tcp_open_holds_a_drain_only_the_close_timeout() {
    let (mut child, ws, _) =
        spawn_server(&["serve", "--drain-timeout", "60", "--close-timeout", "1"]);
    let mut peer = Peer::connect(ws);
    peer.send(upgrade_request("/ws?topic=t").as_bytes());
    assert!(peer.read_head().starts_with("HTTP/1.1 101 "));
    signal(&child, "TERM");
    match peer.recv() {
        Some(Message::Close(Some(f))) => assert_eq!(f.code(), CloseCode::GOING_AWAY),
        other => panic!("expected Close 1001, got {other:?}"),
    }
    peer.send(&common::frame(true, 0, 0x8, &1001u16.to_be_bytes()));
    peer.expect_eof();
    // The peer never closes its side; the server stops after the 1 s close timeout, not
    // the 60 s drain timeout.
    let status = wait_exit(&mut child, Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");
    drop(peer);
}

#[test]
fn sigint_on_an_idle_server_exits_0() {
    let (mut child, _, _) = spawn_server(&[]);
    signal(&child, "INT");
    assert!(wait_exit(&mut child, Duration::from_secs(10)).success());
}

#[test]
fn publish_command_reaches_subscribers() {
    let (mut child, ws, admin) = spawn_server(&[]);
    stratus_uring::run(async move {
        let mut sub = connect(&format!("ws://{ws}/ws?topic=alerts"))
            .await
            .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_stratus"))
            .args([
                "publish",
                "alerts",
                "disk full",
                "--admin",
                &admin.to_string(),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            r#"{"recipients":1}"#
        );
        assert_eq!(sub.recv().await.unwrap(), Some(Message::text("disk full")));
        // From standard input, as binary.
        let mut publish = Command::new(env!("CARGO_BIN_EXE_stratus"))
            .args([
                "publish",
                "alerts",
                "--binary",
                "--admin",
                &admin.to_string(),
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        publish.stdin.take().unwrap().write_all(&[0, 1, 2]).unwrap();
        assert!(publish.wait().unwrap().success());
        assert_eq!(
            sub.recv().await.unwrap(),
            Some(Message::binary(vec![0, 1, 2]))
        );
        // A bad topic is refused with the server's reason and a failing exit status.
        let bad = Command::new(env!("CARGO_BIN_EXE_stratus"))
            .args(["publish", "no spaces", "x", "--admin", &admin.to_string()])
            .output()
            .unwrap();
        assert!(!bad.status.success());
    })
    .unwrap();
    signal(&child, "TERM");
    assert!(wait_exit(&mut child, Duration::from_secs(10)).success());
}

/// Runs `stratus config check` on a file holding `toml`.
fn config_check(name: &str, toml: &str) -> std::process::Output {
    config_check_with(name, toml, &[], &[])
}

/// As [`config_check`], with environment variables and extra flags.
fn config_check_with(
    name: &str,
    toml: &str,
    env: &[(&str, &str)],
    flags: &[&str],
) -> std::process::Output {
    let path = std::env::temp_dir().join(format!("stratus-{name}-{}.toml", std::process::id()));
    std::fs::write(&path, toml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_stratus"))
        .args(["config", "check", path.to_str().unwrap()])
        .args(flags)
        .envs(env.iter().copied())
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    std::fs::remove_file(path).unwrap();
    out
}

#[test]
fn config_check_prints_the_effective_config_or_why_it_is_invalid() {
    let good = config_check(
        "good",
        "max-send-queue = 4096\nallowed-origins = [\"https://a.example\"]\nadmin-token = \"s3cret\"\n",
    );
    assert!(good.status.success(), "{good:?}");
    let printed = String::from_utf8(good.stdout).unwrap();
    for line in [
        "max-send-queue = 4096",
        "allowed-origins = [\"https://a.example\"]",
        "ping-interval = 30.0",
        "listen = \"127.0.0.1:8080\"",
        "deflate = \"shared\"",
    ] {
        assert!(printed.lines().any(|l| l == line), "{line} in:\n{printed}");
    }
    assert!(!printed.contains("s3cret"), "the token is not printed");
    for (name, toml, reason) in [
        (
            "unknown",
            "max-sendqueue = 1\n",
            "unknown field `max-sendqueue`",
        ),
        ("type", "workers = \"two\"\n", "invalid type"),
        (
            "open-admin",
            "admin-listen = \"0.0.0.0:9090\"\n",
            "needs an admin token",
        ),
    ] {
        let bad = config_check(name, toml);
        assert!(!bad.status.success(), "{name}");
        let stderr = String::from_utf8_lossy(&bad.stderr);
        assert!(stderr.contains(reason), "{name}: {stderr}");
    }
}

#[test]
fn environment_overrides_the_file_and_flags_override_both() {
    let out = config_check_with(
        "layers",
        "max-send-queue = 4096\nping-interval = 20\nmax-topics = 8\n",
        &[
            ("STRATUS_MAX_SEND_QUEUE", "8192"),
            ("STRATUS_PING_INTERVAL", "5"),
            ("STRATUS_LOG_FORMAT", "json"),
        ],
        &["--ping-interval", "7"],
    );
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8(out.stdout).unwrap();
    for line in [
        "max-send-queue = 8192",
        "ping-interval = 7.0",
        "max-topics = 8",
        "log-format = \"json\"",
    ] {
        assert!(printed.lines().any(|l| l == line), "{line} in:\n{printed}");
    }
    let bad = config_check_with("badlog", "", &[], &["--log-level", "info,["]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("log-level"));
}

#[test]
fn config_check_validates_and_prints_namespaces() {
    let good = config_check(
        "namespaces",
        "history = 10\n\n[namespace.\"chat:\"]\nhistory = 100\nhistory-ttl = 3600\n\
         publish = \"subscribers\"\nmax-subscribers = 500\nslow-consumer = \"conflate\"\n",
    );
    assert!(good.status.success(), "{good:?}");
    let printed = String::from_utf8(good.stdout).unwrap();
    for line in [
        "[namespace.\"chat:\"]",
        "history = 100",
        "history-ttl = 3600.0",
        "publish = \"subscribers\"",
        "max-subscribers = 500",
        "slow-consumer = \"conflate\"",
    ] {
        assert!(printed.lines().any(|l| l == line), "{line} in:\n{printed}");
    }
    for (name, toml, reason) in [
        (
            "ns-prefix",
            "[namespace.\"bad prefix\"]\nhistory = 1\n",
            "namespace \"bad prefix\"",
        ),
        (
            "ns-field",
            "[namespace.\"a:\"]\nhistroy = 1\n",
            "unknown field `histroy`",
        ),
        (
            "ns-policy",
            "[namespace.\"a:\"]\nslow-consumer = \"nap\"\n",
            "unknown variant `nap`",
        ),
        (
            "ns-ttl",
            "[namespace.\"a:\"]\nhistory-ttl = 0\n",
            "history-ttl must be more than 0",
        ),
        (
            "ns-size",
            "[namespace.\"a:\"]\nmax-message = 0\n",
            "max-message must be more than 0",
        ),
    ] {
        let bad = config_check(name, toml);
        assert!(!bad.status.success(), "{name}");
        let stderr = String::from_utf8_lossy(&bad.stderr);
        assert!(stderr.contains(reason), "{name}: {stderr}");
    }
}
