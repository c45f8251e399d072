//! The libdeflate engine: a whole message at a time, no context takeover, so it keeps
//! nothing per connection. Each thread has one compressor and one decompressor, allocated
//! on first use; with a worker per core that is one pair per core, whatever the number of
//! connections.
//!
//! Compression emits a final (BFINAL=1) block followed by one zero byte: RFC 7692
//! §7.2.3.3's form, which every inflater reads once it appends `00 00 ff ff`. That output
//! depends only on the message, so one compressed frame is valid for every subscriber
//! that negotiated no context takeover on the server side.
//!
//! Decompression appends the trailer and an empty final block so libdeflate sees a
//! complete stream, then inflates into a buffer that doubles from a small guess up to
//! the limit: memory never exceeds the limit (plus one byte), whatever the input claims.

use std::cell::RefCell;

use bytes::Bytes;
use libdeflater::{CompressionLvl, Compressor, DecompressionError, Decompressor};
use stratus_proto::DecompressError;

use crate::engine::Engine;
use crate::{EMPTY_MESSAGE, FINAL_EMPTY_BLOCK, TRAILER};

thread_local! {
    static COMPRESSOR: RefCell<Option<Compressor>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<Decompressor>> = const { RefCell::new(None) };
}

/// Compresses a whole message with this thread's compressor (libdeflate level 6).
pub fn compress_message(payload: &[u8]) -> Option<Bytes> {
    if payload.is_empty() {
        return Some(Bytes::from_static(EMPTY_MESSAGE));
    }
    COMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        let compressor = cell.get_or_insert_with(|| Compressor::new(CompressionLvl::default()));
        let mut out = vec![0u8; compressor.deflate_compress_bound(payload.len()) + 1];
        let n = compressor.deflate_compress(payload, &mut out).ok()?;
        out.truncate(n + 1);
        out[n] = 0;
        Some(Bytes::from(out))
    })
}

/// Inflates a whole message with this thread's decompressor, into at most `max` bytes.
pub fn decompress_message(payload: &[u8], max: usize) -> Result<Bytes, DecompressError> {
    let mut input = Vec::with_capacity(payload.len() + TRAILER.len() + FINAL_EMPTY_BLOCK.len());
    input.extend_from_slice(payload);
    input.extend_from_slice(&TRAILER);
    input.extend_from_slice(&FINAL_EMPTY_BLOCK);
    let cap = max.saturating_add(1);
    let mut size = payload.len().saturating_mul(4).max(1024).min(cap);
    DECOMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        let decompressor = cell.get_or_insert_with(Decompressor::new);
        loop {
            let mut out = vec![0u8; size];
            match decompressor.deflate_decompress(&input, &mut out) {
                Ok(n) if n <= max => {
                    out.truncate(n);
                    return Ok(Bytes::from(out));
                }
                Ok(_) => return Err(DecompressError::TooLarge),
                Err(DecompressionError::InsufficientSpace) if size < cap => {
                    drop(out);
                    size = size.saturating_mul(2).min(cap);
                }
                Err(DecompressionError::InsufficientSpace) => {
                    return Err(DecompressError::TooLarge);
                }
                Err(DecompressionError::BadData) => return Err(DecompressError::Corrupt),
            }
        }
    })
}

/// The libdeflate engine (stateless: the work happens on the thread's shared state).
#[derive(Debug, Default, Clone, Copy)]
pub struct Libdeflate;

impl Engine for Libdeflate {
    fn compress(&mut self, payload: &[u8]) -> Option<Bytes> {
        compress_message(payload)
    }

    fn decompress(&mut self, payload: &[u8], max: usize) -> Result<Bytes, DecompressError> {
        decompress_message(payload, max)
    }
}
