//! Accepting a Server-Sent Events request (`GET /sse?topic=a&topic=b`, pub/sub app
//! only): the same checks as a WebSocket upgrade, made by the same code (the drain, the
//! Origin, the token from `Authorization: Bearer` or `?token=`, the topics and the
//! per-connection topic cap), plus where the stream resumes (`Last-Event-ID`, or `since`
//! in the query). Where the connect hook decides upgrades without a token, it decides
//! event streams too (told `"transport": "sse"`): an application that signs its users in
//! with cookies serves `EventSource` pages the same way. A request from a page on an
//! allowed origin is answered with that origin in `Access-Control-Allow-Origin` (and
//! `-Credentials`): a browser reads a cross-origin stream (`EventSource`, `fetch`) only
//! then. What the stream sends is `model::protocol::sse`.

use stratus_proto::handshake::{HandshakeError, PlainRequest, UpgradeRequest};

use crate::config::{App, Config};
use crate::connection::upgrade::{Refusal, Upgrade, origin_allowed};
use crate::model::offset::{Resume, Since};
use crate::model::protocol::{Protocol, sse};

/// The event-stream endpoint.
pub(crate) const PATH: &str = "/sse";

/// Whether `request` asks for an event stream (a GET of [`PATH`]).
pub(crate) fn is_sse(request: &PlainRequest) -> bool {
    !request.head
        && request
            .target
            .split_once('?')
            .map_or(&*request.target, |(p, _)| p)
            == PATH
}

/// What an event-stream request carries beyond the upgrade it is judged as.
#[derive(Debug, Clone)]
pub(crate) struct Stream {
    /// Where its topics resume (`Last-Event-ID`, or `since`).
    pub(crate) resume: Option<Resume>,
    /// The request's own target (`/sse?...`), for the connect hook.
    pub(crate) target: String,
}

/// Reads an event-stream request as the WebSocket upgrade it is judged as (the same
/// headers and query, at the WebSocket path) and what the stream adds; refuses a request
/// on the echo server, one without `Host`, or one whose resume point is not an offset.
pub(crate) fn as_upgrade(
    request: &PlainRequest,
    config: &Config,
) -> Result<(UpgradeRequest, Stream), Refusal> {
    if config.app != App::PubSub {
        let why = format!("no event stream at {PATH} on the echo server");
        return Err(Refusal::new(404, "", why));
    }
    let Some(host) = request.host.clone() else {
        return Err(Refusal::from(&HandshakeError::MissingHost));
    };
    let query = request.target.split_once('?').map_or("", |(_, q)| q);
    let resume = resume_point(request.last_event_id.as_deref(), query)?;
    let upgrade = UpgradeRequest {
        target: format!("/ws?{query}"),
        host,
        origin: request.origin.clone(),
        key: String::new(),
        protocols: Vec::new(),
        extensions: Vec::new(),
        authorization: request.authorization.clone(),
    };
    let stream = Stream {
        resume,
        target: request.target.clone(),
    };
    Ok((upgrade, stream))
}

/// Turns `accepted` (the upgrade of a request from `origin`) into the stream: it speaks
/// [`Protocol::Sse`], its response is the 200 that opens the stream, it resumes where
/// `stream` says. A stream with no topic (none asked for, none chosen by the connect
/// hook) is refused.
pub(crate) fn open(
    mut accepted: Upgrade,
    origin: Option<&str>,
    stream: Stream,
) -> Result<Upgrade, Refusal> {
    if accepted.topics.is_empty() && accepted.chosen.is_empty() {
        let why = "an event stream needs at least one topic (?topic=...)".to_owned();
        return Err(Refusal::new(400, "", why));
    }
    accepted.protocol = Protocol::Sse;
    accepted.response = response_head(origin);
    accepted.resume = stream.resume;
    Ok(accepted)
}

/// The 200 that opens the stream, readable by the page that asked (see [`cors`]).
fn response_head(origin: Option<&str>) -> Vec<u8> {
    let mut head = sse::RESPONSE_HEAD.as_bytes().to_vec();
    if let Some(lines) = cors(origin) {
        let end = head.len() - 2; // before the blank line that ends the head
        head.splice(end..end, lines.into_bytes());
    }
    head
}

