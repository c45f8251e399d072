//! Stratus client: a WebSocket client over io_uring on the same sans-IO core as the
//! server (`stratus-proto`), used by the load generators and by Autobahn's client mode.
//!
//! A [`Client`] is driven by its caller on a `stratus_uring` runtime: [`Client::recv`]
//! reads and decodes, answering pings and Close as it goes; [`Client::send`] writes one
//! frame. Masking keys are fresh and random for every frame.
//!
//! permessage-deflate is offered by default (`client_no_context_takeover;
//! client_max_window_bits`) and used in whatever form the server answers.
//!
//! `wss://` URLs run over TLS (rustls, `ring` provider), trusting the Mozilla roots of
//! `webpki-roots` by default (no system store lookup: the same roots on every machine),
//! or whatever [`ClientConfig::tls`] says (see [`tls_trusting`] for a private CA).
//!
//! Not here: reconnection.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use bytes::BytesMut;
use stratus_proto::handshake::{ClientHandshake, HandshakeError};
use stratus_proto::{CloseCode, Limits, Message, ProtocolError, Session};
use stratus_uring::Stream;
use tokio::time::{Instant, timeout, timeout_at};

/// Smallest read.
const READ_CHUNK: usize = 4096;

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL is not a usable `ws://` or `wss://` URL.
    #[error("bad URL: {0}")]
    Url(String),
    /// TLS settings that cannot be used (a CA file with no certificate in it).
    #[error("TLS settings: {0}")]
    Tls(String),
    /// A socket error.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The server's handshake response was refused.
    #[error("handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    /// The server's permessage-deflate answer is not one the client can accept.
    #[error("extension negotiation failed: {0}")]
    Extension(#[from] stratus_deflate::ClientNegotiationError),
    /// The server broke the protocol; the client sent a Close with the error's code.
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// The connection ended without a closing handshake (close code 1006).
    #[error("connection closed abnormally")]
    Abnormal,
    /// The connection is closing; nothing more can be sent.
    #[error("connection is closing")]
    Closing,
    /// The server did not answer in time.
    #[error("timed out")]
    Timeout,
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Limits on what the server may send.
    pub limits: Limits,
    /// Time allowed for TCP connect plus the opening handshake.
    pub connect_timeout: Duration,
    /// Time allowed for the server's Close and TCP close after ours.
    pub close_timeout: Duration,
    /// Offer permessage-deflate.
    pub deflate: bool,
    /// Messages shorter than this many bytes are sent uncompressed.
    pub deflate_threshold: usize,
    /// TLS settings for `wss://` URLs; `None` trusts the Mozilla roots (webpki-roots).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Subprotocols to offer (`Sec-WebSocket-Protocol`), in order of preference; the
    /// server must answer with one of them, or with none.
    pub protocols: Vec<String>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            connect_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(3),
            deflate: true,
            deflate_threshold: 64,
            tls: None,
            protocols: Vec::new(),
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS settings trusting `roots`.
fn tls_config(roots: rustls::RootCertStore) -> Result<Arc<rustls::ClientConfig>, Error> {
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// TLS settings that trust the CA certificates in `ca_pem` (PEM `CERTIFICATE` blocks)
/// besides the Mozilla roots: for a private CA, or a self-signed server certificate.
pub fn tls_trusting(ca_pem: &[u8]) -> Result<Arc<rustls::ClientConfig>, Error> {
    let mut roots = mozilla_roots();
    let mut added = 0;
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| Error::Tls(format!("CA certificate: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| Error::Tls(format!("CA certificate: {e}")))?;
        added += 1;
    }
    if added == 0 {
        return Err(Error::Tls("no CA certificate in the PEM data".into()));
    }
    tls_config(roots)
}

/// The TLS settings `config` asks for, or the default ones (built once).
fn tls_settings(config: &ClientConfig) -> Result<Arc<rustls::ClientConfig>, Error> {
    static DEFAULT: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    if let Some(tls) = &config.tls {
        return Ok(tls.clone());
    }
    if let Some(tls) = DEFAULT.get() {
        return Ok(tls.clone());
    }
    let tls = tls_config(mozilla_roots())?;
    Ok(DEFAULT.get_or_init(|| tls).clone())
}

fn mozilla_roots() -> rustls::RootCertStore {
    rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned())
}

/// A rustls client connection to `name` with the settings `config` asks for.
fn tls_connection(
    config: &ClientConfig,
    name: ServerName<'static>,
) -> Result<rustls::ClientConnection, Error> {
    rustls::ClientConnection::new(tls_settings(config)?, name)
        .map_err(|e| Error::Tls(e.to_string()))
}

/// An open WebSocket connection.
pub struct Client {
    stream: Stream,
    session: Session,
    buf: BytesMut,
    config: ClientConfig,
}

/// Connects to a `ws://` or `wss://` URL with the default settings.
pub async fn connect(url: &str) -> Result<Client, Error> {
    connect_with(url, ClientConfig::default()).await
}

/// Connects to a `ws://` or `wss://` URL.
pub async fn connect_with(url: &str, config: ClientConfig) -> Result<Client, Error> {
    let target = Target::parse(url)?;
    match timeout(config.connect_timeout, open(&target, config)).await {
        Ok(result) => result,
        Err(_) => Err(Error::Timeout),
    }
}

/// Where a URL points.
struct Target {
    addr: SocketAddr,
    host: String,
    resource: String,
    /// On `wss://`: the name the server's certificate must carry.
    tls: Option<ServerName<'static>>,
}

impl Target {
    fn parse(url: &str) -> Result<Self, Error> {
        let url = url::Url::parse(url).map_err(|e| Error::Url(e.to_string()))?;
        let secure = match url.scheme() {
            "ws" => false,
            "wss" => true,
            other => return Err(Error::Url(format!("scheme {other} is not ws or wss"))),
        };
        let host = url.host_str().ok_or_else(|| Error::Url("no host".into()))?;
        let port = url.port_or_known_default().unwrap_or(80);
        let tls = secure
            .then(|| ServerName::try_from(host.trim_matches(['[', ']']).to_owned()))
            .transpose()
            .map_err(|e| Error::Url(format!("{host} is not a TLS server name: {e}")))?;
        let addr = (host.trim_matches(['[', ']']), port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| Error::Url(format!("{host} has no address")))?;
        let mut resource = url.path().to_owned();
        if let Some(query) = url.query() {
            resource.push('?');
            resource.push_str(query);
        }
        let host = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        Ok(Self {
            addr,
            host,
            resource,
            tls,
        })
    }
}

/// Fresh bytes from the OS's random source (handshake nonces, masking-key seeds).
fn random<const N: usize>() -> Result<[u8; N], Error> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(io::Error::from)?;
    Ok(bytes)
}

/// The opening handshake as bytes in, session out: shared by the async client and the
/// blocking hand-off.
struct Opening {
    handshake: ClientHandshake,
    buf: BytesMut,
    config: ClientConfig,
}

impl Opening {
    /// The handshake state and the request to send.
    fn start(target: &Target, config: ClientConfig) -> Result<(Self, Vec<u8>), Error> {
        let offer = config.deflate.then(stratus_deflate::client_offer);
        let protocols: Vec<&str> = config.protocols.iter().map(String::as_str).collect();
        let (handshake, request) = ClientHandshake::new(
            &target.host,
            &target.resource,
            offer.as_deref(),
            &protocols,
            random()?,
        );
        let opening = Self {
            handshake,
            buf: BytesMut::with_capacity(READ_CHUNK),
            config,
        };
        Ok((opening, request))
    }

    /// After bytes were added to `buf`: the session once the response head is complete
    /// (bytes after it stay in `buf`).
    fn advance(&mut self) -> Result<Option<Session>, Error> {
        let Some((response, head_len)) = self.handshake.read(&self.buf)? else {
            return Ok(None);
        };
        let _ = self.buf.split_to(head_len);
        let mut session = Session::client(self.config.limits, random()?);
        if let Some(agreed) = stratus_deflate::accept_response(&response.extensions)? {
            session.set_compression(agreed.boxed_compression(self.config.deflate_threshold));
        }
        Ok(Some(session))
    }
}

async fn open(target: &Target, config: ClientConfig) -> Result<Client, Error> {
    let mut stream = Stream::connect(target.addr).await?;
    if let Some(name) = &target.tls {
        stream
            .handshake_tls(tls_connection(&config, name.clone())?)
            .await?;
    }
    let (mut opening, request) = Opening::start(target, config)?;
    stream.write_all(request).await?;
    loop {
        let buf = std::mem::take(&mut opening.buf);
        let (result, buf) = stream.read_into(buf, READ_CHUNK).await;
        opening.buf = buf;
        if result? == 0 {
            return Err(Error::Abnormal);
        }
        if let Some(session) = opening.advance()? {
            return Ok(Client {
                stream,
                session,
                buf: opening.buf,
                config: opening.config,
            });
        }
    }
}

/// A connection opened with blocking socket calls, handed over to a caller that runs its
/// own I/O loop (the load generators drive thousands of these from one io_uring).
pub struct Handoff {
    /// The connected socket (blocking mode, TCP_NODELAY set).
    pub socket: std::net::TcpStream,
    /// The session, with compression set up as negotiated.
    pub session: Session,
    /// Bytes that arrived after the handshake response: feed them to the session first.
    pub leftover: BytesMut,
    /// On `wss://`: the TLS state, handshake done. Every byte read from the socket goes
    /// through it (it may already hold received plaintext), and every byte written.
    pub tls: Option<Box<rustls::ClientConnection>>,
}

/// Connects to a `ws://` or `wss://` URL with blocking socket calls and returns the open
/// connection's parts, bounded by the connect timeout.
pub fn connect_blocking(url: &str, config: ClientConfig) -> Result<Handoff, Error> {
    use std::io::{Read, Write};
    let target = Target::parse(url)?;
    let mut tls = match &target.tls {
        Some(name) => Some(Box::new(tls_connection(&config, name.clone())?)),
        None => None,
    };
    let socket = std::net::TcpStream::connect_timeout(&target.addr, config.connect_timeout)?;
    socket.set_nodelay(true)?;
    socket.set_read_timeout(Some(config.connect_timeout))?;
    let (mut opening, request) = Opening::start(&target, config)?;
    let mut sock = &socket;
    match &mut tls {
        Some(conn) => rustls::Stream::new(&mut **conn, &mut sock).write_all(&request)?,
        None => sock.write_all(&request)?,
    }
    let mut chunk = [0u8; READ_CHUNK];
    loop {
        let read = match &mut tls {
            Some(conn) => rustls::Stream::new(&mut **conn, &mut sock).read(&mut chunk),
            None => sock.read(&mut chunk),
        };
        let n = match read {
            Ok(n) => n,
            // io_uring task work on this thread (a caller's ring) can interrupt a read.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(Error::Timeout);
            }
            Err(e) => return Err(Error::Io(e)),
        };
        if n == 0 {
            return Err(Error::Abnormal);
        }
        opening.buf.extend_from_slice(&chunk[..n]);
        if let Some(session) = opening.advance()? {
            socket.set_read_timeout(None)?;
            return Ok(Handoff {
                socket,
                session,
                leftover: opening.buf,
                tls,
            });
        }
    }
}

