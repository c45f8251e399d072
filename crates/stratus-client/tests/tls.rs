//! `wss://` against the Stratus echo server with a certificate made at test time: the
//! blocking hand-off driven through its TLS state, the server's close_notify before FIN,
//! and a certificate the client does not trust.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::SocketAddr;

use stratus_client::{ClientConfig, Error, connect, connect_blocking, tls_trusting};
use stratus_proto::{CloseCode, Message};
use stratus_server::{Config, Server, TlsFiles};

/// An echo server with TLS on a self-signed certificate for 127.0.0.1; returns the
/// certificate's PEM to trust.
fn server(name: &str) -> (Server, String) {
    let dir = std::env::temp_dir().join(format!("stratus-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let files = TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(&files.cert, made.cert.pem()).unwrap();
    std::fs::write(&files.key, made.signing_key.serialize_pem()).unwrap();
    let server = Server::start(Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        workers: 1,
        tls: Some(files),
        ..Config::echo()
    })
    .unwrap();
    // The server has loaded the files.
    std::fs::remove_dir_all(dir).unwrap();
    (server, made.cert.pem())
}

#[test]
fn blocking_handoff_over_wss_echoes_and_ends_with_close_notify() {
    let (server, pem) = server("handoff");
    let config = ClientConfig {
        tls: Some(tls_trusting(pem.as_bytes()).unwrap()),
        ..ClientConfig::default()
    };
    let url = format!("wss://{}/", server.local_addr());
    let mut handoff = connect_blocking(&url, config).unwrap();
    let mut tls = handoff.tls.take().expect("wss hands the TLS state over");
    let mut socket = handoff.socket;
    let mut stream = rustls::Stream::new(&mut *tls, &mut socket);
    let mut session = handoff.session;
    let mut buf = handoff.leftover;
    let mut roundtrip = |session: &mut stratus_proto::Session, message: Option<Message>| {
        if let Some(message) = message {
            session.send(&message).unwrap();
        }
        while let Some(frame) = session.poll_transmit() {
            stream.write_all(&frame).unwrap();
        }
        loop {
            if let Some(m) = session.handle_read(&mut buf).unwrap() {
                while let Some(frame) = session.poll_transmit() {
                    stream.write_all(&frame).unwrap();
                }
                return Some(m);
            }
            let mut chunk = [0u8; 16384];
            // Ok(0) only after the server's close_notify; a bare FIN is an error here.
            let n = stream.read(&mut chunk).unwrap();
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    let hello = Message::text("hello over wss");
    assert_eq!(roundtrip(&mut session, Some(hello.clone())), Some(hello));
    session.close(CloseCode::NORMAL, "bye");
    match roundtrip(&mut session, None) {
        Some(Message::Close(Some(frame))) => assert_eq!(frame.code(), CloseCode::NORMAL),
        other => panic!("expected the Close echo, got {other:?}"),
    }
    assert_eq!(
        roundtrip(&mut session, None),
        None,
        "close_notify, then FIN"
    );
    // The server waits for our FIN before it lets the connection go.
    drop(socket);
    server.stop().unwrap();
}

#[test]
fn an_untrusted_certificate_fails_the_connection() {
    let (server, _) = server("untrusted");
    let url = format!("wss://{}/", server.local_addr());
    stratus_uring::run(async move {
        // The default roots do not include the self-signed certificate.
        match connect(&url).await {
            Err(Error::Io(err)) => {
                assert!(err.to_string().contains("certificate"), "{err}");
            }
            Err(other) => panic!("expected a certificate error, got {other}"),
            Ok(_) => panic!("connected to an untrusted server"),
        }
    })
    .unwrap();
    server.stop().unwrap();
}
