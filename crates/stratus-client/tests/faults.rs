//! The "Client" rows of TESTPLAN.md: a scripted server (plain std sockets) sends exactly
//! the bytes each case needs, and records what the client sends back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::BytesMut;
use stratus_client::{Error, connect};
use stratus_proto::codec::Decoded;
use stratus_proto::handshake::{HandshakeLimits, RequestReader};
use stratus_proto::{CloseCode, Decoder, Encoder, Limits, Message, OpCode, ProtocolError, Role};

/// Accepts one connection, answers its handshake with `respond(request)`, writes
/// `after`, then returns every message the client sent until it closed TCP.
fn scripted(
    respond: impl FnOnce(&stratus_proto::handshake::UpgradeRequest) -> Vec<u8> + Send + 'static,
    after: Vec<u8>,
) -> (String, JoinHandle<Vec<Message>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = Vec::new();
        let mut reader = RequestReader::new(HandshakeLimits::default());
        let (request, head) = loop {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).unwrap();
            buf.extend_from_slice(&chunk[..n]);
            if let Some(done) = reader.read(&buf).unwrap() {
                break done;
            }
        };
        stream.write_all(&respond(&request)).unwrap();
        stream.write_all(&after).unwrap();
        read_messages(&mut stream, BytesMut::from(&buf[head..]))
    });
    (url, handle)
}

fn read_messages(stream: &mut TcpStream, mut buf: BytesMut) -> Vec<Message> {
    let mut decoder = Decoder::new(Role::Server, Limits::default());
    let mut out = Vec::new();
    loop {
        while let Some(d) = decoder.decode(&mut buf).expect("client frames are valid") {
            out.push(match d {
                Decoded::Control(m) => m,
                Decoded::Data(r) if r.text => Message::Text(r.payload),
                Decoded::Data(r) => Message::Binary(r.payload),
            });
            if matches!(out.last(), Some(Message::Close(_))) {
                // The server closes TCP first once the client's Close is in.
                return out;
            }
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return out,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn accept(request: &stratus_proto::handshake::UpgradeRequest) -> Vec<u8> {
    request.accept("")
}

fn close_code(message: &Message) -> Option<CloseCode> {
    match message {
        Message::Close(Some(frame)) => Some(frame.code()),
        _ => None,
    }
}

#[test]
fn masked_frame_from_server_fails_with_1002() {
    let mut masked = Encoder::client([3; 32]);
    let (url, server) = scripted(accept, masked.message(&Message::text("masked")).to_vec());
    stratus_uring::run(async move {
        let mut client = connect(&url).await.unwrap();
        let err = client.recv().await.unwrap_err();
        assert!(
            matches!(err, Error::Protocol(ProtocolError::MaskedFrame)),
            "{err}"
        );
    })
    .unwrap();
    let received = server.join().unwrap();
    assert_eq!(received.len(), 1);
    assert_eq!(close_code(&received[0]), Some(CloseCode::PROTOCOL));
}

#[test]
fn autobahn_3_2_rsv_frame_after_good_message() {
    // A text message, a text frame with RSV = 2, then a ping: the client echoes the first,
    // then fails with 1002: no echo of the bad frame, no pong.
    let mut server_enc = Encoder::server();
    let mut script = server_enc.message(&Message::text("Hello, world!")).to_vec();
    script.extend_from_slice(&server_enc.frame(OpCode::Text, 0b010, b"Hello, world!"));
    script.extend_from_slice(&server_enc.message(&Message::Ping(bytes::Bytes::new())));
    let (url, server) = scripted(accept, script);
    stratus_uring::run(async move {
        let mut client = connect(&url).await.unwrap();
        let first = client.recv().await.unwrap().unwrap();
        client.send(&first).await.unwrap();
        let err = client.recv().await.unwrap_err();
        assert!(
            matches!(err, Error::Protocol(ProtocolError::ReservedBits(0b010))),
            "{err}"
        );
    })
    .unwrap();
    let received = server.join().unwrap();
    assert_eq!(received.len(), 2, "{received:?}");
    assert_eq!(received[0], Message::text("Hello, world!"));
    assert_eq!(close_code(&received[1]), Some(CloseCode::PROTOCOL));
}

fn refused_with(edit: fn(String) -> String) -> Error {
    let (url, server) = scripted(
        move |req| edit(String::from_utf8(req.accept("")).unwrap()).into_bytes(),
        Encoder::server()
            .message(&Message::text("never read"))
            .to_vec(),
    );
    let err = stratus_uring::run(async move {
        match connect(&url).await {
            Ok(_) => panic!("a bad 101 was accepted"),
            Err(err) => err,
        }
    })
    .unwrap();
    // The client sent nothing after its request: no frame of any kind.
    assert_eq!(server.join().unwrap(), vec![]);
    err
}

#[test]
fn bad_101_responses_fail_before_any_frame() {
    use stratus_proto::handshake::HandshakeError as H;
    type Edit = fn(String) -> String;
    let cases: [(Edit, H); 4] = [
        (
            |r| r.replace("Sec-WebSocket-Accept: ", "Sec-WebSocket-Accept: x"),
            H::AcceptMismatch,
        ),
        (
            |r| r.replace("101 Switching Protocols", "200 OK"),
            H::UnexpectedStatus(200),
        ),
        (
            |r| r.replace("Upgrade: websocket\r\n", ""),
            H::MissingUpgrade,
        ),
        (
            |r| r.replace("\r\n\r\n", "\r\nSec-WebSocket-Protocol: chat\r\n\r\n"),
            H::UnsolicitedProtocol,
        ),
    ];
    for (edit, expected) in cases {
        match refused_with(edit) {
            Error::Handshake(err) => assert_eq!(err, expected),
            other => panic!("expected {expected}, got {other}"),
        }
    }
}

#[test]
fn bad_extension_answers_fail_before_any_frame() {
    use stratus_deflate::ClientNegotiationError as N;
    type Edit = fn(String) -> String;
    type Check = fn(&N) -> bool;
    let cases: [(Edit, Check); 4] = [
        (
            |r| {
                r.replace(
                    "\r\n\r\n",
                    "\r\nSec-WebSocket-Extensions: x-not-offered\r\n\r\n",
                )
            },
            |e| matches!(e, N::Unsolicited),
        ),
        (
            |r| {
                r.replace(
                    "\r\n\r\n",
                    "\r\nSec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=16\r\n\r\n",
                )
            },
            |e| matches!(e, N::Params(_)),
        ),
        (
            |r| {
                r.replace(
                    "\r\n\r\n",
                    "\r\nSec-WebSocket-Extensions: permessage-deflate; surprise\r\n\r\n",
                )
            },
            |e| matches!(e, N::Params(_)),
        ),
        (
            |r| {
                r.replace(
                    "\r\n\r\n",
                    "\r\nSec-WebSocket-Extensions: permessage-deflate, permessage-deflate\r\n\r\n",
                )
            },
            |e| matches!(e, N::Unsolicited),
        ),
    ];
    for (edit, expected) in cases {
        match refused_with(edit) {
            Error::Extension(err) => assert!(expected(&err), "{err}"),
            other => panic!("expected an extension error, got {other}"),
        }
    }
}
