//! stratus-deflate's engines under a message limit. Each read of the body is one
//! message, fed in order to one engine (so context takeover carries across them).
//! Checks that inflation never returns more than the limit and that its peak memory is
//! bounded by the limit and the input, never by what the data inflates to (a bomb); that
//! the two engines agree on every message they both accept; and that every message
//! compressed by an engine inflates back to itself, with the limit exact to the byte.
//!
//! Input: three config bytes, then the `Reads` layout. Config byte 0: bits 0-1 the
//! engine (0 libdeflate, 1 zlib without context takeover, 2/3 zlib with it), bits 2-4
//! the compressor's window (9 + n, at most 15), bits 5-7 a shift of the limit; bytes 1-2
//! the limit (little-endian), shifted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stratus_deflate::zlib::{CHUNK, Zlib};
use stratus_deflate::{Engine, stateless::Stateless};
use stratus_fuzz::{PeakAlloc, Reads};
use stratus_proto::DecompressError;

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc::new();

/// Room for the engines' own state (zlib's window and tables) and small buffers.
const STATE: usize = 64 * 1024;

#[derive(Debug, Clone, Copy)]
enum Kind {
    Libdeflate,
    /// Zlib, resetting after every message when `true`.
    Zlib(bool),
}

impl Kind {
    fn inflater(self) -> Box<dyn Engine> {
        match self {
            Self::Libdeflate => Box::new(Stateless),
            Self::Zlib(reset) => Box::new(Zlib::new(15, reset)),
        }
    }

    fn deflater(self, window_bits: u8) -> Box<dyn Engine> {
        match self {
            Self::Libdeflate => Box::new(Stateless),
            Self::Zlib(reset) => Box::new(Zlib::new(window_bits, reset)),
        }
    }

    fn keeps_context(self) -> bool {
        matches!(self, Self::Zlib(false))
    }
}

/// Inflates each message with one engine, checking the limit and the memory it took.
fn inflate_all(
    kind: Kind,
    messages: &[&[u8]],
    max: usize,
) -> Vec<Result<Vec<u8>, DecompressError>> {
    let mut engine = kind.inflater();
    messages
        .iter()
        .map(|message| {
            let (result, peak) = ALLOC.measure(|| engine.decompress(message, max));
            let bound = 2 * (max + CHUNK) + 2 * message.len() + STATE;
            assert!(peak <= bound, "{kind:?} took {peak} bytes, limit {max}");
            if let Ok(out) = &result {
                assert!(out.len() <= max, "{kind:?} returned {} > {max}", out.len());
            }
            result.map(|b| b.to_vec())
        })
        .collect()
}

/// Without context takeover both engines read each message alone: they must agree,
/// but for the invalid symbols libdeflate lets through.
fn engines_agree(messages: &[&[u8]], max: usize) {
    let libdeflate = inflate_all(Kind::Libdeflate, messages, max);
    let zlib = inflate_all(Kind::Zlib(true), messages, max);
    for ((message, a), b) in messages.iter().zip(&libdeflate).zip(&zlib) {
        match (a, b) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "engines inflate {message:02x?} differently"),
            // libdeflate decodes the invalid fixed-code symbols 286/287 (as length 258)
            // and 30/31 rather than spend a check on them; zlib rejects them.
            (Ok(_), Err(DecompressError::Corrupt)) | (Err(_), Err(_)) => {}
            (Ok(_), Err(_)) | (Err(_), Ok(_)) => {
                panic!("libdeflate {a:?} but zlib {b:?} for {message:02x?}")
            }
        }
    }
}

/// Compresses every message and inflates it back, with the limit at its exact length
/// (and, where no context is kept, one byte under it first).
fn round_trip(kind: Kind, window_bits: u8, messages: &[&[u8]]) {
    let mut deflater = kind.deflater(window_bits);
    let mut inflater = kind.inflater();
    for message in messages {
        let Some(compressed) = deflater.compress(message) else {
            panic!("{kind:?} did not compress {message:02x?}");
        };
        if !kind.keeps_context() && !message.is_empty() {
            let under = inflater.decompress(&compressed, message.len() - 1);
            assert_eq!(under, Err(DecompressError::TooLarge), "limit not exact");
        }
        let back = inflater.decompress(&compressed, message.len());
        assert_eq!(back.as_deref(), Ok(*message), "{kind:?} round trip");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(([c0, lo, hi], rest)) = data.split_first_chunk::<3>() else {
        return;
    };
    let kind = match c0 & 0b11 {
        0 => Kind::Libdeflate,
        1 => Kind::Zlib(true),
        _ => Kind::Zlib(false),
    };
    let window_bits = (9 + ((c0 >> 2) & 0b111)).min(15);
    let max = usize::from(u16::from_le_bytes([*lo, *hi])) << (c0 >> 5);
    let messages: Vec<&[u8]> = Reads::parse(rest).chunks().collect();
    inflate_all(kind, &messages, max);
    engines_agree(&messages, max);
    round_trip(kind, window_bits, &messages);
});
