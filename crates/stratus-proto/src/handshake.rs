//! The opening handshake (RFC 6455 §4): the server reads an HTTP upgrade request from a
//! buffer that may hold only part of it, and answers 101 or an HTTP error; the client
//! builds the request and checks the 101 it gets back. A GET or HEAD with no upgrade
//! headers at all is told apart from a broken upgrade, so a server can answer plain HTTP
//! (a status page) on its WebSocket port.
//!
//! Reading is linear in the bytes received even when they arrive one per read: the end of
//! the head is searched only in bytes not searched before, and httparse runs once, on the
//! complete head. Bytes after the head belong to the WebSocket stream and are left in the
//! caller's buffer.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha1::{Digest, Sha1};

/// The GUID RFC 6455 appends to the key.
const WEBSOCKET_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Limits on the request (or response) head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeLimits {
    /// Most bytes in the head, request line and headers included.
    pub max_head: usize,
    /// Most header lines.
    pub max_headers: usize,
}

impl Default for HandshakeLimits {
    /// 8 KiB and 64 headers.
    fn default() -> Self {
        Self {
            max_head: 8 * 1024,
            max_headers: 64,
        }
    }
}

/// Why a handshake was refused, with the HTTP status the server answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The head is not valid HTTP/1.x.
    #[error("malformed HTTP head: {0}")]
    Malformed(&'static str),
    /// The head is larger than the limit.
    #[error("request head over the size limit")]
    HeadTooLarge,
    /// More header lines than the limit.
    #[error("too many headers")]
    TooManyHeaders,
    /// Not a GET.
    #[error("method is not GET")]
    MethodNotAllowed,
    /// HTTP/1.0 (an upgrade needs HTTP/1.1).
    #[error("HTTP version is not 1.1")]
    UnsupportedHttpVersion,
    /// No Host header.
    #[error("missing Host header")]
    MissingHost,
    /// No `Upgrade: websocket`.
    #[error("missing Upgrade: websocket")]
    MissingUpgrade,
    /// No `upgrade` token in Connection.
    #[error("missing Connection: upgrade")]
    MissingConnectionUpgrade,
    /// Sec-WebSocket-Version missing or not 13.
    #[error("Sec-WebSocket-Version is not 13")]
    UnsupportedVersion,
    /// No Sec-WebSocket-Key.
    #[error("missing Sec-WebSocket-Key")]
    MissingKey,
    /// Sec-WebSocket-Key given more than once.
    #[error("Sec-WebSocket-Key given twice")]
    DuplicateKey,
    /// Sec-WebSocket-Key is not 16 bytes in base64.
    #[error("Sec-WebSocket-Key is not 16 bytes of base64")]
    InvalidKey,
    /// The server answered with another status than 101.
    #[error("server answered {0} instead of 101")]
    UnexpectedStatus(u16),
    /// Sec-WebSocket-Accept does not match the key.
    #[error("Sec-WebSocket-Accept does not match")]
    AcceptMismatch,
    /// The server chose an extension the client did not offer.
    #[error("server chose an extension that was not offered")]
    UnsolicitedExtension,
    /// The server chose a subprotocol the client did not offer.
    #[error("server chose a subprotocol that was not offered")]
    UnsolicitedProtocol,
}

impl HandshakeError {
    /// The HTTP status a server answers this error with.
    pub fn status(&self) -> u16 {
        match self {
            Self::HeadTooLarge | Self::TooManyHeaders => 431,
            Self::MethodNotAllowed => 405,
            Self::MissingUpgrade | Self::MissingConnectionUpgrade | Self::UnsupportedVersion => 426,
            _ => 400,
        }
    }

    /// The whole HTTP error response for this error.
    pub fn response(&self) -> Vec<u8> {
        let extra = match self.status() {
            426 => "Sec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n",
            405 => "Allow: GET\r\n",
            _ => "",
        };
        http_error(self.status(), extra, &self.to_string())
    }
}

/// An HTTP error response with a short text body and `Connection: close`.
pub fn http_error(status: u16, extra_headers: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} {}\r\nConnection: close\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\n{extra_headers}\r\n{body}\n",
        reason_phrase(status),
        body.len() + 1,
    )
    .into_bytes()
}

