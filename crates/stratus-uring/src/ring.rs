//! A worker's own io_uring, driven directly through the io-uring crate: multishot accept,
//! multishot receive into a provided buffer ring, `sendmsg` of many frames at once, and a
//! wake-up eventfd. No task, future or buffer per connection: an idle socket costs one
//! armed receive in the kernel and nothing here.
//!
//! tokio-uring has no multishot operations and no provided buffer rings, and every
//! operation it runs owns a buffer; measurement (README, Performance) showed an idle
//! connection costing about 9 KB that way. This module keeps every pointer handed to the
//! kernel alive until its completion: send batches are boxed and owned here until the
//! kernel is done with them, receive buffers belong to [`Buffers`], and the wake-up
//! counter is boxed. It counts the operations in flight, and dropping a ring cancels them
//! all and waits for their completions before any of that memory is freed (as
//! tokio-uring's driver does), whatever the order of the fields.
//!
//! Completions are kept from overflowing: the completion queue holds four times the
//! submission queue, and a caller that submits many operations in one turn takes
//! completions out of the kernel's queue between batches ([`Ring::reap`]). Should it
//! still overflow, the kernel keeps the excess (`IORING_FEAT_NODROP`): that is counted
//! ([`Ring::overflows`]) and taken as a reason to reap sooner, not as a failure. Only if
//! the kernel cannot allocate for that backlog are completions lost; that is counted too
//! ([`Ring::lost_completions`]), and the ring goes on.
//!
//! Completions come back as [`Event`]s tagged with the caller's 56-bit token.

use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use bytes::Bytes;
use io_uring::{IoUring, cqueue, opcode, squeue, types};
use slab::Slab;

use crate::buffers::{self, Buffers};

/// Bits of `user_data` left for the caller's token (the top byte names the operation).
const TOKEN_BITS: u32 = 56;
const TOKEN_MASK: u64 = (1 << TOKEN_BITS) - 1;

const ACCEPT: u64 = 1;
const RECV: u64 = 2;
const SEND: u64 = 3;
const WAKE: u64 = 4;
const CANCEL: u64 = 5;

/// Finished sends kept for reuse: enough for a busy turn, not a high-water mark of
/// memory after a burst.
const SPARE_SENDS: usize = 256;

/// Errors after which the same call can simply be made again.
fn transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAGAIN | libc::EBUSY | libc::EINTR)
    )
}

fn user_data(kind: u64, token: u64) -> u64 {
    kind << TOKEN_BITS | (token & TOKEN_MASK)
}

/// Sizes of a [`Ring`].
#[derive(Debug, Clone, Copy)]
pub struct RingConfig {
    /// Submission queue entries (the completion queue gets four times as many).
    pub entries: u32,
    /// Most receive buffers (a power of two up to 32768); the pool grows to it on demand.
    pub recv_buffers: u16,
    /// Bytes per receive buffer.
    pub recv_buffer_size: usize,
}

impl Default for RingConfig {
    fn default() -> Self {
        Self {
            entries: 4096,
            recv_buffers: 1024,
            recv_buffer_size: 64 << 10,
        }
    }
}

/// A completed operation.
#[derive(Debug)]
pub enum Event {
    /// A connection was accepted (or accepting failed); without `more` the multishot
    /// accept has ended and must be re-armed to accept again.
    Accepted {
        /// The token the accept was armed with.
        token: u64,
        /// The new connection.
        result: io::Result<OwnedFd>,
        /// The multishot accept goes on.
        more: bool,
    },
    /// Bytes arrived (read them with [`Ring::received`] before the next event); `Ok(0)`
    /// is the peer's FIN. Without `more` the multishot receive has ended.
    Received {
        /// The token the receive was armed with.
        token: u64,
        /// Bytes received.
        result: io::Result<usize>,
        /// The multishot receive goes on.
        more: bool,
    },
    /// A send finished: how many bytes went out, and the frames back for reuse (the
    /// caller resends whatever was not written).
    Sent {
        /// The token the send was made with.
        token: u64,
        /// Bytes written.
        result: io::Result<usize>,
        /// The frames given to [`Ring::send`].
        frames: Vec<Bytes>,
    },
    /// The wake-up eventfd fired; re-arm it with [`Ring::arm_wake`].
    Woken,
}

