//! Backend hooks as plain values: the JSON the server POSTs to the application's backend
//! (connect, subscribe, publish), what it makes of the answer, and why a hook gave no
//! usable answer ([`HookFailure`], with its HTTP status and v1 error code mapped in one
//! place). No I/O here: the hook thread (`hooks`) sends the bodies built here and hands
//! the answer, parsed here, to the worker that asked.
//!
//! An application that authenticates with cookies or sessions rather than JWTs keeps its
//! authorization in its own backend; these hooks let it say who a connection is, what it
//! may subscribe to, and what it may publish, without the server knowing its rules.

use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::model::auth::Grant;
use crate::model::protocol::v1::ErrorCode;
use crate::model::topic;

/// Longest refusal reason kept from a backend's answer (the rest is cut).
const MAX_REASON: usize = 256;

/// Which hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HookKind {
    /// A WebSocket upgrade without a token.
    Connect,
    /// A subscribe (v1 command or upgrade-URL topic) in a namespace with `subscribe-hook`.
    Subscribe,
    /// A client publish in a namespace with `publish-hook`.
    Publish,
}

impl HookKind {
    /// Every hook, in the order of [`HookKind::index`].
    pub(crate) const ALL: [Self; 3] = [Self::Connect, Self::Subscribe, Self::Publish];

    /// Its name (the `hook` label in /metrics).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Subscribe => "subscribe",
            Self::Publish => "publish",
        }
    }

    /// Its position in [`HookKind::ALL`] (and in per-hook counters).
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Why a hook gave no usable answer. Each maps to one HTTP status (connect) and one v1
/// error code (subscribe, publish), here and nowhere else.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum HookFailure {
    /// No answer within `--hook-timeout` (waiting in line included).
    #[error("the backend did not answer within the hook timeout")]
    Timeout,
    /// The backend could not be reached (connection refused, reset, DNS) or answered
    /// with a 5xx.
    #[error("the backend is unavailable: {0}")]
    Unavailable(String),
    /// Past `--hook-concurrency` requests in flight and the line behind them full.
    #[error("too many hook requests waiting")]
    Busy,
    /// The backend answered something this server cannot read.
    #[error("the backend's answer is malformed: {0}")]
    Malformed(String),
}

impl HookFailure {
    /// The HTTP status a connect hook's failure refuses the upgrade with.
    pub(crate) fn http_status(&self) -> u16 {
        match self {
            Self::Timeout => 504,
            Self::Unavailable(_) | Self::Busy => 503,
            Self::Malformed(_) => 502,
        }
    }

    /// The v1 error code a subscribe or publish hook's failure is answered with.
    pub(crate) fn v1_code(&self) -> ErrorCode {
        match self {
            Self::Timeout => ErrorCode::HookTimeout,
            Self::Unavailable(_) | Self::Busy => ErrorCode::Unavailable,
            Self::Malformed(_) => ErrorCode::HookError,
        }
    }

    /// What a client is told: one fixed text per status, never the detail (error chains,
    /// the backend's answer quoted, its address), which is for the server's log.
    pub(crate) fn public_text(&self) -> &'static str {
        match self.http_status() {
            503 => "the backend is unavailable",
            504 => "the backend did not answer in time",
            _ => "the backend's answer was not understood",
        }
    }

    /// Whether the failure says the backend needs fixing (logged at `warn`), rather than
    /// being busy or slow (`debug`: under load every refused command would log).
    pub(crate) fn is_backend_fault(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Malformed(_))
    }

    /// Its `outcome` label in /metrics.
    pub(crate) fn outcome(&self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Unavailable(_) => "unavailable",
            Self::Busy => "busy",
            Self::Malformed(_) => "malformed",
        }
    }
}

/// The `outcome` labels of /metrics, in the order hook counters keep them.
pub(crate) const OUTCOMES: [&str; 6] = [
    "allowed",
    "refused",
    "timeout",
    "unavailable",
    "busy",
    "malformed",
];

/// Where an outcome label sits in [`OUTCOMES`].
pub(crate) fn outcome_index(outcome: &str) -> usize {
    OUTCOMES
        .iter()
        .position(|o| *o == outcome)
        .unwrap_or(OUTCOMES.len() - 1)
}

/// The backend said no.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused {
    /// The HTTP status to refuse an upgrade with (400..=599; subscribe and publish
    /// refusals are 403).
    pub(crate) status: u16,
    /// Why, as the backend put it (at most 256 bytes).
    pub(crate) reason: String,
}

