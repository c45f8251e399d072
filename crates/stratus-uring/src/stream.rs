//! A connected TCP stream on the current thread's ring (tokio-uring), plain or TLS: the
//! client and the admin API read and write through the same methods either way.
//!
//! TLS is rustls driven sans-IO around tokio-uring's owned-buffer reads and writes:
//! ciphertext read from the socket goes through `read_tls` and `process_new_packets`,
//! plaintext comes out of rustls's reader; plaintext written goes through its writer,
//! and the records `write_tls` gives are written to the socket. rustls's alerts (a bad
//! record, a failed handshake) are written before an error is returned, and
//! [`Stream::shutdown_write`] sends close_notify before FIN.

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr};

use bytes::{Buf, Bytes, BytesMut};
use rustls::{Connection, IoState};
use tokio_uring::buf::BoundedBuf;

/// Ciphertext read at a time.
const CIPHER_CHUNK: usize = 16 << 10;

/// A connected TCP stream on the current thread's ring, optionally with TLS.
pub struct Stream {
    tcp: tokio_uring::net::TcpStream,
    tls: Option<Box<Tls>>,
}

/// A stream's TLS state.
struct Tls {
    conn: Connection,
    /// Ciphertext read from the socket that rustls has not taken yet.
    cipher: BytesMut,
}

/// rustls's error as an I/O error (rustls does the same in its own stream types).
fn invalid(err: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, err)
}

/// Reads from `tcp` into `buf`'s spare capacity (growing it to at least `want` spare
/// bytes), appending to what it holds.
async fn read_tcp(
    tcp: &tokio_uring::net::TcpStream,
    mut buf: BytesMut,
    want: usize,
) -> (io::Result<usize>, BytesMut) {
    if buf.capacity() - buf.len() < want {
        buf.reserve(want);
    }
    let (len, cap) = (buf.len(), buf.capacity());
    let (result, slice) = tcp.read(buf.slice(len..cap)).await;
    (result, slice.into_inner())
}

impl Stream {
    pub(crate) fn new(tcp: tokio_uring::net::TcpStream) -> Self {
        Self { tcp, tls: None }
    }

    /// Connects to `addr`, with TCP_NODELAY set.
    pub async fn connect(addr: SocketAddr) -> io::Result<Self> {
        let tcp = tokio_uring::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        Ok(Self::new(tcp))
    }

