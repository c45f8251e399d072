//! The admin API, served by its own thread on its own listener: `POST /publish/{topic}`,
//! `GET /metrics` (Prometheus), `GET /healthz`, `GET /readyz` (false while draining or
//! while the broker is unreachable), `GET /history/{topic}`, user-level control under
//! `/users/{user}` (`users`), and the admin page at `GET /` (`page`, served without the
//! token: it holds no data). HTTP/1.1 with keep-alive, parsed with httparse; bodies need
//! a Content-Length and are capped at `max_publish`.
//!
//! With `admin_tls` configured the listener speaks HTTPS: the TLS handshake comes first
//! (bounded by the request timeout), then the same HTTP code runs over the TLS stream.
//!
//! With an admin token configured, publishing and metrics need `Authorization: Bearer
//! <token>` (401 otherwise); without one, the server refuses to bind the admin listener to
//! anything but loopback, so publishing stays a local privilege.
//!
//! What a peer can hold here is bounded: at most `admin_max_connections` connections (one
//! more gets 503 and is closed); each request, from its first byte to its last, and its
//! response have `admin_request_timeout` (408 when the request is late); the route and
//! the token are decided on the head, so a request that will be refused never gets its
//! body read (the connection closes after the refusal instead).
//!
//! It reaches the server only through the hub (publish, readiness, the counters); it must
//! not touch a worker, a connection or the broker thread.

mod events;
mod hook_metrics;
mod metrics;
mod page;
mod presence;
mod users;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde_json::json;
use stratus_proto::Message;
use stratus_proto::handshake::{HandshakeLimits, HeadScanner, reason_phrase};
use stratus_uring::{self as uring, Listener, Stream};
use tokio::time::Instant;

use crate::config::Config;
use crate::messages::PublishError;
use crate::messages::{HistoryDest, HistoryRead, Published, Reach};
use crate::model::offset::{Offset, Since};
use crate::model::protocol::v1;
use crate::model::publication::Publication;
use crate::node::broker_link::ShardLink;
use crate::node::hub::Hub;
use crate::stats;

const READ_CHUNK: usize = 4096;
const MAX_HEAD: usize = 8 * 1024;
const MAX_HEADERS: usize = 32;
/// An idle keep-alive connection is closed after this long.
const IDLE: Duration = Duration::from_secs(30);
/// How long a response may take to write when no request deadline leaves room for it:
/// a 408 for a late request, a 503 for a connection over the cap.
const WRITE_GRACE: Duration = Duration::from_secs(1);

/// How long a publish waits for room while the node is overloaded before it is refused
/// with 503.
const PUBLISH_PATIENCE: Duration = Duration::from_secs(1);

/// How long, and how much, a closing connection's unread input is drained (see `linger`).
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 256 << 10;

/// What the admin API works on.
pub(crate) struct Admin {
    pub(crate) hub: Arc<Hub>,
    pub(crate) config: Arc<Config>,
    /// The listener's TLS settings (HTTPS).
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
}

/// Connections being served or refused; each holds one slot until it ends.
struct Slot(Rc<Cell<usize>>);

