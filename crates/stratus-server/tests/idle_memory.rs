//! What an idle connection keeps on the heap, measured: an in-process server (one worker,
//! the pub/sub app, shared deflate) is given idle connections, with and without a topic
//! (`/ws?topic=idle`) and a permessage-deflate offer, and the heap it holds for them is
//! counted by a global allocator over mimalloc, in requested bytes and in the bytes of
//! mimalloc's size classes. The differences give each part's cost, as the README's
//! "Memory per idle connection" states them; the budgets below hold the total and the
//! deflate state.
//!
//! The heap is not all of RSS (freed memory the allocator keeps, the slab's earlier
//! arrays): `stratus-load connections` measures that, on the release build.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use mimalloc::MiMalloc;

/// Connections per measurement: a power of two's worth of slab and set buckets, as at
/// 10,000 (each table holds 1.6x its entries there; here 1.02x, so this counts a
/// little less than 10,000 connections cost).
const CONNECTIONS: usize = 2_000;

/// Most heap an idle connection subscribed to a topic, with deflate agreed, may hold, in
/// mimalloc's size classes: measured 283 (the connection's 224-byte box, its slab slot,
/// its membership, its deflate state), and a little room for the tables' spare buckets.
/// It was 707 before cold state moved out of the connection, 323 before the deflate
/// state's compact form (the target for all of RSS is 256).
const BUDGET: isize = 296;

/// Most heap the deflate state agreed in shared mode may add, in mimalloc's size classes:
/// measured 8 (`StatelessDeflate`, the 4-byte threshold, in the smallest class), and room
/// for the rounding of the per-connection figures it is the difference of. The full
/// `PerMessageDeflate` (two engine boxes and a `usize` threshold) measured 48.
const DEFLATE_BUDGET: isize = 12;

unsafe extern "C" {
    /// The size of mimalloc's block behind `p` (its size class).
    fn mi_usable_size(p: *const c_void) -> usize;
}

/// Live heap: bytes asked for, and bytes of the blocks mimalloc gave.
static REQUESTED: AtomicIsize = AtomicIsize::new(0);
static BLOCKS: AtomicIsize = AtomicIsize::new(0);

struct Counting;

/// The block behind `ptr`, which mimalloc allocated.
fn block_size(ptr: *mut u8) -> isize {
    // SAFETY: `ptr` is a live block from `MiMalloc` (just allocated, or about to be
    // freed), which is what mi_usable_size takes.
    let size = unsafe { mi_usable_size(ptr.cast()) };
    isize::try_from(size).unwrap_or(isize::MAX)
}

fn signed(n: usize) -> isize {
    isize::try_from(n).unwrap_or(isize::MAX)
}

// SAFETY: defers to mimalloc and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let ptr = unsafe { MiMalloc.alloc(layout) };
        if !ptr.is_null() {
            REQUESTED.fetch_add(signed(layout.size()), Ordering::Relaxed);
            BLOCKS.fetch_add(block_size(ptr), Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        REQUESTED.fetch_sub(signed(layout.size()), Ordering::Relaxed);
        BLOCKS.fetch_sub(block_size(ptr), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { MiMalloc.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The live heap now: (requested, blocks).
fn live() -> (isize, isize) {
    (
        REQUESTED.load(Ordering::Relaxed),
        BLOCKS.load(Ordering::Relaxed),
    )
}

/// Reads a response head into `buf` without allocating; its length.
fn read_head(stream: &mut TcpStream, buf: &mut [u8; 512]) -> usize {
    let mut len = 0;
    while !buf[..len].ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut buf[len..]).expect("response head");
        assert!(n > 0, "closed before the response head ended");
        len += n;
    }
    len
}

/// The heap per connection that a fresh server holds for `CONNECTIONS` idle ones opened
/// with `path` (and a deflate offer with `deflate`), settled: (requested, blocks).
fn held_per_connection(path: &str, deflate: bool) -> (isize, isize) {
    let server = common::start_with(|config| {
        config.app = stratus_server::App::PubSub;
        config.workers = 1;
        config.admin_listen = None;
    });
    let offer = if deflate {
        "Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover\r\n"
    } else {
        ""
    };
    let request = common::upgrade_request_with(path, offer);
    let mut peers = Vec::with_capacity(CONNECTIONS);
    let mut head = [0u8; 512];
    // Warm up what the first connections make once (the worker's buffers and tables).
    let mut warm = TcpStream::connect(server.local_addr()).unwrap();
    warm.write_all(request.as_bytes()).unwrap();
    read_head(&mut warm, &mut head);
    let before = settled();
    for _ in 0..CONNECTIONS {
        let mut peer = TcpStream::connect(server.local_addr()).unwrap();
        peer.write_all(request.as_bytes()).unwrap();
        let len = read_head(&mut peer, &mut head);
        assert!(head[..len].starts_with(b"HTTP/1.1 101 "), "upgraded");
        peers.push(peer);
    }
    let after = settled();
    drop((peers, warm, server));
    let per = |a: isize, b: isize| (a - b) / signed(CONNECTIONS);
    (per(after.0, before.0), per(after.1, before.1))
}

/// The live heap once it has stopped changing (the worker has settled what it read).
fn settled() -> (isize, isize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = live();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = live();
        if now == last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

#[test]
fn an_idle_subscribed_connection_holds_its_budget_of_heap() {
    let (bare_asked, bare) = held_per_connection("/ws", false);
    let (topic_asked, topic) = held_per_connection("/ws?topic=idle", false);
    let (all_asked, all) = held_per_connection("/ws?topic=idle", true);
    eprintln!(
        "heap per idle connection (requested / in size classes): connection {bare_asked} / \
         {bare} B, topic membership {} / {} B, deflate agreed {} / {} B, total {all_asked} / \
         {all} B",
        topic_asked - bare_asked,
        topic - bare,
        all_asked - topic_asked,
        all - topic
    );
    assert!(
        all - topic <= DEFLATE_BUDGET,
        "the deflate state holds {} B of heap per connection (budget {DEFLATE_BUDGET})",
        all - topic
    );
    assert!(
        all <= BUDGET,
        "an idle subscribed connection with deflate holds {all} B of heap (budget {BUDGET})"
    );
}
