//! Decoder and encoder behaviour, named after the Frames rows of TESTPLAN.md.

use proptest::prelude::*;

use super::*;
use crate::CloseCode;

fn client() -> Encoder {
    Encoder::client([7; 32])
}

fn server_decoder() -> Decoder {
    Decoder::new(Role::Server, Limits::default())
}

use crate::test_support::raw_frame;

fn masked(fin: bool, rsv: u8, opcode: u8, payload: &[u8]) -> Vec<u8> {
    raw_frame(fin, rsv, opcode, payload, Some([0x37, 0xfa, 0x21, 0x3d]))
}

fn decode_all(decoder: &mut Decoder, bytes: &[u8]) -> Result<Vec<Decoded>, ProtocolError> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(d) = decoder.decode(&mut buf)? {
        out.push(d);
    }
    Ok(out)
}

fn first_error(bytes: &[u8]) -> ProtocolError {
    decode_all(&mut server_decoder(), bytes).unwrap_err()
}

fn data(text: bool, payload: &[u8]) -> Decoded {
    Decoded::Data(RawMessage {
        text,
        compressed: false,
        payload: Bytes::copy_from_slice(payload),
    })
}

#[test]
fn unmasked_client_frame_is_1002() {
    let err = first_error(&raw_frame(true, 0, 1, b"hi", None));
    assert_eq!(err, ProtocolError::UnmaskedFrame);
    assert_eq!(err.close_code(), CloseCode::PROTOCOL);
}

#[test]
fn masked_server_frame_is_1002_for_a_client() {
    let mut dec = Decoder::new(Role::Client, Limits::default());
    let err = decode_all(&mut dec, &masked(true, 0, 1, b"hi")).unwrap_err();
    assert_eq!(err, ProtocolError::MaskedFrame);
    assert_eq!(err.close_code(), CloseCode::PROTOCOL);
}

#[test]
fn rsv_bits_without_extension_are_1002() {
    for rsv in 1..=7 {
        let err = first_error(&masked(true, rsv, 1, b"x"));
        assert_eq!(err.close_code(), CloseCode::PROTOCOL, "rsv {rsv}");
    }
}

#[test]
fn rsv1_with_deflate_only_on_first_data_frame() {
    let mut dec = server_decoder();
    dec.set_rsv1_allowed(true);
    let mut ok = masked(false, 0b100, 1, b"a");
    ok.extend(masked(true, 0, 0, b"b"));
    let out = decode_all(&mut dec, &ok).unwrap();
    assert_eq!(
        out,
        vec![Decoded::Data(RawMessage {
            text: true,
            compressed: true,
            payload: Bytes::from_static(b"ab"),
        })]
    );

    let mut cont = masked(false, 0b100, 1, b"a");
    cont.extend(masked(true, 0b100, 0, b"b"));
    let mut dec = server_decoder();
    dec.set_rsv1_allowed(true);
    assert_eq!(
        decode_all(&mut dec, &cont),
        Err(ProtocolError::Rsv1OnNonFirstFrame)
    );

    let mut dec = server_decoder();
    dec.set_rsv1_allowed(true);
    assert_eq!(
        decode_all(&mut dec, &masked(true, 0b100, 9, b"")),
        Err(ProtocolError::Rsv1OnNonFirstFrame)
    );
    // RSV2 and RSV3 stay errors even with deflate.
    let mut dec = server_decoder();
    dec.set_rsv1_allowed(true);
    assert_eq!(
        decode_all(&mut dec, &masked(true, 0b010, 1, b"")),
        Err(ProtocolError::ReservedBits(0b010))
    );
}

#[test]
fn reserved_opcodes_are_1002() {
    for op in (3..=7).chain(0xB..=0xF) {
        let err = first_error(&masked(true, 0, op, b""));
        assert_eq!(err, ProtocolError::ReservedOpcode(op));
        assert_eq!(err.close_code(), CloseCode::PROTOCOL);
    }
}

#[test]
fn oversized_or_fragmented_control_frames_are_1002() {
    assert_eq!(
        first_error(&masked(true, 0, 9, &[0; 126])).close_code(),
        CloseCode::PROTOCOL
    );
    assert_eq!(
        first_error(&masked(false, 0, 9, b"")).close_code(),
        CloseCode::PROTOCOL
    );
    assert_eq!(
        first_error(&masked(false, 0, 8, b"")).close_code(),
        CloseCode::PROTOCOL
    );
}

#[test]
fn orphan_continuation_is_1002() {
    assert_eq!(
        first_error(&masked(true, 0, 0, b"x")),
        ProtocolError::UnexpectedContinuation
    );
}

