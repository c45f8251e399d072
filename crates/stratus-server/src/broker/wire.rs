//! How Stratus speaks to Redis: channel names, history keys, the publish script, and the
//! payloads (a publish's kind byte and body, and the control channel's words). Plain
//! functions, tested without a Redis.

use bytes::Bytes;
use stratus_proto::Message;

use crate::model::offset::Offset;

/// Redis channel names are the topic with this prefix: pub/sub channels are shared by all
/// of a Redis server's databases, so the prefix keeps Stratus's apart from others'.
pub(crate) const CHANNEL_PREFIX: &str = "stratus:";
/// The channel on which nodes tell each other they are overloaded. `!` cannot be in a
/// topic, so no topic's channel is this one.
pub(crate) const CONTROL_CHANNEL: &str = "stratus!control";
/// What a node overloaded says there (with its name), and for how long (ms) the others
/// take it to hold.
pub(crate) const OVERLOADED: &str = "overloaded";
/// How long (ms) an overloaded node asks the others to hold their publishes back.
pub(crate) const OVERLOAD_HOLD_MS: u64 = 500;
/// The first payload byte says what kind of message follows (in lower case: an offset
/// and a space come before the body).
pub(crate) const TEXT: u8 = b'T';
pub(crate) const BINARY: u8 = b'B';

/// A topic's channel.
pub(crate) fn channel(topic: &str) -> String {
    format!("{CHANNEL_PREFIX}{topic}")
}

/// The Redis key of a topic's history.
pub(crate) fn key(topic: &str) -> String {
    format!("stratus:history:{topic}")
}

/// Appends to the history and publishes, in one step: KEYS = history, channel; ARGV =
/// the bound, the payload (kind byte and body). The published payload is the kind byte in
/// lower case (saying an offset follows), the entry id, a space, and the body. Returns
/// PUBLISH's count of subscribed nodes.
pub(crate) const PUBLISH_SCRIPT: &str = r"
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'm', ARGV[2])
local kind = string.lower(string.sub(ARGV[2], 1, 1))
return redis.call('PUBLISH', KEYS[2], kind .. id .. ' ' .. string.sub(ARGV[2], 2))
";

/// The payload a publish sends: the kind byte and the body, or `None` for a message that
/// is not text or binary.
pub(crate) fn payload(message: &Message) -> Option<Vec<u8>> {
    let (kind, body) = match message {
        Message::Text(b) => (TEXT, b),
        Message::Binary(b) => (BINARY, b),
        _ => return None,
    };
    let mut payload = Vec::with_capacity(1 + body.len());
    payload.push(kind);
    payload.extend_from_slice(body);
    Some(payload)
}

/// What node `node` says on the control channel when it is overloaded.
pub(crate) fn overload_signal(node: u64) -> Vec<u8> {
    format!("{OVERLOADED} {node} {OVERLOAD_HOLD_MS}").into_bytes()
}

/// A control channel message `overloaded <node> <ms>`: the node, and how long (ms, at
/// most 5 s) to hold publishes back; `None` for anything else.
pub(crate) fn parse_overload(payload: &[u8]) -> Option<(u64, u64)> {
    let mut words = std::str::from_utf8(payload).ok()?.split(' ');
    if words.next()? != OVERLOADED {
        return None;
    }
    let node = words.next()?.parse().ok()?;
    let hold = words.next()?.parse::<u64>().ok()?.min(5_000);
    Some((node, hold))
}

/// Decodes a message from Redis (its channel and payload): its topic, message and offset
/// in the topic's history (if kept), or `None` if it is not one a node published.
pub(crate) fn decode<'a>(
    channel: &'a str,
    payload: &[u8],
) -> Option<(&'a str, Message, Option<Offset>)> {
    let topic = channel.strip_prefix(CHANNEL_PREFIX)?;
    let (&kind, rest) = payload.split_first()?;
    if kind.is_ascii_lowercase() {
        let space = rest.iter().position(|&b| b == b' ')?;
        let offset = Offset::parse(std::str::from_utf8(&rest[..space]).ok()?)?;
        let message = message(kind.to_ascii_uppercase(), &rest[space + 1..])?;
        return Some((topic, message, Some(offset)));
    }
    Some((topic, message(kind, rest)?, None))
}

/// The message of a kind byte and body, or `None` for an unknown kind or text that is not
/// UTF-8.
pub(crate) fn message(kind: u8, body: &[u8]) -> Option<Message> {
    let body = Bytes::copy_from_slice(body);
    match kind {
        TEXT if simdutf8::basic::from_utf8(&body).is_ok() => Some(Message::Text(body)),
        BINARY => Some(Message::Binary(body)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_from_redis_are_decoded_or_rejected() {
        assert_eq!(
            decode("stratus:a/b", b"Thi"),
            Some(("a/b", Message::text("hi"), None))
        );
        assert_eq!(
            decode("stratus:t", b"B\xff\x00"),
            Some(("t", Message::Binary(Bytes::from_static(b"\xff\x00")), None))
        );
        assert_eq!(
            decode("stratus:t", b"t17-2 hi there"),
            Some(("t", Message::text("hi there"), Offset::parse("17-2")))
        );
        assert_eq!(
            decode("stratus:t", b"t17-2hi"),
            None,
            "no space after the offset"
        );
        assert_eq!(decode("stratus:t", b"tx-2 hi"), None, "not an offset");
        assert_eq!(decode("stratus:t", b"T\xff"), None, "text must be UTF-8");
        assert_eq!(decode("stratus:t", b"Xhi"), None, "unknown kind");
        assert_eq!(decode("stratus:t", b""), None, "no kind byte");
        assert_eq!(decode("other:t", b"Thi"), None, "not our channel");
    }

    #[test]
    fn overload_signals_are_parsed_or_rejected() {
        assert_eq!(
            parse_overload(&overload_signal(7)),
            Some((7, OVERLOAD_HOLD_MS))
        );
        assert_eq!(
            parse_overload(b"overloaded 8 999999"),
            Some((8, 5_000)),
            "capped"
        );
        for junk in [
            &b"overloaded"[..],
            b"overloaded x 1",
            b"hello 1 2",
            b"",
            b"\xff",
        ] {
            assert_eq!(parse_overload(junk), None, "{junk:?}");
        }
    }
}
