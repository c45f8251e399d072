//! How Stratus speaks to Redis: channel names, history keys, the publish script, and the
//! payloads (a publish's kind byte and body, and the control channel's words). Plain
//! functions, tested without a Redis.

use std::borrow::Cow;

use bytes::Bytes;
use stratus_proto::Message;

use crate::messages::Published;
use crate::model::offset::Offset;
use crate::model::publication::{MAX_KEY_LEN, PayloadKind, Publication};

pub(crate) use crate::model::keyspace::Keyspace;

/// What a node overloaded says there (with its name), and for how long (ms) the others
/// take it to hold.
pub(crate) const OVERLOADED: &str = "overloaded";
/// How long (ms) an overloaded node asks the others to hold their publishes back.
pub(crate) const OVERLOAD_HOLD_MS: u64 = 500;
/// The first payload byte says what kind of publication follows (in lower case: an offset
/// and a space come before the rest): text, JSON, binary, or keyed (the kind, the key's
/// length byte and the key come first).
pub(crate) const TEXT: u8 = b'T';
pub(crate) const JSON: u8 = b'J';
pub(crate) const BINARY: u8 = b'B';
pub(crate) const KEYED: u8 = b'X';
/// A server event (presence): never kept, for v1 subscribers only.
pub(crate) const EVENT: u8 = b'E';

/// Decodes a message from Redis (its channel and payload) named as `keys` names them, as
/// [`decode`] does.
pub(crate) fn decode_in<'a>(
    keys: Keyspace,
    channel: &'a str,
    payload: &[u8],
) -> Option<(Cow<'a, str>, Publication, Option<Offset>)> {
    decode_payload(keys.topic(channel)?, payload)
}

/// Decodes a message whose offset came beside its payload (NATS: a header), not in it.
pub(crate) fn decode_beside<'a>(
    keys: Keyspace,
    channel: &'a str,
    payload: &[u8],
    offset: Option<Offset>,
) -> Option<(Cow<'a, str>, Publication, Option<Offset>)> {
    Some((keys.topic(channel)?, publication(payload)?, offset))
}

/// Appends to the history and publishes, in one step: KEYS = history, channel; ARGV =
/// the bound, the payload (kind byte and body), the age bound in milliseconds (0: none;
/// past it entries are trimmed and the key expires), and the command that publishes
/// (`PUBLISH`, or in a cluster `SPUBLISH`: the channel is declared, and on the key's
/// slot). The published payload is the kind byte in lower case (saying an offset
/// follows), the entry id, a space, and the body. Returns the publish's count of
/// subscribed nodes and the entry id.
pub(crate) const PUBLISH_SCRIPT: &str = r"
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'm', ARGV[2])
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('XTRIM', KEYS[1], 'MINID', tostring(now - ttl))
  redis.call('PEXPIRE', KEYS[1], ttl)
end
local kind = string.lower(string.sub(ARGV[2], 1, 1))
return {redis.call(ARGV[4], KEYS[2], kind .. id .. ' ' .. string.sub(ARGV[2], 2)), id}
";

/// What Redis answered a publish: PUBLISH's count (`n`), or the publish script's count and
/// entry id (`[n, id]`).
pub(crate) fn published(value: &redis::Value) -> Option<Published> {
    use redis::Value;
    let count = |v: &Value| match v {
        Value::Int(n) => usize::try_from(*n).ok(),
        _ => None,
    };
    match value {
        Value::Int(_) => Some(Published::by_broker(count(value)?, None)),
        Value::Array(parts) => match parts.as_slice() {
            [n, Value::BulkString(id)] => {
                let offset = Offset::parse(std::str::from_utf8(id).ok()?)?;
                Some(Published::by_broker(count(n)?, Some(offset)))
            }
            _ => None,
        },
        _ => None,
    }
}

fn kind_byte(kind: PayloadKind) -> u8 {
    match kind {
        PayloadKind::Text => TEXT,
        PayloadKind::Json => JSON,
        PayloadKind::Binary => BINARY,
        PayloadKind::Event => EVENT,
    }
}