    /// Runs the TLS handshake of `conn` (a rustls client or server connection) over this
    /// stream; from then on reads and writes go through TLS. Bound it with a timeout: a
    /// silent peer keeps it waiting.
    pub async fn handshake_tls(&mut self, conn: impl Into<Connection>) -> io::Result<()> {
        let mut conn = conn.into();
        // What waits for the peer is bounded by its callers (one response, one frame
        // batch); rustls must take what they write.
        conn.set_buffer_limit(None);
        self.tls = Some(Box::new(Tls {
            conn,
            cipher: BytesMut::new(),
        }));
        loop {
            self.process().await?;
            if !self
                .tls
                .as_ref()
                .is_some_and(|tls| tls.conn.is_handshaking())
            {
                return Ok(());
            }
            if !self.feed().await? {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed during the TLS handshake",
                ));
            }
        }
    }

    /// Processes what rustls was fed and writes what it has to send (handshake
    /// messages, alerts); on an error, its alert goes out first. `None` on a plain
    /// stream.
    async fn process(&mut self) -> io::Result<Option<IoState>> {
        let Some(tls) = &mut self.tls else {
            return Ok(None);
        };
        let processed = tls.conn.process_new_packets();
        let flushed = self.flush_tls().await;
        let state = processed.map_err(invalid)?;
        flushed?;
        Ok(Some(state))
    }

    /// Gives rustls more ciphertext, reading from the socket if none is buffered.
    /// `Ok(false)` at EOF.
    async fn feed(&mut self) -> io::Result<bool> {
        let Some(tls) = &mut self.tls else {
            return Ok(false);
        };
        if tls.cipher.is_empty() {
            let taken = std::mem::take(&mut tls.cipher);
            let (result, returned) = read_tcp(&self.tcp, taken, CIPHER_CHUNK).await;
            tls.cipher = returned;
            if result? == 0 {
                return Ok(false);
            }
        }
        let mut unread = &tls.cipher[..];
        let taken = tls.conn.read_tls(&mut unread)?;
        tls.cipher.advance(taken);
        Ok(true)
    }

    /// Writes the records rustls has to send.
    async fn flush_tls(&mut self) -> io::Result<()> {
        let Some(tls) = &mut self.tls else {
            return Ok(());
        };
        let mut records = Vec::new();
        while tls.conn.wants_write() {
            tls.conn.write_tls(&mut records)?;
        }
        if records.is_empty() {
            return Ok(());
        }
        self.tcp.write_all(records).await.0
    }

    /// Reads into `buf`'s spare capacity (growing it to at least `want` spare bytes),
    /// appending to what it holds. Returns the byte count (0 at EOF, or after the peer's
    /// close_notify) and the buffer.
    pub async fn read_into(&mut self, buf: BytesMut, want: usize) -> (io::Result<usize>, BytesMut) {
        if self.tls.is_none() {
            return read_tcp(&self.tcp, buf, want).await;
        }
        let mut buf = buf;
        let result = self.read_tls_into(&mut buf).await;
        (result, buf)
    }

    async fn read_tls_into(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        loop {
            let Some(state) = self.process().await? else {
                return Ok(0);
            };
            let available = state.plaintext_bytes_to_read();
            if let Some(tls) = &mut self.tls
                && available > 0
            {
                let start = buf.len();
                buf.resize(start + available, 0);
                let n = tls.conn.reader().read(&mut buf[start..])?;
                buf.truncate(start + n);
                return Ok(n);
            }
            if state.peer_has_closed() || !self.feed().await? {
                return Ok(0);
            }
        }
    }

    /// Writes all of `data`.
    pub async fn write_all(&mut self, data: Vec<u8>) -> io::Result<()> {
        match &mut self.tls {
            None => self.tcp.write_all(data).await.0,
            Some(tls) => {
                tls.conn.writer().write_all(&data)?;
                self.flush_tls().await
            }
        }
    }

    /// Writes every frame with as few `writev` calls as the kernel allows (on TLS: as
    /// few records), resuming after partial writes. Returns the emptied vector for reuse.
    pub async fn writev_all(&mut self, mut frames: Vec<Bytes>) -> (io::Result<()>, Vec<Bytes>) {
        if let Some(tls) = &mut self.tls {
            let slices: Vec<IoSlice<'_>> = frames.iter().map(|f| IoSlice::new(f)).collect();
            let total: usize = frames.iter().map(Bytes::len).sum();
            let written = tls.conn.writer().write_vectored(&slices);
            drop(slices);
            frames.clear();
            return match written {
                Ok(n) if n == total => (self.flush_tls().await, frames),
                Ok(_) => (Err(io::ErrorKind::WriteZero.into()), frames),
                Err(e) => (Err(e), frames),
            };
        }
        while !frames.is_empty() {
            let (result, returned) = self.tcp.writev(frames).await;
            frames = returned;
            let mut written = match result {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), frames),
                Ok(n) => n,
                Err(e) => return (Err(e), frames),
            };
            let full = frames.iter().take_while(|f| {
                let fits = f.len() <= written;
                if fits {
                    written -= f.len();
                }
                fits
            });
            let full = full.count();
            frames.drain(..full);
            if let Some(first) = frames.first_mut() {
                *first = Bytes::slice(first, written..);
            }
        }
        (Ok(()), frames)
    }

    /// Sends FIN after everything written so far (on TLS, after close_notify).
    pub async fn shutdown_write(&mut self) {
        if let Some(tls) = &mut self.tls {
            tls.conn.send_close_notify();
            // The peer may be gone already: FIN (or nothing) is all that is left to do.
            let _ = self.flush_tls().await;
        }
        // ENOTCONN after a reset is expected and harmless here.
        let _ = self.tcp.shutdown(Shutdown::Write);
    }

    /// Shuts both directions down: every pending operation on the socket completes at
    /// once (a blocked read returns 0), so the tasks using it end.
    pub fn abort(&self) {
        let _ = self.tcp.shutdown(Shutdown::Both);
    }
}

impl Drop for Stream {
    /// tokio-uring does not cancel an operation whose future is dropped (a read abandoned
    /// at a timeout stays in flight, holding the descriptor open, until data arrives).
    /// Shutting the socket down completes every pending operation at once, so dropping a
    /// `Stream` always releases the connection.
    fn drop(&mut self) {
        let _ = self.tcp.shutdown(Shutdown::Both);
    }
}
