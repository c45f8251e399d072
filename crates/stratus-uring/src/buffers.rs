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
use std::mem::MaybeUninit;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::IoUring;
use io_uring::types::BufRingEntry;

/// The buffer group id Stratus registers its receive buffers under.
pub(crate) const GROUP: u16 = 0;

/// Buffers handed to the kernel at start, and added at each growth.
const GROWTH: u16 = 128;

pub(crate) struct Buffers {
    /// `capacity` ring entries, page aligned, shared with the kernel.
    ring: NonNull<BufRingEntry>,
    ring_layout: Layout,
    /// `capacity * size` bytes; the kernel writes received data here.
    memory: Box<[MaybeUninit<u8>]>,
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
        let ring_layout = Layout::array::<BufRingEntry>(usize::from(capacity))
            .and_then(|l| l.align_to(4096))
            .map_err(io::Error::other)?;
        // SAFETY: the layout has a non-zero size (capacity >= 1 entry of 16 bytes).
        let ring = unsafe { alloc::alloc_zeroed(ring_layout) }.cast::<BufRingEntry>();
        let ring = NonNull::new(ring).ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        let memory = Box::new_uninit_slice(usize::from(capacity) * size);
        let mut buffers = Self {
            ring,
            ring_layout,
            memory,
            size,
            capacity,
            provided: 0,
            tail: 0,
        };
        // SAFETY: `ring` holds `capacity` entries and lives until `Drop`, which runs only
        // after the io_uring instance that uses it is gone (the owner drops it first).
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
        let filled = &self.memory[start..start + len.min(self.size)];
        // SAFETY: the kernel wrote `len` bytes at the start of buffer `bid` before posting
        // the completion that named it, and does not touch the buffer again until
        // `recycle` (which needs `&mut self`, so this borrow has ended) hands it back.
        unsafe { filled.assume_init_ref() }
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
        // SAFETY: `index < capacity`, so the entry is inside the ring allocation; the
        // kernel does not read entries past the published tail, so writing this one races
        // with nothing.
        let entry = unsafe { &mut *self.ring.as_ptr().add(index) };
        entry.set_addr(self.memory[start..].as_ptr() as u64);
        entry.set_len(self.size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes every pushed buffer visible to the kernel.
    fn publish(&self) {
        // SAFETY: the tail field lives inside the ring's first entry (which the kernel
        // never reads as a buffer while it is the tail); it is a naturally aligned u16
        // that the kernel reads atomically, so an atomic release store is the protocol.
        let tail = unsafe { &*BufRingEntry::tail(self.ring.as_ptr()).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }

    /// Buffers in the pool now (grows on demand up to the capacity).
    pub(crate) fn provided(&self) -> u16 {
        self.provided
    }
}

impl Drop for Buffers {
    fn drop(&mut self) {
        // SAFETY: allocated in `register` with this layout; the owning ring dropped the
        // io_uring instance (and with it the kernel's reference) before this runs.
        unsafe { alloc::dealloc(self.ring.as_ptr().cast(), self.ring_layout) }
    }
}
