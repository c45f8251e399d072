//! permessage-deflate at the server, over raw TCP: negotiation answers (TESTPLAN's
//! handshake row on deflate offers) and the deflate rows of "Frames (server)".

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Peer, frame, start_server, start_with};
use stratus_deflate::stateless::{compress_message, decompress_message};
use stratus_deflate::{DeflateConfig, Mode};
use stratus_proto::CloseCode;
use stratus_proto::frame::RSV1;

fn extension_answer(offers: &str) -> Option<String> {
    let server = start_server();
    let (_peer, head) = Peer::open_with(server.local_addr(), offers);
    server.stop().unwrap();
    head.lines()
        .find_map(|l| l.strip_prefix("Sec-WebSocket-Extensions: "))
        .map(str::to_owned)
}

#[test]
fn valid_offer_is_answered_with_the_shared_parameters() {
    assert_eq!(
        extension_answer(
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        )
        .as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    );
}

#[test]
fn invalid_offers_are_declined_and_the_next_valid_one_accepted() {
    for bad in [
        "server_max_window_bits=7",
        "server_max_window_bits=16",
        "server_max_window_bits=abc",
        "x=1",
        "client_no_context_takeover; client_no_context_takeover",
    ] {
        assert_eq!(
            extension_answer(&format!(
                "Sec-WebSocket-Extensions: permessage-deflate; {bad}\r\n"
            )),
            None,
            "{bad}"
        );
        let answer = extension_answer(&format!(
            "Sec-WebSocket-Extensions: permessage-deflate; {bad}\r\nSec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10\r\n"
        ))
        .unwrap();
        assert!(
            answer.ends_with("server_max_window_bits=10"),
            "{bad}: {answer}"
        );
    }
}

#[test]
fn window_bits_8_is_declined() {
    assert_eq!(
        extension_answer(
            "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=8\r\n"
        ),
        None
    );
}

#[test]
fn deflate_off_declines_everything() {
    let server = start_with(|c| c.deflate = None);
    let (_peer, head) = Peer::open_with(
        server.local_addr(),
        "Sec-WebSocket-Extensions: permessage-deflate\r\n",
    );
    assert!(!head.contains("Sec-WebSocket-Extensions"), "{head}");
    server.stop().unwrap();
}

fn compressed_peer(addr: std::net::SocketAddr) -> Peer {
    Peer::open_with(addr, "Sec-WebSocket-Extensions: permessage-deflate\r\n").0
}

#[test]
fn compressed_messages_are_echoed_compressed_in_both_modes() {
    for mode in [Mode::Shared, Mode::Dedicated] {
        let server = start_with(|c| {
            c.deflate = Some(DeflateConfig {
                mode,
                threshold: 64,
            })
        });
        let mut peer = compressed_peer(server.local_addr());
        let text = r#"{"topic":"prices","bid":101.25,"ask":101.5}"#.repeat(10);
        peer.send(&frame(
            true,
            RSV1,
            1,
            &compress_message(text.as_bytes()).unwrap(),
        ));
        let (rsv, payload) = peer.recv_raw().unwrap();
        assert_eq!(rsv, RSV1, "{mode:?}: the echo is compressed");
        assert_eq!(
            &decompress_message(&payload, 1 << 20).unwrap()[..],
            text.as_bytes()
        );
        // Below the threshold the echo goes uncompressed.
        peer.send(&frame(true, RSV1, 1, &compress_message(b"tiny").unwrap()));
        assert_eq!(
            peer.recv_raw().unwrap(),
            (0, bytes::Bytes::from_static(b"tiny"))
        );
        server.stop().unwrap();
    }
}

#[test]
fn rsv1_on_continuation_or_control_frame_is_1002() {
    let server = start_server();
    let mut continuation = frame(false, RSV1, 1, &compress_message(b"abc").unwrap());
    continuation.extend(frame(true, RSV1, 0, b"x"));
    for bytes in [continuation, frame(true, RSV1, 9, b"")] {
        let mut peer = compressed_peer(server.local_addr());
        peer.send(&bytes);
        peer.expect_close(CloseCode::PROTOCOL);
    }
    server.stop().unwrap();
}

#[test]
fn rsv1_without_negotiation_is_1002() {
    let server = start_server();
    let mut peer = Peer::open(server.local_addr());
    peer.send(&frame(true, RSV1, 1, &compress_message(b"abc").unwrap()));
    peer.expect_close(CloseCode::PROTOCOL);
    server.stop().unwrap();
}

#[test]
fn corrupt_deflate_data_is_1007() {
    let server = start_server();
    let mut peer = compressed_peer(server.local_addr());
    peer.send(&frame(true, RSV1, 2, &[0x07, 0x00, 0x12]));
    peer.expect_close(CloseCode::INVALID_PAYLOAD);
    server.stop().unwrap();
}

#[test]
fn deflate_bomb_is_1009() {
    let server = start_with(|c| c.limits.max_message = 1 << 20);
    let mut peer = compressed_peer(server.local_addr());
    // 64 MiB of zeros in about 64 KiB; the limit is 1 MiB.
    let bomb = compress_message(&vec![0u8; 64 << 20]).unwrap();
    assert!(bomb.len() < 100 << 10);
    peer.send(&frame(true, RSV1, 2, &bomb));
    peer.expect_close(CloseCode::TOO_BIG);
    // The server is still serving others.
    let mut other = Peer::open(server.local_addr());
    other.send(&frame(true, 0, 1, b"still here"));
    assert_eq!(
        other.recv(),
        Some(stratus_proto::Message::text("still here"))
    );
    server.stop().unwrap();
}