impl Slot {
    fn take(open: &Rc<Cell<usize>>) -> Self {
        open.set(open.get() + 1);
        Self(open.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
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
    let open = Rc::new(Cell::new(0));
    let cap = admin.config.admin_max_connections;
    loop {
        match listener.accept().await {
            // Over the cap: a short 503 while the refusals themselves stay within the cap
            // again, else closed at once.
            Ok((stream, _)) if open.get() >= cap.saturating_mul(2) => drop(stream),
            Ok((stream, _)) if open.get() >= cap => {
                stats::add(&admin.hub.stats.admin_refused, 1);
                uring::spawn(refuse_busy(Slot::take(&open), stream));
            }
            Ok((stream, _)) => {
                uring::spawn(connection(admin.clone(), Slot::take(&open), stream));
            }
            Err(err) if err.raw_os_error() == Some(libc::EINVAL) => return,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn refuse_busy(_slot: Slot, mut stream: Stream) {
    let response = Response {
        extra: "Retry-After: 1\r\n",
        ..error(503, "too many admin connections")
    };
    if write(&mut stream, &response, true, Instant::now())
        .await
        .is_ok()
    {
        stream.shutdown_write().await;
    }
}

/// A parsed request head: what the router needs.
struct Request {
    method: String,
    path: String,
    authorization: Option<String>,
    content_type: String,
    content_length: Option<usize>,
    chunked: bool,
    close: bool,
}

impl Request {
    /// Whether a body follows the head (which a refusal leaves unread).
    fn has_body(&self) -> bool {
        self.chunked || self.content_length.is_some_and(|n| n > 0)
    }
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

async fn connection(admin: Rc<Admin>, _slot: Slot, mut stream: Stream) {
    let timeout = admin.config.admin_request_timeout;
    if let Some(tls) = &admin.tls {
        let handshake = async {
            let conn = rustls::ServerConnection::new(tls.clone()).map_err(std::io::Error::other)?;
            stream.handshake_tls(conn).await
        };
        if let Err(err) = tokio::time::timeout(timeout, handshake)
            .await
            .unwrap_or_else(|e| Err(e.into()))
        {
            tracing::debug!(error = %err, "admin TLS handshake failed");
            return;
        }
    }
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        // Keep-alive: an idle connection may wait for its next request; once a request
        // has begun, all of it (and its response) must be done by the deadline.
        if buf.is_empty()
            && !matches!(
                read_more(&mut stream, &mut buf, Instant::now() + IDLE).await,
                Read::More
            )
        {
            return;
        }
        let deadline = Instant::now() + timeout;
        let (response, close) = match exchange(&admin, &mut stream, &mut buf, deadline).await {
            Ok(Some(answered)) => answered,
            Ok(None) => return,
            Err(response) => (response, true),
        };
        if write(&mut stream, &response, close, deadline)
            .await
            .is_err()
            || close
        {
            stream.shutdown_write().await;
            linger(&mut stream, buf).await;
            return;
        }
    }
}

/// After a response the connection closes on: reads (and drops) what the client still
/// sends, for a moment, so that closing with unread bytes (a refused request's body)
/// does not make the kernel reset the connection before the client has read the answer.
async fn linger(stream: &mut Stream, mut buf: BytesMut) {
    let until = Instant::now() + LINGER;
    let mut drained = 0;
    while drained < LINGER_BYTES {
        buf.clear();
        match read_more(stream, &mut buf, until).await {
            Read::More => drained += buf.len(),
            Read::Gone | Read::Late => return,
        }
    }
}

/// Reads one request and answers it: the response and whether the connection closes
/// after it. `Ok(None)`: the client closed or went quiet mid-request with nothing to
/// answer; `Err`: a response after which the connection closes (a bad or late request).
async fn exchange(
    admin: &Admin,
    stream: &mut Stream,
    buf: &mut BytesMut,
    deadline: Instant,
) -> Result<Option<(Response, bool)>, Response> {
    let Some(request) = read_head(stream, buf, deadline).await? else {
        return Ok(None);
    };
    let endpoint = match route(admin, &request) {
        Ok(endpoint) => endpoint,
        // Refused on the head: whatever body was announced stays unread, so the
        // connection cannot carry another request.
        Err(response) => return Ok(Some((response, request.close || request.has_body()))),
    };
    let body = match endpoint {
        Endpoint::Publish(_) => {
            let Some(body) =
                read_body(stream, buf, &request, admin.config.max_publish, deadline).await?
            else {
                return Ok(None);
            };
            body
        }
        _ if request.has_body() => return Err(error(400, "this endpoint takes no body")),
        _ => Bytes::new(),
    };
    let response = tokio::time::timeout_at(deadline, answer(admin, endpoint, &request, body))
        .await
        .unwrap_or_else(|_| error(503, "the request timed out"));
    Ok(Some((response, request.close)))
}

async fn write(
    stream: &mut Stream,
    response: &Response,
    close: bool,
    deadline: Instant,
) -> std::io::Result<()> {
    let deadline = deadline.max(Instant::now() + WRITE_GRACE);
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
    tokio::time::timeout_at(deadline, stream.write_all(head.into_bytes()))
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// Reads one request head (its bytes leave `buf`). `Ok(None)`: the client closed.
async fn read_head(
    stream: &mut Stream,
    buf: &mut BytesMut,
    deadline: Instant,
) -> Result<Option<Request>, Response> {
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
        match read_more(stream, buf, deadline).await {
            Read::More => {}
            read => return unanswered(read),
        }
    };
    let request = parse_head(&buf[..head_len])?;
    let _ = buf.split_to(head_len);
    Ok(Some(request))
}

/// Reads a publish's body: it needs a Content-Length within `max_body`.
async fn read_body(
    stream: &mut Stream,
    buf: &mut BytesMut,
    request: &Request,
    max_body: usize,
    deadline: Instant,
) -> Result<Option<Bytes>, Response> {
    let length = match request.content_length {
        Some(length) if !request.chunked => length,
        _ => return Err(error(411, "a Content-Length is required")),
    };
    if length > max_body {
        return Err(error(
            413,
            &format!("message over the {max_body}-byte limit"),
        ));
    }
    while buf.len() < length {
        match read_more(stream, buf, deadline).await {
            Read::More => {}
            read => return unanswered(read),
        }
    }
    Ok(Some(buf.split_to(length).freeze()))
}

/// What a read into a request's buffer came to.
enum Read {
    /// Some bytes arrived.
    More,
    /// The peer closed, or the socket failed.
    Gone,
    /// The deadline passed first.
    Late,
}

/// Reads more into `buf`, until `deadline`.
async fn read_more(stream: &mut Stream, buf: &mut BytesMut, deadline: Instant) -> Read {
    let taken = std::mem::take(buf);
    match tokio::time::timeout_at(deadline, stream.read_into(taken, READ_CHUNK)).await {
        Ok((Ok(n), returned)) if n > 0 => {
            *buf = returned;
            Read::More
        }
        Ok(_) => Read::Gone,
        Err(_) => Read::Late,
    }
}

/// What a read that brought nothing means for the request: 408 when late, else the
/// client is gone and nothing is answered.
fn unanswered<T>(read: Read) -> Result<Option<T>, Response> {
    match read {
        Read::Late => Err(error(
            408,
            "the request was not complete within the admin request timeout",
        )),
        Read::More | Read::Gone => Ok(None),
    }
}

/// A Content-Length value: digits only (RFC 9110 §8.6), so a value a proxy might read
/// differently (`+5`, `5,5`, ` 5 5`) is refused rather than guessed at.
fn content_length(value: &str) -> Option<usize> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
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
                let n = content_length(value)
                    .ok_or_else(|| error(400, "Content-Length must be plain digits"))?;
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

/// What a request asks for, decided on its head.
enum Endpoint {
    Health,
    Ready,
    Metrics,
    Publish(String),
    History(String),
    /// `/users/{user}...`: user-level control.
    Users(users::UserRoute),
    /// `GET /events`: occupied/vacated events by offset.
    Events,
    /// `GET /occupancy/{topic}` (false) or `GET /presence/{topic}` (true).
    Presence(String, bool),
    /// `GET /topics`: the node's busiest topics.
    Topics,
    /// `GET /`: the admin page (`page`), served without the token: it holds no data.
    Page,
    /// `GET /nodes`: every live node's figures.
    Nodes,
}

/// The topic named after `prefix` in `path`, percent-decoded (`chat%3A1` is `chat:1`; a
/// decoded name that is not valid UTF-8 or not a topic is refused later, as invalid).
fn topic_in(path: &str, prefix: &str) -> String {
    percent_encoding::percent_decode_str(&path[prefix.len()..])
        .decode_utf8_lossy()
        .into_owned()
}

/// The endpoint a request head names, or the refusal (unknown path, wrong method, no
/// token) to answer before reading any body.
fn route(admin: &Admin, request: &Request) -> Result<Endpoint, Response> {
    let path = request.path.split('?').next().unwrap_or_default();
    let endpoint = match (request.method.as_str(), path) {
        ("GET", "/healthz") => return Ok(Endpoint::Health),
        ("GET", "/readyz") => return Ok(Endpoint::Ready),
        ("GET", "/metrics") => Endpoint::Metrics,
        ("POST", p) if p.starts_with("/publish/") => Endpoint::Publish(topic_in(p, "/publish/")),
        ("GET", p) if p.starts_with("/history/") => Endpoint::History(topic_in(p, "/history/")),
        (method, p) if p.starts_with("/users/") => Endpoint::Users(users::route(method, p)?),
        (_, "/healthz" | "/readyz" | "/metrics") => {
            return Err(Response {
                extra: "Allow: GET\r\n",
                ..error(405, "use GET")
            });
        }
        (_, p) if p.starts_with("/publish/") => {
            return Err(Response {
                extra: "Allow: POST\r\n",
                ..error(405, "use POST")
            });
        }
        (_, p) if p.starts_with("/history/") => {
            return Err(Response {
                extra: "Allow: GET\r\n",
                ..error(405, "use GET")
            });
        }
        ("GET", "/events") => Endpoint::Events,
        ("GET", p) if p.starts_with("/occupancy/") => {
            Endpoint::Presence(topic_in(p, "/occupancy/"), false)
        }
        ("GET", p) if p.starts_with("/presence/") => {
            Endpoint::Presence(topic_in(p, "/presence/"), true)
        }
        ("GET", "/topics") => Endpoint::Topics,
        ("GET", "/nodes") => Endpoint::Nodes,
        (_, p)
            if p.starts_with("/occupancy/")
                || p.starts_with("/presence/")
                || p == "/topics"
                || p == "/nodes" =>
        {
            return Err(Response {
                extra: "Allow: GET\r\n",
                ..error(405, "use GET")
            });
        }
        (_, "/events") => {
            return Err(Response {
                extra: "Allow: GET\r\n",
                ..error(405, "use GET")
            });
        }
        ("GET", "/") => return Ok(Endpoint::Page),
        (_, "/") => {
            return Err(Response {
                extra: "Allow: GET\r\n",
                ..error(405, "use GET")
            });
        }
        _ => return Err(error(404, "no such endpoint")),
    };
    if !authorized(admin, request) {
        return Err(unauthorized());
    }
    Ok(endpoint)
}

async fn answer(admin: &Admin, endpoint: Endpoint, request: &Request, body: Bytes) -> Response {
    match endpoint {
        Endpoint::Health => respond(200, json!({ "status": "ok" })),
        Endpoint::Ready => readiness(&admin.hub),
        Endpoint::Metrics => Response {
            body: metrics::render(&admin.hub),
            content_type: "text/plain; version=0.0.4",
            ..respond(200, json!(null))
        },
        Endpoint::Publish(topic) => publish(admin, &topic, request, body).await,
        Endpoint::History(topic) => history(admin, &topic, request).await,
        Endpoint::Users(route) => users::answer(admin, route, request).await,
        Endpoint::Events => events::answer(admin, request).await,
        Endpoint::Presence(topic, members) => presence::answer(admin, &topic, members).await,
        Endpoint::Topics => presence::busiest(admin, request),
        Endpoint::Page => page::answer(),
        Endpoint::Nodes => presence::nodes(admin).await,
    }
}

/// The value of query parameter `name` in `path`, if given.
fn query<'a>(path: &'a str, name: &str) -> Option<std::borrow::Cow<'a, str>> {
    let (_, query) = path.split_once('?')?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// `POST /publish/{topic}`: the body as JSON (a JSON content type and a body that is
/// valid JSON), text (`text/*`, or a JSON content type whose body is not JSON: as before
/// protocol v1, when such bodies were text) or binary (anything else), with `?key=`
/// naming its conflation key.
async fn publish(admin: &Admin, topic: &str, request: &Request, body: Bytes) -> Response {
    let content_type = request.content_type.as_str();
    let textual = content_type.starts_with("text/") || content_type.contains("json");
    let publication = if textual {
        if std::str::from_utf8(&body).is_err() {
            return error(400, "a text message must be UTF-8");
        }
        let json = content_type.contains("json");
        match Publication::json(body.clone()) {
            Ok(publication) if json => Ok(publication),
            _ => Publication::from_message(Message::Text(body)),
        }
    } else {
        Publication::from_message(Message::Binary(body))
    };
    let publication = publication.and_then(|p| p.with_key(query(&request.path, "key").as_deref()));
    let publication = match publication {
        Ok(publication) => publication,
        Err(e) => return error(400, &e.to_string()),
    };
    let published = match admin
        .hub
        .publish_paced(topic, publication, PUBLISH_PATIENCE)
        .await
    {
        Ok(delivery) => delivery.published().await,
        Err(e) => Err(e),
    };
    match published {
        Ok(Published { reach, offset, .. }) => {
            let mut body = match reach {
                Reach::Subscribers(n) => json!({ "recipients": n }),
                Reach::Nodes(n) => json!({ "nodes": n }),
                Reach::Broker => json!({ "nodes": null }),
            };
            if let Some(offset) = offset {
                body["offset"] = offset.into();
            }
            respond(200, body)
        }
        Err(
            e @ (PublishError::InvalidTopic(_)
            | PublishError::NotData
            | PublishError::InvalidJson
            | PublishError::KeyTooLong),
        ) => error(400, &e.to_string()),
        Err(e) => Response {
            extra: "Retry-After: 1\r\n",
            ..error(503, &e.to_string())
        },
    }
}

/// Most publications `GET /history` returns.
const MAX_HISTORY_PAGE: usize = 1000;

/// `GET /history/{topic}?since=&limit=`: publications after `since` (an offset; from the
/// oldest kept without), at most `limit` (100 by default, 1,000 at most).
async fn history(admin: &Admin, topic: &str, request: &Request) -> Response {
    if let Err(e) = crate::model::topic::validate(topic) {
        return error(400, &e.to_string());
    }
    let since = match query(&request.path, "since") {
        None => None,
        Some(text) => match Since::parse(&text) {
            Some(since) => Some(since),
            None => return error(400, "since must be $ or an offset such as 1732000000000-0"),
        },
    };
    let limit = match query(&request.path, "limit").map(|l| l.parse::<usize>()) {
        None => 100,
        Some(Ok(n)) if (1..=MAX_HISTORY_PAGE).contains(&n) => n,
        Some(_) => return error(400, "limit must be 1 to 1000"),
    };
    let read = HistoryRead {
        from: since.unwrap_or(Since::After(Offset::ZERO)),
        to: HistoryDest::CALLER,
        budget: admin.config.max_publish.saturating_mul(4).max(1 << 20),
        fetched: 0,
        average: 1,
        page: limit,
        limit: usize::MAX,
        resumes: false,
        shared_start: false,
    };
    let Some(page) = admin.hub.history(topic, read).await else {
        return error(404, "no history is kept for this topic");
    };
    if page.failed {
        return error(503, page.gap.unwrap_or("the history could not be read"));
    }
    let last = page.entries.last().map(|(o, _)| o.to_string());
    respond(
        200,
        json!({
            "topic": topic,
            "publications": v1::publications(&page.entries),
            "gap": page.gap.filter(|_| since.is_some()),
            "more": page.more,
            "next": last,
        }),
    )
}

/// `/readyz`: 200 while the node can take publishes; 503 while it drains or every shard
/// of its broker is unreachable. `broker` is `up` (every shard), `degraded` (some) or
/// `down` (none); `shards` says which, in `--broker` order.
fn readiness(hub: &Hub) -> Response {
    let ready = hub.is_ready();
    let mut body = json!({ "ready": ready, "draining": hub.is_draining(), "broker": null });
    if let Some(link) = &hub.broker {
        let up: Vec<bool> = link.shards().iter().map(ShardLink::is_up).collect();
        let state = match (up.iter().all(|&u| u), up.iter().any(|&u| u)) {
            (true, _) => "up",
            (false, true) => "degraded",
            (false, false) => "down",
        };
        let shards: Vec<&str> = up.iter().map(|&u| if u { "up" } else { "down" }).collect();
        body["broker"] = json!(state);
        body["shards"] = json!(shards);
    }
    respond(if ready { 200 } else { 503 }, body)
}

#[cfg(test)]
mod tests {
    use super::{content_length, same};

    #[test]
    fn topics_in_paths_are_percent_decoded() {
        assert_eq!(
            super::topic_in("/publish/chat%3Aroom", "/publish/"),
            "chat:room"
        );
        assert_eq!(super::topic_in("/history/a/b", "/history/"), "a/b");
        assert_eq!(super::topic_in("/publish/%FF", "/publish/"), "\u{fffd}");
    }

    #[test]
    fn content_length_is_plain_digits() {
        assert_eq!(content_length("5"), Some(5));
        assert_eq!(content_length("0"), Some(0));
        for bad in [
            "+5",
            "-5",
            "5,5",
            "5 5",
            "",
            "0x5",
            "5.0",
            "99999999999999999999999",
        ] {
            assert_eq!(content_length(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn token_comparison() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secret", b"secret2"));
        assert!(!same(b"", b"x"));
    }
}