/// The standard reason phrase for the statuses Stratus sends.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// A complete request head, as a server reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A valid WebSocket upgrade.
    Upgrade(UpgradeRequest),
    /// A GET or HEAD with none of the upgrade headers: plain HTTP, such as a browser
    /// loading a page from the server.
    Plain(PlainRequest),
}

/// A GET or HEAD that does not ask for WebSocket. A driver may answer it itself; one
/// that speaks only WebSocket refuses it with [`PlainRequest::refusal`]. The headers a
/// driver needs to serve a GET itself (an event stream) are read as an upgrade's are; a
/// HEAD carries none of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlainRequest {
    /// The request target (path and query).
    pub target: String,
    /// HEAD: the response carries headers only.
    pub head: bool,
    /// The Host header, if any.
    pub host: Option<String>,
    /// The Origin header, if any.
    pub origin: Option<String>,
    /// The Authorization header, if any.
    pub authorization: Option<String>,
    /// The Last-Event-ID header (Server-Sent Events), if any.
    pub last_event_id: Option<String>,
}

impl PlainRequest {
    /// The error a WebSocket-only server answers with: 426 for a GET, 405 for a HEAD.
    pub fn refusal(&self) -> HandshakeError {
        if self.head {
            HandshakeError::MethodNotAllowed
        } else {
            HandshakeError::MissingUpgrade
        }
    }
}

/// A valid upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeRequest {
    /// The request target (path and query).
    pub target: String,
    /// The Host header.
    pub host: String,
    /// The Origin header, if any.
    pub origin: Option<String>,
    /// Sec-WebSocket-Key as sent.
    pub key: String,
    /// Subprotocols offered in Sec-WebSocket-Protocol, in order.
    pub protocols: Vec<String>,
    /// Each Sec-WebSocket-Extensions header value, in order.
    pub extensions: Vec<String>,
    /// The Authorization header, if any.
    pub authorization: Option<String>,
}

impl UpgradeRequest {
    /// The 101 response accepting this request, with extra header lines (each ending in
    /// CRLF) such as a negotiated extension.
    pub fn accept(&self, extra_headers: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n{extra_headers}\r\n",
            accept_key(self.key.as_bytes())
        )
        .into_bytes()
    }
}

/// Sec-WebSocket-Accept for a key: base64(SHA-1(key + GUID)).
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(WEBSOCKET_GUID);
    BASE64.encode(sha.finalize())
}

/// Whether a comma-separated header value holds `token` (case-insensitive).
fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

fn text(value: &[u8]) -> Result<&str, HandshakeError> {
    std::str::from_utf8(value).map_err(|_| HandshakeError::Malformed("header value is not UTF-8"))
}

/// Finds the end of an HTTP head incrementally, never searching a byte twice, and
/// refuses a head over the size limit as soon as it is crossed. Used for the upgrade
/// request, the 101 response, and any other HTTP/1.1 head a driver reads (the admin API).
#[derive(Debug, Clone)]
pub struct HeadScanner {
    limits: HandshakeLimits,
    searched: usize,
}

impl HeadScanner {
    /// A scanner for a new head.
    pub fn new(limits: HandshakeLimits) -> Self {
        Self {
            limits,
            searched: 0,
        }
    }

    /// Call after each read with everything received so far: the length of the head
    /// (through the blank line) once `buf` holds all of it.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, HandshakeError> {
        let from = self.searched.saturating_sub(3);
        let found = buf[from..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|at| from + at + 4);
        match found {
            Some(end) if end <= self.limits.max_head => Ok(Some(end)),
            Some(_) => Err(HandshakeError::HeadTooLarge),
            None if buf.len() >= self.limits.max_head => Err(HandshakeError::HeadTooLarge),
            None => {
                self.searched = buf.len();
                Ok(None)
            }
        }
    }
}

fn parse_error(err: httparse::Error) -> HandshakeError {
    match err {
        httparse::Error::TooManyHeaders => HandshakeError::TooManyHeaders,
        _ => HandshakeError::Malformed("invalid HTTP syntax"),
    }
}

/// Reads an upgrade request from a buffer that fills over several reads.
#[derive(Debug, Clone)]
pub struct RequestReader {
    scanner: HeadScanner,
}

impl RequestReader {
    /// A reader with these limits.
    pub fn new(limits: HandshakeLimits) -> Self {
        Self {
            scanner: HeadScanner::new(limits),
        }
    }

