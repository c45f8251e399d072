//! Protocol v1 (`Sec-WebSocket-Protocol: stratus.v1`), as `docs/protocol.md` specifies
//! it: commands are JSON objects with a client-chosen `id`, an `op` and its fields;
//! every command gets a reply (`"type":"reply"`) or an error (`"type":"error"`) with a
//! stable `code`; pushes are `"type":"pub"` (text and JSON) or binary frames with a topic
//! header, and notices (`gap`, `skip`, `unsubscribed`, `refresh`).

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use stratus_proto::Message;

use crate::model::offset::{Offset, Since};
use crate::model::protocol::Notice;
use crate::model::publication::{PayloadKind, Publication};

/// The subprotocol a client asks for.
pub(crate) const SUBPROTOCOL: &str = "stratus.v1";
/// Longest command id, as JSON text.
const MAX_ID_LEN: usize = 64;
/// The first byte of a binary push: what it is (a publication), and the format's version.
pub(crate) const BINARY_PUB: u8 = 1;

/// A command's id as the client sent it (a non-negative integer, or a string of at most
/// 64 bytes), kept as JSON text to echo it unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CommandId(Box<str>);

impl CommandId {
    fn parse(raw: &RawValue) -> Option<Self> {
        let text = raw.get();
        let ok = text.len() <= MAX_ID_LEN
            && match serde_json::from_str::<Value>(text) {
                Ok(Value::Number(n)) => n.is_u64(),
                Ok(Value::String(_)) => true,
                _ => false,
            };
        ok.then(|| Self(text.into()))
    }

    /// The id as a JSON value.
    fn value(&self) -> Value {
        serde_json::from_str(&self.0).unwrap_or(Value::Null)
    }

    /// A numeric id (for tests).
    #[cfg(test)]
    pub(crate) fn number(n: u64) -> Self {
        Self(n.to_string().into())
    }
}

/// What a command asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    /// Subscribe to `topic`; with `since`, first what came after that offset (`$`: from
    /// the newest).
    Subscribe {
        topic: String,
        since: Option<Since>,
    },
    Unsubscribe {
        topic: String,
    },
    /// Publish `publication` on `topic`.
    Publish {
        topic: String,
        publication: Publication,
    },
    /// Read `topic`'s history after `since` (from the oldest kept without), at most
    /// `limit` publications.
    History {
        topic: String,
        since: Option<Since>,
        limit: usize,
    },
    /// Replace the connection's token.
    Refresh {
        token: String,
    },
    Ping,
    /// `topic`'s members (and occupancy).
    Presence {
        topic: String,
    },
    /// `topic`'s occupancy: connections and distinct users.
    Occupancy {
        topic: String,
    },
}

impl Op {
    /// Its name on the wire.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Subscribe { .. } => "subscribe",
            Self::Unsubscribe { .. } => "unsubscribe",
            Self::Publish { .. } => "publish",
            Self::History { .. } => "history",
            Self::Refresh { .. } => "refresh",
            Self::Ping => "ping",
            Self::Presence { .. } => "presence",
            Self::Occupancy { .. } => "occupancy",
        }
    }

    /// The topic it names, if any.
    pub(crate) fn topic(&self) -> Option<&str> {
        match self {
            Self::Subscribe { topic, .. }
            | Self::Unsubscribe { topic }
            | Self::Publish { topic, .. }
            | Self::History { topic, .. }
            | Self::Presence { topic }
            | Self::Occupancy { topic } => Some(topic),
            Self::Refresh { .. } | Self::Ping => None,
        }
    }
}

/// A command: its id and what it asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Command {
    pub(crate) id: CommandId,
    pub(crate) op: Op,
}