/// What a connect hook grants: the connection's grant and the topics the backend
/// subscribes it to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Connected {
    pub(crate) grant: Grant,
    /// Initial subscriptions, each a valid topic name.
    pub(crate) subscribe: Vec<String>,
}

/// What a publish hook says of a publication.
#[derive(Debug, Clone)]
pub(crate) enum PublishVerdict {
    /// It goes on as sent.
    Allow,
    /// It goes on with this JSON as its data instead.
    Replace(Box<RawValue>),
}

/// A hook's answer, parsed: allowed (with what the hook gives) or refused.
pub(crate) type Verdict<T> = Result<T, Refused>;

/// What the connect hook is told of an upgrade.
#[derive(Debug, Serialize)]
pub(crate) struct ConnectRequest<'a> {
    /// Every header of the upgrade request, names lower-cased; a repeated header's
    /// values joined with `, ` (`; ` for `cookie`).
    pub(crate) headers: serde_json::Map<String, serde_json::Value>,
    pub(crate) path: &'a str,
    /// The query string as sent (without `?`).
    pub(crate) query: &'a str,
    /// The client's IP address.
    pub(crate) remote_addr: String,
    /// The subprotocol the server will answer with (`stratus.v1`, `stratus`), if any.
    pub(crate) subprotocol: Option<&'a str>,
    /// `websocket` for an upgrade, `sse` for an event stream (`GET /sse`).
    pub(crate) transport: &'a str,
}

/// The headers of a request head (`GET ... HTTP/1.1\r\n...\r\n\r\n`) as the connect hook
/// gets them. A head that does not parse gives none (the handshake parser has already
/// accepted it, so this does not happen).
pub(crate) fn headers_of(head: &[u8]) -> serde_json::Map<String, serde_json::Value> {
    let mut slots = [httparse::EMPTY_HEADER; 128];
    let mut request = httparse::Request::new(&mut slots);
    let mut map = serde_json::Map::new();
    if request.parse(head).is_err() {
        return map;
    }
    for header in request.headers.iter() {
        let name = header.name.to_ascii_lowercase();
        let value = String::from_utf8_lossy(header.value).trim().to_owned();
        match map.get_mut(&name) {
            Some(serde_json::Value::String(joined)) => {
                joined.push_str(if name == "cookie" { "; " } else { ", " });
                joined.push_str(&value);
            }
            _ => {
                map.insert(name, serde_json::Value::String(value));
            }
        }
    }
    map
}

/// Builds a connect request body for an upgrade (`transport` `websocket`) or an event
/// stream (`sse`).
pub(crate) fn connect_body(
    head: &[u8],
    target: &str,
    ip: IpAddr,
    subprotocol: Option<&str>,
    transport: &str,
) -> Vec<u8> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let request = ConnectRequest {
        headers: headers_of(head),
        path,
        query,
        remote_addr: ip.to_string(),
        subprotocol,
        transport,
    };
    serde_json::to_vec(&request).unwrap_or_default()
}

/// What the subscribe hook is told.
#[derive(Debug, Serialize)]
pub(crate) struct SubscribeRequest<'a> {
    /// The connection's user (its grant's subject), if it has one.
    pub(crate) user: Option<&'a str>,
    /// The connection's id on this node.
    pub(crate) client: &'a str,
    pub(crate) topic: &'a str,
    /// The grant's `info`, as given.
    pub(crate) info: Option<&'a RawValue>,
}

/// What the publish hook is told.
#[derive(Debug, Serialize)]
pub(crate) struct PublishRequest<'a> {
    pub(crate) user: Option<&'a str>,
    pub(crate) client: &'a str,
    pub(crate) topic: &'a str,
    /// The publication's data: its JSON, or a string for a text publish.
    pub(crate) data: &'a RawValue,
}

/// A refusal as a backend writes it.
#[derive(Deserialize)]
struct RefuseWire {
    status: Option<u16>,
    reason: Option<String>,
}

#[derive(Deserialize)]
struct ConnectWire {
    user: Option<String>,
    #[serde(default)]
    topics: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
    info: Option<Box<RawValue>>,
    #[serde(default)]
    subscribe: Vec<String>,
    expires: Option<u64>,
    refuse: Option<RefuseWire>,
}

#[derive(Deserialize)]
struct AllowWire {
    allow: Option<bool>,
    reason: Option<String>,
    data: Option<Box<RawValue>>,
}

fn malformed(why: impl Into<String>) -> HookFailure {
    HookFailure::Malformed(why.into())
}

