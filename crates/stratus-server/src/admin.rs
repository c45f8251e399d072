//! The admin API, served by its own thread on its own listener: `POST /publish/{topic}`,
//! `GET /metrics` (Prometheus), `GET /healthz`, `GET /readyz` (false while draining or
//! while the broker is unreachable). HTTP/1.1 with keep-alive,
//! parsed with httparse; bodies need a Content-Length and are capped at `max_publish`.
//!
//! With `admin_tls` configured the listener speaks HTTPS: the TLS handshake comes first
//! (bounded by the idle timeout), then the same HTTP code runs over the TLS stream.
//!
//! With an admin token configured, publishing and metrics need `Authorization: Bearer
//! <token>` (401 otherwise); without one, the server refuses to bind the admin listener to
//! anything but loopback, so publishing stays a local privilege.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde_json::json;
use stratus_proto::Message;
use stratus_proto::handshake::{HandshakeLimits, HeadScanner, reason_phrase};
use stratus_uring::{self as uring, Listener, Stream};

use crate::config::Config;
use crate::hub::{Hub, PublishError, Reach};

const READ_CHUNK: usize = 4096;
const MAX_HEAD: usize = 8 * 1024;
const MAX_HEADERS: usize = 32;
/// An idle keep-alive connection is closed after this long.
const IDLE: Duration = Duration::from_secs(30);

/// What the admin API works on.
pub(crate) struct Admin {
    pub(crate) hub: Arc<Hub>,
    pub(crate) config: Arc<Config>,
    /// The listener's TLS settings (HTTPS).
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
}

/// Accepts admin connections until the listener is shut down.
pub(crate) async fn serve(admin: Admin, listener: std::net::TcpListener) {
    let listener = match Listener::from_std(listener) {
        Ok(listener) => listener,
        Err(err) => {
            tracing::warn!(error = %err, "admin listener failed");
            return;
        }
    };
    let admin = Rc::new(admin);
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                uring::spawn(connection(admin.clone(), stream));
            }
            Err(err) if err.raw_os_error() == Some(libc::EINVAL) => return,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// A parsed request: what the router needs.
struct Request {
    method: String,
    path: String,
    authorization: Option<String>,
    content_type: String,
    content_length: Option<usize>,
    chunked: bool,
    close: bool,
}

/// A response: status, body (JSON unless said otherwise), extra header lines.
struct Response {
    status: u16,
    body: String,
    content_type: &'static str,
    extra: &'static str,
}

fn respond(status: u16, body: serde_json::Value) -> Response {
    Response {
        status,
        body: body.to_string(),
        content_type: "application/json",
        extra: "",
    }
}

fn error(status: u16, message: &str) -> Response {
    respond(status, json!({ "error": message }))
}

async fn connection(admin: Rc<Admin>, mut stream: Stream) {
    if let Some(tls) = &admin.tls {
        let handshake = async {
            let conn = rustls::ServerConnection::new(tls.clone()).map_err(std::io::Error::other)?;
            stream.handshake_tls(conn).await
        };
        if let Err(err) = tokio::time::timeout(IDLE, handshake)
            .await
            .unwrap_or_else(|e| Err(e.into()))
        {
            tracing::debug!(error = %err, "admin TLS handshake failed");
            return;
        }
    }
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        let max = admin.config.max_publish;
        let (request, body) = match read_request(&mut stream, &mut buf, max).await {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return,
            Err(response) => {
                if write(&mut stream, &response, true).await.is_ok() {
                    stream.shutdown_write().await;
                }
                return;
            }
        };
        let response = route(&admin, &request, body).await;
        if write(&mut stream, &response, request.close).await.is_err() || request.close {
            stream.shutdown_write().await;
            return;
        }
    }
}

async fn write(stream: &mut Stream, response: &Response, close: bool) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}Connection: {}\r\n\r\n{}",
        response.status,
        reason_phrase(response.status),
        response.content_type,
        response.body.len(),
        response.extra,
        if close { "close" } else { "keep-alive" },
        response.body,
    );
    stream.write_all(head.into_bytes()).await
}

/// Reads one request head and its body. `Ok(None)`: the client closed or went idle.
async fn read_request(
    stream: &mut Stream,
    buf: &mut BytesMut,
    max_body: usize,
) -> Result<Option<(Request, Bytes)>, Response> {
    let mut scanner = HeadScanner::new(HandshakeLimits {
        max_head: MAX_HEAD,
        max_headers: MAX_HEADERS,
    });
    let head_len = loop {
        match scanner.scan(buf) {
            Ok(Some(len)) => break len,
            Ok(None) => {}
            Err(_) => return Err(error(431, "request head over 8 KiB")),
        }
        if !read_more(stream, buf).await {
            return Ok(None);
        }
    };
    let request = parse_head(&buf[..head_len])?;
    let _ = buf.split_to(head_len);
    if request.chunked {
        return Err(error(411, "a Content-Length is required"));
    }
    let length = request.content_length.unwrap_or(0);
    if length > max_body {
        return Err(error(
            413,
            &format!("message over the {max_body}-byte limit"),
        ));
    }
    while buf.len() < length {
        if !read_more(stream, buf).await {
            return Ok(None);
        }
    }
    Ok(Some((request, buf.split_to(length).freeze())))
}

