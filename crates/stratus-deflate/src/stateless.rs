//! The stateless engine: a whole message at a time, no context takeover, so it keeps
//! nothing per connection. The server's default ("shared" mode), where one compressed
//! frame of a broadcast goes to every subscriber.
//!
//! Compression: zlib-rs, one compressor per thread (allocated on first use), reset after
//! every message and ended with a sync flush whose `00 00 ff ff` is stripped, the form
//! every inflater reads. The output depends only on the message, so it is valid for every
//! peer told `server_no_context_takeover`. (Not libdeflate's final-block form: see
//! `libdeflate`.) Inflation: libdeflate (`libdeflate::decompress_message`).

use std::cell::RefCell;

use bytes::Bytes;
use stratus_proto::DecompressError;

use crate::engine::Engine;
use crate::libdeflate;
use crate::zlib::Zlib;

thread_local! {
    static COMPRESSOR: RefCell<Zlib> = RefCell::new(Zlib::new(15, true));
}

/// Compresses a whole message with this thread's compressor (level 6, 15-bit window),
/// as a message of its own: no context from earlier messages, none kept for later ones.
pub fn compress_message(payload: &[u8]) -> Option<Bytes> {
    COMPRESSOR.with(|cell| cell.borrow_mut().compress(payload))
}

/// Inflates a whole message made without context, into at most `max` bytes.
pub fn decompress_message(payload: &[u8], max: usize) -> Result<Bytes, DecompressError> {
    libdeflate::decompress_message(payload, max)
}

/// The stateless engine (the work happens on the thread's shared state).
#[derive(Debug, Default, Clone, Copy)]
pub struct Stateless;

impl Engine for Stateless {
    fn compress(&mut self, payload: &[u8]) -> Option<Bytes> {
        compress_message(payload)
    }

    fn decompress(&mut self, payload: &[u8], max: usize) -> Result<Bytes, DecompressError> {
        decompress_message(payload, max)
    }
}
