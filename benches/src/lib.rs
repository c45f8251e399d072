//! Criterion benchmarks for Stratus (`cargo bench -p stratus-benches`). Each bench
//! measures Stratus beside a named alternative on the same input, in the same run.
//! Payload generators shared by the benches live here.

/// JSON-like push traffic: price updates, `len` bytes.
pub fn json_payload(len: usize) -> Vec<u8> {
    json_payload_seeded(len, 1)
}

/// JSON-like push traffic from a given seed: same keys, other values.
pub fn json_payload_seeded(len: usize, seed: u32) -> Vec<u8> {
    let mut s = String::with_capacity(len + 128);
    let mut i: u32 = seed;
    while s.len() < len {
        i = i.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        s.push_str(&format!(
            r#"{{"topic":"prices","seq":{},"symbol":"SYM{}","bid":{}.{:02},"ask":{}.{:02},"ts":{}}},"#,
            i % 100_000,
            i % 97,
            100 + i % 50,
            i % 100,
            101 + i % 50,
            i % 100,
            1_700_000_000_000u64 + u64::from(i % 1_000_000)
        ));
    }
    s.truncate(len);
    s.into_bytes()
}

/// Binary push traffic: little-endian (timestamp, price) records with small moves and
/// noisy low bits, `len` bytes.
pub fn binary_payload(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 16);
    let (mut ts, mut price, mut x) = (1_700_000_000_000u64, 100_000u32, 0x9E37_79B9u32);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        ts += u64::from(x % 7);
        price = price.wrapping_add(x % 5).wrapping_sub(2);
        out.extend_from_slice(&ts.to_le_bytes());
        out.extend_from_slice(&(price ^ (x >> 24)).to_le_bytes());
    }
    out.truncate(len);
    out
}
