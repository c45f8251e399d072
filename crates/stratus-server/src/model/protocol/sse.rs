//! Server-Sent Events (`GET /sse`): how a subscriber that cannot hold a WebSocket gets
//! the same publications and notices as text/event-stream events. A publication is an
//! event named for its topic (`event: <topic>`), with `id: <offset>` where the topic keeps
//! history (the browser sends it back as `Last-Event-ID` to resume), and its payload as
//! `data:` lines: text and JSON as published, split on line ends (each line its own
//! `data:` line, which the client joins with `\n` again); binary as base64 on one line.
//! A server event (presence, occupancy) is named for its type, with the v1 push as data;
//! a notice (gap, skip, unsubscribed) likewise, with the v1 notice as data. Heartbeats
//! are comments, which clients ignore.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;

use crate::model::offset::Offset;
use crate::model::protocol::{Notice, v1};
use crate::model::publication::{PayloadKind, Publication};

/// The response head that opens an event stream. No length: the stream ends when the
/// server closes the connection.
pub(crate) const RESPONSE_HEAD: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
     Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\nConnection: close\r\n\r\n";

/// A heartbeat: a comment line, which keeps proxies from timing the stream out.
pub(crate) const HEARTBEAT: &[u8] = b": heartbeat\n\n";

/// One event: `event: <name>`, `id: <id>` if given, a `data:` line per line of `data`
/// (split on CRLF, LF or CR, as the client splits), then a blank line.
pub(crate) fn event(name: &str, id: Option<&str>, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + data.len() + 32);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.push(b'\n');
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.push(b'\n');
    }
    let mut rest = data;
    loop {
        let end = rest
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
            .unwrap_or(rest.len());
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&rest[..end]);
        out.push(b'\n');
        if end == rest.len() {
            break;
        }
        let skip = if rest[end..].starts_with(b"\r\n") {
            2
        } else {
            1
        };
        rest = &rest[end + skip..];
    }
    out.push(b'\n');
    out
}

/// A publication on `topic` (at `offset` where it has history) as its event.
pub(crate) fn publication(topic: &str, publication: &Publication, offset: Option<Offset>) -> Bytes {
    let id = offset.map(|o| o.to_string());
    let bytes = match publication.kind {
        PayloadKind::Text | PayloadKind::Json => event(topic, id.as_deref(), &publication.payload),
        PayloadKind::Binary => {
            let encoded = BASE64.encode(&publication.payload);
            event(topic, id.as_deref(), encoded.as_bytes())
        }
        PayloadKind::Event => event(event_type(&publication.payload), None, &publication.payload),
    };
    Bytes::from(bytes)
}

/// A server event's name: the `type` of its v1 push (`presence`, `occupancy`).
fn event_type(push: &[u8]) -> &'static str {
    #[derive(serde::Deserialize)]
    struct Typed<'a> {
        #[serde(borrow, rename = "type")]
        kind: &'a str,
    }
    match serde_json::from_slice::<Typed<'_>>(push).map(|t| t.kind) {
        Ok("occupancy") => "occupancy",
        Ok("presence") => "presence",
        _ => "event",
    }
}

/// A notice as its event: named for its type, the v1 notice as data.
pub(crate) fn notice(notice: &Notice<'_>) -> String {
    let name = match notice {
        Notice::Gap { .. } => "gap",
        Notice::Skip { .. } => "skip",
        Notice::Unsubscribed { .. } => "unsubscribed",
        Notice::Refresh { .. } => "refresh",
        Notice::Subscribed { .. } => "subscribed",
    };
    let data = v1::notice(notice);
    // The v1 notice is one line of JSON: the event is text.
    String::from_utf8_lossy(&event(name, None, data.as_bytes())).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(bytes: &[u8]) -> &str {
        std::str::from_utf8(bytes).unwrap()
    }

    #[test]
    fn each_line_of_the_data_is_a_data_line() {
        assert_eq!(
            text(&event("t", Some("5-1"), b"hello")),
            "event: t\nid: 5-1\ndata: hello\n\n"
        );
        assert_eq!(
            text(&event("t", None, b"{\n\"a\": 1\r\n}\rend")),
            "event: t\ndata: {\ndata: \"a\": 1\ndata: }\ndata: end\n\n"
        );
        assert_eq!(text(&event("t", None, b"")), "event: t\ndata: \n\n");
        assert_eq!(
            text(&event("t", None, b"x\n")),
            "event: t\ndata: x\ndata: \n\n",
            "a trailing newline survives the client's joining"
        );
    }

    #[test]
    fn publications_carry_their_offset_and_binary_is_base64() {
        let offset = Some(Offset(7, 2));
        let plain = publication("news", &Publication::text("hi"), offset);
        assert_eq!(text(&plain), "event: news\nid: 7-2\ndata: hi\n\n");
        let json = Publication::json(Bytes::from_static(b"{\"a\":\n1}")).unwrap();
        assert_eq!(
            text(&publication("news", &json, None)),
            "event: news\ndata: {\"a\":\ndata: 1}\n\n",
            "no id without history"
        );
        let binary =
            Publication::from_message(stratus_proto::Message::binary(vec![0u8, 255, 10])).unwrap();
        assert_eq!(
            text(&publication("b", &binary, None)),
            "event: b\ndata: AP8K\n\n"
        );
    }

    #[test]
    fn server_events_and_notices_are_named_for_their_type() {
        let push = r#"{"type":"occupancy","topic":"t","connections":1,"users":1}"#;
        let occupancy = publication("t", &Publication::event(push.into()), Some(Offset(1, 0)));
        assert_eq!(
            text(&occupancy),
            format!("event: occupancy\ndata: {push}\n\n")
        );
        let push = r#"{"type":"presence","topic":"t","joins":[],"leaves":[]}"#;
        let presence = publication("t", &Publication::event(push.into()), None);
        assert!(text(&presence).starts_with("event: presence\ndata: {"));
        let gap = notice(&Notice::Gap {
            topic: "t",
            reason: "why",
        });
        assert_eq!(
            gap,
            "event: gap\ndata: {\"reason\":\"why\",\"topic\":\"t\",\"type\":\"gap\"}\n\n"
        );
        let gone = notice(&Notice::Unsubscribed {
            topic: "t",
            reason: "r",
        });
        assert!(gone.starts_with("event: unsubscribed\ndata: {"), "{gone}");
    }
}
