//! Payload masking (RFC 6455 §5.3): XOR with a 4-byte key, the hottest loop in the codec.
//!
//! [`apply_mask`] dispatches at run time to AVX2 (x86_64, for the sizes where it wins) or
//! NEON (aarch64) and finishes with the word path, [`apply_mask_scalar`], which masks
//! eight bytes per step (and which LLVM vectorizes with the target's baseline SIMD). Both accept any length, any alignment and any key phase: `offset` is the
//! number of payload bytes already masked, so a payload that arrives over several reads
//! is unmasked piece by piece with the same result as in one go.
//!
//! This is the only module of the crate with `unsafe`: unaligned SIMD loads and stores,
//! each with a `SAFETY` comment. Tests compare every path with a byte-at-a-time loop.
#![allow(unsafe_code)]

/// The key as seen by a chunk that starts `offset` bytes into the payload.
#[inline]
fn rotate(key: [u8; 4], offset: usize) -> [u8; 4] {
    let mut k = key;
    k.rotate_left(offset % 4);
    k
}

/// Shorter payloads go straight to the word path (AVX2 does not pay for itself there).
const SIMD_FROM: usize = 256;

/// XORs `buf` with `key`, where `buf` starts `offset` bytes into the masked payload.
#[inline]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let key = rotate(key, offset);
    if buf.len() < SIMD_FROM {
        return mask_words(buf, key);
    }
    // From a cache-line boundary on, so no SIMD access straddles two lines; the bytes
    // before it take the word path.
    let head = buf.as_ptr().align_offset(64).min(buf.len());
    let (start, rest) = buf.split_at_mut(head);
    mask_words(start, key);
    let key = rotate(key, head);
    let done = simd::mask_prefix(rest, key);
    // `done` is a multiple of 4, so the key phase of the tail is unchanged.
    mask_words(&mut rest[done..], key);
}

/// The portable path: eight bytes per step, no SIMD intrinsics. Public for benchmarks
/// and as the reference the SIMD paths are checked against.
pub fn apply_mask_scalar(buf: &mut [u8], key: [u8; 4], offset: usize) {
    mask_words(buf, rotate(key, offset));
}

