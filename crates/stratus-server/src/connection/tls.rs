//! One WebSocket connection's TLS, sans-IO: rustls's `ServerConnection` between the ring
//! and the rest of the connection, so the handshake reader, the session and the send
//! queue see plaintext exactly as on a plain connection.
//!
//! In: received ciphertext goes through `read_tls` and `process_new_packets`, and the
//! plaintext is appended to the connection's read buffer. Out: the connection's
//! [`SendQueue`] keeps holding plaintext frames (so the slow-consumer policy and its
//! discard of frames not yet begun work as on a plain connection); when no send is in
//! flight, [`TlsConn::seal`] encrypts what is queued in one vectored write (records
//! span frames: a burst of small broadcasts costs a few records, not one each) and
//! moves the records to a ciphertext queue of its own, which is what the worker sends.
//! A queued frame is "begun" once it is sealed: TLS records cannot be dropped.
//!
//! Boxed in the connection (`Option<Box<TlsConn>>`): a plain connection pays 8 bytes.

use std::io::{IoSlice, Read, Write};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use rustls::{ServerConfig, ServerConnection};
use stratus_uring::SendQueue;

/// Most queue entries sealed at once.
const MAX_SEAL: usize = 512;

/// A connection's TLS state.
pub(crate) struct TlsConn {
    tls: ServerConnection,
    /// Sealed records waiting for the socket (what a partial send left is put back).
    pub(crate) out: SendQueue,
    /// close_notify has been queued.
    notified: bool,
}

impl TlsConn {
    pub(crate) fn new(config: Arc<ServerConfig>) -> Result<Self, rustls::Error> {
        let mut tls = ServerConnection::new(config)?;
        // The send queue's cap bounds what waits for this peer; rustls must take
        // whatever the worker seals.
        tls.set_buffer_limit(None);
        Ok(Self {
            tls,
            out: SendQueue::default(),
            notified: false,
        })
    }

    /// Whether rustls has records to send (handshake messages, alerts).
    pub(crate) fn wants_write(&self) -> bool {
        self.tls.wants_write()
    }

    /// Decrypts `ciphertext` and appends the plaintext to `plain`. `Ok(true)` once the
    /// peer has sent close_notify (nothing more will come). On a bad record or a
    /// handshake failure, rustls has queued its alert: [`seal`](Self::seal) sends it.
    pub(crate) fn receive(
        &mut self,
        mut ciphertext: &[u8],
        plain: &mut BytesMut,
    ) -> Result<bool, rustls::Error> {
        loop {
            // An empty reader would read as EOF: only feed what there is.
            if !ciphertext.is_empty() {
                self.tls
                    .read_tls(&mut ciphertext)
                    .map_err(|e| rustls::Error::General(e.to_string()))?;
            }
            let state = self.tls.process_new_packets()?;
            let pending = state.plaintext_bytes_to_read();
            if pending > 0 {
                let start = plain.len();
                plain.resize(start + pending, 0);
                let n = self
                    .tls
                    .reader()
                    .read(&mut plain[start..])
                    .map_err(|e| rustls::Error::General(e.to_string()))?;
                plain.truncate(start + n);
            }
            if state.peer_has_closed() {
                return Ok(true);
            }
            if ciphertext.is_empty() {
                return Ok(false);
            }
        }
    }

    /// Queues close_notify (once), to go before FIN.
    pub(crate) fn close_notify(&mut self) {
        if !self.notified {
            self.notified = true;
            self.tls.send_close_notify();
            self.collect();
        }
    }

    /// Whether close_notify has been queued.
    pub(crate) fn notified(&self) -> bool {
        self.notified
    }

    /// When no sealed record waits: encrypts the plaintext frames queued in `plain`
    /// (they leave it) and collects every record rustls has to send (handshake
    /// messages, alerts, data) into [`out`](Self::out). `scratch` is an empty vector to
    /// borrow.
    pub(crate) fn seal(&mut self, plain: &mut SendQueue, scratch: &mut Vec<Bytes>) {
        if self.out.has_pending() {
            return;
        }
        if plain.has_pending() && !self.notified {
            plain.take_batch(scratch, MAX_SEAL);
            let slices: Vec<IoSlice<'_>> = scratch.iter().map(|f| IoSlice::new(f)).collect();
            let total = scratch.iter().map(Bytes::len).sum();
            // Unlimited buffer: all is taken, or the connection failed (and sends its
            // alert instead).
            let _ = self.tls.writer().write_vectored(&slices);
            plain.sent(scratch, total);
        }
        self.collect();
    }

    /// Moves rustls's pending records to `out`, as one buffer.
    fn collect(&mut self) {
        if !self.tls.wants_write() {
            return;
        }
        let mut records = Vec::new();
        while self.tls.wants_write() {
            // Writing into a Vec cannot fail.
            if self.tls.write_tls(&mut records).is_err() {
                break;
            }
        }
        self.out.push(Bytes::from(records));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_connection_pays_one_pointer_for_tls() {
        assert_eq!(size_of::<Option<Box<TlsConn>>>(), 8);
        // The boxed state, for the README's per-connection memory figure (rustls
        // allocates its buffers on top, as records come and go).
        eprintln!("TlsConn: {} bytes", size_of::<TlsConn>());
    }
}
