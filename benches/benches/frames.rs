//! The protocol core's hot paths beside the same work in tungstenite and fastwebsockets,
//! on the same bytes: masking (GB/s), decoding a stream of client frames (frames/s), and
//! UTF-8 validation of a fragmented text message (GB/s).
//!
//! tungstenite keeps its masking function private, so its masking is measured where it
//! runs: inside its decode of large frames, beside ours.

// A bench whose input no longer decodes must stop, not measure something else.
#![allow(clippy::expect_used)]

use std::io::{Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use stratus_benches::json_payload;
use stratus_proto::mask::{apply_mask, apply_mask_scalar};
use stratus_proto::utf8::Utf8Validator;
use stratus_proto::{Decoder, Encoder, Limits, Message, Role};

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn masking(c: &mut Criterion) {
    let mut group = c.benchmark_group("mask");
    for (label, len) in [
        ("16B", 16),
        ("125B", 125),
        ("1KiB", 1024),
        ("64KiB", 64 << 10),
        ("1MiB", 1 << 20),
    ] {
        let mut buf = vec![0x5au8; len];
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(BenchmarkId::new("stratus-simd", label), |b| {
            b.iter(|| apply_mask(std::hint::black_box(&mut buf), KEY, 0))
        });
        group.bench_function(BenchmarkId::new("stratus-scalar", label), |b| {
            b.iter(|| apply_mask_scalar(std::hint::black_box(&mut buf), KEY, 0))
        });
        group.bench_function(BenchmarkId::new("fastwebsockets", label), |b| {
            b.iter(|| fastwebsockets::unmask(std::hint::black_box(&mut buf), KEY))
        });
    }
    group.finish();
}

/// A stream of masked client frames: `count` messages of `len` bytes (text when
/// `text`).
fn client_stream(count: usize, len: usize, text: bool) -> Vec<u8> {
    let mut enc = Encoder::client([9; 32]);
    let payload = json_payload(len);
    let message = if text {
        Message::Text(payload.into())
    } else {
        Message::Binary(payload.into())
    };
    (0..count)
        .flat_map(|_| enc.message(&message).to_vec())
        .collect()
}

/// Reads a byte slice, swallows writes: a socket for the peers' decoders.
struct Replay<'a> {
    data: &'a [u8],
}

impl Read for Replay<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = out.len().min(self.data.len());
        out[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

impl Write for Replay<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl tokio::io::AsyncRead for Replay<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = buf.remaining().min(self.data.len());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for Replay<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn decoding(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    for (label, count, len, text) in [
        ("1000x20B-text", 1000, 20, true),
        ("16x64KiB-binary", 16, 64 << 10, false),
    ] {
        let stream = client_stream(count, len, text);
        group.throughput(Throughput::Elements(count as u64));
        group.bench_function(BenchmarkId::new("stratus", label), |b| {
            b.iter(|| {
                let mut decoder = Decoder::new(Role::Server, Limits::default());
                let mut buf = BytesMut::from(&stream[..]);
                let mut frames = 0;
                while let Ok(Some(_)) = decoder.decode(&mut buf) {
                    frames += 1;
                }
                assert_eq!(frames, count);
            })
        });
        group.bench_function(BenchmarkId::new("tungstenite", label), |b| {
            b.iter(|| {
                let replay = Replay { data: &stream };
                let mut ws = tungstenite::WebSocket::from_raw_socket(
                    replay,
                    tungstenite::protocol::Role::Server,
                    None,
                );
                for _ in 0..count {
                    ws.read().expect("tungstenite decodes");
                }
            })
        });
        group.bench_function(BenchmarkId::new("fastwebsockets", label), |b| {
            b.iter(|| {
                runtime.block_on(async {
                    let replay = Replay { data: &stream };
                    let mut ws = fastwebsockets::WebSocket::after_handshake(
                        replay,
                        fastwebsockets::Role::Server,
                    );
                    for _ in 0..count {
                        ws.read_frame().await.expect("fastwebsockets decodes");
                    }
                })
            })
        });
    }
    group.finish();
}

fn utf8(c: &mut Criterion) {
    let mut group = c.benchmark_group("utf8");
    let text = "κόσμε price €101.5, 東京 ✓ ".repeat(3000);
    let bytes = text.as_bytes();
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    for fragment in [64usize, 1024, 16 << 10] {
        group.bench_function(
            BenchmarkId::new("stratus-incremental", format!("{fragment}B-fragments")),
            |b| {
                b.iter(|| {
                    let mut v = Utf8Validator::new();
                    for piece in bytes.chunks(fragment) {
                        v.feed(piece).expect("valid");
                    }
                    v.finish().expect("complete");
                })
            },
        );
    }
    group.bench_function("std-from_utf8/whole", |b| {
        b.iter(|| std::str::from_utf8(std::hint::black_box(bytes)).is_ok())
    });
    group.finish();
}

criterion_group!(benches, masking, decoding, utf8);
criterion_main!(benches);