/// A refusal of an event stream, readable by the page that asked (see [`cors`]): so a
/// script on another allowed origin can tell an expired token (401) from an overloaded
/// server (503) and act on it, not just see a failed request.
pub(crate) fn readable(mut refusal: Refusal, origin: Option<&str>) -> Refusal {
    if let Some(lines) = cors(origin)
        && let Some(status_line) = refusal.response.windows(2).position(|w| w == b"\r\n")
    {
        let at = status_line + 2;
        refusal.response.splice(at..at, lines.into_bytes());
    }
    refusal
}

/// The origin of an event-stream request that passes the Origin check, if it has one:
/// what [`readable`] echoes.
pub(crate) fn page_origin(request: &PlainRequest, config: &Config) -> Option<String> {
    let origin = request.origin.as_ref()?;
    let host = request.host.as_deref()?;
    origin_allowed(origin, host, &config.allowed_origins).then(|| origin.clone())
}

/// The header lines that let a page on `origin` (one the Origin check let through) read
/// the response: that origin in `Access-Control-Allow-Origin`, with credentials (cookies,
/// `withCredentials`: a WebSocket from that origin carries them anyway). None without an
/// origin, or for one that is not a plain header value.
fn cors(origin: Option<&str>) -> Option<String> {
    let origin = origin.filter(|o| !o.is_empty() && o.bytes().all(|b| b.is_ascii_graphic()))?;
    Some(format!(
        "Access-Control-Allow-Origin: {origin}\r\nAccess-Control-Allow-Credentials: true\r\n\
         Vary: Origin\r\n"
    ))
}

