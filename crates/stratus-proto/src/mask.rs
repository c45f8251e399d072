//! Payload masking (RFC 6455 §5.3): XOR with a 4-byte key, the hottest loop in the codec.
//!
//! [`apply_mask`] dispatches at run time to AVX2, SSE2 (x86_64) or NEON (aarch64) and
//! finishes the tail with the scalar path, [`apply_mask_scalar`], which masks eight bytes
//! per step. Both accept any length, any alignment and any key phase: `offset` is the
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

/// XORs `buf` with `key`, where `buf` starts `offset` bytes into the masked payload.
#[inline]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let key = rotate(key, offset);
    let done = simd::mask_prefix(buf, key);
    // `done` is a multiple of 4, so the key phase of the tail is unchanged.
    mask_words(&mut buf[done..], key);
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
        __m128i, __m256i, _mm_loadu_si128, _mm_set1_epi32, _mm_storeu_si128, _mm_xor_si128,
        _mm256_loadu_si256, _mm256_set1_epi32, _mm256_storeu_si256, _mm256_xor_si256,
    };

    /// Masks the longest prefix the widest available unit can take; returns its length.
    #[inline]
    pub(super) fn mask_prefix(buf: &mut [u8], key: [u8; 4]) -> usize {
        if buf.len() >= 64 && std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { mask_avx2(buf, key) };
        }
        if buf.len() >= 16 {
            // SAFETY: SSE2 is part of the x86_64 baseline (asserted below at compile time).
            return unsafe { mask_sse2(buf, key) };
        }
        0
    }

    #[target_feature(enable = "avx2")]
    fn mask_avx2(buf: &mut [u8], key: [u8; 4]) -> usize {
        let pattern = _mm256_set1_epi32(i32::from_ne_bytes(key));
        let (chunks, _) = buf.as_chunks_mut::<32>();
        for chunk in chunks.iter_mut() {
            let p = chunk.as_mut_ptr().cast::<__m256i>();
            // SAFETY: `chunk` is 32 bytes we may read and write; loadu/storeu accept any
            // alignment, and AVX2 is enabled for this function.
            unsafe { _mm256_storeu_si256(p, _mm256_xor_si256(_mm256_loadu_si256(p), pattern)) }
        }
        chunks.len() * 32
    }

    const _: () = assert!(cfg!(target_feature = "sse2"));

    /// SSE2 is part of the x86_64 baseline, so no run-time check is needed.
    #[target_feature(enable = "sse2")]
    fn mask_sse2(buf: &mut [u8], key: [u8; 4]) -> usize {
        let pattern = _mm_set1_epi32(i32::from_ne_bytes(key));
        let (chunks, _) = buf.as_chunks_mut::<16>();
        for chunk in chunks.iter_mut() {
            let p = chunk.as_mut_ptr().cast::<__m128i>();
            // SAFETY: `chunk` is 16 bytes we may read and write; loadu/storeu accept any
            // alignment, and SSE2 is always present on x86_64.
            unsafe { _mm_storeu_si128(p, _mm_xor_si128(_mm_loadu_si128(p), pattern)) }
        }
        chunks.len() * 16
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
        let base = pattern(300);
        for start in 0..64 {
            let mut expected = base.clone();
            naive(&mut expected[start..], key, 0);
            let mut fast = base.clone();
            apply_mask(&mut fast[start..], key, 0);
            assert_eq!(fast, expected, "start {start}");
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