fn reason(reason: Option<String>, default: &str) -> String {
    let mut reason = reason.unwrap_or_else(|| default.to_owned());
    if reason.len() > MAX_REASON {
        let mut cut = MAX_REASON;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    reason
}

/// What the backend's HTTP status says before its body is read: a 2xx is read on, a
/// 4xx is a refusal with that status, a 5xx an outage, anything else malformed.
fn by_status(status: u16) -> Result<Option<Refused>, HookFailure> {
    match status {
        200..=299 => Ok(None),
        400..=499 => Ok(Some(Refused {
            status,
            reason: format!("refused by the backend ({status})"),
        })),
        500..=599 => Err(HookFailure::Unavailable(format!(
            "the backend answered {status}"
        ))),
        _ => Err(malformed(format!("unexpected HTTP status {status}"))),
    }
}

/// Reads a connect hook's answer (`status`, `body`): the grant, a refusal, or why the
/// answer is unusable.
pub(crate) fn parse_connect(status: u16, body: &[u8]) -> Result<Verdict<Connected>, HookFailure> {
    if let Some(refused) = by_status(status)? {
        return Ok(Err(refused));
    }
    let wire: ConnectWire =
        serde_json::from_slice(body).map_err(|e| malformed(format!("connect answer: {e}")))?;
    match (wire.refuse, wire.user) {
        (Some(_), Some(_)) => Err(malformed("connect answer has both user and refuse")),
        (Some(refuse), None) => {
            let status = refuse.status.unwrap_or(403);
            if !(400..=599).contains(&status) {
                return Err(malformed(format!(
                    "refuse status {status} is not 400..=599"
                )));
            }
            Ok(Err(Refused {
                status,
                reason: reason(refuse.reason, "refused by the backend"),
            }))
        }
        (None, None) => Err(malformed("connect answer has neither user nor refuse")),
        (None, Some(user)) if user.is_empty() => Err(malformed("connect answer's user is empty")),
        (None, Some(user)) => {
            if let Some(bad) = wire.subscribe.iter().find(|t| topic::validate(t).is_err()) {
                return Err(malformed(format!("subscribe: invalid topic {bad:?}")));
            }
            let info = wire.info.map(|raw| Arc::from(raw.get()));
            let grant = Grant::from_hook(
                user,
                wire.topics,
                wire.publish,
                wire.expires.unwrap_or(u64::MAX),
                info,
            );
            Ok(Ok(Connected {
                grant,
                subscribe: wire.subscribe,
            }))
        }
    }
}

fn parse_allow(status: u16, body: &[u8], hook: &str) -> Result<Verdict<AllowWire>, HookFailure> {
    if let Some(refused) = by_status(status)? {
        return Ok(Err(refused));
    }
    let wire: AllowWire =
        serde_json::from_slice(body).map_err(|e| malformed(format!("{hook} answer: {e}")))?;
    match wire.allow {
        Some(false) => Ok(Err(Refused {
            status: 403,
            reason: reason(wire.reason, "refused by the backend"),
        })),
        Some(true) => Ok(Ok(wire)),
        None if wire.data.is_some() => Ok(Ok(wire)),
        None => Err(malformed(format!("{hook} answer has no allow"))),
    }
}

/// Reads a subscribe hook's answer.
pub(crate) fn parse_subscribe(status: u16, body: &[u8]) -> Result<Verdict<()>, HookFailure> {
    Ok(parse_allow(status, body, "subscribe")?.map(|_| ()))
}

/// Reads a publish hook's answer: allowed as is, allowed with its data replaced, or
/// refused.
pub(crate) fn parse_publish(
    status: u16,
    body: &[u8],
) -> Result<Verdict<PublishVerdict>, HookFailure> {
    Ok(
        parse_allow(status, body, "publish")?.map(|wire| match wire.data {
            Some(data) => PublishVerdict::Replace(data),
            None => PublishVerdict::Allow,
        }),
    )
}

/// Where a hook's answer goes: the worker and its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HookDest {
    pub(crate) worker: usize,
    pub(crate) conn: crate::model::conn_id::ConnId,
}

/// Who asked for a subscribe or publish that waits for its hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Asker {
    /// A topic in the upgrade URL (no reply; a refusal closes the connection).
    Upgrade,
    /// A raw-mode command (answered without an id).
    Raw,
    /// A protocol v1 command, answered with its id.
    V1(crate::model::protocol::v1::CommandId),
}