/// A send in flight: the frames, and the iovecs and header pointing into them. Boxed,
/// so the header's address stays fixed while the kernel holds it.
struct Send {
    token: u64,
    frames: Vec<Bytes>,
    iov: Vec<libc::iovec>,
    msg: libc::msghdr,
}

/// How long dropping a ring waits for the operations it cancelled to complete; past it,
/// the memory they might still use is leaked rather than freed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// One worker's io_uring.
pub struct Ring {
    /// Dropped by hand: first, once every operation has completed (see `Drop`).
    uring: ManuallyDrop<IoUring>,
    /// Dropped by hand: after the ring, and only if every operation completed.
    buffers: ManuallyDrop<Buffers>,
    sends: Slab<Box<Send>>,
    /// Finished sends, kept for their allocations (boxed: they go back into `sends`).
    #[allow(clippy::vec_box)]
    spare_sends: Vec<Box<Send>>,
    wake_counter: Box<u64>,
    /// Completions taken from the queue and not yet returned by `next_event`.
    ready: std::collections::VecDeque<cqueue::Entry>,
    /// The buffer (id, length) of the last `Received` event, recycled at the next event.
    received: Option<(u16, usize)>,
    /// Operations submitted (or queued to be) whose last completion has not come.
    in_flight: usize,
    /// Times the completion queue overflowed into the kernel's backlog (counted when the
    /// overflow is first seen, not at every look while it lasts).
    overflows: u64,
    /// The kernel's overflow flag, as last seen.
    overflowing: bool,
    /// Completions the kernel could not keep (it was out of memory for its backlog).
    lost: u64,
}

impl Ring {
    /// Sets up a ring for the calling thread (single issuer: only this thread may use it).
    pub fn new(config: RingConfig) -> io::Result<Self> {
        let build = |defer: bool| {
            let mut builder = IoUring::builder();
            builder
                .setup_cqsize(config.entries * 4)
                .setup_single_issuer();
            if defer {
                // Completions are processed only when this thread asks for them, in a
                // batch, never by interrupting it.
                builder.setup_defer_taskrun();
            } else {
                builder.setup_coop_taskrun();
            }
            builder.build(config.entries)
        };
        let uring = build(true).or_else(|_| build(false))?;
        let buffers = Buffers::register(&uring, config.recv_buffers, config.recv_buffer_size)?;
        Ok(Self {
            uring: ManuallyDrop::new(uring),
            buffers: ManuallyDrop::new(buffers),
            sends: Slab::new(),
            spare_sends: Vec::new(),
            wake_counter: Box::new(0),
            ready: std::collections::VecDeque::new(),
            received: None,
            in_flight: 0,
            overflows: 0,
            overflowing: false,
            lost: 0,
        })
    }

    /// Completions the queue holds: a caller that submits many operations in one turn
    /// should [`reap`](Self::reap) well before this many are outstanding.
    pub fn completion_capacity(&self) -> usize {
        self.uring.params().cq_entries() as usize
    }

    /// Operations whose last completion has not come yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Times the completion queue overflowed into the kernel's backlog (nothing is lost
    /// then, but the caller should reap more often).
    pub fn overflows(&self) -> u64 {
        self.overflows
    }

    /// Completions the kernel dropped: it could not keep its overflow backlog. Operations
    /// they belonged to never report back (a well-reaped ring never gets here).
    pub fn lost_completions(&self) -> u64 {
        self.lost
    }