/// The payload a publish sends: the kind byte and the body (keyed: [`KEYED`], the kind,
/// the key's length and the key, then the body).
pub(crate) fn payload(publication: &Publication) -> Vec<u8> {
    let body = &publication.payload;
    let mut payload = Vec::with_capacity(3 + MAX_KEY_LEN + body.len());
    match &publication.key {
        Some(key) => {
            payload.extend_from_slice(&[KEYED, kind_byte(publication.kind)]);
            // Keys are at most MAX_KEY_LEN (128) bytes.
            payload.push(u8::try_from(key.len()).unwrap_or(u8::MAX));
            payload.extend_from_slice(&key.as_bytes()[..key.len().min(255)]);
        }
        None => payload.push(kind_byte(publication.kind)),
    }
    payload.extend_from_slice(body);
    payload
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

/// Decodes a message from Redis (its channel and payload): its topic, publication and
/// offset in the topic's history (if kept), or `None` if it is not one a node published.
#[cfg(test)]
pub(crate) fn decode<'a>(
    channel: &'a str,
    payload: &[u8],
) -> Option<(Cow<'a, str>, Publication, Option<Offset>)> {
    decode_in(Keyspace::Plain, channel, payload)
}

/// Decodes a payload from `topic`'s channel (see [`decode`]).
fn decode_payload<T>(topic: T, payload: &[u8]) -> Option<(T, Publication, Option<Offset>)> {
    let (&kind, rest) = payload.split_first()?;
    if kind.is_ascii_lowercase() {
        let space = rest.iter().position(|&b| b == b' ')?;
        let offset = Offset::parse(std::str::from_utf8(&rest[..space]).ok()?)?;
        let mut stored = Vec::with_capacity(rest.len() - space);
        stored.push(kind.to_ascii_uppercase());
        stored.extend_from_slice(&rest[space + 1..]);
        return Some((topic, publication(&stored)?, Some(offset)));
    }
    Some((topic, publication(payload)?, None))
}

