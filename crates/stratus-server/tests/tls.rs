//! TLS on both listeners, with a certificate made at test time (rcgen): wss through the
//! Stratus client (echo, pub/sub, a slow TLS consumer), https on the admin API, plain
//! HTTP on the TLS port, a silent TLS handshake, and certificates that cannot be used.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use stratus_client::{ClientConfig, connect_with, tls_trusting};
use stratus_proto::{CloseCode, Message};
use stratus_server::{App, Config, Reach, Server, SlowConsumer, TlsFiles};

/// A self-signed certificate for 127.0.0.1 written to a fresh directory: the files,
/// and the certificate's PEM for the client to trust.
struct Certs {
    dir: PathBuf,
    files: TlsFiles,
    pem: String,
}

impl Certs {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "stratus-tls-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        let files = TlsFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        let pem = made.cert.pem();
        std::fs::write(&files.cert, &pem).unwrap();
        std::fs::write(&files.key, made.signing_key.serialize_pem()).unwrap();
        Self { dir, files, pem }
    }

    fn client(&self) -> ClientConfig {
        ClientConfig {
            tls: Some(tls_trusting(self.pem.as_bytes()).unwrap()),
            ..ClientConfig::default()
        }
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start(certs: &Certs, edit: impl FnOnce(&mut Config)) -> Server {
    let mut config = Config {
        app: App::PubSub,
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        workers: 2,
        handshake_timeout: Duration::from_millis(500),
        close_timeout: Duration::from_millis(500),
        drain_timeout: Duration::from_millis(500),
        tls: Some(certs.files.clone()),
        ..Config::default()
    };
    edit(&mut config);
    Server::start(config).unwrap()
}

#[test]
fn wss_echo_round_trip_through_the_client() {
    let certs = Certs::new();
    let server = start(&certs, |c| {
        c.app = App::Echo;
        c.limits = stratus_proto::Limits::default();
    });
    let url = format!("wss://{}/", server.local_addr());
    let config = certs.client();
    stratus_uring::run(async move {
        let mut client = connect_with(&url, config).await.unwrap();
        client.send(&Message::text("hello over TLS")).await.unwrap();
        assert_eq!(
            client.recv().await.unwrap(),
            Some(Message::text("hello over TLS"))
        );
        // Several TLS records each way (16 KiB per record at most).
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let big = Message::Binary(big.into());
        client.send(&big).await.unwrap();
        assert_eq!(client.recv().await.unwrap(), Some(big));
        client.close(CloseCode::NORMAL, "done").await.unwrap();
    })
    .unwrap();
    server.stop().unwrap();
}

#[test]
fn wss_subscribers_get_every_broadcast_in_order() {
    let certs = Certs::new();
    let server = start(&certs, |_| {});
    let url = format!("wss://{}/ws?topic=prices", server.local_addr());
    let config = certs.client();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let clients = std::thread::spawn(move || {
        stratus_uring::run(async move {
            let mut clients = Vec::new();
            for _ in 0..20 {
                clients.push(connect_with(&url, config.clone()).await.unwrap());
            }
            ready_tx.send(()).unwrap();
            for mut c in clients {
                for seq in 0..500u32 {
                    let expected = Message::text(format!("{{\"seq\":{seq}}}"));
                    assert_eq!(c.recv().await.unwrap(), Some(expected));
                }
                c.close(CloseCode::NORMAL, "").await.unwrap();
            }
        })
        .unwrap();
    });
    ready_rx.recv().unwrap();
    for seq in 0..500u32 {
        let delivery = server
            .publish("prices", Message::text(format!("{{\"seq\":{seq}}}")))
            .unwrap();
        assert_eq!(delivery.wait(), Ok(Reach::Subscribers(20)));
    }
    clients.join().unwrap();
    server.stop().unwrap();
}

#[test]
fn slow_tls_consumer_is_closed_and_others_get_everything() {
    let certs = Certs::new();
    let server = start(&certs, |c| {
        c.max_send_queue = 64 << 10;
        c.slow_consumer = SlowConsumer::Close;
        c.close_timeout = Duration::from_secs(10);
    });
    let url = format!("wss://{}/ws?topic=t", server.local_addr());
    // Uncompressed: the padding would deflate to almost nothing.
    let config = ClientConfig {
        deflate: false,
        ..certs.client()
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let (got_tx, got_rx) = std::sync::mpsc::channel();
    let readers = std::thread::spawn(move || {
        stratus_uring::run(async move {
            // Never reads until every message is published.
            let slow = connect_with(&url, config.clone()).await.unwrap();
            let mut fast = connect_with(&url, config).await.unwrap();
            ready_tx.send(()).unwrap();
            for expected in 0..2000u32 {
                let m = fast.recv().await.unwrap().unwrap();
                assert!(matches!(&m, Message::Text(t) if t.starts_with(format!("{expected}:").as_bytes())));
                got_tx.send(()).unwrap();
            }
            done_rx.recv().unwrap();
            drop(slow);
        })
        .unwrap();
    });
    ready_rx.recv().unwrap();
    // 2000 x 4 KiB: far more than the cap plus what the kernel buffers. In step with
    // the fast reader, so only the slow one falls behind.
    let pad = "y".repeat(4096);
    for seq in 0..2000u32 {
        server
            .publish("t", Message::text(format!("{seq}:{pad}")))
            .unwrap()
            .wait()
            .unwrap();
        got_rx.recv().unwrap();
    }
    assert_eq!(
        server.stats().slow_consumer_closes.load(Ordering::Relaxed),
        1,
        "the send queue cap applies to TLS connections"
    );
    done_tx.send(()).unwrap();
    readers.join().unwrap();
    server.stop().unwrap();
}

/// A blocking HTTPS exchange with the admin API; returns (status, body).
fn https(addr: SocketAddr, trusted_pem: &str, request: &str) -> (u16, String) {
    let config = tls_trusting(trusted_pem.as_bytes()).unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    common::exchange(rustls::StreamOwned::new(conn, tcp), request)
}

#[test]
fn https_admin_publishes_and_answers_healthz() {
    let certs = Certs::new();
    let server = start(&certs, |c| c.admin_tls = Some(certs.files.clone()));
    let admin = server.admin_addr().unwrap();
    let health = https(
        admin,
        &certs.pem,
        "GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(health, (200, r#"{"status":"ok"}"#.to_owned()));
    // The admin page is served over HTTPS too.
    let (status, page) = https(
        admin,
        &certs.pem,
        "GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert!(
        status == 200 && page.contains("<title>Stratus admin</title>"),
        "{status} {page}"
    );
    let url = format!("wss://{}/ws?topic=orders", server.local_addr());
    let config = certs.client();
    let pem = certs.pem.clone();
    stratus_uring::run(async move {
        let mut subscriber = connect_with(&url, config).await.unwrap();
        let published = std::thread::spawn(move || {
            let body = r#"{"id":1}"#;
            let request = format!(
                "POST /publish/orders HTTP/1.1\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            https(admin, &pem, &request)
        });
        assert_eq!(
            subscriber.recv().await.unwrap(),
            Some(Message::text(r#"{"id":1}"#))
        );
        assert_eq!(
            published.join().unwrap(),
            (200, r#"{"recipients":1}"#.to_owned())
        );
    })
    .unwrap();
    // Plain HTTP to the HTTPS listener gets no HTTP answer.
    let mut plain = TcpStream::connect(admin).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(!answer.starts_with(b"HTTP"), "{answer:?}");
    server.stop().unwrap();
}

/// A raw HTTP GET to a plain admin listener; returns the body.
fn get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response.split_once("\r\n\r\n").unwrap().1.to_owned()
}

/// Reads until the server closes TCP; fails if it does not within 5 seconds.
fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("the server did not close the connection: {e}"),
        }
    }
}

#[test]
fn plain_http_on_the_tls_port_is_closed_and_counted() {
    let certs = Certs::new();
    let server = start(&certs, |_| {});
    let addr = server.local_addr();
    let mut plain = TcpStream::connect(addr).unwrap();
    plain.write_all(common_request().as_bytes()).unwrap();
    let answer = read_until_closed(&mut plain);
    // A TLS alert record (content type 21), never an HTTP response.
    assert_eq!(answer.first(), Some(&21), "{answer:?}");
    let metrics = get(server.admin_addr().unwrap(), "/metrics");
    assert!(
        metrics.contains("\nstratus_tls_errors_total 1\n"),
        "{metrics}"
    );
    // The server keeps working.
    let url = format!("wss://{addr}/ws?topic=t");
    let config = certs.client();
    stratus_uring::run(async move {
        let mut client = connect_with(&url, config).await.unwrap();
        client.close(CloseCode::NORMAL, "").await.unwrap();
    })
    .unwrap();
    server.stop().unwrap();
}

fn common_request() -> String {
    "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        .to_owned()
}

#[test]
fn a_silent_tls_handshake_ends_at_the_handshake_timeout() {
    let certs = Certs::new();
    let server = start(&certs, |_| {});
    let started = Instant::now();
    let mut silent = TcpStream::connect(server.local_addr()).unwrap();
    // Half a ClientHello record header: the TLS handshake never completes.
    silent.write_all(&[22, 3, 1]).unwrap();
    read_until_closed(&mut silent);
    assert!(started.elapsed() >= Duration::from_millis(400));
    let metrics = get(server.admin_addr().unwrap(), "/metrics");
    assert!(
        metrics.contains("\nstratus_handshake_timeouts_total 1\n"),
        "{metrics}"
    );
    server.stop().unwrap();
}

fn start_error(files: TlsFiles) -> String {
    let config = Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        admin_listen: None,
        tls: Some(files),
        ..Config::default()
    };
    match Server::start(config) {
        Ok(_) => panic!("the server started"),
        Err(err) => err.to_string(),
    }
}

#[test]
fn unusable_certificates_and_keys_stop_the_server_at_start() {
    let certs = Certs::new();
    let other = Certs::new();
    let missing = certs.dir.join("missing.pem");
    let err = start_error(TlsFiles {
        cert: missing.clone(),
        ..certs.files.clone()
    });
    assert!(
        err.contains("cannot read") && err.contains("missing.pem"),
        "{err}"
    );
    // A key file given as the certificate.
    let err = start_error(TlsFiles {
        cert: certs.files.key.clone(),
        ..certs.files.clone()
    });
    assert!(err.contains("no usable PEM certificate"), "{err}");
    let err = start_error(TlsFiles {
        key: certs.files.cert.clone(),
        ..certs.files.clone()
    });
    assert!(err.contains("no usable PEM private key"), "{err}");
    // Another certificate's key.
    let err = start_error(TlsFiles {
        key: other.files.key.clone(),
        ..certs.files.clone()
    });
    assert!(err.contains("do not go together"), "{err}");
}

/// Runs `stratus config check` on a file holding `toml`: (success, stdout, stderr).
fn config_check(certs: &Certs, toml: &str) -> (bool, String, String) {
    let file = certs.dir.join("stratus.toml");
    std::fs::write(&file, toml).unwrap();
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_stratus"))
        .args(["config", "check"])
        .arg(&file)
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (
        check.status.success(),
        text(&check.stdout),
        text(&check.stderr),
    )
}

#[test]
fn config_check_reports_an_unusable_certificate() {
    let certs = Certs::new();
    let pair = |cert: &PathBuf, key: &PathBuf| format!("tls-cert = {cert:?}\ntls-key = {key:?}\n");
    let (ok, _, stderr) = config_check(&certs, &pair(&certs.files.cert, &certs.files.cert));
    assert!(!ok);
    assert!(stderr.contains("no usable PEM private key"), "{stderr}");
    // The right pair passes, and the effective configuration names it.
    let (ok, stdout, stderr) = config_check(&certs, &pair(&certs.files.cert, &certs.files.key));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("tls-key = "), "{stdout}");
    // Half a pair is refused.
    let half = format!("tls-cert = {:?}\n", certs.files.cert);
    let (ok, _, stderr) = config_check(&certs, &half);
    assert!(!ok);
    assert!(
        stderr.contains("tls-cert is set but tls-key is not"),
        "{stderr}"
    );
}