    /// Call after each read with everything received so far. `Ok(None)`: the head is not
    /// complete yet. `Ok(Some((request, n)))`: the first `n` bytes were the head; the rest
    /// is WebSocket data. A plain GET or HEAD is refused as [`PlainRequest::refusal`].
    pub fn read(&mut self, buf: &[u8]) -> Result<Option<(UpgradeRequest, usize)>, HandshakeError> {
        match self.read_request(buf)? {
            Some((Request::Upgrade(request), end)) => Ok(Some((request, end))),
            Some((Request::Plain(request), _)) => Err(request.refusal()),
            None => Ok(None),
        }
    }

    /// As [`read`](Self::read), but a plain GET or HEAD comes back as
    /// [`Request::Plain`] for the driver to answer (after a plain request, the bytes
    /// past the head are not WebSocket data).
    pub fn read_request(&mut self, buf: &[u8]) -> Result<Option<(Request, usize)>, HandshakeError> {
        let Some(end) = self.scanner.scan(buf)? else {
            return Ok(None);
        };
        let mut headers = vec![httparse::EMPTY_HEADER; self.scanner.limits.max_headers];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..end]).map_err(parse_error)? {
            httparse::Status::Complete(_) => {}
            httparse::Status::Partial => return Err(HandshakeError::Malformed("incomplete head")),
        }
        Ok(Some((validate_request(&req)?, end)))
    }
}

/// Whether a request asks for WebSocket at all: an Upgrade header, a Connection
/// `upgrade` token, or any Sec-WebSocket-* header. One that does and gets something
/// wrong is refused as a broken upgrade, never taken for plain HTTP.
fn asks_for_websocket(headers: &[httparse::Header<'_>]) -> bool {
    headers.iter().any(|h| {
        let name = h.name;
        name.eq_ignore_ascii_case("upgrade")
            || (name.eq_ignore_ascii_case("connection") && has_token(h.value, "upgrade"))
            || name
                .get(..14)
                .is_some_and(|prefix| prefix.eq_ignore_ascii_case("sec-websocket-"))
    })
}

fn validate_request(req: &httparse::Request<'_, '_>) -> Result<Request, HandshakeError> {
    let plain = !asks_for_websocket(req.headers);
    let target = || req.path.unwrap_or("/").to_owned();
    match req.method {
        Some("GET") => {}
        Some("HEAD") if plain && req.version == Some(1) => {
            return Ok(Request::Plain(PlainRequest {
                target: target(),
                head: true,
                ..PlainRequest::default()
            }));
        }
        _ => return Err(HandshakeError::MethodNotAllowed),
    }
    if req.version != Some(1) {
        return Err(HandshakeError::UnsupportedHttpVersion);
    }
    let mut host = None;
    let mut origin = None;
    let mut key = None;
    let mut upgrade = false;
    let mut connection = false;
    let mut version = false;
    let mut protocols = Vec::new();
    let mut extensions = Vec::new();
    let mut authorization = None;
    let mut last_event_id = None;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            host = Some(text(h.value)?.to_owned());
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade |= has_token(h.value, "websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            connection |= has_token(h.value, "upgrade");
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            version = h.value.trim_ascii() == b"13";
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            if key.is_some() {
                return Err(HandshakeError::DuplicateKey);
            }
            key = Some(text(h.value)?.trim().to_owned());
        } else if name.eq_ignore_ascii_case("authorization") {
            authorization = Some(text(h.value)?.trim().to_owned());
        } else if name.eq_ignore_ascii_case("origin") {
            origin = Some(text(h.value)?.to_owned());
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            protocols.extend(
                text(h.value)?
                    .split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(str::to_owned),
            );
        } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
            extensions.push(text(h.value)?.to_owned());
        } else if name.eq_ignore_ascii_case("last-event-id") {
            last_event_id = Some(text(h.value)?.trim().to_owned());
        }
    }
    if plain {
        return Ok(Request::Plain(PlainRequest {
            target: target(),
            head: false,
            host,
            origin,
            authorization,
            last_event_id,
        }));
    }
    if !upgrade {
        return Err(HandshakeError::MissingUpgrade);
    }
    if !connection {
        return Err(HandshakeError::MissingConnectionUpgrade);
    }
    if !version {
        return Err(HandshakeError::UnsupportedVersion);
    }
    let host = host.ok_or(HandshakeError::MissingHost)?;
    let key = key.ok_or(HandshakeError::MissingKey)?;
    match BASE64.decode(&key) {
        Ok(raw) if raw.len() == 16 => {}
        _ => return Err(HandshakeError::InvalidKey),
    }
    Ok(Request::Upgrade(UpgradeRequest {
        target: target(),
        host,
        origin,
        key,
        protocols,
        extensions,
        authorization,
    }))
}

