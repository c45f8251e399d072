//! The streaming engine, zlib-rs through flate2: context takeover and LZ77 windows of 9
//! to 15 bits. Each direction of a connection that uses it holds its own state, allocated
//! on first use: with the default memory level a compressor takes about
//! 2^(bits+2) + 128 KiB and an inflater about 2^bits + 7 KiB (see the README for measured
//! figures).
//!
//! Compression ends each message with a sync flush and strips its `00 00 ff ff`.
//! Inflation appends the trailer (and, without context takeover, an empty final block:
//! the message must then be a complete stream, so truncated data is corrupt, as in the
//! stateless engine) and produces output in chunks of [`CHUNK`] bytes,
//! stopping with `TooLarge` as soon as the limit is crossed: a bomb costs at most the
//! limit plus one chunk. A message within the limit is joined into one buffer at the end.
//!
//! With context takeover the stream cannot be closed, and flate2 does not say whether it
//! stopped on a block boundary: a message truncated mid-block yields what it held, and the
//! next message is read as its continuation (often corrupt, not always detectably so).

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use stratus_proto::DecompressError;

use crate::engine::Engine;
use crate::{EMPTY_MESSAGE, FINAL_EMPTY_BLOCK, TRAILER};

/// Output is produced (and the limit checked) this many bytes at a time.
pub const CHUNK: usize = 16 * 1024;

/// A streaming deflate engine for one direction of one connection.
pub struct Zlib {
    window_bits: u8,
    no_context_takeover: bool,
    deflate: Option<Compress>,
    inflate: Option<Decompress>,
}

impl std::fmt::Debug for Zlib {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Zlib")
            .field("window_bits", &self.window_bits)
            .field("no_context_takeover", &self.no_context_takeover)
            .finish_non_exhaustive()
    }
}

impl Zlib {
    /// An engine compressing with a window of `window_bits` (clamped to 9..=15; callers
    /// never pass 8, which zlib cannot produce) and resetting its context after every
    /// message when `no_context_takeover`. Inflation always uses a 15-bit window, which
    /// reads data made with any smaller one.
    pub fn new(window_bits: u8, no_context_takeover: bool) -> Self {
        Self {
            window_bits: window_bits.clamp(9, 15),
            no_context_takeover,
            deflate: None,
            inflate: None,
        }
    }
}

impl Engine for Zlib {
    fn compress(&mut self, payload: &[u8]) -> Option<Bytes> {
        if payload.is_empty() {
            // A sync flush with no input emits nothing; the message is still one block.
            return Some(Bytes::from_static(EMPTY_MESSAGE));
        }
        let bits = self.window_bits;
        let deflate = self.deflate.get_or_insert_with(|| {
            Compress::new_with_window_bits(Compression::new(6), false, bits)
        });
        let out = sync_flushed(deflate, payload);
        // A failure leaves what the peer never saw in the window: start afresh (output
        // that refers to no earlier message is valid whatever context the peer keeps).
        if self.no_context_takeover || out.is_none() {
            deflate.reset();
        }
        out.map(Bytes::from)
    }

    fn decompress(&mut self, payload: &[u8], max: usize) -> Result<Bytes, DecompressError> {
        let inflate = self
            .inflate
            .get_or_insert_with(|| Decompress::new_with_window_bits(false, 15));
        let result = inflate_chunks(inflate, payload, max, self.no_context_takeover);
        // A final block ends a zlib stream, and errors leave it unusable: start afresh.
        if self.no_context_takeover || !matches!(result, Ok((_, false))) {
            inflate.reset(false);
        }
        result.map(|(out, _)| out)
    }
}

/// Compresses `payload` ending with a sync flush, whose `00 00 ff ff` is stripped.
fn sync_flushed(deflate: &mut Compress, payload: &[u8]) -> Option<Vec<u8>> {
    let start = deflate.total_in();
    let mut out = Vec::with_capacity(payload.len() / 2 + 64);
    loop {
        let consumed = (deflate.total_in() - start) as usize;
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(256));
        }
        deflate
            .compress_vec(&payload[consumed..], &mut out, FlushCompress::Sync)
            .ok()?;
        let consumed = (deflate.total_in() - start) as usize;
        if consumed == payload.len() && out.len() < out.capacity() {
            break;
        }
    }
    let body = out.len().checked_sub(TRAILER.len())?;
    if out[body..] != TRAILER {
        return None;
    }
    out.truncate(body);
    Some(out)
}

/// Inflates `payload` and the trailer into chunks of [`CHUNK`] bytes, failing as soon as
/// the output passes `max`; joins the chunks at the end. Also says whether the stream
/// ended (a final block). A `whole` message must end the stream once an empty final
/// block follows the trailer, else it is corrupt (truncated mid-block).
fn inflate_chunks(
    inflate: &mut Decompress,
    payload: &[u8],
    max: usize,
    whole: bool,
) -> Result<(Bytes, bool), DecompressError> {
    let mut full: Vec<Vec<u8>> = Vec::new();
    let mut total = 0usize;
    let mut out = Vec::with_capacity(CHUNK.min(max + 1));
    let mut ended = false;
    let close: &[u8] = if whole { &FINAL_EMPTY_BLOCK } else { &[] };
    for part in [payload, &TRAILER[..], close] {
        let mut consumed = 0;
        while !ended {
            if out.len() == out.capacity() {
                total += out.len();
                if total > max {
                    return Err(DecompressError::TooLarge);
                }
                full.push(std::mem::replace(
                    &mut out,
                    Vec::with_capacity(CHUNK.min(max + 1 - total).max(1)),
                ));
            }
            let (in_before, out_before) = (inflate.total_in(), out.len());
            let status = inflate
                .decompress_vec(&part[consumed..], &mut out, FlushDecompress::Sync)
                .map_err(|_| DecompressError::Corrupt)?;
            consumed += (inflate.total_in() - in_before) as usize;
            ended = status == Status::StreamEnd;
            let progressed = inflate.total_in() != in_before || out.len() != out_before;
            if consumed == part.len() && (out.len() < out.capacity() || !progressed) {
                break;
            }
            if !progressed && out.len() < out.capacity() {
                return Err(DecompressError::Corrupt);
            }
        }
    }
    total += out.len();
    if total > max {
        return Err(DecompressError::TooLarge);
    }
    if whole && !ended {
        return Err(DecompressError::Corrupt);
    }
    if full.is_empty() {
        return Ok((Bytes::from(out), ended));
    }
    let mut joined = Vec::with_capacity(total);
    for chunk in full.iter().chain([&out]) {
        joined.extend_from_slice(chunk);
    }
    Ok((Bytes::from(joined), ended))
}