#[test]
fn data_frame_inside_fragmented_message_is_1002() {
    let mut bytes = masked(false, 0, 1, b"a");
    bytes.extend(masked(true, 0, 2, b"b"));
    assert_eq!(first_error(&bytes), ProtocolError::ExpectedContinuation);
}

#[test]
fn top_bit_of_64_bit_length_is_1002() {
    let mut bytes = vec![0x82, 0xFF];
    bytes.extend_from_slice(&u64::MAX.to_be_bytes());
    bytes.extend_from_slice(&[1, 2, 3, 4]);
    assert_eq!(first_error(&bytes).close_code(), CloseCode::PROTOCOL);
}

#[test]
fn declared_length_over_limit_is_1009_before_payload_arrives() {
    let limits = Limits {
        max_frame: 1 << 20,
        max_message: 1 << 20,
        max_fragments: 16,
    };
    let mut dec = Decoder::new(Role::Server, limits);
    let mut head = vec![0x82, 0xFF];
    head.extend_from_slice(&(1u64 << 30).to_be_bytes());
    head.extend_from_slice(&[1, 2, 3, 4]);
    let mut buf = BytesMut::from(&head[..]);
    let err = dec.decode(&mut buf).unwrap_err();
    assert_eq!(err.close_code(), CloseCode::TOO_BIG);
    assert!(
        buf.capacity() < 1024,
        "nothing of the declared size was reserved"
    );
}

#[test]
fn message_over_limit_across_fragments_is_1009() {
    let limits = Limits {
        max_frame: 100,
        max_message: 150,
        max_fragments: 100,
    };
    let mut dec = Decoder::new(Role::Server, limits);
    let mut bytes = masked(false, 0, 2, &[0; 100]);
    bytes.extend(masked(true, 0, 0, &[0; 60]));
    assert_eq!(
        decode_all(&mut dec, &bytes),
        Err(ProtocolError::MessageTooLarge)
    );
}

#[test]
fn fragment_flood_is_1009_by_count_and_by_bytes() {
    let limits = Limits {
        max_frame: 1 << 20,
        max_message: 1 << 20,
        max_fragments: 1000,
    };
    let mut bytes = masked(false, 0, 2, b"");
    for _ in 0..2000 {
        bytes.extend(masked(false, 0, 0, b""));
    }
    let err = decode_all(&mut Decoder::new(Role::Server, limits), &bytes).unwrap_err();
    assert_eq!(err, ProtocolError::TooManyFragments);
    assert_eq!(err.close_code(), CloseCode::TOO_BIG);

    // Empty fragments still cost their header bytes against the message cap.
    let limits = Limits {
        max_frame: 1 << 20,
        max_message: 600,
        max_fragments: 1 << 20,
    };
    let err = decode_all(&mut Decoder::new(Role::Server, limits), &bytes).unwrap_err();
    assert_eq!(err, ProtocolError::MessageTooLarge);
}

#[test]
fn max_fragments_is_inclusive() {
    let limits = Limits {
        max_fragments: 3,
        ..Limits::default()
    };
    let mut bytes = masked(false, 0, 2, b"a");
    bytes.extend(masked(false, 0, 0, b"b"));
    bytes.extend(masked(true, 0, 0, b"c"));
    let out = decode_all(&mut Decoder::new(Role::Server, limits), &bytes).unwrap();
    assert_eq!(out, vec![data(false, b"abc")]);
}

#[test]
fn invalid_utf8_fails_in_the_fragment_that_holds_it() {
    let mut dec = server_decoder();
    let mut buf = BytesMut::from(&masked(false, 0, 1, "κόσμε".as_bytes())[..]);
    assert_eq!(dec.decode(&mut buf).unwrap(), None);
    buf.extend_from_slice(&masked(false, 0, 0, &[0xF4, 0x90, 0x80, 0x80]));
    let err = dec.decode(&mut buf).unwrap_err();
    assert_eq!(err.close_code(), CloseCode::INVALID_PAYLOAD);
}

#[test]
fn invalid_utf8_fails_before_the_frame_is_complete() {
    // Autobahn 6.4.3: one frame, sent in pieces; the bad bytes are in the middle.
    let mut payload = "κόσμε".as_bytes().to_vec();
    payload.extend_from_slice(&[0xF4, 0x90, 0x80, 0x80]);
    payload.extend_from_slice(b"edited");
    let frame = masked(true, 0, 1, &payload);
    let bad_end = frame.len() - 6;
    let mut dec = server_decoder();
    let mut buf = BytesMut::from(&frame[..bad_end - 4]);
    assert_eq!(dec.decode(&mut buf).unwrap(), None);
    buf.extend_from_slice(&frame[bad_end - 4..bad_end]);
    assert_eq!(dec.decode(&mut buf), Err(ProtocolError::InvalidUtf8));
}

