//! Compact per-connection compression for the common case: the stateless engine in both
//! directions (or inflation only, with the stateless engine), which is what the server's
//! default "shared" mode and a client that resets its context agree.
//!
//! [`PerMessageDeflate`](crate::PerMessageDeflate) holds a boxed engine per direction and
//! a `usize` threshold: 40 bytes on the heap for every connection (48 in the allocator's
//! size class), although the stateless engine keeps nothing per connection (its state is
//! per thread). These types keep only what differs between connections:
//! [`StatelessDeflate`] its threshold (4 bytes), [`StatelessInflate`] nothing (a
//! zero-sized type, boxed without allocating). They compress and inflate exactly as a
//! `PerMessageDeflate` with the stateless engines and the same threshold does.
//! [`Negotiated::boxed_compression`](crate::Negotiated::boxed_compression) and
//! [`Negotiated::boxed_inflate_only`](crate::Negotiated::boxed_inflate_only) pick them
//! where the negotiation allows, and `PerMessageDeflate` otherwise.

use bytes::Bytes;
use stratus_proto::{DecompressError, MessageCompression};

use crate::stateless;

/// The stateless engine both ways: messages of at least `threshold` bytes are compressed
/// with the thread's compressor, received ones inflated with the thread's decompressor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatelessDeflate {
    threshold: u32,
}

impl StatelessDeflate {
    /// Compresses messages of at least `threshold` bytes.
    pub fn new(threshold: u32) -> Self {
        Self { threshold }
    }

    /// Messages shorter than this are sent uncompressed.
    pub fn threshold(&self) -> u32 {
        self.threshold
    }
}

impl MessageCompression for StatelessDeflate {
    fn compress(&mut self, payload: &[u8]) -> Option<Bytes> {
        // A u32 widens into a usize (saturating keeps the comparison right if it did not).
        let threshold = usize::try_from(self.threshold).unwrap_or(usize::MAX);
        if payload.len() < threshold {
            return None;
        }
        stateless::compress_message(payload)
    }

    fn decompress(&mut self, payload: &[u8], max: usize) -> Result<Bytes, DecompressError> {
        stateless::decompress_message(payload, max)
    }
}

/// Inflation only, with the stateless engine: every message is sent uncompressed (RFC 7692
/// lets any message go without RSV1), received ones are inflated with the thread's
/// decompressor. Zero-sized: a connection holding it in a `Box` costs no heap.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StatelessInflate;

impl MessageCompression for StatelessInflate {
    fn compress(&mut self, _payload: &[u8]) -> Option<Bytes> {
        None
    }

    fn decompress(&mut self, payload: &[u8], max: usize) -> Result<Bytes, DecompressError> {
        stateless::decompress_message(payload, max)
    }
}

#[cfg(test)]
mod tests {
    //! The compact forms against `PerMessageDeflate` with the same (stateless) engines:
    //! the same bytes out for payloads below, at and above the threshold, the same
    //! errors for bad input and for output over `max`.
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::PerMessageDeflate;
    use crate::engine::Engine;
    use crate::stateless::Stateless;

    fn per_message(outgoing: bool, threshold: usize) -> PerMessageDeflate {
        PerMessageDeflate {
            outgoing: outgoing.then(|| Box::new(Stateless) as Box<dyn Engine>),
            incoming: Box::new(Stateless),
            threshold,
        }
    }

    /// Payloads of every kind around a threshold of 64: empty, below, at, above, long,
    /// compressible and not.
    fn payloads() -> Vec<Vec<u8>> {
        let mut noise = Vec::with_capacity(4096);
        let mut x: u32 = 0x2545_f491;
        for _ in 0..4096 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            noise.push(x.to_le_bytes()[0]);
        }
        let json = br#"{"topic":"prices","symbol":"ACME","bid":101.25,"ask":101.5}"#;
        vec![
            Vec::new(),
            b"a".to_vec(),
            vec![b'x'; 63],
            vec![b'x'; 64],
            vec![b'x'; 65],
            json.to_vec(),
            json.repeat(40),
            noise[..63].to_vec(),
            noise[..64].to_vec(),
            noise.clone(),
            vec![0; 100_000],
        ]
    }

    #[test]
    fn compresses_as_per_message_deflate_does() {
        for threshold in [0usize, 1, 64, 65, 4096, 1 << 20] {
            let mut compact = StatelessDeflate::new(u32::try_from(threshold).unwrap());
            let mut reference = per_message(true, threshold);
            for payload in payloads() {
                let ours = compact.compress(&payload);
                assert_eq!(
                    ours,
                    reference.compress(&payload),
                    "{} bytes, threshold {threshold}",
                    payload.len()
                );
                assert_eq!(ours.is_some(), payload.len() >= threshold);
            }
        }
    }

    #[test]
    fn inflate_only_compresses_nothing_as_per_message_deflate_does() {
        let mut compact = StatelessInflate;
        let mut reference = per_message(false, usize::MAX);
        let mut with_threshold_zero = per_message(false, 0);
        for payload in payloads() {
            assert_eq!(compact.compress(&payload), None);
            assert_eq!(reference.compress(&payload), None);
            assert_eq!(with_threshold_zero.compress(&payload), None);
        }
    }

    #[test]
    fn inflates_as_per_message_deflate_does() {
        let mut both = StatelessDeflate::new(64);
        let mut inflate_only = StatelessInflate;
        let mut reference = per_message(true, 64);
        for payload in payloads() {
            let compressed = stateless::compress_message(&payload).unwrap();
            for max in [
                0,
                1,
                payload.len().saturating_sub(1),
                payload.len(),
                usize::MAX,
            ] {
                let expected = reference.decompress(&compressed, max);
                if max >= payload.len() {
                    assert_eq!(expected.as_deref(), Ok(&payload[..]));
                } else {
                    assert_eq!(expected, Err(DecompressError::TooLarge));
                }
                assert_eq!(both.decompress(&compressed, max), expected);
                assert_eq!(inflate_only.decompress(&compressed, max), expected);
            }
        }
    }

    #[test]
    fn bad_input_fails_as_in_per_message_deflate() {
        let whole = stateless::compress_message(&br#"{"a":1}"#.repeat(50)).unwrap();
        let cases: Vec<Vec<u8>> = vec![
            vec![0xff; 16],
            vec![0x07],
            whole[..whole.len() / 2].to_vec(),
            whole[..1].to_vec(),
            [&whole[..], &[0xff, 0xff, 0xff][..]].concat(),
            // A stored block whose LEN and NLEN disagree.
            vec![0x00, 0x05, 0x00, 0x00, 0x00, b'a'],
            // A reserved block type.
            vec![0x07, 0x00],
        ];
        let mut both = StatelessDeflate::new(0);
        let mut inflate_only = StatelessInflate;
        let mut reference = per_message(true, 0);
        for input in cases {
            for max in [0, 10, 1 << 20] {
                let expected = reference.decompress(&input, max);
                assert!(expected.is_err(), "{input:02x?} inflated");
                assert_eq!(both.decompress(&input, max), expected, "{input:02x?}");
                assert_eq!(
                    inflate_only.decompress(&input, max),
                    expected,
                    "{input:02x?}"
                );
            }
        }
    }

    #[test]
    fn the_compact_forms_are_small() {
        assert_eq!(std::mem::size_of::<StatelessDeflate>(), 4);
        assert_eq!(std::mem::size_of::<StatelessInflate>(), 0);
    }
}
