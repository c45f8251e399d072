//! The "Frames (server)" and close-related "Runtime faults" rows of TESTPLAN.md, over raw
//! TCP against the echo server.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Peer, frame, raw_frame, start_server, start_with};
use stratus_proto::{CloseCode, Message};

#[test]
fn unmasked_client_frame_gets_1002() {
    let server = start_server();
    let mut peer = Peer::open(server.local_addr());
    peer.send(&raw_frame(true, 0, 1, b"hi", None));
    peer.expect_close(CloseCode::PROTOCOL);
    server.stop().unwrap();
}

#[test]
fn rsv_bits_get_1002_and_nothing_after_is_processed() {
    let server = start_server();
    let mut peer = Peer::open(server.local_addr());
    let mut bytes = frame(true, 0, 1, b"first");
    bytes.extend(frame(true, 0b010, 1, b"bad"));
    bytes.extend(frame(true, 0, 9, b"ping"));
    bytes.extend(frame(true, 0, 1, b"after"));
    peer.send(&bytes);
    assert_eq!(peer.recv(), Some(Message::text("first")));
    // no echo of the bad frame, no pong, no echo of what follows
    peer.expect_close(CloseCode::PROTOCOL);
    server.stop().unwrap();
}

#[test]
fn reserved_opcode_gets_1002() {
    let server = start_server();
    for opcode in [3, 7, 0xB, 0xF] {
        let mut peer = Peer::open(server.local_addr());
        peer.send(&frame(true, 0, opcode, b""));
        peer.expect_close(CloseCode::PROTOCOL);
    }
    server.stop().unwrap();
}

#[test]
fn bad_control_frames_get_1002() {
    let server = start_server();
    for bytes in [frame(true, 0, 9, &[0; 126]), frame(false, 0, 9, b"")] {
        let mut peer = Peer::open(server.local_addr());
        peer.send(&bytes);
        peer.expect_close(CloseCode::PROTOCOL);
    }
    server.stop().unwrap();
}

#[test]
fn bad_fragment_sequences_get_1002() {
    let server = start_server();
    let mut nested = frame(false, 0, 1, b"a");
    nested.extend(frame(true, 0, 1, b"b"));
    for bytes in [frame(true, 0, 0, b"orphan"), nested] {
        let mut peer = Peer::open(server.local_addr());
        peer.send(&bytes);
        peer.expect_close(CloseCode::PROTOCOL);
    }
    server.stop().unwrap();
}

#[test]
fn declared_length_over_limit_gets_1009_at_once() {
    let server = common::start_with(|c| c.limits.max_message = 1 << 20);
    let mut peer = Peer::open(server.local_addr());
    let mut head = vec![0x82, 0xFF];
    head.extend_from_slice(&(1u64 << 40).to_be_bytes());
    head.extend_from_slice(&[1, 2, 3, 4]);
    peer.send(&head);
    peer.expect_close(CloseCode::TOO_BIG);
    server.stop().unwrap();
}

#[test]
fn top_bit_length_gets_1002() {
    let server = start_server();
    let mut peer = Peer::open(server.local_addr());
    let mut head = vec![0x82, 0xFF];
    head.extend_from_slice(&u64::MAX.to_be_bytes());
    head.extend_from_slice(&[1, 2, 3, 4]);
    peer.send(&head);
    peer.expect_close(CloseCode::PROTOCOL);
    server.stop().unwrap();
}

#[test]
fn fragment_flood_gets_1009() {
    let server = common::start_with(|c| c.limits.max_fragments = 100);
    let mut peer = Peer::open(server.local_addr());
    let mut bytes = frame(false, 0, 2, b"");
    for _ in 0..200 {
        bytes.extend(frame(false, 0, 0, b""));
    }
    peer.send(&bytes);
    peer.expect_close(CloseCode::TOO_BIG);
    server.stop().unwrap();
}