#[test]
fn code_point_split_across_fragments_passes() {
    let text = "€".as_bytes();
    let mut bytes = masked(false, 0, 1, &text[..1]);
    bytes.extend(masked(false, 0, 0, &text[1..2]));
    bytes.extend(masked(true, 0, 0, &text[2..]));
    assert_eq!(
        decode_all(&mut server_decoder(), &bytes).unwrap(),
        vec![data(true, text)]
    );
}

#[test]
fn text_ending_inside_a_code_point_is_1007() {
    let text = "€".as_bytes();
    let err = first_error(&masked(true, 0, 1, &text[..2]));
    assert_eq!(err, ProtocolError::InvalidUtf8);
}

#[test]
fn control_frames_interleave_with_fragments() {
    let mut bytes = masked(false, 0, 1, b"Hel");
    bytes.extend(masked(true, 0, 9, b"p"));
    bytes.extend(masked(true, 0, 0, b"lo"));
    assert_eq!(
        decode_all(&mut server_decoder(), &bytes).unwrap(),
        vec![
            Decoded::Control(Message::Ping(Bytes::from_static(b"p"))),
            data(true, b"Hello")
        ]
    );
}

#[test]
fn close_payload_rules_apply_to_decoded_frames() {
    assert_eq!(
        first_error(&masked(true, 0, 8, &[3])),
        ProtocolError::CloseWithOneByte
    );
    assert_eq!(
        first_error(&masked(true, 0, 8, &1005u16.to_be_bytes())),
        ProtocolError::InvalidCloseCode(1005)
    );
    let mut bad_reason = 1000u16.to_be_bytes().to_vec();
    bad_reason.extend_from_slice(&[0xff]);
    assert_eq!(
        first_error(&masked(true, 0, 8, &bad_reason)),
        ProtocolError::InvalidCloseReason
    );
}

#[test]
fn payload_is_zero_copy_from_the_read_buffer() {
    let mut buf = BytesMut::from(&masked(true, 0, 2, &[7; 1000])[..]);
    let start = buf.as_ptr() as usize;
    let Some(Decoded::Data(m)) = server_decoder().decode(&mut buf).unwrap() else {
        panic!("expected data");
    };
    let at = m.payload.as_ptr() as usize;
    assert!(
        at >= start && at < start + 1010,
        "payload points into the read buffer"
    );
}

#[test]
fn client_frames_are_masked_with_fresh_keys() {
    let mut enc = client();
    let keys: Vec<_> = (0..64)
        .map(|_| {
            let frame = enc.message(&Message::text("same"));
            FrameHeader::parse(&frame).unwrap().unwrap().0.mask.unwrap()
        })
        .collect();
    let mut distinct = keys.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), keys.len(), "no key repeats");
    let mut other = Encoder::client([8; 32]);
    let first = other.message(&Message::text("same"));
    assert_ne!(
        FrameHeader::parse(&first).unwrap().unwrap().0.mask.unwrap(),
        keys[0]
    );
}

#[test]
fn server_frames_are_unmasked_and_identical() {
    let mut enc = Encoder::server();
    let a = enc.message(&Message::text("same"));
    assert_eq!(a, enc.message(&Message::text("same")));
    assert_eq!(&a[..], &[0x81, 4, b's', b'a', b'm', b'e']);
}

fn arb_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        "\\PC{0,300}".prop_map(Message::text),
        proptest::collection::vec(any::<u8>(), 0..70_000).prop_map(Message::binary),
        proptest::collection::vec(any::<u8>(), 0..=125).prop_map(|v| Message::Ping(Bytes::from(v))),
        proptest::collection::vec(any::<u8>(), 0..=125).prop_map(|v| Message::Pong(Bytes::from(v))),
    ]
}

