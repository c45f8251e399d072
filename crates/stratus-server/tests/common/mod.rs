//! Test support: an in-process server on an ephemeral port and a raw TCP peer that
//! speaks exactly the bytes a test wants.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use serde_json::Value;
use stratus_proto::codec::Decoded;
pub use stratus_proto::test_support::raw_frame;
use stratus_proto::{CloseCode, Decoder, Limits, Message, Role};
use stratus_server::{Config, Server};

/// A server with short timeouts, so fault tests end quickly.
pub fn start_server() -> Server {
    start_with(|_| {})
}

pub fn start_with(edit: impl FnOnce(&mut Config)) -> Server {
    let mut config = Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        workers: 2,
        handshake_timeout: Duration::from_millis(500),
        close_timeout: Duration::from_millis(500),
        drain_timeout: Duration::from_millis(500),
        ..Config::echo()
    };
    edit(&mut config);
    Server::start(config).expect("server starts")
}

pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

pub fn upgrade_request(path: &str) -> String {
    upgrade_request_with(path, "")
}

/// An upgrade request with extra header lines (each ending in CRLF).
pub fn upgrade_request_with(path: &str, extra_headers: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra_headers}\r\n"
    )
}

/// A masked client frame with explicit FIN, RSV and opcode.
pub fn frame(fin: bool, rsv: u8, opcode: u8, payload: &[u8]) -> Vec<u8> {
    raw_frame(fin, rsv, opcode, payload, Some([1, 2, 3, 4]))
}

/// A raw TCP peer.
pub struct Peer {
    pub stream: TcpStream,
    buf: BytesMut,
    decoder: Decoder,
}

impl Peer {
    pub fn connect(addr: SocketAddr) -> Self {
        Self::from_stream(TcpStream::connect(addr).unwrap())
    }

    /// Connects from `local` (any 127.x.y.z address works on loopback).
    pub fn connect_from(addr: SocketAddr, local: std::net::IpAddr) -> Self {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.bind(&SocketAddr::new(local, 0).into()).unwrap();
        socket.connect(&addr.into()).unwrap();
        Self::from_stream(socket.into())
    }

    /// Connects with a receive buffer of about `bytes` (the kernel doubles it), so that
    /// what this peer does not read waits at the server early.
    pub fn connect_with_receive_buffer(addr: SocketAddr, bytes: usize) -> Self {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(bytes).unwrap();
        socket.connect(&addr.into()).unwrap();
        Self::from_stream(socket.into())
    }

    fn from_stream(stream: TcpStream) -> Self {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Self {
            stream,
            buf: BytesMut::new(),
            decoder: Decoder::new(Role::Client, Limits::default()),
        }
    }

    /// Connects and completes the opening handshake.
    pub fn open(addr: SocketAddr) -> Self {
        Self::open_with(addr, "").0
    }

    /// Connects and completes the handshake with extra request headers; returns the
    /// response head too.
    pub fn open_with(addr: SocketAddr, extra_headers: &str) -> (Self, String) {
        let mut peer = Self::connect(addr);
        peer.send(upgrade_request_with("/", extra_headers).as_bytes());
        let head = peer.read_head();
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        (peer, head)
    }

    /// The next raw server frame: RSV bits and payload, not decompressed.
    pub fn recv_raw(&mut self) -> Option<(u8, bytes::Bytes)> {
        loop {
            if let Some((header, len)) = stratus_proto::FrameHeader::parse(&self.buf).unwrap() {
                let total = len + header.payload_len as usize;
                if self.buf.len() >= total {
                    let frame = self.buf.split_to(total).freeze();
                    return Some((header.rsv, frame.slice(len..)));
                }
            }
            if self.fill() == 0 {
                return None;
            }
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Reads an HTTP head (through the blank line); the rest stays buffered.
    pub fn read_head(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = self.buf.split_to(end + 4);
                return String::from_utf8(head.to_vec()).unwrap();
            }
            assert!(self.fill() > 0, "connection closed before the head ended");
        }
    }

    /// Reads until the server closes TCP; returns everything it sent.
    pub fn read_to_end(&mut self) -> String {
        while self.fill() > 0 {}
        String::from_utf8_lossy(&self.buf).into_owned()
    }

    /// Reads through the next `delimiter` (an event stream's blank line): what came up to
    /// and with it, or `None` once the server closed TCP with nothing more (a partial block
    /// fails the test).
    pub fn read_through(&mut self, delimiter: &[u8]) -> Option<String> {
        loop {
            let found = self
                .buf
                .windows(delimiter.len())
                .position(|w| w == delimiter);
            if let Some(end) = found {
                let block = self.buf.split_to(end + delimiter.len());
                return Some(String::from_utf8(block.to_vec()).unwrap());
            }
            if self.fill() == 0 {
                assert!(self.buf.is_empty(), "a partial block: {:?}", self.buf);
                return None;
            }
        }
    }

    fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 65536];
        match self.stream.read(&mut chunk) {
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                n
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => 0,
            Err(e) => panic!("read failed: {e}"),
        }
    }

    /// The next server frame as a message, or `None` if the server closed TCP first.
    pub fn recv(&mut self) -> Option<Message> {
        loop {
            match self
                .decoder
                .decode(&mut self.buf)
                .expect("server frames are valid")
            {
                Some(Decoded::Control(m)) => return Some(m),
                Some(Decoded::Data(d)) if d.text => return Some(Message::Text(d.payload)),
                Some(Decoded::Data(d)) => return Some(Message::Binary(d.payload)),
                None => {
                    if self.fill() == 0 {
                        return None;
                    }
                }
            }
        }
    }

    /// Expects a Close with `code`, then the server closing TCP.
    pub fn expect_close(&mut self, code: CloseCode) {
        match self.recv() {
            Some(Message::Close(Some(frame))) => assert_eq!(frame.code(), code),
            other => panic!("expected Close {}, got {other:?}", code.0),
        }
        self.expect_eof();
    }

    /// Expects the server to close TCP with nothing more sent.
    pub fn expect_eof(&mut self) {
        assert_eq!(self.recv(), None, "nothing after the Close");
    }
}

