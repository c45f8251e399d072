//! The engine trait, and the per-connection [`PerMessageDeflate`] that puts one engine on
//! each direction and plugs into the protocol core.

use std::fmt;

use bytes::Bytes;
use stratus_proto::{DecompressError, MessageCompression};

/// One deflate implementation, used for one direction of one connection (or, when it
/// keeps no state, shared by all of them).
pub trait Engine: fmt::Debug {
    /// Compresses one message into its permessage-deflate payload (RFC 7692 §7.2.1, the
    /// flush's trailing `00 00 ff ff` removed). `None`: send this message uncompressed.
    fn compress(&mut self, payload: &[u8]) -> Option<Bytes>;

    /// Inflates one received payload (without the trailer) into at most `max` bytes.
    fn decompress(&mut self, payload: &[u8], max: usize) -> Result<Bytes, DecompressError>;
}

/// permessage-deflate on one connection: an engine per direction and a size threshold.
pub struct PerMessageDeflate {
    /// `None` when this side may not compress (a window of 8 bits was required).
    pub(crate) outgoing: Option<Box<dyn Engine>>,
    pub(crate) incoming: Box<dyn Engine>,
    pub(crate) threshold: usize,
}

impl fmt::Debug for PerMessageDeflate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerMessageDeflate")
            .field("outgoing", &self.outgoing)
            .field("incoming", &self.incoming)
            .field("threshold", &self.threshold)
            .finish()
    }
}

impl MessageCompression for PerMessageDeflate {
    fn compress(&mut self, payload: &[u8]) -> Option<Bytes> {
        if payload.len() < self.threshold {
            return None;
        }
        self.outgoing.as_mut()?.compress(payload)
    }

    fn decompress(&mut self, payload: &[u8], max: usize) -> Result<Bytes, DecompressError> {
        self.incoming.decompress(payload, max)
    }
}
