//! Both engines against an independent deflate implementation (miniz_oxide), in both
//! directions, with and without context takeover (and read by an inflater that never
//! resets), and on bad input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use miniz_oxide::deflate::core::{CompressorOxide, create_comp_flags_from_zip_params};
use miniz_oxide::inflate::stream::InflateState;
use miniz_oxide::{DataFormat, MZFlush, MZStatus};
use proptest::prelude::*;
use stratus_deflate::stateless::Stateless;
use stratus_deflate::zlib::Zlib;
use stratus_deflate::{Engine, TRAILER};
use stratus_proto::DecompressError;

/// miniz_oxide's inflater: one per message (`reset`) or kept (context takeover).
struct MinizInflater(Box<InflateState>);

impl MinizInflater {
    fn new() -> Self {
        Self(InflateState::new_boxed(DataFormat::Raw))
    }

    /// Inflates one permessage-deflate payload (appending the trailer, §7.2.2).
    fn inflate(&mut self, payload: &[u8]) -> Vec<u8> {
        let mut input = payload.to_vec();
        input.extend_from_slice(&TRAILER);
        let mut out = Vec::new();
        let mut chunk = vec![0u8; 1 << 16];
        let mut pos = 0;
        loop {
            let r = miniz_oxide::inflate::stream::inflate(
                &mut self.0,
                &input[pos..],
                &mut chunk,
                MZFlush::Sync,
            );
            pos += r.bytes_consumed;
            out.extend_from_slice(&chunk[..r.bytes_written]);
            match r.status {
                Ok(MZStatus::StreamEnd) => break,
                Ok(_) if pos == input.len() && r.bytes_written < chunk.len() => break,
                Ok(_) => {}
                Err(e) => panic!("miniz could not inflate our output: {e:?}"),
            }
        }
        out
    }
}

/// miniz_oxide's compressor with sync flushes, raw deflate, 15-bit window.
struct MinizDeflater(Box<CompressorOxide>);

impl MinizDeflater {
    fn new() -> Self {
        Self(Box::new(CompressorOxide::new(
            create_comp_flags_from_zip_params(6, -15, 0),
        )))
    }

    fn deflate(&mut self, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut chunk = vec![0u8; 1 << 16];
        let mut pos = 0;
        loop {
            let r = miniz_oxide::deflate::stream::deflate(
                &mut self.0,
                &payload[pos..],
                &mut chunk,
                MZFlush::Sync,
            );
            pos += r.bytes_consumed;
            out.extend_from_slice(&chunk[..r.bytes_written]);
            r.status.expect("miniz deflate");
            if pos == payload.len() && r.bytes_written < chunk.len() {
                break;
            }
        }
        assert_eq!(out[out.len() - 4..], TRAILER);
        out.truncate(out.len() - 4);
        out
    }
}

fn json_like(n: usize, seed: u32) -> Vec<u8> {
    let mut s = String::new();
    let mut i = seed;
    while s.len() < n {
        i = i.wrapping_mul(1_103_515_245).wrapping_add(12345);
        s.push_str(&format!(
            r#"{{"topic":"prices","seq":{i},"symbol":"SYM{}","bid":{}.{},"ask":{}.{}}},"#,
            i % 97,
            i % 1000,
            i % 100,
            i % 1000 + 1,
            i % 100
        ));
    }
    s.truncate(n);
    s.into_bytes()
}

/// Every engine configuration this crate builds, with whether it keeps context.
fn engines() -> Vec<(Box<dyn Engine>, bool)> {
    vec![
        (Box::new(Stateless), false),
        (Box::new(Zlib::new(15, true)), false),
        (Box::new(Zlib::new(15, false)), true),
        (Box::new(Zlib::new(9, true)), false),
        (Box::new(Zlib::new(9, false)), true),
        (Box::new(Zlib::new(12, false)), true),
    ]
}

