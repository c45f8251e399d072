//! A provided buffer ring (io_uring `IORING_REGISTER_PBUF_RING`): the receive buffers
//! the kernel picks from when data arrives, so an idle socket parks no buffer at all.
//!
//! The pool is one allocation of `capacity` buffers, reserved but not touched: a page
//! becomes resident only when the kernel writes into it. Only `provided` of them are
//! handed to the kernel at first; when a receive finds the ring empty (`ENOBUFS`) the
//! pool grows, so an idle server keeps a small pool resident and a busy one gets what it
//! needs. Every buffer is handed back (`recycle`) as soon as its owner has read it.

use std::alloc::{self, Layout};
use std::io;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::IoUring;

/// The buffer group id Stratus registers its receive buffers under.
pub(crate) const GROUP: u16 = 0;

/// Buffers handed to the kernel at start, and added at each growth.
const GROWTH: u16 = 128;

/// One entry of the ring, as the kernel reads it (`struct io_uring_buf`). The first
/// entry's `resv` field is the ring's tail, which the kernel reads concurrently: entries
/// are only ever written field by field through raw pointers, never through a reference
/// to a whole entry, so nothing here claims that memory for itself.
#[repr(C)]
struct BufEntry {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}

/// The tail's offset in the ring: `resv` of the first entry.
const TAIL_OFFSET: usize = 14;

pub(crate) struct Buffers {
    /// `capacity` ring entries, page aligned, shared with the kernel.
    ring: NonNull<BufEntry>,
    ring_layout: Layout,
    /// `capacity * size` bytes the kernel writes received data into. Held as a raw
    /// allocation: the kernel writes it while we run, so no Rust reference may own it.
    memory: NonNull<u8>,
    memory_layout: Layout,
    size: usize,
    capacity: u16,
    /// Buffer ids `0..provided` belong to the pool.
    provided: u16,
    /// Our copy of the ring's tail (the kernel only reads it).
    tail: u16,
}

impl Buffers {
    /// Registers a ring of `capacity` (a power of two, at most 32768) buffers of `size`
    /// bytes with `uring`.
    pub(crate) fn register(uring: &IoUring, capacity: u16, size: usize) -> io::Result<Self> {
        if !capacity.is_power_of_two() || capacity > 1 << 15 || size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer ring: capacity must be a power of two up to 32768, size non-zero",
            ));
        }
        const _: () = assert!(size_of::<BufEntry>() == 16 && TAIL_OFFSET == 14);
        let ring_layout = Layout::array::<BufEntry>(usize::from(capacity))
            .and_then(|l| l.align_to(4096))
            .map_err(io::Error::other)?;
        let memory_layout = usize::from(capacity)
            .checked_mul(size)
            .and_then(|total| Layout::from_size_align(total, 4096).ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "buffer pool too large"))?;
        // SAFETY: both layouts have a non-zero size (capacity >= 1, size >= 1).
        let (ring, memory) = unsafe {
            (
                alloc::alloc_zeroed(ring_layout).cast::<BufEntry>(),
                alloc::alloc(memory_layout),
            )
        };
        let (Some(ring), Some(memory)) = (NonNull::new(ring), NonNull::new(memory)) else {
            // SAFETY: whichever allocation succeeded was made with its layout just above.
            unsafe {
                if !ring.is_null() {
                    alloc::dealloc(ring.cast(), ring_layout);
                }
                if !memory.is_null() {
                    alloc::dealloc(memory, memory_layout);
                }
            }
            return Err(io::ErrorKind::OutOfMemory.into());
        };
        let mut buffers = Self {
            ring,
            ring_layout,
            memory,
            memory_layout,
            size,
            capacity,
            provided: 0,
            tail: 0,
        };
        // SAFETY: `ring` holds `capacity` entries and is freed only in `Drop`, which the
        // owning `Ring` runs only after every operation that could use a buffer has
        // completed (see its `Drop`).
        unsafe {
            uring
                .submitter()
                .register_buf_ring(ring.as_ptr() as u64, capacity, GROUP)?;
        }
        buffers.grow();
        Ok(buffers)
    }

    /// Hands `GROWTH` more buffers to the kernel; `false` when the pool is at capacity.
    pub(crate) fn grow(&mut self) -> bool {
        if self.provided == self.capacity {
            return false;
        }
        let to = self.provided.saturating_add(GROWTH).min(self.capacity);
        for bid in self.provided..to {
            self.push(bid);
        }
        self.provided = to;
        self.publish();
        true
    }

    /// The `len` bytes the kernel wrote into buffer `bid` (which it handed back by naming
    /// it in a completion, and gets again only through [`Buffers::recycle`]).
    pub(crate) fn data(&self, bid: u16, len: usize) -> &[u8] {
        if bid >= self.provided {
            return &[];
        }
        let start = usize::from(bid) * self.size;
        // SAFETY: buffer `bid` lies inside the pool (`bid < provided <= capacity`). The
        // kernel wrote `len` bytes at its start before posting the completion that named
        // it, and does not touch it again until `recycle` (which needs `&mut self`, so
        // this borrow has ended) hands it back; the bytes are initialised.
        unsafe { std::slice::from_raw_parts(self.memory.as_ptr().add(start), len.min(self.size)) }
    }

    /// Hands buffer `bid` back to the kernel.
    pub(crate) fn recycle(&mut self, bid: u16) {
        if bid < self.provided {
            self.push(bid);
            self.publish();
        }
    }

    /// Puts buffer `bid` at the ring's tail (not yet visible to the kernel).
    fn push(&mut self, bid: u16) {
        let index = usize::from(self.tail & (self.capacity - 1));
        let start = usize::from(bid) * self.size;
        // SAFETY: `index < capacity`, so the entry is inside the ring allocation, and
        // `start` is inside the pool. The kernel reads no entry past the published tail,
        // so writing this one's `addr`, `len` and `bid` races with nothing; `resv` (the
        // tail, in the first entry) is left alone.
        unsafe {
            let entry = self.ring.as_ptr().add(index);
            ptr::addr_of_mut!((*entry).addr).write(self.memory.as_ptr().add(start) as u64);
            ptr::addr_of_mut!((*entry).len).write(self.size as u32);
            ptr::addr_of_mut!((*entry).bid).write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes every pushed buffer visible to the kernel.
    fn publish(&self) {
        // SAFETY: the tail is the first entry's `resv`, a naturally aligned u16 inside the
        // ring allocation that the kernel reads atomically: an atomic release store is the
        // protocol (the entries written before it become visible with it).
        let tail = unsafe {
            &*self
                .ring
                .as_ptr()
                .cast::<u8>()
                .add(TAIL_OFFSET)
                .cast::<AtomicU16>()
        };
        tail.store(self.tail, Ordering::Release);
    }

    /// Bytes per buffer.
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// Buffers in the pool now (grows on demand up to the capacity).
    pub(crate) fn provided(&self) -> u16 {
        self.provided
    }
}

impl Drop for Buffers {
    fn drop(&mut self) {
        // SAFETY: allocated in `register` with these layouts; the owning ring has waited
        // for every operation in flight to complete (or leaked the buffers instead), so
        // the kernel no longer reads the ring or writes the pool.
        unsafe {
            alloc::dealloc(self.ring.as_ptr().cast(), self.ring_layout);
            alloc::dealloc(self.memory.as_ptr(), self.memory_layout);
        }
    }
}