#[test]
fn invalid_utf8_gets_1007_in_the_fragment_that_holds_it() {
    let server = start_server();
    let mut peer = Peer::open(server.local_addr());
    // The message is never finished: the server must fail on the bad fragment itself.
    let mut bytes = frame(false, 0, 1, "κόσμε".as_bytes());
    bytes.extend(frame(false, 0, 0, &[0xF4, 0x90, 0x80, 0x80]));
    peer.send(&bytes);
    peer.expect_close(CloseCode::INVALID_PAYLOAD);
    server.stop().unwrap();
}

#[test]
fn frame_split_at_every_byte_offset_echoes_the_same() {
    let server = start_server();
    let payload = "split €".repeat(30);
    let bytes = frame(true, 0, 1, payload.as_bytes());
    for at in [1, 2, 5, 6, 7, 100, bytes.len() - 1] {
        let mut peer = Peer::open(server.local_addr());
        peer.send(&bytes[..at]);
        std::thread::sleep(std::time::Duration::from_millis(5));
        peer.send(&bytes[at..]);
        assert_eq!(
            peer.recv(),
            Some(Message::text(payload.clone())),
            "split at {at}"
        );
    }
    server.stop().unwrap();
}

#[test]
fn close_codes_are_validated_and_valid_ones_echoed() {
    let server = start_server();
    for code in [1000u16, 1001, 1003, 1007, 1011, 3000, 4999] {
        let mut peer = Peer::open(server.local_addr());
        peer.send(&frame(true, 0, 8, &code.to_be_bytes()));
        peer.expect_close(CloseCode(code));
    }
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
        let mut peer = Peer::open(server.local_addr());
        peer.send(&frame(true, 0, 8, &code.to_be_bytes()));
        peer.expect_close(CloseCode::PROTOCOL);
    }
    let mut one_byte = Peer::open(server.local_addr());
    one_byte.send(&frame(true, 0, 8, &[3]));
    one_byte.expect_close(CloseCode::PROTOCOL);
    let mut bad_reason = Peer::open(server.local_addr());
    bad_reason.send(&frame(true, 0, 8, &[0x03, 0xe8, 0xff]));
    bad_reason.expect_close(CloseCode::INVALID_PAYLOAD);
    server.stop().unwrap();
}

#[test]
fn data_and_ping_after_close_are_ignored_and_one_close_is_sent() {
    let server = start_server();
    let mut peer = Peer::open(server.local_addr());
    let mut bytes = frame(true, 0, 8, &1000u16.to_be_bytes());
    bytes.extend(frame(true, 0, 1, b"late"));
    bytes.extend(frame(true, 0, 9, b"late ping"));
    bytes.extend(frame(true, 0, 8, &1000u16.to_be_bytes()));
    peer.send(&bytes);
    peer.expect_close(CloseCode::NORMAL);
    server.stop().unwrap();
}

#[test]
fn ping_gets_pong_with_same_payload() {
    let server = start_server();
    let mut peer = Peer::open(server.local_addr());
    peer.send(&frame(true, 0, 9, b"are you there"));
    assert_eq!(
        peer.recv(),
        Some(Message::Pong(bytes::Bytes::from_static(b"are you there")))
    );
    server.stop().unwrap();
}

#[test]
fn fin_without_close_is_closed_promptly() {
    let server = start_server();
    let mut peer = Peer::open(server.local_addr());
    peer.send(&frame(true, 0, 1, b"x"));
    assert_eq!(peer.recv(), Some(Message::text("x")));
    peer.stream.shutdown(std::net::Shutdown::Write).unwrap();
    // The server treats it as 1006: it closes TCP without a Close frame.
    peer.expect_eof();
    server.stop().unwrap();
}

#[test]
fn peer_that_never_closes_tcp_is_closed_by_the_server() {
    let server = start_server();
    let mut peer = Peer::open(server.local_addr());
    peer.send(&frame(true, 0, 8, &1000u16.to_be_bytes()));
    // We keep our side open and silent; the server still closes TCP.
    peer.expect_close(CloseCode::NORMAL);
    server.stop().unwrap();
}

