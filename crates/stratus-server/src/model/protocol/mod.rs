//! The two ways a client and the server talk over a WebSocket: raw mode (`raw`), where
//! a published message arrives exactly as it was published and the only commands are
//! subscribe and unsubscribe, and protocol v1 (`v1`, asked for with
//! `Sec-WebSocket-Protocol: stratus.v1`), where every push names its topic and every
//! command has an id, a reply and stable error codes. `docs/protocol.md` is the
//! specification; these modules parse and print it.
//!
//! What the server tells a client on its own (a gap, skipped messages, an unsubscribe it
//! made, a token to refresh) is a [`Notice`], printed in the connection's protocol.

pub(crate) mod raw;
pub(crate) mod sse;
pub(crate) mod v1;

use crate::model::offset::Offset;

/// The protocol a connection speaks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// Messages as published; JSON commands without ids (the default).
    #[default]
    Raw,
    /// `stratus.v1`: pushes in envelopes that name their topic, commands with ids.
    V1,
    /// Server-Sent Events (`GET /sse`): receive-only, events named for their topic or
    /// type (`sse`).
    Sse,
}

/// Something the server tells a client on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Notice<'a> {
    /// Messages on `topic` may be missing, and why.
    Gap { topic: &'a str, reason: &'a str },
    /// A lagging subscriber's queue kept only the newest message of `key` (or of the
    /// topic): `skipped` older ones were not sent, from offset `from` to `to` where the
    /// topic has history.
    Skip {
        topic: &'a str,
        key: Option<&'a str>,
        skipped: u64,
        from: Option<Offset>,
        to: Option<Offset>,
    },
    /// The server ended the subscription to `topic`.
    Unsubscribed { topic: &'a str, reason: &'a str },
    /// The connection's token expires at `expires` (seconds since the Unix epoch): send
    /// a fresh one with a `refresh` command before then.
    Refresh { expires: u64 },
    /// The server subscribed the connection to `topic` (user-level control): what is
    /// published on it from now on reaches the connection.
    Subscribed { topic: &'a str },
}

impl Notice<'_> {
    /// The notice as `protocol` prints it, or `None` where it has no such notice (raw
    /// mode has gap notices only: skipped messages are a gap there).
    pub(crate) fn text(&self, protocol: Protocol) -> Option<String> {
        match protocol {
            Protocol::Raw => match self {
                Self::Gap { topic, reason } => Some(raw::gap_notice(topic, reason)),
                Self::Skip { topic, skipped, .. } => {
                    let reason = format!("{skipped} older messages were skipped (conflated)");
                    Some(raw::gap_notice(topic, &reason))
                }
                Self::Unsubscribed { .. } | Self::Refresh { .. } | Self::Subscribed { .. } => None,
            },
            Protocol::V1 => Some(v1::notice(self)),
            Protocol::Sse => Some(sse::notice(self)),
        }
    }
}