/// Why a command was refused: the stable code a client acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorCode {
    /// Not a command: malformed JSON, a missing or wrong field, an unknown op.
    BadRequest,
    /// The topic name is not valid.
    InvalidTopic,
    /// The token, the namespace or the server does not allow it.
    Forbidden,
    /// The connection has as many subscriptions as it may.
    TooManyTopics,
    /// The topic has as many subscribers as its namespace allows.
    TopicFull,
    /// Unsubscribe from a topic the connection is not subscribed to.
    NotSubscribed,
    /// The topic keeps no history (or its namespace allows no recovery).
    NoHistory,
    /// Past the connection's command or publish budget: retry later.
    RateLimited,
    /// The publication is larger than its namespace allows.
    TooLarge,
    /// The node is overloaded: retry later.
    Overloaded,
    /// The broker is unreachable, or the server is shutting down: retry later.
    Unavailable,
    /// The token given to `refresh` is not valid, or names another subject.
    InvalidToken,
    /// The backend hook did not answer within `--hook-timeout`.
    HookTimeout,
    /// The backend hook's answer could not be read.
    HookError,
    /// The topic's namespace keeps no presence (`presence = "off"`).
    NoPresence,
}

impl ErrorCode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::InvalidTopic => "invalid_topic",
            Self::Forbidden => "forbidden",
            Self::TooManyTopics => "too_many_topics",
            Self::TopicFull => "topic_full",
            Self::NotSubscribed => "not_subscribed",
            Self::NoHistory => "no_history",
            Self::RateLimited => "rate_limited",
            Self::TooLarge => "too_large",
            Self::Overloaded => "overloaded",
            Self::Unavailable => "unavailable",
            Self::InvalidToken => "invalid_token",
            Self::HookTimeout => "hook_timeout",
            Self::HookError => "hook_error",
            Self::NoPresence => "no_presence",
        }
    }
}

/// A command that could not be parsed, as its error reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Malformed(pub(crate) String);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    op: Option<String>,
    topic: Option<String>,
    since: Option<String>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    text: Option<String>,
    key: Option<String>,
    limit: Option<u64>,
    token: Option<String>,
}

/// Most publications a `history` command returns (and the default).
pub(crate) const MAX_HISTORY_LIMIT: usize = 100;

/// Parses a command, or gives the error reply for it (with its id, op and topic where
/// they could be read).
pub(crate) fn parse(text: &[u8]) -> Result<Command, Malformed> {
    let wire: Wire<'_> = serde_json::from_slice(text).map_err(|e| {
        Malformed(error(
            None,
            None,
            None,
            ErrorCode::BadRequest,
            &format!("not a command: {e}"),
        ))
    })?;
    let (op_name, topic_name) = (wire.op.clone(), wire.topic.clone());
    let bad = |id: Option<&CommandId>, why: &str| {
        let (op, topic) = (op_name.as_deref(), topic_name.as_deref());
        Malformed(error(id, op, topic, ErrorCode::BadRequest, why))
    };
    let id = match wire.id.map(CommandId::parse) {
        Some(Some(id)) => id,
        Some(None) => {
            return Err(bad(
                None,
                "\"id\" must be a non-negative integer or a string of at most 64 bytes",
            ));
        }
        None => return Err(bad(None, "missing \"id\"")),
    };
    let since = match wire.since.as_deref().map(Since::parse) {
        Some(None) => {
            let why = "\"since\" must be \"$\" or an offset such as \"1732000000000-0\"";
            return Err(bad(Some(&id), why));
        }
        Some(since) => since,
        None => None,
    };
    let topic =
        |wire_topic: Option<String>| wire_topic.ok_or_else(|| bad(Some(&id), "missing \"topic\""));
    let op = match wire.op.as_deref() {
        Some("subscribe") => Op::Subscribe {
            topic: topic(wire.topic)?,
            since,
        },
        Some("unsubscribe") => Op::Unsubscribe {
            topic: topic(wire.topic)?,
        },
        Some("publish") => {
            let publication = match (wire.data, wire.text) {
                (Some(data), None) => {
                    Publication::json(Bytes::copy_from_slice(data.get().as_bytes()))
                }
                (None, Some(text)) => Publication::from_message(Message::text(text)),
                _ => {
                    return Err(bad(
                        Some(&id),
                        "a publish carries \"data\" (JSON) or \"text\" (a string)",
                    ));
                }
            }
            .and_then(|p| p.with_key(wire.key.as_deref()))
            .map_err(|e| bad(Some(&id), &e.to_string()))?;
            Op::Publish {
                topic: topic(wire.topic)?,
                publication,
            }
        }
        Some("history") => Op::History {
            topic: topic(wire.topic)?,
            since,
            limit: wire
                .limit
                .map_or(MAX_HISTORY_LIMIT, |l| {
                    usize::try_from(l).unwrap_or(usize::MAX)
                })
                .clamp(1, MAX_HISTORY_LIMIT),
        },
        Some("refresh") => Op::Refresh {
            token: wire
                .token
                .ok_or_else(|| bad(Some(&id), "missing \"token\""))?,
        },
        Some("ping") => Op::Ping,
        Some("presence") => Op::Presence {
            topic: topic(wire.topic)?,
        },
        Some("occupancy") => Op::Occupancy {
            topic: topic(wire.topic)?,
        },
        Some(_) => return Err(bad(Some(&id), "unknown op")),
        None => return Err(bad(Some(&id), "missing \"op\"")),
    };
    Ok(Command { id, op })
}