    /// Takes the completions the kernel has posted into this ring's own queue, freeing
    /// room in the kernel's; [`next_event`](Self::next_event) hands them out in order.
    pub fn reap(&mut self) {
        self.note_overflow();
        self.ready.extend(self.uring.completion());
    }

    /// Counts an overflow the kernel reports, and completions it had to drop.
    fn note_overflow(&mut self) {
        let overflowing = self.uring.submission().cq_overflow();
        if overflowing && !self.overflowing {
            self.overflows += 1;
        }
        self.overflowing = overflowing;
        let dropped = u64::from(self.uring.completion().overflow());
        if dropped > self.lost {
            tracing::error!(lost = dropped - self.lost, "io_uring dropped completions");
            self.lost = dropped;
        }
    }

    /// Queues an entry, submitting first when the submission queue is full.
    ///
    /// # Safety
    /// Every pointer in `entry` must stay valid until its completion.
    unsafe fn push(&mut self, entry: &squeue::Entry) {
        self.in_flight += 1;
        loop {
            // SAFETY: the caller guarantees the entry's pointers outlive the operation.
            if unsafe { self.uring.submission().push(entry) }.is_ok() {
                return;
            }
            if let Err(err) = self.uring.submit() {
                // Nothing can be queued until the kernel takes entries: it refuses when
                // out of memory, or (older kernels) while completions it could not post
                // wait; taking the completions out makes room for those.
                tracing::warn!(error = %err, "io_uring submit failed");
                self.reap();
                std::thread::yield_now();
            }
        }
    }

    /// Accepts connections on `listener` until cancelled or failed.
    pub fn accept_multishot(&mut self, listener: RawFd, token: u64) {
        let entry = opcode::AcceptMulti::new(types::Fd(listener))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(user_data(ACCEPT, token));
        // SAFETY: a multishot accept points at no memory of ours.
        unsafe { self.push(&entry) }
    }

    /// Receives on `socket` into the buffer ring until the peer's FIN, an error, or a
    /// cancel.
    pub fn recv_multishot(&mut self, socket: RawFd, token: u64) {
        let entry = opcode::RecvMulti::new(types::Fd(socket), buffers::GROUP)
            .build()
            .user_data(user_data(RECV, token));
        // SAFETY: the buffers belong to `self.buffers`, registered for the ring's life.
        unsafe { self.push(&entry) }
    }

    /// Receives once on `socket` into one buffer of the buffer ring (at most a buffer's
    /// worth): for a connection whose input is read sparingly, so the kernel hands over
    /// no more than one buffer before it is asked again.
    pub fn recv_once(&mut self, socket: RawFd, token: u64) {
        let len = u32::try_from(self.buffers.size()).unwrap_or(u32::MAX);
        let entry = opcode::Recv::new(types::Fd(socket), std::ptr::null_mut(), len)
            .buf_group(buffers::GROUP)
            .build()
            .flags(squeue::Flags::BUFFER_SELECT)
            .user_data(user_data(RECV, token));
        // SAFETY: no buffer of ours is named: the kernel picks one of `self.buffers`,
        // registered for the ring's life.
        unsafe { self.push(&entry) }
    }

    /// Cancels the multishot receive running under `token` (its last event follows).
    pub fn cancel_recv(&mut self, token: u64) {
        let entry = opcode::AsyncCancel::new(user_data(RECV, token))
            .build()
            .user_data(user_data(CANCEL, token));
        // SAFETY: a cancel points at no memory.
        unsafe { self.push(&entry) }
    }

    /// Cancels the multishot accept running under `token`.
    pub fn cancel_accept(&mut self, token: u64) {
        let entry = opcode::AsyncCancel::new(user_data(ACCEPT, token))
            .build()
            .user_data(user_data(CANCEL, token));
        // SAFETY: a cancel points at no memory.
        unsafe { self.push(&entry) }
    }

