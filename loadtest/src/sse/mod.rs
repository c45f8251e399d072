//! Server-Sent Events subscribers: an event stream opened with blocking calls (`GET`, the
//! `200` head) and handed to the [`Driver`](crate::driver::Driver), which feeds what
//! arrives to an [`EventParser`].

mod parser;

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use bytes::BytesMut;

pub(crate) use parser::{Event, EventParser};

/// Most bytes in a response head.
const HEAD_LIMIT: usize = 8 << 10;

/// An event stream whose response head has been read.
pub(crate) struct Stream {
    /// The connected socket (blocking mode, TCP_NODELAY set).
    pub(crate) socket: TcpStream,
    /// Bytes that arrived after the head: the stream's first bytes.
    pub(crate) leftover: BytesMut,
}

/// Why an event stream did not open.
#[derive(Debug)]
#[non_exhaustive]
pub(crate) enum OpenError {
    /// Not an `http://host:port/path` URL.
    Url(String),
    /// Connecting, writing or reading failed.
    Io(io::Error),
    /// No complete head within the timeout.
    Timeout,
    /// The server closed before its head was complete.
    Closed,
    /// A head that is not HTTP, or longer than 8 KiB.
    BadHead(String),
    /// An answer other than `200`.
    Refused(u16),
    /// A `200` that is not `text/event-stream`.
    NotEventStream(String),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Url(why) => write!(f, "event-stream URL: {why}"),
            OpenError::Io(e) => write!(f, "event stream: {e}"),
            OpenError::Timeout => write!(f, "event stream: no response head in time"),
            OpenError::Closed => write!(f, "event stream: closed before the response head"),
            OpenError::BadHead(why) => write!(f, "event stream: bad response head ({why})"),
            OpenError::Refused(status) => write!(f, "event stream refused with {status}"),
            OpenError::NotEventStream(kind) => {
                write!(f, "a 200 of Content-Type {kind:?}, not text/event-stream")
            }
        }
    }
}

impl std::error::Error for OpenError {}

impl From<io::Error> for OpenError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => OpenError::Timeout,
            _ => OpenError::Io(e),
        }
    }
}

/// Where an event stream is: the address to connect to, and the `Host` and request target
/// to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    addr: SocketAddr,
    host: String,
    path: String,
}

impl Target {
    /// Parses `http://host:port/path?query` (port 80 if none; path `/` if none).
    pub(crate) fn parse(url: &str) -> Result<Self, OpenError> {
        let Some(rest) = url.strip_prefix("http://") else {
            let why = if url.starts_with("https://") {
                "the load generator opens plain http:// streams only, not https://"
            } else {
                "an event stream's URL starts with http:// (e.g. http://127.0.0.1:8080/sse)"
            };
            return Err(OpenError::Url(format!("{url}: {why}")));
        };
        let (host, path) = rest
            .find(['/', '?'])
            .map_or((rest, "/"), |at| rest.split_at(at));
        if host.is_empty() {
            return Err(OpenError::Url(format!("{url}: no host")));
        }
        let with_port = if host.rsplit_once(':').is_some_and(|(_, p)| !p.contains(']')) {
            host.to_owned()
        } else {
            format!("{host}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|e| OpenError::Url(format!("{url}: {e}")))?
            .next()
            .ok_or_else(|| OpenError::Url(format!("{url}: no address for {host}")))?;
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_owned()
        };
        Ok(Self {
            addr,
            host: host.to_owned(),
            path,
        })
    }

    /// The request that opens the stream.
    fn request(&self) -> String {
        format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
            self.path, self.host
        )
    }
}

/// Opens the event stream at `target`: connects, sends the request, reads the head (all
/// within `timeout` each), checks it is a `200` of `text/event-stream`.
pub(crate) fn open(target: &Target, timeout: Duration) -> Result<Stream, OpenError> {
    let mut socket = TcpStream::connect_timeout(&target.addr, timeout)?;
    socket.set_nodelay(true)?;
    socket.set_read_timeout(Some(timeout))?;
    socket.write_all(target.request().as_bytes())?;
    let mut buf = BytesMut::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = match socket.read(&mut chunk) {
            Ok(0) => return Err(OpenError::Closed),
            Ok(n) => n,
            // io_uring task work on this thread (the driver's ring) can interrupt a read.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        buf.extend_from_slice(&chunk[..n]);
        if let Some(len) = head(&buf)? {
            let leftover = buf.split_off(len);
            socket.set_read_timeout(None)?;
            return Ok(Stream { socket, leftover });
        }
        if buf.len() > HEAD_LIMIT {
            return Err(OpenError::BadHead(format!(
                "longer than {HEAD_LIMIT} bytes"
            )));
        }
    }
}

/// The length of the response head at the start of `buf` once it is complete, checked.
fn head(buf: &[u8]) -> Result<Option<usize>, OpenError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(OpenError::BadHead(e.to_string())),
    };
    match response.code {
        Some(200) => {}
        Some(status) => return Err(OpenError::Refused(status)),
        None => return Err(OpenError::BadHead("no status".to_owned())),
    }
    let kind = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-type"))
        .map(|h| String::from_utf8_lossy(h.value).into_owned())
        .unwrap_or_default();
    let essence = kind.split(';').next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case("text/event-stream") {
        return Err(OpenError::NotEventStream(kind));
    }
    Ok(Some(len))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn targets_keep_host_path_and_query() {
        let t = Target::parse("http://127.0.0.1:8080/sse?topic=a&topic=b").unwrap();
        assert_eq!(t.addr, SocketAddr::from(([127, 0, 0, 1], 8080)));
        assert_eq!(t.host, "127.0.0.1:8080");
        assert_eq!(
            t.request(),
            "GET /sse?topic=a&topic=b HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\
             Accept: text/event-stream\r\n\r\n"
        );
        assert_eq!(Target::parse("http://127.0.0.1").unwrap().path, "/");
        assert_eq!(Target::parse("http://127.0.0.1").unwrap().addr.port(), 80);
        assert_eq!(
            Target::parse("http://127.0.0.1?topic=a").unwrap().path,
            "/?topic=a"
        );
        let v6 = Target::parse("http://[::1]:9/sse").unwrap();
        assert_eq!(v6.addr, "[::1]:9".parse().unwrap());
        assert_eq!(Target::parse("http://[::1]/sse").unwrap().addr.port(), 80);
    }

    #[test]
    fn websocket_and_tls_urls_are_refused_with_the_reason() {
        for (url, says) in [
            ("ws://127.0.0.1:8080/ws", "starts with http://"),
            ("https://127.0.0.1/sse", "not https://"),
            ("http:///sse", "no host"),
        ] {
            let err = Target::parse(url).unwrap_err().to_string();
            assert!(err.contains(says), "{url}: {err}");
        }
    }

    #[test]
    fn a_head_is_accepted_only_as_a_200_event_stream() {
        let ok =
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\nevent";
        assert_eq!(head(ok).unwrap(), Some(ok.len() - b"event".len()));
        assert_eq!(head(&ok[..20]).unwrap(), None, "partial");
        let charset = b"HTTP/1.1 200 OK\r\ncontent-type: Text/Event-Stream; charset=utf-8\r\n\r\n";
        assert!(head(charset).unwrap().is_some());
        let refused = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
        assert!(matches!(head(refused), Err(OpenError::Refused(400))));
        let html = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n";
        assert!(matches!(head(html), Err(OpenError::NotEventStream(k)) if k == "text/html"));
        assert!(matches!(
            head(b"SSH-2.0\r\n\r\n"),
            Err(OpenError::BadHead(_))
        ));
    }
}