fn to_message(d: Decoded) -> Message {
    match d {
        Decoded::Data(raw) if raw.text => Message::Text(raw.payload),
        Decoded::Data(raw) => Message::Binary(raw.payload),
        Decoded::Control(m) => m,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn decode_of_encode_is_identity(messages in proptest::collection::vec(arb_message(), 1..6)) {
        for (sender, receiver) in [(Role::Client, Role::Server), (Role::Server, Role::Client)] {
            let mut enc = match sender {
                Role::Client => client(),
                Role::Server => Encoder::server(),
            };
            let mut wire = Vec::new();
            for m in &messages {
                wire.extend_from_slice(&enc.message(m));
            }
            let out = decode_all(&mut Decoder::new(receiver, Limits::default()), &wire).unwrap();
            let out: Vec<Message> = out.into_iter().map(to_message).collect();
            prop_assert_eq!(&out, &messages);
        }
    }

    #[test]
    fn any_split_gives_the_same_messages(
        texts in proptest::collection::vec("\\PC{0,40}", 1..5),
        fragment_at in 0usize..8,
        cuts in proptest::collection::vec(any::<usize>(), 1..12),
    ) {
        // A stream of text messages, one of them fragmented, with a ping in between.
        let mut wire = Vec::new();
        for (i, t) in texts.iter().enumerate() {
            let b = t.as_bytes();
            if i == fragment_at % texts.len() && b.len() > 1 {
                let mid = b.len() / 2;
                wire.extend(masked(false, 0, 1, &b[..mid]));
                wire.extend(masked(true, 0, 9, b"p"));
                wire.extend(masked(true, 0, 0, &b[mid..]));
            } else {
                wire.extend(masked(true, 0, 1, b));
            }
        }
        let whole = decode_all(&mut server_decoder(), &wire).unwrap();
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
        cuts.sort_unstable();
        let mut dec = server_decoder();
        let mut buf = BytesMut::new();
        let mut pieces = Vec::new();
        let mut start = 0;
        for end in cuts.into_iter().chain([wire.len()]) {
            buf.extend_from_slice(&wire[start..end]);
            start = end;
            while let Some(d) = dec.decode(&mut buf).unwrap() {
                pieces.push(d);
            }
        }
        prop_assert_eq!(pieces, whole);
    }
}

#[test]
fn split_at_every_byte_offset_gives_identical_result() {
    let mut wire = masked(false, 0, 1, "héllo ".as_bytes());
    wire.extend(masked(true, 0, 10, b"pong"));
    wire.extend(masked(true, 0, 0, "wörld €".as_bytes()));
    wire.extend(masked(true, 0, 2, &[9; 300]));
    wire.extend(masked(true, 0, 8, &1000u16.to_be_bytes()));
    let whole = decode_all(&mut server_decoder(), &wire).unwrap();
    assert_eq!(whole.len(), 4);
    for a in 0..=wire.len() {
        let mut dec = server_decoder();
        let mut buf = BytesMut::from(&wire[..a]);
        let mut got = Vec::new();
        while let Some(d) = dec.decode(&mut buf).unwrap() {
            got.push(d);
        }
        buf.extend_from_slice(&wire[a..]);
        while let Some(d) = dec.decode(&mut buf).unwrap() {
            got.push(d);
        }
        assert_eq!(got, whole, "split at {a}");
    }
}

#[test]
fn autobahn_9_3_1_fits_default_limits() {
    // 4 MiB of text in 65,536 fragments of 64 bytes, then an empty final fragment: the
    // way wstest sends it.
    let chunk = [b'*'; 64];
    let mut bytes = masked(false, 0, 1, &chunk);
    for _ in 1..65_536 {
        bytes.extend(masked(false, 0, 0, &chunk));
    }
    bytes.extend(masked(true, 0, 0, b""));
    let out = decode_all(&mut server_decoder(), &bytes).unwrap();
    assert_eq!(out.len(), 1);
}

#[test]
fn a_message_is_midway_from_its_first_fragment_to_its_last() {
    let mut decoder = server_decoder();
    assert!(!decoder.is_mid_message());
    let first = masked(false, 0, 0x1, b"he");
    assert!(decode_all(&mut decoder, &first).unwrap().is_empty());
    assert!(decoder.is_mid_message());
    // A control frame in between leaves it midway.
    decode_all(&mut decoder, &masked(true, 0, 0x9, b"")).unwrap();
    assert!(decoder.is_mid_message());
    let last = masked(true, 0, 0x0, b"llo");
    assert_eq!(
        decode_all(&mut decoder, &last).unwrap(),
        [data(true, b"hello")]
    );
    assert!(!decoder.is_mid_message());
}

/// A server keeps a decoder in every connection: between messages it holds no frame or
/// message state, only while one is cut across reads (the idle-memory budget, issue 19).
#[test]
fn a_decoder_boxes_a_partial_frame_or_message_only_while_it_lasts() {
    assert!(
        size_of::<Decoder>() <= 48,
        "a decoder is {} bytes",
        size_of::<Decoder>()
    );
    let mut decoder = server_decoder();
    let first = masked(false, 0, 0x1, b"hello ");
    let last = masked(true, 0, 0x0, b"world");
    let mut buf = BytesMut::from(&first[..8]);
    assert_eq!(decoder.decode(&mut buf), Ok(None));
    assert!(decoder.frame.is_some(), "a frame cut across reads");
    buf.extend_from_slice(&first[8..]);
    assert_eq!(decoder.decode(&mut buf), Ok(None));
    assert!(decoder.frame.is_none() && decoder.assembly.is_some());
    buf.extend_from_slice(&last);
    assert_eq!(
        decoder.decode(&mut buf),
        Ok(Some(data(true, b"hello world")))
    );
    assert!(decoder.frame.is_none() && decoder.assembly.is_none());
}
