//! Raw mode: messages arrive exactly as they were published, and the in-band subscription
//! commands are JSON text, answered in JSON.
//!
//! `{"op":"subscribe","topic":"x"}` and `{"op":"unsubscribe","topic":"x"}`; the reply
//! repeats `op` and `topic` with `"ok":true`, or `"ok":false` and an `error` saying what
//! was wrong. With a broker, the reply to a subscribe waits until Redis has confirmed the
//! node's subscription, so what is published after it reaches the client. Published
//! messages are delivered as they were published, without an
//! envelope; replies and gap notices are the only messages with an `op` field the server
//! generates.
//!
//! A gap notice, `{"op":"gap","topic":"x","reason":...}`, tells a subscriber that messages
//! on the topic may be missing, and why: the node lost its broker and has just
//! reconnected (what was published elsewhere meanwhile did not reach it), or a recovery
//! (see `recovery`) could not give everything: the history was trimmed past the client's
//! offset, is gone or unreadable, or more arrived meanwhile than could be held.

use serde::Deserialize;
use serde_json::json;

use crate::model::offset::{Offset, Since};

/// A command a client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    /// Subscribe; with `since`, with offsets (and first what came after it).
    Subscribe {
        topic: String,
        since: Option<Since>,
    },
    Unsubscribe(String),
}

#[derive(Deserialize)]
struct Wire {
    op: String,
    topic: Option<String>,
    since: Option<String>,
}

/// Parses a command, or explains what is wrong with it (as the error reply to send).
pub(crate) fn parse(text: &[u8]) -> Result<Command, String> {
    let wire: Wire = serde_json::from_slice(text).map_err(|e| {
        error_reply(
            None,
            None,
            &format!("expected {{\"op\":\"subscribe\"|\"unsubscribe\",\"topic\":...}}: {e}"),
        )
    })?;
    let op = wire.op.as_str();
    let topic = wire
        .topic
        .ok_or_else(|| error_reply(Some(op), None, "missing \"topic\""))?;
    let since = match wire.since.as_deref().map(Since::parse) {
        Some(None) => {
            let why = "\"since\" must be \"$\" or an offset such as \"1732000000000-0\"";
            return Err(error_reply(Some(op), Some(&topic), why));
        }
        Some(since) => since,
        None => None,
    };
    match op {
        "subscribe" => Ok(Command::Subscribe { topic, since }),
        "unsubscribe" => Ok(Command::Unsubscribe(topic)),
        _ => Err(error_reply(Some(op), Some(&topic), "unknown op")),
    }
}

/// The reply to a successful command.
pub(crate) fn ok_reply(op: &str, topic: &str) -> String {
    json!({"op": op, "topic": topic, "ok": true}).to_string()
}

/// The notice that messages on `topic` may be missing, and why.
pub(crate) fn gap_notice(topic: &str, reason: &str) -> String {
    json!({"op": "gap", "topic": topic, "reason": reason}).to_string()
}

/// The notice that precedes each message on a subscription with offsets.
pub(crate) fn offset_notice(topic: &str, offset: Offset) -> String {
    json!({"op": "offset", "topic": topic, "offset": offset.to_string()}).to_string()
}

/// The reply to a refused command.
pub(crate) fn error_reply(op: Option<&str>, topic: Option<&str>, error: &str) -> String {
    json!({"op": op, "topic": topic, "ok": false, "error": error}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        assert_eq!(
            parse(br#"{"op":"subscribe","topic":"a"}"#),
            Ok(Command::Subscribe {
                topic: "a".into(),
                since: None
            })
        );
        assert_eq!(
            parse(br#"{"topic":"a","op":"unsubscribe","extra":1}"#),
            Ok(Command::Unsubscribe("a".into()))
        );
    }

    #[test]
    fn bad_commands_get_specific_errors() {
        let missing = parse(br#"{"op":"subscribe"}"#).unwrap_err();
        assert!(missing.contains("missing \\\"topic\\\""), "{missing}");
        let unknown = parse(br#"{"op":"publish","topic":"a"}"#).unwrap_err();
        assert!(unknown.contains("unknown op"), "{unknown}");
        let garbage = parse(b"hello").unwrap_err();
        assert!(garbage.contains("\"ok\":false"), "{garbage}");
        let since = parse(br#"{"op":"subscribe","topic":"a","since":"yesterday"}"#).unwrap_err();
        assert!(since.contains("must be"), "{since}");
    }

    #[test]
    fn since_asks_for_offsets() {
        assert_eq!(
            parse(br#"{"op":"subscribe","topic":"a","since":"$"}"#),
            Ok(Command::Subscribe {
                topic: "a".into(),
                since: Some(Since::Now)
            })
        );
        assert!(matches!(
            parse(br#"{"op":"subscribe","topic":"a","since":"17-3"}"#),
            Ok(Command::Subscribe {
                since: Some(Since::After(_)),
                ..
            })
        ));
    }
}
