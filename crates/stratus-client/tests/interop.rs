//! Compressed sessions with an independent WebSocket implementation: the Python
//! `websockets` library (installed by this test when missing) as the client of the
//! Stratus server, and as the server of the Stratus client.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use stratus_client::connect;
use stratus_deflate::{DeflateConfig, Mode};
use stratus_proto::{CloseCode, Message};
use stratus_server::{Config, Server};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/ws_peer.py")
}

/// Makes sure `websockets` is importable, installing it with pip if not.
fn ensure_websockets() {
    let importable = || {
        Command::new("python3")
            .args(["-c", "import websockets.asyncio.client"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !importable() {
        let status = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "websockets>=14"])
            .status()
            .expect("python3 runs");
        assert!(status.success(), "pip install websockets failed");
    }
    assert!(importable(), "websockets is not importable after install");
}

fn server_with(mode: Mode) -> Server {
    Server::start(Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        workers: 2,
        deflate: Some(DeflateConfig {
            mode,
            threshold: 64,
        }),
        ..Config::echo()
    })
    .unwrap()
}

#[test]
fn python_websockets_client_against_stratus_server_compressed() {
    ensure_websockets();
    for mode in [Mode::Shared, Mode::Dedicated] {
        let server = server_with(mode);
        let output = Command::new("python3")
            .arg(script())
            .args(["client", &format!("ws://{}/", server.local_addr()), "50"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{mode:?}: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            stdout.contains("EXTENSIONS permessage-deflate"),
            "{mode:?}: {stdout}"
        );
        assert!(stdout.contains("OK 100"), "{stdout}");
        server.stop().unwrap();
    }
}

#[test]
fn stratus_client_against_python_websockets_server_compressed() {
    ensure_websockets();
    let mut peer = Command::new("python3")
        .arg(script())
        .arg("server")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(peer.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line.trim().strip_prefix("PORT ").unwrap().parse().unwrap();
    let url = format!("ws://127.0.0.1:{port}/");
    stratus_uring::run(async move {
        let mut client = connect(&url).await.unwrap();
        client.send(&Message::text("extensions?")).await.unwrap();
        let Some(Message::Text(agreed)) = client.recv().await.unwrap() else {
            panic!("expected the server's view of the extensions");
        };
        let agreed = String::from_utf8(agreed.to_vec()).unwrap();
        assert!(agreed.starts_with("permessage-deflate"), "{agreed}");
        assert!(agreed.contains("offered: permessage-deflate"), "{agreed}");
        for i in 0..50 {
            let text = format!("{{\"seq\":{i},\"pad\":\"{}\"}}", "abc".repeat(300));
            for m in [Message::text(text), Message::binary(vec![i as u8; 5000])] {
                client.send(&m).await.unwrap();
                assert_eq!(client.recv().await.unwrap(), Some(m));
            }
        }
        client.close(CloseCode::NORMAL, "").await.unwrap();
    })
    .unwrap();
    drop(peer.stdin.take());
    assert!(peer.wait().unwrap().success());
}