/// What the worker needs back to go on once a subscribe or publish hook answers.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    /// The topic asked about.
    pub(crate) topic: Arc<str>,
    pub(crate) asker: Asker,
    /// A subscribe's `since`.
    pub(crate) since: Option<crate::model::offset::Since>,
    /// A publish's publication, as sent.
    pub(crate) publication: Option<crate::model::publication::Publication>,
}

/// A request for the hook thread: which hook, its JSON body, who asked and when.
#[derive(Debug)]
pub(crate) struct HookJob {
    pub(crate) kind: HookKind,
    pub(crate) body: Vec<u8>,
    pub(crate) to: HookDest,
    /// When it was asked: the hook timeout counts from here (waiting in line included).
    pub(crate) asked: std::time::Instant,
    /// For subscribe and publish: what the worker goes on with.
    pub(crate) pending: Option<Pending>,
}

/// A hook's answer, parsed, on its way back to the worker that asked.
#[derive(Debug)]
pub(crate) enum HookAnswer {
    Connect(Result<Verdict<Connected>, HookFailure>),
    Subscribe(Pending, Result<Verdict<()>, HookFailure>),
    Publish(Pending, Result<Verdict<PublishVerdict>, HookFailure>),
}

impl HookAnswer {
    /// Reads the backend's answer (`status`, `body`, or the failure to get one) to a
    /// `kind` hook.
    pub(crate) fn parse(
        kind: HookKind,
        pending: Option<Pending>,
        answer: Result<(u16, &[u8]), HookFailure>,
    ) -> Self {
        let pending = pending.unwrap_or(Pending {
            topic: Arc::from(""),
            asker: Asker::Upgrade,
            since: None,
            publication: None,
        });
        match kind {
            HookKind::Connect => Self::Connect(answer.and_then(|(s, b)| parse_connect(s, b))),
            HookKind::Subscribe => {
                Self::Subscribe(pending, answer.and_then(|(s, b)| parse_subscribe(s, b)))
            }
            HookKind::Publish => {
                Self::Publish(pending, answer.and_then(|(s, b)| parse_publish(s, b)))
            }
        }
    }

    /// Why the answer is malformed, if it is (for the log).
    pub(crate) fn malformed(&self) -> Option<&str> {
        match self {
            Self::Connect(Err(HookFailure::Malformed(why)))
            | Self::Subscribe(_, Err(HookFailure::Malformed(why)))
            | Self::Publish(_, Err(HookFailure::Malformed(why))) => Some(why),
            _ => None,
        }
    }