/// What a client learns from a valid 101.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeResponse {
    /// Each Sec-WebSocket-Extensions value the server sent, for the extension to check.
    pub extensions: Vec<String>,
    /// The subprotocol the server chose.
    pub protocol: Option<String>,
}

/// The client side of the handshake: the request it sent and what the answer must be.
#[derive(Debug, Clone)]
pub struct ClientHandshake {
    accept: String,
    offered_extensions: bool,
    protocols: Vec<String>,
    scanner: HeadScanner,
}

impl ClientHandshake {
    /// Builds a request for `target` on `host`. `nonce` becomes Sec-WebSocket-Key and
    /// must be fresh random bytes for every connection; `extensions` is the
    /// Sec-WebSocket-Extensions offer, if any.
    pub fn new(
        host: &str,
        target: &str,
        extensions: Option<&str>,
        protocols: &[&str],
        nonce: [u8; 16],
    ) -> (Self, Vec<u8>) {
        let key = BASE64.encode(nonce);
        let mut request = format!(
            "GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        );
        if let Some(offer) = extensions {
            request.push_str(&format!("Sec-WebSocket-Extensions: {offer}\r\n"));
        }
        if !protocols.is_empty() {
            request.push_str(&format!(
                "Sec-WebSocket-Protocol: {}\r\n",
                protocols.join(", ")
            ));
        }
        request.push_str("\r\n");
        let handshake = Self {
            accept: accept_key(key.as_bytes()),
            offered_extensions: extensions.is_some(),
            protocols: protocols.iter().map(|p| (*p).to_owned()).collect(),
            scanner: HeadScanner::new(HandshakeLimits::default()),
        };
        (handshake, request.into_bytes())
    }

    /// Call after each read with everything received so far; as [`RequestReader::read`].
    pub fn read(&mut self, buf: &[u8]) -> Result<Option<(UpgradeResponse, usize)>, HandshakeError> {
        let Some(end) = self.scanner.scan(buf)? else {
            return Ok(None);
        };
        let mut headers = vec![httparse::EMPTY_HEADER; self.scanner.limits.max_headers];
        let mut res = httparse::Response::new(&mut headers);
        match res.parse(&buf[..end]).map_err(parse_error)? {
            httparse::Status::Complete(_) => {}
            httparse::Status::Partial => return Err(HandshakeError::Malformed("incomplete head")),
        }
        let status = res.code.unwrap_or(0);
        if status != 101 {
            return Err(HandshakeError::UnexpectedStatus(status));
        }
        let (mut upgrade, mut connection, mut accepted) = (false, false, false);
        let mut extensions = Vec::new();
        let mut protocol = None;
        for h in res.headers.iter() {
            let name = h.name;
            if name.eq_ignore_ascii_case("upgrade") {
                upgrade |= has_token(h.value, "websocket");
            } else if name.eq_ignore_ascii_case("connection") {
                connection |= has_token(h.value, "upgrade");
            } else if name.eq_ignore_ascii_case("sec-websocket-accept") {
                accepted = h.value.trim_ascii() == self.accept.as_bytes();
            } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
                extensions.push(text(h.value)?.to_owned());
            } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
                protocol = Some(text(h.value)?.trim().to_owned());
            }
        }
        if !upgrade {
            return Err(HandshakeError::MissingUpgrade);
        }
        if !connection {
            return Err(HandshakeError::MissingConnectionUpgrade);
        }
        if !accepted {
            return Err(HandshakeError::AcceptMismatch);
        }
        if !extensions.is_empty() && !self.offered_extensions {
            return Err(HandshakeError::UnsolicitedExtension);
        }
        if let Some(p) = &protocol
            && !self.protocols.contains(p)
        {
            return Err(HandshakeError::UnsolicitedProtocol);
        }
        Ok(Some((
            UpgradeResponse {
                extensions,
                protocol,
            },
            end,
        )))
    }
}

#[cfg(test)]
mod tests;