#[inline]
fn mask_words(buf: &mut [u8], key: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let (words, tail) = buf.as_chunks_mut::<8>();
    for word in words {
        *word = (u64::from_ne_bytes(*word) ^ wide).to_ne_bytes();
    }
    for (byte, k) in tail.iter_mut().zip(key.iter().cycle()) {
        *byte ^= k;
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::{
        __m256i, _mm256_loadu_si256, _mm256_set1_epi32, _mm256_storeu_si256, _mm256_xor_si256,
    };

    /// Masks the prefix AVX2 is worth using for; returns its length. Measured (README,
    /// criterion `mask`): above 32 KiB the payload streams from L2 at a rate 128-bit
    /// words reach as well, without AVX2's lower clock; the word path, which LLVM turns
    /// into SSE2, takes those.
    #[inline]
    pub(super) fn mask_prefix(buf: &mut [u8], key: [u8; 4]) -> usize {
        if buf.len() <= 32 << 10 && std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { mask_avx2(buf, key) };
        }
        0
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn mask_avx2(buf: &mut [u8], key: [u8; 4]) -> usize {
        let pattern = _mm256_set1_epi32(i32::from_ne_bytes(key));
        // Four registers per step: independent loads and stores keep both ports busy.
        let (blocks, rest) = buf.as_chunks_mut::<128>();
        for block in blocks.iter_mut() {
            let p = block.as_mut_ptr().cast::<__m256i>();
            for i in 0..4 {
                // SAFETY: `block` is 128 bytes we may read and write, so the 32 bytes at
                // `p + i` (i < 4) are inside it; loadu/storeu accept any alignment, and
                // AVX2 is enabled for this function.
                unsafe {
                    let q = p.add(i);
                    _mm256_storeu_si256(q, _mm256_xor_si256(_mm256_loadu_si256(q), pattern));
                }
            }
        }
        let (chunks, _) = rest.as_chunks_mut::<32>();
        for chunk in chunks.iter_mut() {
            let p = chunk.as_mut_ptr().cast::<__m256i>();
            // SAFETY: `chunk` is 32 bytes we may read and write; loadu/storeu accept any
            // alignment, and AVX2 is enabled for this function.
            unsafe { _mm256_storeu_si256(p, _mm256_xor_si256(_mm256_loadu_si256(p), pattern)) }
        }
        blocks.len() * 128 + chunks.len() * 32
    }
}

#[cfg(target_arch = "aarch64")]
mod simd {
    use std::arch::aarch64::{vdupq_n_u32, veorq_u8, vld1q_u8, vreinterpretq_u8_u32, vst1q_u8};

    /// NEON is part of the aarch64 baseline, so no run-time check is needed.
    #[inline]
    pub(super) fn mask_prefix(buf: &mut [u8], key: [u8; 4]) -> usize {
        let pattern = vreinterpretq_u8_u32(vdupq_n_u32(u32::from_ne_bytes(key)));
        let (chunks, _) = buf.as_chunks_mut::<16>();
        for chunk in chunks.iter_mut() {
            let p = chunk.as_mut_ptr();
            // SAFETY: `chunk` is 16 bytes we may read and write; vld1q/vst1q have no
            // alignment requirement for u8 lanes.
            unsafe { vst1q_u8(p, veorq_u8(vld1q_u8(p), pattern)) }
        }
        chunks.len() * 16
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
mod simd {
    #[inline]
    pub(super) fn mask_prefix(_buf: &mut [u8], _key: [u8; 4]) -> usize {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive(buf: &mut [u8], key: [u8; 4], offset: usize) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b ^= key[(offset + i) % 4];
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + 7) as u8).collect()
    }

    #[test]
    fn every_length_and_phase_matches_naive() {
        let key = [0x12, 0x34, 0x56, 0x78];
        for len in 0..=512 {
            for offset in 0..4 {
                let mut expected = pattern(len);
                naive(&mut expected, key, offset);
                let mut fast = pattern(len);
                apply_mask(&mut fast, key, offset);
                assert_eq!(fast, expected, "simd len {len} offset {offset}");
                let mut scalar = pattern(len);
                apply_mask_scalar(&mut scalar, key, offset);
                assert_eq!(scalar, expected, "scalar len {len} offset {offset}");
            }
        }
    }

    #[test]
    fn every_alignment_matches_naive() {
        let key = [0xde, 0xad, 0xbe, 0xef];
        let base = pattern(1300);
        for start in 0..64 {
            for offset in 0..4 {
                let mut expected = base.clone();
                naive(&mut expected[start..], key, offset);
                let mut fast = base.clone();
                apply_mask(&mut fast[start..], key, offset);
                assert_eq!(fast, expected, "start {start} offset {offset}");
            }
        }
    }

    /// Each x86 unit on its own (the dispatcher only ever runs the widest one here).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn every_x86_unit_matches_naive() {
        type Unit = unsafe fn(&mut [u8], [u8; 4]) -> usize;
        let units: [(&str, bool, Unit); 1] = [(
            "avx2",
            std::arch::is_x86_feature_detected!("avx2"),
            simd::mask_avx2,
        )];
        let key = [0x01, 0x80, 0x7f, 0xfe];
        for (name, supported, unit) in units {
            if !supported {
                continue;
            }
            for start in 0..8 {
                for len in [0, 15, 16, 31, 32, 63, 64, 65, 127, 128, 129, 159, 160, 1000] {
                    let mut expected = pattern(start + len);
                    let mut fast = expected.clone();
                    // SAFETY: the unit's CPU feature was detected above.
                    let done = unsafe { unit(&mut fast[start..], key) };
                    naive(&mut expected[start..start + done], key, 0);
                    assert_eq!(done % 4, 0, "{name}: whole keys only");
                    assert!(len - done < 64, "{name}: masks all but a tail");
                    assert_eq!(fast, expected, "{name} start {start} len {len}");
                }
            }
        }
    }

    proptest! {
        #[test]
        fn pieces_equal_whole(
            data in proptest::collection::vec(any::<u8>(), 0..4096),
            key in any::<[u8; 4]>(),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let mut whole = data.clone();
            naive(&mut whole, key, 0);
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
            cuts.sort_unstable();
            let mut pieces = data.clone();
            let mut start = 0;
            for end in cuts.into_iter().chain([data.len()]) {
                apply_mask(&mut pieces[start..end], key, start);
                start = end;
            }
            prop_assert_eq!(pieces, whole);
        }

        #[test]
        fn masking_twice_is_identity(
            data in proptest::collection::vec(any::<u8>(), 0..2048),
            key in any::<[u8; 4]>(),
            offset in 0usize..8,
        ) {
            let mut buf = data.clone();
            apply_mask(&mut buf, key, offset);
            apply_mask(&mut buf, key, offset);
            prop_assert_eq!(buf, data);
        }
    }
}