#[test]
fn a_burst_of_pings_gets_a_pong_each() {
    // Autobahn 2.10: ten pings in one segment, ten pongs back, in order.
    let server = start_server();
    let mut peer = Peer::open(server.local_addr());
    let mut burst = Vec::new();
    for i in 0..10u8 {
        burst.extend(frame(true, 0, 9, &[i]));
    }
    peer.send(&burst);
    for i in 0..10u8 {
        assert_eq!(
            peer.recv(),
            Some(Message::Pong(bytes::Bytes::from(vec![i])))
        );
    }
    server.stop().unwrap();
}

/// The invariant every TESTPLAN row shares: a connection open while bad input arrives on
/// others keeps working, and each bad connection gets its own specific answer.
#[test]
fn every_bad_input_leaves_an_open_connection_working() {
    let server = start_with(|c| c.limits.max_frame = 1 << 16);
    let addr = server.local_addr();
    let mut bystander = Peer::open(addr);
    let upgrade = |path: &str| common::upgrade_request(path);
    let requests: [(&str, String, &str); 5] = [
        ("POST", upgrade("/").replacen("GET", "POST", 1), "405"),
        (
            "HTTP/1.0",
            upgrade("/").replacen("HTTP/1.1", "HTTP/1.0", 1),
            "400",
        ),
        (
            "no upgrade",
            upgrade("/").replace("Upgrade: websocket\r\n", ""),
            "426",
        ),
        (
            "bad key",
            upgrade("/").replace(common::KEY, "c2hvcnQ="),
            "400",
        ),
        (
            "big head",
            upgrade("/").replace("\r\n\r\n", &format!("\r\nX: {}\r\n\r\n", "a".repeat(9000))),
            "431",
        ),
    ];
    for (case, request, status) in requests {
        let mut peer = Peer::connect(addr);
        peer.send(request.as_bytes());
        let head = peer.read_head();
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status} ")),
            "{case}: {head}"
        );
        peer.read_to_end();
        bystander.send(&frame(true, 0, 1, case.as_bytes()));
        assert_eq!(bystander.recv(), Some(Message::text(case)), "after {case}");
    }
    let mut huge = frame(true, 0, 2, b"");
    huge[1] = 0x80 | 127;
    huge.splice(2..2, (1u64 << 40).to_be_bytes());
    let frames: [(&str, Vec<u8>, CloseCode); 9] = [
        (
            "unmasked",
            raw_frame(true, 0, 1, b"hi", None),
            CloseCode::PROTOCOL,
        ),
        ("rsv", frame(true, 0b100, 1, b"x"), CloseCode::PROTOCOL),
        ("opcode 3", frame(true, 0, 3, b""), CloseCode::PROTOCOL),
        (
            "long ping",
            frame(true, 0, 9, &[0; 126]),
            CloseCode::PROTOCOL,
        ),
        (
            "orphan continuation",
            frame(true, 0, 0, b"x"),
            CloseCode::PROTOCOL,
        ),
        ("over the frame limit", huge, CloseCode::TOO_BIG),
        (
            "invalid UTF-8",
            frame(true, 0, 1, &[0xce, 0xba, 0xff]),
            CloseCode::INVALID_PAYLOAD,
        ),
        ("1-byte close", frame(true, 0, 8, &[3]), CloseCode::PROTOCOL),
        (
            "close code 1005",
            frame(true, 0, 8, &1005u16.to_be_bytes()),
            CloseCode::PROTOCOL,
        ),
    ];
    for (case, bytes, code) in frames {
        let mut peer = Peer::open(addr);
        peer.send(&bytes);
        peer.expect_close(code);
        bystander.send(&frame(true, 0, 1, case.as_bytes()));
        assert_eq!(bystander.recv(), Some(Message::text(case)), "after {case}");
    }
    // The last peer's socket closes as it drops; the server follows at its FIN.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while server.connections() > 1 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(server.connections(), 1, "only the bystander is left");
    bystander.send(&frame(true, 0, 1, b"last"));
    assert_eq!(bystander.recv(), Some(Message::text("last")));
    server.stop().unwrap();
}
