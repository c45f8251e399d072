//! Memory bounds, measured with a counting allocator:
//! - deflate bombs: a message that inflates to 1 GiB is refused with 1009 once the output
//!   passes the limit, and the memory spent is bounded by the limit plus one chunk;
//! - what a connection keeps between messages, per engine and window.
//!
//! Deflate cannot exceed about 1032:1 (one 258-byte match per two bits), so a 1 GiB bomb
//! is about 1 MiB on the wire; a 1 KiB message can inflate to about 1 MiB at most.
//! Peak heap use is measured with a counting allocator.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::BytesMut;
use stratus_deflate::stateless::Stateless;
use stratus_deflate::zlib::{CHUNK, Zlib};
use stratus_deflate::{DeflateConfig, Engine, Mode, TRAILER, negotiate};
use stratus_proto::frame::{OpCode, RSV1};
use stratus_proto::{CloseCode, DecompressError, Encoder, Limits, MessageCompression, Session};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// Tests here measure the process heap: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

thread_local! {
    /// Bytes this thread allocated less those it freed: what a test's own work keeps,
    /// whatever the harness's threads allocate or free meanwhile (they do: a finished
    /// test's captured output is freed on another thread, which once made the process
    /// counter drop below a test's starting level).
    static NET: Cell<isize> = const { Cell::new(0) };
}

/// Adds `bytes` to this thread's [`NET`] (not at all while the thread is being torn down).
fn count_here(bytes: isize) {
    let _ = NET.try_with(|net| net.set(net.get() + bytes));
}

// SAFETY: defers to the system allocator and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        count_here(layout.size() as isize);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
        count_here(-(layout.size() as isize));
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Heap bytes above the starting level at the peak of `f`.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed) - base)
}

/// The pieces of a bomb: the first 1 MiB chunk of zeros compressed with a sync flush,
/// and the self-similar block every later chunk compresses to (trailers stripped).
fn bomb_pieces() -> (Vec<u8>, Vec<u8>) {
    let zeros = vec![0u8; 1 << 20];
    let mut z = Zlib::new(15, false);
    let first = z.compress(&zeros).unwrap();
    let next = z.compress(&zeros).unwrap();
    assert_eq!(
        z.compress(&zeros).unwrap(),
        next,
        "later chunks compress alike"
    );
    (first.to_vec(), next.to_vec())
}

/// About 1 MiB of deflate that inflates to 1 GiB of zeros: the first piece, then the
/// second 1023 times, each flush's trailer put back between them.
fn gigabyte_bomb() -> Vec<u8> {
    let (first, next) = bomb_pieces();
    let mut bomb = first;
    for _ in 1..1024 {
        bomb.extend_from_slice(&TRAILER);
        bomb.extend_from_slice(&next);
    }
    bomb
}

const LIMIT: usize = 16 << 20;

#[test]
fn gigabyte_bomb_is_too_large_with_bounded_memory_in_both_engines() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let bomb = gigabyte_bomb();
    assert!(bomb.len() < 2 << 20, "bomb is {} bytes", bomb.len());
    let engines: [(Box<dyn Engine>, usize); 2] = [
        // libdeflate: one output buffer at most the limit, and a copy of the input.
        (Box::new(Stateless), LIMIT + bomb.len() + (64 << 10)),
        // zlib: the limit plus one chunk, and the inflater's state.
        (Box::new(Zlib::new(15, true)), LIMIT + CHUNK + (64 << 10)),
    ];
    for (mut engine, bound) in engines {
        // Warm up the engine's own state so only the message's memory is counted.
        let _ = engine.decompress(&[0x00], 16);
        let (result, peak) = peak_during(|| engine.decompress(&bomb, LIMIT));
        assert_eq!(result, Err(DecompressError::TooLarge), "{engine:?}");
        assert!(peak <= bound, "{engine:?}: peak {peak} > bound {bound}");
        println!(
            "{engine:?}: 1 GiB bomb ({} bytes) refused, peak heap {peak} bytes",
            bomb.len()
        );
    }
}