    /// Its `outcome` label in /metrics.
    pub(crate) fn outcome(&self) -> &'static str {
        fn of<T>(result: &Result<Verdict<T>, HookFailure>) -> &'static str {
            match result {
                Ok(Ok(_)) => "allowed",
                Ok(Err(_)) => "refused",
                Err(failure) => failure.outcome(),
            }
        }
        match self {
            Self::Connect(r) => of(r),
            Self::Subscribe(_, r) => of(r),
            Self::Publish(_, r) => of(r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &[u8] = b"GET /ws?topic=a&x=1 HTTP/1.1\r\nHost: h\r\nCookie: a=1\r\n\
        Upgrade: websocket\r\ncookie: b=2\r\nX-Tag: one\r\nX-Tag: two\r\n\r\n";

    #[test]
    fn the_connect_request_carries_every_header_path_query_address_and_protocol() {
        let body = connect_body(
            HEAD,
            "/ws?topic=a&x=1",
            IpAddr::from([10, 0, 0, 7]),
            Some("stratus.v1"),
            "websocket",
        );
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["headers"]["cookie"], "a=1; b=2", "cookies joined");
        assert_eq!(json["headers"]["x-tag"], "one, two");
        assert_eq!(json["headers"]["host"], "h");
        assert_eq!(json["path"], "/ws");
        assert_eq!(json["query"], "topic=a&x=1");
        assert_eq!(json["remote_addr"], "10.0.0.7");
        assert_eq!(json["subprotocol"], "stratus.v1");
        assert_eq!(json["transport"], "websocket");
    }

    #[test]
    fn a_connect_answer_grants_user_topics_info_and_initial_subscriptions() {
        let body = br#"{"user":"ann","topics":["chat.*"],"info":{"name":"Ann"},
            "subscribe":["chat.lobby"],"expires":4000000000}"#;
        let connected = parse_connect(200, body).unwrap().unwrap();
        assert_eq!(connected.grant.subject, "ann");
        assert!(connected.grant.allows("chat.x") && !connected.grant.allows("news"));
        assert_eq!(connected.grant.info.as_deref(), Some(r#"{"name":"Ann"}"#));
        assert_eq!(connected.grant.expires, 4_000_000_000);
        assert_eq!(connected.subscribe, ["chat.lobby"]);
        let bare = parse_connect(200, br#"{"user":"bo"}"#).unwrap().unwrap();
        assert!(!bare.grant.allows("chat.x"), "no topics: none");
        assert_eq!(bare.grant.expires, u64::MAX, "no expiry");
    }

    #[test]
    fn a_connect_refusal_keeps_its_status_and_reason() {
        let body = br#"{"refuse":{"status":401,"reason":"log in first"}}"#;
        let refused = parse_connect(200, body).unwrap().unwrap_err();
        assert_eq!(
            (refused.status, refused.reason.as_str()),
            (401, "log in first")
        );
        let default = parse_connect(200, br#"{"refuse":{}}"#)
            .unwrap()
            .unwrap_err();
        assert_eq!(default.status, 403);
        let by_status = parse_connect(401, b"").unwrap().unwrap_err();
        assert_eq!(by_status.status, 401, "a 4xx from the backend is a refusal");
        let long = format!(r#"{{"refuse":{{"reason":"{}"}}}}"#, "é".repeat(300));
        let cut = parse_connect(200, long.as_bytes()).unwrap().unwrap_err();
        assert!(cut.reason.len() <= MAX_REASON);
    }

    #[test]
    fn unusable_connect_answers_are_malformed_or_outages() {
        for body in [
            &b"not json"[..],
            br#"{}"#,
            br#"{"user":""}"#,
            br#"{"user":"a","refuse":{}}"#,
            br#"{"refuse":{"status":200}}"#,
            br#"{"user":"a","subscribe":["bad topic"]}"#,
            br#"{"user":7}"#,
        ] {
            assert!(
                matches!(parse_connect(200, body), Err(HookFailure::Malformed(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert!(matches!(
            parse_connect(503, b""),
            Err(HookFailure::Unavailable(_))
        ));
        assert!(matches!(
            parse_connect(302, b""),
            Err(HookFailure::Malformed(_))
        ));
    }

    #[test]
    fn subscribe_and_publish_answers_allow_refuse_or_replace() {
        assert_eq!(parse_subscribe(200, br#"{"allow":true}"#), Ok(Ok(())));
        let no = parse_subscribe(200, br#"{"allow":false,"code":"forbidden","reason":"no"}"#);
        assert_eq!(no.unwrap().unwrap_err().reason, "no");
        assert!(matches!(
            parse_subscribe(200, br#"{}"#),
            Err(HookFailure::Malformed(_))
        ));
        assert!(matches!(
            parse_publish(200, br#"{"allow":true}"#),
            Ok(Ok(PublishVerdict::Allow))
        ));
        let replaced = parse_publish(200, br#"{"data":{"clean":true}}"#)
            .unwrap()
            .unwrap();
        assert!(matches!(replaced, PublishVerdict::Replace(d) if d.get() == r#"{"clean":true}"#));
        assert!(parse_publish(200, br#"{"allow":false}"#).unwrap().is_err());
        assert!(parse_publish(403, b"").unwrap().is_err());
    }

    #[test]
    fn every_failure_has_a_status_a_code_and_an_outcome() {
        let all = [
            HookFailure::Timeout,
            HookFailure::Unavailable(String::new()),
            HookFailure::Busy,
            HookFailure::Malformed(String::new()),
        ];
        let statuses: Vec<u16> = all.iter().map(HookFailure::http_status).collect();
        assert_eq!(statuses, [504, 503, 503, 502]);
        let codes: Vec<&str> = all.iter().map(|f| f.v1_code().as_str()).collect();
        assert_eq!(
            codes,
            ["hook_timeout", "unavailable", "unavailable", "hook_error"]
        );
        for failure in &all {
            assert_eq!(
                OUTCOMES[outcome_index(failure.outcome())],
                failure.outcome()
            );
        }
        let texts: Vec<&str> = all.iter().map(HookFailure::public_text).collect();
        assert_eq!(
            texts,
            [
                "the backend did not answer in time",
                "the backend is unavailable",
                "the backend is unavailable",
                "the backend's answer was not understood"
            ]
        );
        let detailed = HookFailure::Malformed("secret 10.0.0.7:8000 said {\"x\"".into());
        assert!(
            !detailed.public_text().contains("10.0.0.7"),
            "the detail stays in the log"
        );
    }
}
