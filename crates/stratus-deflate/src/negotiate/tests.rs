//! Negotiation on both sides: valid, invalid and multiple offers (TESTPLAN's
//! permessage-deflate handshake row) and the client's checks of the response.

use super::*;
use stratus_proto::MessageCompression;

fn server(values: &[&str]) -> Option<Negotiated> {
    let values: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
    negotiate(&values, &DeflateConfig::default())
}

fn dedicated(values: &[&str]) -> Option<Negotiated> {
    let values: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
    let config = DeflateConfig {
        mode: Mode::Dedicated,
        ..DeflateConfig::default()
    };
    negotiate(&values, &config)
}

#[test]
fn shared_mode_answers_no_context_takeover_both_ways() {
    let n = server(&["permessage-deflate"]).unwrap();
    assert_eq!(
        n.response(),
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    );
    assert!(n.shares_frames());
}

#[test]
fn invalid_offers_are_declined_and_the_next_valid_one_accepted() {
    for bad in [
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=abc",
        "permessage-deflate; client_max_window_bits=99",
        "permessage-deflate; unknown_param",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; server_no_context_takeover=yes",
    ] {
        assert_eq!(server(&[bad]), None, "{bad}");
        let n = server(&[&format!(
            "{bad}, permessage-deflate; server_max_window_bits=12"
        )])
        .unwrap();
        assert_eq!(
            n.params.server_max_window_bits,
            WindowBits::Bits(12),
            "{bad}"
        );
    }
}

#[test]
fn window_bits_8_is_declined() {
    assert_eq!(
        server(&["permessage-deflate; server_max_window_bits=8"]),
        None
    );
    let n = server(&[
        "permessage-deflate; server_max_window_bits=8",
        "permessage-deflate",
    ])
    .unwrap();
    assert_eq!(n.params.server_max_window_bits, WindowBits::Absent);
    // A client's own window of 8 is its business: we inflate with 15 bits.
    assert!(server(&["permessage-deflate; client_max_window_bits=8"]).is_some());
}

#[test]
fn offers_across_several_headers_are_considered_in_order() {
    let n = server(&[
        "x-webkit-deflate-frame",
        "foo, permessage-deflate; server_max_window_bits=10",
    ])
    .unwrap();
    assert_eq!(n.params.server_max_window_bits, WindowBits::Bits(10));
    assert_eq!(server(&["x-webkit-deflate-frame", "foo"]), None);
}

#[test]
fn a_smaller_server_window_is_answered_as_asked() {
    let n = server(&["permessage-deflate; server_max_window_bits=9"]).unwrap();
    assert_eq!(
        n.response(),
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
         server_max_window_bits=9"
    );
    assert!(!n.shares_frames());
    assert!(format!("{:?}", n.compression(0)).contains("Zlib { window_bits: 9"));
    // What a shared-mode server gives it instead: no compressor, a stateless inflater.
    let inflate_only = format!("{:?}", n.inflate_only());
    assert!(inflate_only.contains("outgoing: None"), "{inflate_only}");
    assert!(
        inflate_only.contains("incoming: Stateless"),
        "{inflate_only}"
    );
}

#[test]
fn dedicated_mode_keeps_context_unless_asked_not_to() {
    let n = dedicated(&["permessage-deflate; client_max_window_bits"]).unwrap();
    assert_eq!(n.response(), "permessage-deflate");
    assert!(!n.shares_frames());
    let n =
        dedicated(&["permessage-deflate; server_no_context_takeover; client_no_context_takeover"])
            .unwrap();
    assert_eq!(
        n.response(),
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    );
}

fn client(values: &[&str]) -> Result<Option<Negotiated>, ClientNegotiationError> {
    let values: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
    accept_response(&values)
}

#[test]
fn client_accepts_what_it_offered() {
    assert_eq!(client(&[]).unwrap(), None);
    let n = client(&["permessage-deflate; server_no_context_takeover; client_max_window_bits=10"])
        .unwrap()
        .unwrap();
    assert_eq!(n.params.client_max_window_bits, WindowBits::Bits(10));
    // And the server-side answer to the client's own offer is accepted by the client.
    let offered = server(&[&client_offer()]).unwrap();
    assert!(client(&[&offered.response()]).unwrap().is_some());
}

#[test]
fn client_refuses_bad_answers_before_any_frame() {
    for bad in [
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; client_max_window_bits",
        "permessage-deflate; mystery",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "x-other",
        "permessage-deflate, permessage-deflate",
        "permessage-deflate; bad name",
    ] {
        assert!(client(&[bad]).is_err(), "{bad}");
    }
}

#[test]
fn client_uses_final_blocks_only_when_the_server_resets_its_inflater() {
    let told = client(&["permessage-deflate; client_no_context_takeover"])
        .unwrap()
        .unwrap();
    assert!(format!("{:?}", told.compression(0)).contains("outgoing: Some(Stateless)"));
    // Without client_no_context_takeover in the answer the server may keep inflating one
    // stream: the client must sync-flush (and still resets its own context).
    let untold = client(&["permessage-deflate"]).unwrap().unwrap();
    assert!(
        format!("{:?}", untold.compression(0))
            .contains("outgoing: Some(Zlib { window_bits: 15, no_context_takeover: true")
    );
}