/// Where the stream's topics resume: `Last-Event-ID` (what a browser sends on
/// reconnecting) over `since` in the query, for every topic; or, with a `since` for
/// every `topic`, each topic from its own (paired in order; what the SDK sends). An
/// empty one is none.
fn resume_point(last_event_id: Option<&str>, query: &str) -> Result<Option<Resume>, Refusal> {
    let parse = |text: &str| {
        Since::parse(text).ok_or_else(|| {
            let why = format!("invalid event id {text:?}: an offset is <ms>-<seq>");
            Refusal::new(400, "", why)
        })
    };
    if let Some(id) = last_event_id.filter(|id| !id.is_empty()) {
        return Ok(Some(Resume::All(parse(id)?)));
    }
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == "since" || k == "topic")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let since: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| k == "since")
        .map(|(_, v)| v.as_str())
        .collect();
    let topics: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| k == "topic")
        .map(|(_, v)| v.as_str())
        .collect();
    match since[..] {
        [] | [""] => Ok(None),
        [one] => Ok(Some(Resume::All(parse(one)?))),
        _ if since.len() != topics.len() => {
            let why = format!(
                "{} since for {} topics: give one for all, or one per topic",
                since.len(),
                topics.len()
            );
            Err(Refusal::new(400, "", why))
        }
        _ => {
            let each = topics
                .iter()
                .zip(&since)
                .map(|(topic, since)| Ok(((*topic).to_owned(), parse(since)?)));
            Ok(Some(Resume::Each(each.collect::<Result<_, Refusal>>()?)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::upgrade::upgrade;
    use crate::model::offset::Offset;

    /// An event stream judged without a connect hook, as the worker judges one.
    fn accept(request: &PlainRequest, config: &Config, draining: bool) -> Result<Upgrade, Refusal> {
        let (as_upgrade, stream) = as_upgrade(request, config)?;
        let accepted = upgrade(&as_upgrade, config, draining, None)?;
        open(accepted, request.origin.as_deref(), stream)
    }

    fn get(target: &str) -> PlainRequest {
        PlainRequest {
            target: target.into(),
            host: Some("127.0.0.1:8080".into()),
            ..PlainRequest::default()
        }
    }

    #[test]
    fn only_a_get_of_the_endpoint_is_an_event_stream() {
        assert!(is_sse(&get("/sse")));
        assert!(is_sse(&get("/sse?topic=a")));
        assert!(!is_sse(&get("/ssex")));
        assert!(!is_sse(&get("/")));
        let head = PlainRequest {
            head: true,
            ..get("/sse")
        };
        assert!(!is_sse(&head));
    }

    #[test]
    fn a_stream_is_accepted_with_its_topics_and_resume_point() {
        let config = Config::default();
        let ok = accept(&get("/sse?topic=a&topic=b&since=5-1"), &config, false).unwrap();
        assert_eq!(ok.topics, ["a", "b"]);
        assert_eq!(ok.protocol, Protocol::Sse);
        assert_eq!(ok.resume, Some(Resume::All(Since::After(Offset(5, 1)))));
        assert!(
            ok.response
                .starts_with(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream")
        );
        let header = PlainRequest {
            last_event_id: Some("9-0".into()),
            ..get("/sse?topic=a&since=5-1")
        };
        let resumed = accept(&header, &config, false).unwrap();
        assert_eq!(
            resumed.resume,
            Some(Resume::All(Since::After(Offset(9, 0)))),
            "Last-Event-ID wins"
        );
        let each = accept(
            &get("/sse?topic=a&since=5-1&topic=b&since=%24"),
            &config,
            false,
        );
        let expected = vec![
            ("a".to_owned(), Since::After(Offset(5, 1))),
            ("b".to_owned(), Since::Now),
        ];
        assert_eq!(
            each.unwrap().resume,
            Some(Resume::Each(expected)),
            "one per topic"
        );
        let unpaired = accept(
            &get("/sse?topic=a&since=5-1&since=6-0&topic=b&topic=c"),
            &config,
            false,
        );
        assert_eq!(unpaired.err().map(|r| r.status), Some(400));
    }

    #[test]
    fn an_allowed_origin_may_read_the_stream() {
        let config = Config {
            allowed_origins: vec!["http://app.example".into()],
            ..Config::default()
        };
        let request = PlainRequest {
            origin: Some("http://app.example".into()),
            ..get("/sse?topic=a")
        };
        let ok = accept(&request, &config, false).unwrap();
        let head = String::from_utf8(ok.response).unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"));
        assert!(head.ends_with(
            "\r\nAccess-Control-Allow-Origin: http://app.example\r\n\
             Access-Control-Allow-Credentials: true\r\nVary: Origin\r\n\r\n"
        ));
        let same_origin = accept(&get("/sse?topic=a"), &config, false).unwrap();
        let head = String::from_utf8(same_origin.response).unwrap();
        assert!(
            !head.contains("Access-Control"),
            "no Origin, nothing to allow"
        );
        assert_eq!(
            response_head(Some("http://a b")),
            sse::RESPONSE_HEAD.as_bytes()
        );
    }

    #[test]
    fn a_refusal_is_readable_by_an_allowed_page_only() {
        let config = Config {
            allowed_origins: vec!["http://app.example".into()],
            ..Config::default()
        };
        let from = |origin: &str| PlainRequest {
            origin: Some(origin.into()),
            ..get("/sse?topic=a")
        };
        let page = page_origin(&from("http://app.example"), &config);
        assert_eq!(page.as_deref(), Some("http://app.example"));
        assert_eq!(page_origin(&from("http://evil.example"), &config), None);
        assert_eq!(page_origin(&get("/sse?topic=a"), &config), None);
        let refusal = Refusal::new(401, "WWW-Authenticate: Bearer\r\n", "no token".into());
        let readable = readable(refusal.clone(), page.as_deref());
        let text = String::from_utf8(readable.response).unwrap();
        assert!(
            text.starts_with(
                "HTTP/1.1 401 Unauthorized\r\nAccess-Control-Allow-Origin: http://app.example\r\n\
                 Access-Control-Allow-Credentials: true\r\nVary: Origin\r\n"
            ),
            "{text}"
        );
        assert!(text.contains("WWW-Authenticate: Bearer\r\n") && text.ends_with("no token\n"));
        assert_eq!(readable.status, 401);
        assert_eq!(super::readable(refusal.clone(), None), refusal);
    }

    #[test]
    fn refusals_are_an_upgrades() {
        let config = Config::default();
        let status = |request: &PlainRequest, draining| {
            accept(request, &config, draining).err().map(|r| r.status)
        };
        assert_eq!(status(&get("/sse"), false), Some(400), "no topic");
        assert_eq!(status(&get("/sse?topic=a&since=x"), false), Some(400));
        assert_eq!(status(&get("/sse?topic=a%20b"), false), Some(400));
        assert_eq!(status(&get("/sse?topic=a"), true), Some(503), "draining");
        let foreign = PlainRequest {
            origin: Some("http://evil.example".into()),
            ..get("/sse?topic=a")
        };
        assert_eq!(status(&foreign, false), Some(403));
        let no_host = PlainRequest {
            host: None,
            ..get("/sse?topic=a")
        };
        assert_eq!(status(&no_host, false), Some(400));
        let many: String = (0..=config.max_topics_per_connection)
            .map(|i| format!("topic=t{i}&"))
            .collect();
        assert_eq!(status(&get(&format!("/sse?{many}")), false), Some(400));
        let echo = Config {
            app: App::Echo,
            ..Config::default()
        };
        assert_eq!(
            accept(&get("/sse?topic=a"), &echo, false)
                .err()
                .map(|r| r.status),
            Some(404)
        );
    }

    mod stream {
        use std::time::{Duration, Instant};

        use stratus_proto::CloseCode;

        use crate::config::{Config, SlowConsumer};
        use crate::connection::{Client, Delivered, QueueRules, Tick};
        use crate::model::broadcast::Broadcast;
        use crate::model::offset::Offset;
        use crate::model::protocol::{Notice, Protocol};
        use crate::stats::WorkerStats;
        use crate::testing::{open_client_speaking, take_output};

        fn stream(config: &Config, now: Instant) -> Client {
            open_client_speaking(Protocol::Sse, config, now, None)
        }

        fn rules(stats: &WorkerStats, cap: usize, policy: SlowConsumer) -> QueueRules<'_> {
            QueueRules {
                cap,
                policy,
                close_deadline: Instant::now() + Duration::from_secs(1),
                stats,
            }
        }

        fn output(client: &mut Client) -> String {
            String::from_utf8(take_output(client).to_vec()).unwrap()
        }

        #[test]
        fn broadcasts_and_notices_go_out_as_events_and_silence_as_heartbeats() {
            let config = Config::default();
            let stats = WorkerStats::default();
            let now = Instant::now();
            let mut client = stream(&config, now);
            assert!(client.is_streaming() && client.is_open_for_messages());
            let news = Broadcast::text("news", "a\nb", Some(Offset(3, 0)));
            let queued = client.deliver(&news, rules(&stats, usize::MAX, SlowConsumer::Close));
            assert_eq!(queued, Delivered::Queued);
            let gap = Notice::Gap {
                topic: "news",
                reason: "r",
            };
            client.notify(&gap, now);
            assert_eq!(
                output(&mut client),
                "event: news\nid: 3-0\ndata: a\ndata: b\n\n\
                 event: gap\ndata: {\"reason\":\"r\",\"topic\":\"news\",\"type\":\"gap\"}\n\n"
            );
            let later = now + config.ping_interval;
            assert_eq!(client.tick(&config, later, 0, None), Tick::Changed);
            assert_eq!(output(&mut client), ": heartbeat\n\n");
            // No answer is expected: the stream is not closed for one.
            let much_later = later + config.ping_interval + config.pong_timeout;
            assert_eq!(client.tick(&config, much_later, 0, None), Tick::Changed);
            assert_eq!(output(&mut client), ": heartbeat\n\n");
            assert!(client.is_streaming());
        }

        #[test]
        fn a_slow_reader_under_close_ends_and_a_drain_flushes_first() {
            let config = Config::default();
            let stats = WorkerStats::default();
            let now = Instant::now();
            let mut slow = stream(&config, now);
            let message = Broadcast::text("t", &"x".repeat(100), None);
            let small = rules(&stats, 300, SlowConsumer::Close);
            assert_eq!(slow.deliver(&message, small), Delivered::Queued);
            assert_eq!(slow.deliver(&message, small), Delivered::ClosedSlow);
            assert!(slow.wants_fin() && !slow.is_streaming());
            assert_eq!(output(&mut slow), "", "what waited is discarded");
            assert_eq!(slow.deliver(&message, small), Delivered::Skipped);

            let mut drained = stream(&config, now);
            assert_eq!(drained.deliver(&message, small), Delivered::Queued);
            drained.close(CloseCode::GOING_AWAY, "shutting down", now, false);
            assert!(drained.wants_fin());
            assert!(
                output(&mut drained).starts_with("event: t\ndata: xxx"),
                "flushed"
            );
            let mut dropping = stream(&config, now);
            let drop = rules(&stats, 300, SlowConsumer::Drop);
            assert_eq!(dropping.deliver(&message, drop), Delivered::Queued);
            assert_eq!(dropping.deliver(&message, drop), Delivered::Dropped);
            assert!(dropping.is_streaming());
        }
    }
}
