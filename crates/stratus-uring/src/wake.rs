//! Waking a worker from another thread: an eventfd the worker's ring reads, and a flag
//! so a burst of wake-ups costs one `write` (the worker clears the flag before it looks
//! at its inbox, so nothing sent after that can be missed).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// A worker's wake-up eventfd, shared with every thread that sends it work.
#[derive(Debug)]
pub struct Wake {
    fd: OwnedFd,
    pending: AtomicBool,
}

impl Wake {
    /// A new, non-blocking eventfd.
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new descriptor.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self {
            fd,
            pending: AtomicBool::new(false),
        })
    }

    /// Wakes the worker, unless a wake-up it has not yet seen is pending.
    pub fn wake(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writes 8 bytes from a live stack buffer to our eventfd. It can only
            // fail if the counter would overflow, which means a wake-up is pending anyway.
            let _ = unsafe { libc::write(self.fd.as_raw_fd(), one.as_ptr().cast(), 8) };
        }
    }

    /// Called by the worker when the wake-up fired, before it reads its inbox. A swap,
    /// not a store: with both sides read-modify-writes, a message sent before a waker
    /// saw the flag set is visible to the inbox read that follows.
    pub fn clear(&self) {
        self.pending.swap(false, Ordering::AcqRel);
    }
}

impl AsRawFd for Wake {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