#[test]
fn client_window_8_sends_uncompressed() {
    let n = client(&["permessage-deflate; client_max_window_bits=8"])
        .unwrap()
        .unwrap();
    let mut c = n.compression(0);
    assert_eq!(c.compress(&[b'a'; 1000]), None);
}

#[test]
fn threshold_leaves_small_messages_uncompressed() {
    let n = server(&["permessage-deflate"]).unwrap();
    let mut c = n.compression(64);
    assert_eq!(c.compress(&[b'a'; 63]), None);
    assert!(c.compress(&[b'a'; 64]).is_some());
}

/// The concrete type behind a boxed compression (its `Debug`) and its size in bytes.
fn boxed(c: &dyn MessageCompression) -> (String, usize) {
    (format!("{c:?}"), std::mem::size_of_val(c))
}

#[test]
fn stateless_both_ways_is_boxed_in_the_compact_form() {
    // The server's default answer, to any offer it takes, and to the client's own.
    for offer in ["permessage-deflate", &client_offer()] {
        let n = server(&[offer]).unwrap();
        assert_eq!(
            boxed(&*n.boxed_compression(64)),
            ("StatelessDeflate { threshold: 64 }".to_owned(), 4),
            "{offer}"
        );
    }
    // A client the server told it resets.
    let told =
        client(&["permessage-deflate; server_no_context_takeover; client_no_context_takeover"])
            .unwrap()
            .unwrap();
    assert_eq!(
        boxed(&*told.boxed_compression(0)).0,
        "StatelessDeflate { threshold: 0 }"
    );
    // Dedicated mode, when the client asks for no context takeover both ways.
    let n =
        dedicated(&["permessage-deflate; server_no_context_takeover; client_no_context_takeover"])
            .unwrap();
    assert_eq!(
        boxed(&*n.boxed_compression(64)).0,
        "StatelessDeflate { threshold: 64 }"
    );
    // A threshold past u32 keeps the full form, which holds a usize.
    if let Ok(big) = usize::try_from(u64::from(u32::MAX) + 1) {
        let n = server(&["permessage-deflate"]).unwrap();
        let (debug, _) = boxed(&*n.boxed_compression(big));
        assert!(debug.starts_with("PerMessageDeflate"), "{debug}");
    }
}

#[test]
fn stateless_inflate_only_is_zero_sized() {
    // A shared-mode server's answer to a client that needs a smaller window.
    let n = server(&["permessage-deflate; server_max_window_bits=9"]).unwrap();
    assert_eq!(
        boxed(&*n.boxed_inflate_only()),
        ("StatelessInflate".to_owned(), 0)
    );
    // A client told to use an 8-bit window, whose server resets: it only inflates.
    let n = client(&[
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
         client_max_window_bits=8",
    ])
    .unwrap()
    .unwrap();
    let mut c = n.boxed_compression(0);
    assert_eq!(boxed(&*c), ("StatelessInflate".to_owned(), 0));
    assert_eq!(c.compress(&[b'a'; 1000]), None);
}

#[test]
fn stateful_cases_keep_per_message_deflate() {
    // Context takeover outgoing (dedicated mode) or incoming (a peer that keeps its own).
    let keeps = dedicated(&["permessage-deflate"]).unwrap();
    let smaller = server(&["permessage-deflate; server_max_window_bits=9"]).unwrap();
    let untold = client(&["permessage-deflate"]).unwrap().unwrap();
    for (n, want) in [
        (keeps, "outgoing: Some(Zlib"),
        (smaller, "outgoing: Some(Zlib { window_bits: 9"),
        (untold, "outgoing: Some(Zlib { window_bits: 15"),
    ] {
        let (debug, _) = boxed(&*n.boxed_compression(64));
        assert!(debug.starts_with("PerMessageDeflate"), "{debug}");
        assert!(debug.contains(want), "{debug}");
        assert_eq!(debug, format!("{:?}", n.compression(64)));
    }
    // An inflater with context: the inflate-only form stays the full one.
    let keeps_inflating = dedicated(&["permessage-deflate; server_no_context_takeover"]).unwrap();
    let (debug, _) = boxed(&*keeps_inflating.boxed_inflate_only());
    assert_eq!(debug, format!("{:?}", keeps_inflating.inflate_only()));
    assert!(debug.contains("incoming: Zlib"), "{debug}");
}

#[test]
fn the_compact_form_sends_and_reads_as_the_full_one() {
    let n = server(&["permessage-deflate"]).unwrap();
    let mut compact = n.boxed_compression(64);
    let mut full = n.compression(64);
    for len in [0, 1, 63, 64, 65, 1000, 70_000] {
        let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let sent = compact.compress(&payload);
        assert_eq!(sent, full.compress(&payload), "{len}");
        if let Some(sent) = sent {
            assert_eq!(compact.decompress(&sent, len).as_deref(), Ok(&payload[..]));
            assert_eq!(
                compact.decompress(&sent, len - 1),
                full.decompress(&sent, len - 1)
            );
        }
    }
    assert_eq!(
        compact.decompress(&[0xff; 8], 100),
        full.decompress(&[0xff; 8], 100)
    );
}