async fn read_more(stream: &mut Stream, buf: &mut BytesMut) -> bool {
    let taken = std::mem::take(buf);
    match tokio::time::timeout(IDLE, stream.read_into(taken, READ_CHUNK)).await {
        Ok((Ok(n), returned)) => {
            *buf = returned;
            n > 0
        }
        _ => false,
    }
}

fn parse_head(head: &[u8]) -> Result<Request, Response> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Err(httparse::Error::TooManyHeaders) => return Err(error(431, "too many headers")),
        _ => return Err(error(400, "malformed HTTP request")),
    }
    let mut request = Request {
        method: req.method.unwrap_or_default().to_owned(),
        path: req.path.unwrap_or_default().to_owned(),
        authorization: None,
        content_type: String::new(),
        content_length: None,
        chunked: false,
        close: req.version == Some(0),
    };
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value).map_err(|_| error(400, "header is not UTF-8"))?;
        let value = value.trim();
        match h.name.to_ascii_lowercase().as_str() {
            "authorization" => request.authorization = Some(value.to_owned()),
            "content-type" => request.content_type = value.to_ascii_lowercase(),
            "content-length" => {
                let n = value
                    .parse()
                    .map_err(|_| error(400, "bad Content-Length"))?;
                if request
                    .content_length
                    .replace(n)
                    .is_some_and(|old| old != n)
                {
                    return Err(error(400, "conflicting Content-Length headers"));
                }
            }
            "transfer-encoding" => request.chunked = true,
            "connection" => request.close |= value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    Ok(request)
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorized(admin: &Admin, request: &Request) -> bool {
    let Some(token) = &admin.config.admin_token else {
        return true;
    };
    let presented = request
        .authorization
        .as_deref()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    presented.is_some_and(|p| same(p.as_bytes(), token.as_bytes()))
}

fn unauthorized() -> Response {
    Response {
        extra: "WWW-Authenticate: Bearer\r\n",
        ..error(401, "missing or wrong bearer token")
    }
}

async fn route(admin: &Admin, request: &Request, body: Bytes) -> Response {
    let path = request.path.split('?').next().unwrap_or_default();
    match (request.method.as_str(), path) {
        ("GET", "/healthz") => respond(200, json!({ "status": "ok" })),
        ("GET", "/readyz") => readiness(&admin.hub),
        ("GET", "/metrics") if !authorized(admin, request) => unauthorized(),
        ("GET", "/metrics") => Response {
            body: crate::metrics::render(&admin.hub),
            content_type: "text/plain; version=0.0.4",
            ..respond(200, json!(null))
        },
        ("POST", p) if p.starts_with("/publish/") => {
            if !authorized(admin, request) {
                return unauthorized();
            }
            publish(admin, &p["/publish/".len()..], &request.content_type, body).await
        }
        (_, "/healthz" | "/readyz" | "/metrics") => Response {
            extra: "Allow: GET\r\n",
            ..error(405, "use GET")
        },
        (_, p) if p.starts_with("/publish/") => Response {
            extra: "Allow: POST\r\n",
            ..error(405, "use POST")
        },
        _ => error(404, "no such endpoint"),
    }
}

async fn publish(admin: &Admin, topic: &str, content_type: &str, body: Bytes) -> Response {
    let textual = content_type.starts_with("text/") || content_type.contains("json");
    let message = if textual {
        if std::str::from_utf8(&body).is_err() {
            return error(400, "a text message must be UTF-8");
        }
        Message::Text(body)
    } else {
        Message::Binary(body)
    };
    let reach = match admin.hub.publish(topic, message) {
        Ok(delivery) => delivery.reach().await,
        Err(e) => Err(e),
    };
    match reach {
        Ok(Reach::Subscribers(n)) => respond(200, json!({ "recipients": n })),
        Ok(Reach::Nodes(n)) => respond(200, json!({ "nodes": n })),
        Err(e @ (PublishError::InvalidTopic(_) | PublishError::NotData)) => {
            error(400, &e.to_string())
        }
        Err(e) => Response {
            extra: "Retry-After: 1\r\n",
            ..error(503, &e.to_string())
        },
    }
}

/// `/readyz`: 200 while the node can take publishes; 503 while it drains or its broker is
/// unreachable.
fn readiness(hub: &Hub) -> Response {
    let broker = hub
        .broker
        .as_ref()
        .map(|b| if b.is_up() { "up" } else { "down" });
    let ready = hub.is_ready();
    let body = json!({ "ready": ready, "draining": hub.is_draining(), "broker": broker });
    respond(if ready { 200 } else { 503 }, body)
}

#[cfg(test)]
mod tests {
    use super::same;

    #[test]
    fn token_comparison() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secret", b"secret2"));
        assert!(!same(b"", b"x"));
    }
}