    /// Sends `frames`, in order, with one `sendmsg` (the kernel may take only part).
    pub fn send(&mut self, socket: RawFd, token: u64, frames: Vec<Bytes>) {
        let mut send = self.spare_sends.pop().unwrap_or_else(|| {
            Box::new(Send {
                token,
                frames: Vec::new(),
                iov: Vec::new(),
                // SAFETY: msghdr is plain data for which all zeroes is a valid value.
                msg: unsafe { std::mem::zeroed() },
            })
        });
        send.token = token;
        send.frames = frames;
        send.iov.clear();
        send.iov.extend(send.frames.iter().map(|f| libc::iovec {
            iov_base: f.as_ptr() as *mut libc::c_void,
            iov_len: f.len(),
        }));
        send.msg.msg_iov = send.iov.as_mut_ptr();
        send.msg.msg_iovlen = send.iov.len();
        let msg: *const libc::msghdr = &send.msg;
        let key = self.sends.insert(send);
        let entry = opcode::SendMsg::new(types::Fd(socket), msg)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build()
            .user_data(user_data(SEND, key as u64));
        // SAFETY: `msg` points into a box held in `self.sends` until this send's
        // completion; its iovecs point into `frames`, held in the same box.
        unsafe { self.push(&entry) }
    }

    /// Arms one read of the wake-up eventfd (an [`Event::Woken`] follows when it fires).
    pub fn arm_wake(&mut self, eventfd: RawFd) {
        let counter: *mut u64 = &mut *self.wake_counter;
        let entry = opcode::Read::new(types::Fd(eventfd), counter.cast(), 8)
            .build()
            .user_data(user_data(WAKE, 0));
        // SAFETY: the counter is boxed and owned by the ring for its whole life.
        unsafe { self.push(&entry) }
    }

    /// Submits everything queued, without waiting. The kernel being short of memory for
    /// requests (EAGAIN) or busy flushing completions (EBUSY) is not an error: what is
    /// queued stays queued for the next submit.
    pub fn submit(&mut self) -> io::Result<()> {
        match self.uring.submit() {
            Err(e) if transient(&e) => Ok(()),
            result => result.map(drop),
        }
    }