impl Client {
    /// Sends a message (or a Close, which starts the closing handshake).
    pub async fn send(&mut self, message: &Message) -> Result<(), Error> {
        self.session.send(message).map_err(|_| Error::Closing)?;
        self.flush().await
    }

    /// Receives the next message. Pings are answered and a Close is echoed before they
    /// are returned. `Ok(None)` once the closing handshake is complete and the server has
    /// closed TCP. A protocol error from the server fails the connection: the client sends
    /// a Close with the error's code, waits for the server to close, and returns the error.
    pub async fn recv(&mut self) -> Result<Option<Message>, Error> {
        loop {
            match self.session.handle_read(&mut self.buf) {
                Ok(Some(message)) => {
                    self.flush().await?;
                    return Ok(Some(message));
                }
                Ok(None) => {}
                Err(err) => {
                    self.flush().await?;
                    self.await_server_close().await;
                    return Err(Error::Protocol(err));
                }
            }
            if self.session.is_closed() {
                self.await_server_close().await;
                return Ok(None);
            }
            if !self.read_more(None).await? {
                return Err(Error::Abnormal);
            }
        }
    }

    /// Closes with `code` and `reason`: sends Close, then reads (dropping messages) until
    /// the server's Close and TCP close, or the close timeout.
    pub async fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), Error> {
        self.session.close(code, reason);
        self.flush().await?;
        let deadline = Instant::now() + self.config.close_timeout;
        while !self.session.is_closed() {
            let _ = self.session.handle_read(&mut self.buf);
            self.flush().await?;
            if self.session.is_closed() {
                break;
            }
            if !self.read_more(Some(deadline)).await? {
                return Ok(());
            }
        }
        self.await_server_close().await;
        Ok(())
    }

    /// Writes everything the session has queued.
    async fn flush(&mut self) -> Result<(), Error> {
        let frames: Vec<_> = std::iter::from_fn(|| self.session.poll_transmit()).collect();
        if !frames.is_empty() {
            self.stream.writev_all(frames).await.0?;
        }
        Ok(())
    }

    /// Reads more bytes; `false` at EOF.
    async fn read_more(&mut self, deadline: Option<Instant>) -> Result<bool, Error> {
        let want = self
            .session
            .wanted_len()
            .saturating_sub(self.buf.len())
            .max(READ_CHUNK);
        let buf = std::mem::take(&mut self.buf);
        let read = self.stream.read_into(buf, want);
        let (result, buf) = match deadline {
            Some(deadline) => timeout_at(deadline, read)
                .await
                .map_err(|_| Error::Timeout)?,
            None => read.await,
        };
        self.buf = buf;
        Ok(result? > 0)
    }

    /// After the closing handshake the server closes TCP first (RFC 6455 §7.1.1): wait
    /// for its FIN, up to the close timeout, dropping anything else.
    async fn await_server_close(&mut self) {
        let deadline = Instant::now() + self.config.close_timeout;
        loop {
            self.buf.clear();
            match self.read_more(Some(deadline)).await {
                Ok(true) => {}
                _ => return,
            }
        }
    }
}
