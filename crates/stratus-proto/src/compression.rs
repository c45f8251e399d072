//! The hook through which a per-message extension (permessage-deflate, in the
//! `stratus-deflate` crate) transforms data messages. The core knows only this trait, so
//! it stays free of compression libraries and their state.

use bytes::Bytes;

/// Why a compressed message could not be decompressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecompressError {
    /// It inflates past the message limit (close 1009).
    #[error("decompressed message exceeds the limit")]
    TooLarge,
    /// The compressed data is corrupt or truncated (close 1007).
    #[error("corrupt compressed data")]
    Corrupt,
}

/// A negotiated per-message compression, one per connection.
pub trait MessageCompression: std::fmt::Debug {
    /// Compresses an outgoing data message's payload; `None` sends it uncompressed
    /// (below the size threshold, or when this side may not compress).
    fn compress(&mut self, payload: &[u8]) -> Option<Bytes>;

    /// Decompresses a received message whose first frame had RSV1 set, producing at most
    /// `max` bytes.
    fn decompress(&mut self, payload: &[u8], max: usize) -> Result<Bytes, DecompressError>;
}