// The admin API and the `stratus` binary.

/// Sends `request` to the admin listener; the status and the body.
pub fn admin(addr: SocketAddr, request: &str) -> (u16, String) {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    exchange(stream, request)
}

/// Sends an HTTP `request` over `stream` (plain or TLS) and reads the response to its
/// end; the status and the body.
pub fn exchange(mut stream: impl Read + Write, request: &str) -> (u16, String) {
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

/// The value of an unlabelled (or exactly labelled) sample on a `/metrics` page.
pub fn sample(page: &str, name: &str) -> u64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in:\n{page}"))
}

pub use stratus_testkit::free_addr;

pub fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

pub fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `stratus` with `args` (a subcommand and flags, or none) on free loopback ports;
/// waits until it listens. A port found free can be taken by a concurrent test before
/// the server binds it (the server then exits): it is started again on other ports.
pub fn spawn_server(extra: &[&str]) -> (Child, SocketAddr, SocketAddr) {
    spawn_server_with(extra, |_| {}, String::new)
}

/// [`spawn_server`] with `setup` applied to the command before each start (its
/// environment, where its output goes); if it never starts, the failure adds what
/// `explain` says (the last start's log, say).
pub fn spawn_server_with(
    extra: &[&str],
    setup: impl Fn(&mut Command),
    explain: impl Fn() -> String,
) -> (Child, SocketAddr, SocketAddr) {
    for _ in 0..5 {
        let (ws, admin) = (free_addr(), free_addr());
        let mut command = Command::new(env!("CARGO_BIN_EXE_stratus"));
        command.args(extra).args([
            "--listen",
            &ws.to_string(),
            "--admin-listen",
            &admin.to_string(),
        ]);
        setup(&mut command);
        let mut child = command.spawn().unwrap();
        if listens(&mut child, ws) {
            return (child, ws, admin);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!(
        "stratus did not start on any of 5 pairs of free ports\n{}",
        explain()
    );
}

/// Whether `child` is listening on `ws` (and still running a moment later, so the
/// listener is its own and it bound every address it was given).
fn listens(child: &mut Child, ws: SocketAddr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(ws).is_err() {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        assert!(Instant::now() < deadline, "server did not listen on {ws}");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    child.try_wait().unwrap().is_none()
}
pub mod certs;
pub mod logged_node;
pub mod node;
pub mod proxy;

/// A directory of a test's own (config files, logs, certificates), removed when dropped.
pub struct Scratch(PathBuf);

impl Scratch {
    /// An empty one; `name` says whose it is (`nats-tls`, say).
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("stratus-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes file `name`; its path.
    pub fn write(&self, name: &str, contents: &str) -> String {
        let path = self.path(name);
        std::fs::write(&path, contents).unwrap();
        path.to_str().unwrap().to_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The push server with its defaults on loopback (two workers, an admin listener, the
/// short test timeouts), with `edit` applied.
pub fn start_push(edit: impl FnOnce(&mut Config)) -> Server {
    start_with(|c| {
        *c = Config {
            listen: c.listen,
            admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            workers: 2,
            handshake_timeout: c.handshake_timeout,
            close_timeout: c.close_timeout,
            drain_timeout: c.drain_timeout,
            ..Config::default()
        };
        edit(c);
    })
}

/// A protocol v1 client over a raw TCP peer.
pub struct V1 {
    pub peer: Peer,
}

impl V1 {
    /// Connects asking for `stratus.v1` (with more request headers); checks the answer.
    pub fn open(server: &Server, extra_headers: &str) -> Self {
        Self::connect(server.local_addr(), extra_headers)
    }

    /// The same, to the WebSocket listener at `addr` (a `stratus` process, say).
    pub fn connect(addr: SocketAddr, extra_headers: &str) -> Self {
        let headers = format!("Sec-WebSocket-Protocol: stratus.v1\r\n{extra_headers}");
        let mut peer = Peer::connect(addr);
        peer.send(upgrade_request_with("/ws", &headers).as_bytes());
        let head = peer.read_head();
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("sec-websocket-protocol: stratus.v1\r\n"),
            "{head}"
        );
        Self { peer }
    }

    pub fn send(&mut self, command: Value) {
        self.peer
            .send(&frame(true, 0, 0x1, command.to_string().as_bytes()));
    }

    /// The next message, which must be JSON text.
    pub fn recv(&mut self) -> Value {
        match self.peer.recv() {
            Some(Message::Text(text)) => serde_json::from_slice(&text).unwrap(),
            other => panic!("expected JSON text, got {other:?}"),
        }
    }

    /// Sends `command` and returns the next message (its reply or error).
    pub fn ask(&mut self, command: Value) -> Value {
        self.send(command);
        self.recv()
    }

    /// Sends `command` and checks it is refused with `code`.
    pub fn refused(&mut self, command: Value, code: &str) {
        let reply = self.ask(command.clone());
        assert_eq!(reply["type"], "error", "{command} -> {reply}");
        assert_eq!(reply["id"], command["id"], "{command} -> {reply}");
        assert_eq!(reply["code"], code, "{command} -> {reply}");
        assert!(
            reply["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{reply}"
        );
    }
}

/// The value of header `name` in an HTTP response head.
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .filter_map(|line| line.split_once(": "))
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, value)| value)
}

pub mod faults;