/// A reply to command `id` (`op`, on `topic`), with the op's own `fields`.
pub(crate) fn reply(
    id: &CommandId,
    op: &str,
    topic: Option<&str>,
    fields: Map<String, Value>,
) -> String {
    let mut object = Map::new();
    object.insert("type".into(), "reply".into());
    object.insert("id".into(), id.value());
    object.insert("op".into(), op.into());
    if let Some(topic) = topic {
        object.insert("topic".into(), topic.into());
    }
    object.extend(fields);
    Value::Object(object).to_string()
}

/// The error reply to command `id` (if it had one), `op` on `topic`: the stable `code`
/// and a `message` for people.
pub(crate) fn error(
    id: Option<&CommandId>,
    op: Option<&str>,
    topic: Option<&str>,
    code: ErrorCode,
    message: &str,
) -> String {
    json!({
        "type": "error",
        "id": id.map_or(Value::Null, CommandId::value),
        "op": op,
        "topic": topic,
        "code": code.as_str(),
        "message": message,
    })
    .to_string()
}

/// Publications of a history page as JSON: `{"data":..,"offset":..,"key":..}` each, the
/// data as a push carries it (binary as base64, with `"encoding":"base64"`).
pub(crate) fn publications(entries: &[(Offset, Publication)]) -> Value {
    use base64::Engine as _;
    let entries = entries.iter().map(|(offset, publication)| {
        let mut entry = Map::new();
        let data = match publication.kind {
            PayloadKind::Json => {
                serde_json::from_slice(&publication.payload).unwrap_or(Value::Null)
            }
            PayloadKind::Text | PayloadKind::Event => String::from_utf8_lossy(&publication.payload)
                .into_owned()
                .into(),
            PayloadKind::Binary => {
                entry.insert("encoding".into(), "base64".into());
                base64::engine::general_purpose::STANDARD
                    .encode(&publication.payload)
                    .into()
            }
        };
        entry.insert("data".into(), data);
        entry.insert("offset".into(), offset.to_string().into());
        if let Some(key) = &publication.key {
            entry.insert("key".into(), key.as_ref().into());
        }
        Value::Object(entry)
    });
    Value::Array(entries.collect())
}

/// A notice in v1.
pub(crate) fn notice(notice: &Notice<'_>) -> String {
    let offset = |o: &Option<Offset>| o.map(|o| o.to_string());
    match notice {
        Notice::Gap { topic, reason } => {
            json!({"type": "gap", "topic": topic, "reason": reason})
        }
        Notice::Skip {
            topic,
            key,
            skipped,
            from,
            to,
        } => json!({
            "type": "skip",
            "topic": topic,
            "key": key,
            "skipped": skipped,
            "from": offset(from),
            "to": offset(to),
        }),
        Notice::Unsubscribed { topic, reason } => {
            json!({"type": "unsubscribed", "topic": topic, "reason": reason})
        }
        Notice::Refresh { expires } => json!({"type": "refresh", "expires": expires}),
        Notice::Subscribed { topic } => json!({"type": "subscribed", "topic": topic}),
    }
    .to_string()
}