fn messages() -> Vec<Vec<u8>> {
    vec![
        json_like(64, 1),
        json_like(1024, 2),
        json_like(70_000, 3),
        vec![],
        (0..5000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect(),
        json_like(1024, 2),
    ]
}

#[test]
fn our_output_inflates_with_miniz() {
    for (mut engine, keeps_context) in engines() {
        let mut shared = MinizInflater::new();
        for m in messages() {
            let z = engine.compress(&m).expect("compresses");
            let out = if keeps_context {
                shared.inflate(&z)
            } else {
                MinizInflater::new().inflate(&z)
            };
            assert_eq!(out, m, "{engine:?}");
        }
    }
}

/// A peer that keeps one inflater for the whole connection, whatever was negotiated (as
/// Node's WebSocket, undici, does), reads every message of every engine: none ends a
/// message with a final block (BFINAL=1), after which such an inflater has ended its
/// stream and gives every later message as empty.
#[test]
fn one_inflater_kept_across_messages_reads_every_engines_output() {
    for (mut engine, _) in engines() {
        let mut kept = MinizInflater::new();
        for m in messages() {
            let z = engine.compress(&m).expect("compresses");
            assert_eq!(z[0] & 1, 0, "{engine:?}: the first block is not final");
            assert_eq!(kept.inflate(&z), m, "{engine:?}");
        }
    }
}

#[test]
fn miniz_output_inflates_with_ours() {
    for (mut engine, keeps_context) in engines() {
        // A peer that keeps its context for an engine that does; a fresh stream per
        // message for one that expects the peer to reset.
        let mut keeping_peer = MinizDeflater::new();
        for m in messages() {
            let z = if keeps_context {
                keeping_peer.deflate(&m)
            } else {
                MinizDeflater::new().deflate(&m)
            };
            assert_eq!(engine.decompress(&z, 1 << 20).unwrap(), m, "{engine:?}");
        }
    }
}

#[test]
fn context_keeping_inflater_follows_a_context_keeping_peer() {
    let mut ours = Zlib::new(15, false);
    let mut peer = MinizDeflater::new();
    let mut total_compressed = 0;
    for m in messages() {
        let z = peer.deflate(&m);
        total_compressed += z.len();
        assert_eq!(ours.decompress(&z, 1 << 20).unwrap(), m);
    }
    assert!(total_compressed > 0);
}

#[test]
fn rfc_7692_hello_examples_inflate() {
    // §7.2.3.1: "Hello" compressed; §7.2.3.3: the same with BFINAL set.
    let plain: &[u8] = &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
    let bfinal: &[u8] = &[0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00];
    for (mut engine, _) in engines() {
        for z in [plain, bfinal] {
            assert_eq!(
                &engine.decompress(z, 100).unwrap()[..],
                b"Hello",
                "{engine:?}"
            );
        }
    }
}

#[test]
fn corrupt_data_is_rejected() {
    // BTYPE = 11 (reserved) in the first block header.
    let reserved_block: &[u8] = &[0x07, 0x00];
    for (mut engine, _) in engines() {
        assert_eq!(
            engine.decompress(reserved_block, 1 << 20),
            Err(DecompressError::Corrupt),
            "{engine:?}"
        );
    }
}

#[test]
fn truncated_data_is_rejected_by_every_engine_without_context() {
    let z = Stateless.compress(&json_like(4096, 9)).unwrap();
    // Found by the inflate fuzz target: RFC 7692 §7.2.3.3's stored block without its
    // final 0x00 stops mid-block once the trailer is appended; zlib returned "Hello".
    let stored_cut: &[u8] = &[0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
    for (mut engine, keeps_context) in engines() {
        if keeps_context {
            continue;
        }
        for cut in [1, z.len() / 2, z.len() - 3] {
            assert_eq!(
                engine.decompress(&z[..cut], 1 << 20),
                Err(DecompressError::Corrupt),
                "{engine:?} cut at {cut}"
            );
        }
        assert_eq!(
            engine.decompress(stored_cut, 100),
            Err(DecompressError::Corrupt),
            "{engine:?}"
        );
        let mut stored = stored_cut.to_vec();
        stored.push(0x00);
        assert_eq!(&engine.decompress(&stored, 100).unwrap()[..], b"Hello");
    }
}

#[test]
fn output_over_the_limit_is_too_large_in_both_engines() {
    let big = vec![b'x'; 100_000];
    for (mut engine, _) in engines() {
        let z = Stateless.compress(&big).unwrap();
        assert_eq!(
            engine.decompress(&z, 99_999),
            Err(DecompressError::TooLarge),
            "{engine:?}"
        );
        let mut fresh = MinizDeflater::new();
        let z = fresh.deflate(&big);
        assert_eq!(
            Zlib::new(15, true).decompress(&z, 100_000).unwrap().len(),
            100_000,
            "exactly the limit passes"
        );
    }
}

#[test]
fn an_engine_keeps_working_after_a_rejected_message() {
    for (mut engine, _) in engines() {
        assert!(engine.decompress(&[0x07, 0x00], 100).is_err());
        let z = MinizDeflater::new().deflate(b"after");
        assert_eq!(
            &engine.decompress(&z, 100).unwrap()[..],
            b"after",
            "{engine:?}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn any_bytes_round_trip_through_every_engine(data in proptest::collection::vec(any::<u8>(), 0..20_000)) {
        for (mut engine, keeps_context) in engines() {
            let z = engine.compress(&data).unwrap();
            let mut inflater = if keeps_context { Zlib::new(15, false) } else { Zlib::new(15, true) };
            prop_assert_eq!(&inflater.decompress(&z, 1 << 20).unwrap()[..], &data[..]);
            prop_assert_eq!(MinizInflater::new().inflate(&z), data.clone());
        }
    }

    #[test]
    fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..2_000)) {
        for (mut engine, _) in engines() {
            let _ = engine.decompress(&data, 1 << 16);
        }
    }
}