/// The publication of a payload as [`payload`] makes it (as a history entry keeps it), or
/// `None` for an unknown kind, text or JSON that is not UTF-8, or a key cut short.
pub(crate) fn publication(payload: &[u8]) -> Option<Publication> {
    let (&kind, rest) = payload.split_first()?;
    let (kind, key, body) = match kind {
        KEYED => {
            let (&kind, rest) = rest.split_first()?;
            let (&len, rest) = rest.split_first()?;
            let (key, body) = rest.split_at_checked(usize::from(len))?;
            (kind, Some(std::str::from_utf8(key).ok()?), body)
        }
        kind => (kind, None, rest),
    };
    let body = Bytes::copy_from_slice(body);
    let publication = match kind {
        TEXT if simdutf8::basic::from_utf8(&body).is_ok() => {
            Publication::from_message(Message::Text(body)).ok()?
        }
        // Checked when published: JSON from Redis is only checked to be UTF-8.
        JSON if simdutf8::basic::from_utf8(&body).is_ok() => Publication {
            kind: PayloadKind::Json,
            payload: body,
            key: None,
        },
        BINARY => Publication::from_message(Message::Binary(body)).ok()?,
        EVENT if simdutf8::basic::from_utf8(&body).is_ok() => Publication {
            kind: PayloadKind::Event,
            payload: body,
            key: None,
        },
        _ => return None,
    };
    publication.with_key(key).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(text: &str) -> Publication {
        Publication::from_message(Message::text(text.to_owned())).expect("text")
    }

    #[test]
    fn messages_from_redis_are_decoded_or_rejected() {
        assert_eq!(
            decode("stratus:a/b", b"Thi"),
            Some(("a/b".into(), text("hi"), None))
        );
        let binary = Publication::from_message(Message::Binary(Bytes::from_static(b"\xff\x00")));
        assert_eq!(
            decode("stratus:t", b"B\xff\x00"),
            Some(("t".into(), binary.expect("binary"), None))
        );
        assert_eq!(
            decode("stratus:t", b"t17-2 hi there"),
            Some(("t".into(), text("hi there"), Offset::parse("17-2")))
        );
        assert_eq!(
            decode("stratus:t", b"t17-2hi"),
            None,
            "no space after the offset"
        );
        assert_eq!(decode("stratus:t", b"tx-2 hi"), None, "not an offset");
        assert_eq!(decode("stratus:t", b"T\xff"), None, "text must be UTF-8");
        assert_eq!(decode("stratus:t", b"Yhi"), None, "unknown kind");
        assert_eq!(decode("stratus:t", b""), None, "no kind byte");
        assert_eq!(decode("other:t", b"Thi"), None, "not our channel");
        assert_eq!(decode("stratus:t", b"XT\x05ab"), None, "a key cut short");
    }

    #[test]
    fn every_kind_and_a_key_survive_the_round_trip() {
        let json = Publication::json(Bytes::from_static(b"[1]")).expect("JSON");
        let keyed = json.clone().with_key(Some("k1")).expect("key");
        for publication in [text("hi"), json, keyed] {
            let sent = payload(&publication);
            assert_eq!(
                decode("stratus:t", &sent),
                Some(("t".into(), publication.clone(), None))
            );
            // As the publish script sends it with an offset: the kind in lower case, the
            // entry id and a space after it.
            let mut with_offset = vec![sent[0].to_ascii_lowercase()];
            with_offset.extend_from_slice(b"5-0 ");
            with_offset.extend_from_slice(&sent[1..]);
            assert_eq!(
                decode("stratus:t", &with_offset),
                Some(("t".into(), publication.clone(), Some(Offset(5, 0))))
            );
        }
    }

    #[test]
    fn in_a_cluster_a_topics_channel_and_history_share_a_slot() {
        use crate::model::shard::key_slot;
        let cluster = Keyspace::Cluster;
        let topics = [
            "news",
            "chat:1",
            "a",
            "user/42/inbox",
            "x.y-z_w",
            "prices/eur",
        ];
        for topic in topics {
            let (channel, key) = (cluster.channel(topic), cluster.key(topic));
            assert_eq!(channel, format!("stratus:{{{topic}}}"));
            assert_eq!(
                key_slot(channel.as_bytes()),
                key_slot(topic.as_bytes()),
                "{topic}"
            );
            assert_eq!(
                key_slot(key.as_bytes()),
                key_slot(topic.as_bytes()),
                "{topic}"
            );
            assert_eq!(cluster.topic(&channel).as_deref(), Some(topic));
            assert_eq!(
                decode_in(cluster, &channel, b"Thi"),
                Some((topic.into(), text("hi"), None))
            );
        }
        // Not topics (the hub refuses them), but the two names still share a slot: the
        // tag is what precedes the first `}`, the same in both (empty only for a name
        // that starts with one, which then hashes whole).
        for name in ["a{b", "a}b", "{x}", "a{b}c", "a}"] {
            let (channel, key) = (cluster.channel(name), cluster.key(name));
            assert_eq!(
                key_slot(channel.as_bytes()),
                key_slot(key.as_bytes()),
                "{name}"
            );
        }
        assert_eq!(cluster.topic("stratus:news"), None, "a plain channel");
        assert_eq!(Keyspace::Plain.channel("news"), "stratus:news");
        assert_eq!(Keyspace::Plain.key("news"), "stratus:history:news");
        // Everything node-wide is on one slot, no topic's.
        let node_wide = [
            cluster.control().to_owned(),
            cluster.node_key("presence:nodes"),
            cluster.node_key("presence:members:n:news"),
        ];
        let slot = key_slot(node_wide[0].as_bytes());
        for name in &node_wide {
            assert_eq!(key_slot(name.as_bytes()), slot, "{name}");
        }
        assert_eq!(Keyspace::Plain.control(), "stratus!control");
        assert_eq!(
            Keyspace::Plain.node_key("presence:nodes"),
            "stratus!presence:nodes"
        );
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
