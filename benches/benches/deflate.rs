//! The two permessage-deflate engines side by side: stateless (whole message, no
//! context: zlib-rs compression reset per message, libdeflate inflation) and zlib-rs
//! (streaming, here without context takeover so both compress each message alone), compressing and inflating JSON-like and binary payloads of 64 B,
//! 1 KiB and 64 KiB. Throughput is in bytes of uncompressed payload. Compression ratios
//! are printed once per payload, and for a stream of 100 distinct 1 KiB JSON messages
//! with and without context takeover (repeating one message in a timing loop would
//! flatter context takeover, so it is not timed).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use stratus_benches::{binary_payload, json_payload, json_payload_seeded};
use stratus_deflate::Engine;
use stratus_deflate::stateless::Stateless;
use stratus_deflate::zlib::Zlib;

type Make = fn() -> Box<dyn Engine>;

const ENGINES: [(&str, Make); 2] = [
    ("stateless", || Box::new(Stateless)),
    ("zlib-rs", || Box::new(Zlib::new(15, true))),
];

fn payloads() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (kind, make) in [
        ("json", json_payload as fn(usize) -> Vec<u8>),
        ("binary", binary_payload),
    ] {
        for (label, len) in [("64B", 64), ("1KiB", 1024), ("64KiB", 64 * 1024)] {
            out.push((format!("{kind}-{label}"), make(len)));
        }
    }
    out
}

fn compress(c: &mut Criterion) {
    let mut group = c.benchmark_group("deflate/compress");
    for (name, payload) in payloads() {
        group.throughput(Throughput::Bytes(payload.len() as u64));
        for (engine_name, make) in ENGINES {
            let mut engine = make();
            let size = engine.compress(&payload).map_or(0, |z| z.len());
            println!(
                "ratio {engine_name} {name}: {} -> {size} bytes ({:.2}x)",
                payload.len(),
                payload.len() as f64 / size.max(1) as f64
            );
            group.bench_with_input(BenchmarkId::new(engine_name, &name), &payload, |b, p| {
                b.iter(|| engine.compress(p))
            });
        }
    }
    group.finish();
}

fn decompress(c: &mut Criterion) {
    let mut group = c.benchmark_group("deflate/inflate");
    for (name, payload) in payloads() {
        group.throughput(Throughput::Bytes(payload.len() as u64));
        // Every engine inflates the same context-free message.
        let compressed = Zlib::new(15, true).compress(&payload).unwrap_or_default();
        for (engine_name, make) in ENGINES {
            let mut engine = make();
            group.bench_with_input(BenchmarkId::new(engine_name, &name), &compressed, |b, z| {
                b.iter(|| engine.decompress(z, 1 << 20))
            });
        }
    }
    group.finish();
}

/// Ratios over a stream of distinct messages (same keys, other values), where context
/// takeover can help.
fn stream_ratios(_: &mut Criterion) {
    let messages: Vec<Vec<u8>> = (0..100)
        .map(|seed| json_payload_seeded(1024, seed))
        .collect();
    let plain: usize = messages.iter().map(Vec::len).sum();
    let takeover: (&str, Make) = ("zlib-rs-takeover", || Box::new(Zlib::new(15, false)));
    for (engine_name, make) in ENGINES.into_iter().chain([takeover]) {
        let mut engine = make();
        let compressed: usize = messages
            .iter()
            .map(|m| engine.compress(m).map_or(m.len(), |z| z.len()))
            .sum();
        println!(
            "stream ratio {engine_name}, 100 distinct 1 KiB JSON messages: {plain} -> {compressed} bytes ({:.2}x)",
            plain as f64 / compressed as f64
        );
    }
}

criterion_group!(benches, compress, decompress, stream_ratios);
criterion_main!(benches);