    /// Submits everything queued and waits for at least one completion, or `timeout`.
    ///
    /// `EBADR` (the kernel dropped completions it could not keep) is counted and logged,
    /// not returned: the ring goes on.
    pub fn submit_and_wait(&mut self, timeout: Duration) -> io::Result<()> {
        if !self.ready.is_empty() {
            return self.submit();
        }
        let ts = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.uring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            Err(e) if transient(&e) || e.raw_os_error() == Some(libc::ETIME) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBADR) => {
                self.note_overflow();
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The next completion, if any. The bytes of the previous `Received` event go back
    /// to the kernel now.
    pub fn next_event(&mut self) -> Option<Event> {
        if let Some((bid, _)) = self.received.take() {
            self.buffers.recycle(bid);
        }
        loop {
            if self.ready.is_empty() {
                self.reap();
            }
            let cqe = self.ready.pop_front()?;
            if let Some(event) = self.complete(&cqe) {
                return Some(event);
            }
        }
    }

    /// The bytes of the last [`Event::Received`] (empty after any other event).
    pub fn received(&self) -> &[u8] {
        self.received
            .map_or(&[], |(bid, len)| self.buffers.data(bid, len))
    }

    fn complete(&mut self, cqe: &cqueue::Entry) -> Option<Event> {
        let (kind, token) = (cqe.user_data() >> TOKEN_BITS, cqe.user_data() & TOKEN_MASK);
        let (res, flags) = (cqe.result(), cqe.flags());
        let result = if res < 0 {
            Err(io::Error::from_raw_os_error(-res))
        } else {
            Ok(res as usize)
        };
        let more = cqueue::more(flags);
        if !more {
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        match kind {
            ACCEPT => Some(Event::Accepted {
                token,
                // SAFETY: a successful accept returns a new descriptor that nobody owns yet.
                result: result.map(|fd| unsafe { OwnedFd::from_raw_fd(fd as RawFd) }),
                more,
            }),
            RECV => {
                if let Some(bid) = cqueue::buffer_select(flags) {
                    self.received = Some((bid, *result.as_ref().unwrap_or(&0)));
                }
                if res == -libc::ENOBUFS && self.buffers.grow() {
                    tracing::debug!(
                        buffers = self.buffers.provided(),
                        "receive buffer pool grew"
                    );
                }
                Some(Event::Received {
                    token,
                    result,
                    more,
                })
            }
            SEND => {
                let mut send = self.sends.try_remove(token as usize)?;
                let frames = std::mem::take(&mut send.frames);
                let token = send.token;
                send.iov.clear();
                if self.spare_sends.len() < SPARE_SENDS {
                    self.spare_sends.push(send);
                }
                Some(Event::Sent {
                    token,
                    result,
                    frames,
                })
            }
            WAKE => Some(Event::Woken),
            _ => None,
        }
    }

    /// Receive buffers in the pool now.
    pub fn recv_buffers(&self) -> u16 {
        self.buffers.provided()
    }
}

impl Ring {
    /// Cancels every operation in flight and waits (up to [`DRAIN_TIMEOUT`]) for each to
    /// complete; `true` if they all did. Dropping a ring does this too; then, if some did
    /// not complete, the memory they might still use is leaked rather than freed.
    pub fn shutdown(mut self) -> bool {
        self.drain()
    }

    fn drain(&mut self) -> bool {
        if self.in_flight == 0 {
            return true;
        }
        let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(user_data(CANCEL, 0));
        // SAFETY: a cancel points at no memory.
        unsafe { self.push(&cancel) }
        for cqe in std::mem::take(&mut self.ready) {
            if !cqueue::more(cqe.flags()) {
                self.in_flight = self.in_flight.saturating_sub(1);
            }
        }
        let deadline = std::time::Instant::now() + DRAIN_TIMEOUT;
        while self.in_flight > 0 {
            let now = std::time::Instant::now();
            if now >= deadline {
                break;
            }
            let ts = types::Timespec::from(deadline - now);
            let args = types::SubmitArgs::new().timespec(&ts);
            match self.uring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e) if transient(&e) || e.raw_os_error() == Some(libc::ETIME) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBADR) => {}
                Err(_) => break,
            }
            for cqe in self.uring.completion() {
                if !cqueue::more(cqe.flags()) {
                    self.in_flight = self.in_flight.saturating_sub(1);
                }
            }
        }
        self.in_flight == 0
    }
}

impl Drop for Ring {
    /// Cancels every operation in flight and waits for each to complete, so the kernel
    /// is done with the send batches, the receive buffers and the wake-up counter before
    /// they are freed; if some do not complete within [`DRAIN_TIMEOUT`], that memory is
    /// leaked instead.
    fn drop(&mut self) {
        let drained = self.drain();
        // SAFETY: `uring` is not used after this (it is dropped once, here). With every
        // operation completed the kernel no longer uses the buffers; if some did not,
        // the buffers are leaked below rather than freed, whenever the kernel tears the
        // ring down.
        unsafe { ManuallyDrop::drop(&mut self.uring) };
        if drained {
            // SAFETY: dropped once, after the ring; no operation can still use a buffer.
            unsafe { ManuallyDrop::drop(&mut self.buffers) };
        } else {
            tracing::error!(
                operations = self.in_flight,
                "io_uring operations did not complete after cancelling; leaking their memory"
            );
            // What the kernel may still write into stays allocated: the receive buffers
            // (left in their ManuallyDrop), the send batches and the wake-up counter.
            std::mem::forget(std::mem::take(&mut self.sends));
            std::mem::forget(std::mem::take(&mut self.wake_counter));
        }
    }
}

impl AsRawFd for Ring {
    fn as_raw_fd(&self) -> RawFd {
        self.uring.as_raw_fd()
    }
}