#[test]
fn bomb_inflates_to_a_gigabyte() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Inflate the bomb's pieces one message at a time with a context-keeping inflater:
    // the same stream as the bomb, 1 MiB of output at a time.
    let (first, next) = bomb_pieces();
    let mut z = Zlib::new(15, false);
    let mut inflated = 0usize;
    for piece in std::iter::once(&first).chain(std::iter::repeat_n(&next, 1023)) {
        let out = z.decompress(piece, 1 << 20).unwrap();
        assert!(out.iter().all(|&b| b == 0));
        inflated += out.len();
    }
    assert_eq!(inflated, 1 << 30);
}

#[test]
fn a_kilobyte_that_inflates_to_a_megabyte_is_too_large_for_a_small_limit() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let small = Stateless.compress(&vec![0u8; 1 << 20]).unwrap();
    assert!(small.len() <= 1100, "{} bytes", small.len());
    for mut engine in [
        Box::new(Stateless) as Box<dyn Engine>,
        Box::new(Zlib::new(15, true)),
    ] {
        let (result, peak) = peak_during(|| engine.decompress(&small, 64 << 10));
        assert_eq!(result, Err(DecompressError::TooLarge));
        assert!(
            peak <= (64 << 10) + CHUNK + (64 << 10),
            "{engine:?}: peak {peak}"
        );
    }
}

#[test]
fn bomb_on_a_compressed_session_closes_with_1009() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let bomb = gigabyte_bomb();
    let agreed = negotiate(
        &["permessage-deflate".to_owned()],
        &DeflateConfig::default(),
    )
    .unwrap();
    let mut session = Session::server(Limits {
        max_message: LIMIT,
        max_frame: LIMIT,
        ..Limits::default()
    });
    session.set_compression(Box::new(agreed.compression(64)));
    let frame = Encoder::client([5; 32]).frame(OpCode::Binary, RSV1, &bomb);
    let mut buf = BytesMut::from(&frame[..]);
    let (err, peak) = peak_during(|| session.handle_read(&mut buf).unwrap_err());
    assert_eq!(err.close_code(), CloseCode::TOO_BIG);
    assert!(peak <= LIMIT + 2 * bomb.len() + (64 << 10), "peak {peak}");
    assert!(session.is_closed());
}

/// Heap a connection's compression keeps after one message each way, for the
/// configurations negotiation can produce. Printed for the README; bounded by the
/// windows: about 2^(bits+2) + 128 KiB to compress with context, 2^15 + 7 KiB to inflate.
#[test]
fn per_connection_state_is_bounded_by_the_windows() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let message = br#"{"topic":"prices","symbol":"SYM1","bid":101.25,"ask":101.5}"#.repeat(20);
    let inflatable = Stateless.compress(&message).unwrap();
    // Warm this thread's libdeflate state, shared by every shared-mode connection.
    let _ = Stateless.compress(&message);
    let _ = Stateless.decompress(&inflatable, 1 << 20);
    let cases: [(&str, Mode, &str, usize); 4] = [
        ("shared", Mode::Shared, "permessage-deflate", 1024),
        (
            "dedicated, 15 bits",
            Mode::Dedicated,
            "permessage-deflate",
            600 << 10,
        ),
        (
            "dedicated, 9 bits",
            Mode::Dedicated,
            "permessage-deflate; server_max_window_bits=9",
            400 << 10,
        ),
        (
            "shared, client asks 9 bits",
            Mode::Shared,
            "permessage-deflate; server_max_window_bits=9",
            1024,
        ),
    ];
    for (name, mode, offer, bound) in cases {
        let agreed = negotiate(&[offer.to_owned()], &DeflateConfig { mode, threshold: 0 }).unwrap();
        let base = NET.with(Cell::get);
        // As a shared-mode server does: a connection that cannot take the shared frames
        // is sent uncompressed, never given a compressor of its own.
        let mut connection = if mode == Mode::Shared && !agreed.shares_frames() {
            agreed.inflate_only()
        } else {
            agreed.compression(0)
        };
        let _ = connection.compress(&message);
        let _ = connection.decompress(&inflatable, 1 << 20);
        let held = NET.with(Cell::get) - base;
        println!("{name}: {held} bytes kept per connection");
        assert!(held <= bound as isize, "{name}: {held} > {bound}");
        drop(connection);
    }
}
