//! Inflating a whole message with libdeflate, for a peer that keeps no context between
//! messages: nothing is kept per connection; each thread has one decompressor, allocated
//! on first use (with a worker per core, one per core whatever the number of
//! connections).
//!
//! (Compression is not done with libdeflate: it can only end a stream with a final
//! block, BFINAL=1, which RFC 7692 §7.2.3.3 allows but which some inflaters in wide use
//! mishandle: Node's WebSocket (undici) keeps one inflater per connection, and after a
//! final block it delivers every later message empty, silently. See `stateless`.)
//!
//! Decompression appends the trailer and an empty final block so libdeflate sees a
//! complete stream, then inflates into a buffer that doubles from a small guess up to
//! the limit: memory never exceeds the limit (plus one byte), whatever the input claims.

use std::cell::RefCell;

use bytes::Bytes;
use libdeflater::{DecompressionError, Decompressor};
use stratus_proto::DecompressError;

use crate::{FINAL_EMPTY_BLOCK, TRAILER};

thread_local! {
    static DECOMPRESSOR: RefCell<Option<Decompressor>> = const { RefCell::new(None) };
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