/// A publication as a v1 push: `{"type":"pub","topic":..,"data":..,"offset":..,"key":..}`
/// in a text frame for text (data a string) and JSON (data the value), or a binary frame
/// for binary: the byte [`BINARY_PUB`], then the topic, the offset and the key, each as a
/// length byte and its bytes (length 0: none), then the payload.
pub(crate) fn publication(
    topic: &str,
    publication: &Publication,
    offset: Option<Offset>,
) -> Message {
    if publication.kind == PayloadKind::Event {
        // Its payload is the push.
        return Message::Text(publication.payload.clone());
    }
    let offset = offset.map(|o| o.to_string());
    let key = publication.key.as_deref();
    if publication.kind == PayloadKind::Binary {
        let mut frame = BytesMut::with_capacity(
            4 + topic.len()
                + offset.as_ref().map_or(0, String::len)
                + key.map_or(0, str::len)
                + publication.payload.len(),
        );
        frame.put_u8(BINARY_PUB);
        for field in [Some(topic), offset.as_deref(), key] {
            let field = field.unwrap_or_default();
            // Topics are at most 128 bytes, keys 128, offsets 41: each fits its length byte.
            frame.put_u8(u8::try_from(field.len()).unwrap_or(u8::MAX));
            frame.put_slice(&field.as_bytes()[..field.len().min(255)]);
        }
        frame.put_slice(&publication.payload);
        return Message::Binary(frame.freeze());
    }
    let quoted = |s: &str| Value::from(s).to_string();
    let data = match publication.kind {
        PayloadKind::Json => String::from_utf8_lossy(&publication.payload).into_owned(),
        _ => quoted(&String::from_utf8_lossy(&publication.payload)),
    };
    let mut text = String::with_capacity(48 + topic.len() + data.len());
    text.push_str(r#"{"type":"pub","topic":"#);
    text.push_str(&quoted(topic));
    text.push_str(r#","data":"#);
    text.push_str(&data);
    if let Some(offset) = &offset {
        text.push_str(r#","offset":""#);
        text.push_str(offset);
        text.push('"');
    }
    if let Some(key) = key {
        text.push_str(r#","key":"#);
        text.push_str(&quoted(key));
    }
    text.push('}');
    Message::text(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Result<Command, Value> {
        parse(text.as_bytes()).map_err(|Malformed(e)| serde_json::from_str(&e).expect("JSON"))
    }

    #[test]
    fn commands_parse_with_their_ids() {
        let c = parsed(r#"{"id":7,"op":"subscribe","topic":"a","since":"5-1"}"#).expect("ok");
        assert_eq!(c.id, CommandId::number(7));
        assert_eq!(
            c.op,
            Op::Subscribe {
                topic: "a".into(),
                since: Some(Since::After(Offset(5, 1)))
            }
        );
        let c = parsed(r#"{"id":"x-1","op":"publish","topic":"a","data":{"v":[1,2]},"key":"k"}"#)
            .expect("ok");
        let Op::Publish { publication, .. } = c.op else {
            panic!("a publish");
        };
        assert_eq!(publication.kind, PayloadKind::Json);
        assert_eq!(&publication.payload[..], br#"{"v":[1,2]}"#);
        assert_eq!(publication.key.as_deref(), Some("k"));
        let c = parsed(r#"{"id":1,"op":"history","topic":"a","limit":100000}"#).expect("ok");
        assert!(matches!(
            c.op,
            Op::History {
                limit: MAX_HISTORY_LIMIT,
                since: None,
                ..
            }
        ));
        assert_eq!(parsed(r#"{"id":2,"op":"ping"}"#).expect("ok").op, Op::Ping);
    }

    #[test]
    fn malformed_commands_get_bad_request_with_what_could_be_read() {
        for (text, id, why) in [
            ("nope", Value::Null, "not a command"),
            (r#"{"op":"ping"}"#, Value::Null, "missing \"id\""),
            (r#"{"id":-1,"op":"ping"}"#, Value::Null, "\"id\" must be"),
            (r#"{"id":1.5,"op":"ping"}"#, Value::Null, "\"id\" must be"),
            (r#"{"id":3,"op":"fly"}"#, json!(3), "unknown op"),
            (r#"{"id":3}"#, json!(3), "missing \"op\""),
            (
                r#"{"id":"s","op":"subscribe"}"#,
                json!("s"),
                "missing \"topic\"",
            ),
            (
                r#"{"id":4,"op":"subscribe","topic":"a","since":"x"}"#,
                json!(4),
                "\"since\" must be",
            ),
            (
                r#"{"id":5,"op":"publish","topic":"a"}"#,
                json!(5),
                "carries \"data\"",
            ),
            (
                r#"{"id":5,"op":"publish","topic":"a","data":1,"text":"x"}"#,
                json!(5),
                "carries \"data\"",
            ),
            (r#"{"id":6,"op":"refresh"}"#, json!(6), "missing \"token\""),
            (
                r#"{"id":6,"op":"ping","extra":1}"#,
                Value::Null,
                "unknown field",
            ),
        ] {
            let error = parsed(text).expect_err(text);
            assert_eq!(error["type"], "error", "{text}");
            assert_eq!(error["code"], "bad_request", "{text}");
            assert_eq!(error["id"], id, "{text}");
            let message = error["message"].as_str().unwrap_or_default();
            assert!(message.contains(why), "{text}: {message}");
        }
        let long = format!(r#"{{"id":"{}","op":"ping"}}"#, "x".repeat(70));
        assert!(parsed(&long).is_err(), "ids are short");
    }

    #[test]
    fn publications_name_their_topic_and_embed_json_as_a_value() {
        let json = Publication::json(Bytes::from_static(br#"{"p":1}"#)).expect("JSON");
        let Message::Text(text) = publication("prices", &json, Some(Offset(9, 2))) else {
            panic!("text");
        };
        let value: Value = serde_json::from_slice(&text).expect("JSON");
        assert_eq!(
            value,
            json!({"type":"pub","topic":"prices","data":{"p":1},"offset":"9-2"})
        );
        let text_pub = Publication::text("say \"hi\"\n")
            .with_key(Some("k"))
            .expect("key");
        let Message::Text(text) = publication("t", &text_pub, None) else {
            panic!("text");
        };
        let value: Value = serde_json::from_slice(&text).expect("JSON");
        assert_eq!(
            value,
            json!({"type":"pub","topic":"t","data":"say \"hi\"\n","key":"k"})
        );
    }

    #[test]
    fn binary_publications_have_a_topic_header() {
        let binary = Publication::from_message(Message::Binary(Bytes::from_static(b"\x00\xff")))
            .expect("binary");
        let Message::Binary(frame) = publication("ab", &binary, Some(Offset(1, 0))) else {
            panic!("binary");
        };
        assert_eq!(&frame[..], b"\x01\x02ab\x031-0\x00\x00\xff");
    }

    #[test]
    fn replies_and_errors_echo_the_id() {
        let id = CommandId::number(3);
        let mut fields = Map::new();
        fields.insert("offset".into(), "1-0".into());
        let value: Value =
            serde_json::from_str(&reply(&id, "publish", Some("t"), fields)).expect("JSON");
        assert_eq!(
            value,
            json!({"type":"reply","id":3,"op":"publish","topic":"t","offset":"1-0"})
        );
        let value: Value = serde_json::from_str(&error(
            Some(&id),
            Some("subscribe"),
            Some("t"),
            ErrorCode::Forbidden,
            "no",
        ))
        .expect("JSON");
        assert_eq!(value["code"], "forbidden");
        assert_eq!(value["id"], 3);
    }
}
