//! User-level control: what the admin API asks of every connection of one user (the `sub`
//! of its token) on every node, and what comes back. Plain values, tested without a
//! worker or a broker: the command ([`UserCommand`], checked here: the close code and
//! reason, the user's name), what a worker or a node answers ([`Tally`], summed with
//! [`Tally::merge`] under a bound on the connections listed), and the words nodes say
//! to each other on the broker's control channel ([`encode_request`], [`parse_request`],
//! [`encode_reply`], [`parse_reply`]).
//!
//! Why here and not in the admin API: the worker applies the command, the broker carries
//! it between nodes, and the admin API parses it; all three import this leaf.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Longest user name (a token's `sub`) a command may name, in bytes.
pub(crate) const MAX_USER_LEN: usize = 1024;
/// Longest close reason, in bytes of UTF-8 (a Close frame's payload is at most 125 bytes:
/// the code's two and the reason's 123).
pub(crate) const MAX_REASON_LEN: usize = 123;
/// The close code of a disconnect that names none: in the private-use range, so that a
/// client can tell it from the protocol's own codes.
pub(crate) const DEFAULT_CLOSE_CODE: u16 = 4000;
/// The close reason of a disconnect that names none.
pub(crate) const DEFAULT_REASON: &str = "disconnected by the server";
/// Most connections one answer lists (over every node); past it the list says it was cut.
pub(crate) const MAX_LISTED: usize = 1000;
/// Largest control-channel message taken in (a node's list of connections fits well
/// under it).
pub(crate) const MAX_WORDS_LEN: usize = 1 << 20;

/// What to do to each of the user's connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub(crate) enum UserAction {
    /// Say what they are.
    List,
    /// Close each with `code` and `reason`.
    Disconnect { code: u16, reason: String },
    /// End each one's subscription to `topic`.
    Unsubscribe { topic: String },
    /// Subscribe each to `topic`, server-side.
    Subscribe { topic: String },
}

impl UserAction {
    /// Its name, as the metrics and the answers say it.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::List => "list",
            Self::Disconnect { .. } => "disconnect",
            Self::Unsubscribe { .. } => "unsubscribe",
            Self::Subscribe { .. } => "subscribe",
        }
    }

    /// Its index among [`ACTIONS`].
    pub(crate) fn index(&self) -> usize {
        ACTIONS
            .iter()
            .position(|&a| a == self.name())
            .unwrap_or_default()
    }
}

/// The actions, in the order their counters are kept.
pub(crate) const ACTIONS: [&str; 4] = ["list", "disconnect", "unsubscribe", "subscribe"];

/// An action on every connection of `user`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct UserCommand {
    pub(crate) user: String,
    #[serde(flatten)]
    pub(crate) action: UserAction,
}

/// Why a command was refused before it went anywhere (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum CommandError {
    /// The user's name is empty or longer than [`MAX_USER_LEN`].
    #[error("the user must be 1 to 1024 bytes")]
    BadUser,
    /// The close code is not a number, or not one an application may send.
    #[error("code must be 1000 or 3000 to 4999")]
    BadCode,
    /// The close reason is longer than a Close frame holds.
    #[error("reason must be at most 123 bytes of UTF-8")]
    ReasonTooLong,
}

/// Checks a user's name (as percent-decoded from the path).
pub(crate) fn check_user(user: &str) -> Result<(), CommandError> {
    if user.is_empty() || user.len() > MAX_USER_LEN {
        return Err(CommandError::BadUser);
    }
    Ok(())
}

/// The close code and reason of a disconnect from their query parameters: 1000 or a
/// code from 3000 to 4999 (the codes an application may send; the others are the
/// protocol's), [`DEFAULT_CLOSE_CODE`] and [`DEFAULT_REASON`] when not given.
pub(crate) fn close_params(
    code: Option<&str>,
    reason: Option<&str>,
) -> Result<(u16, String), CommandError> {
    let code = match code {
        None => DEFAULT_CLOSE_CODE,
        Some(text) => match text.parse::<u16>() {
            Ok(n) if n == 1000 || (3000..=4999).contains(&n) => n,
            _ => return Err(CommandError::BadCode),
        },
    };
    let reason = reason.unwrap_or(DEFAULT_REASON);
    if reason.len() > MAX_REASON_LEN {
        return Err(CommandError::ReasonTooLong);
    }
    Ok((code, reason.to_owned()))
}

/// One of the user's connections, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct UserConn {
    /// `{node}.{worker}.{connection}`: unique in the cluster while it is open (the same
    /// id presence lists).
    pub(crate) client_id: String,
    /// The node it is on.
    pub(crate) node: String,
    /// The client's address.
    pub(crate) remote: String,
    /// `raw` or `v1`.
    pub(crate) protocol: String,
    pub(crate) topics: Vec<String>,
    /// When it upgraded, in milliseconds since the Unix epoch.
    pub(crate) connected_since_ms: u64,
}

/// The client id of connection `conn` of worker `worker` on node `node`.
pub(crate) fn client_id(node: &str, worker: usize, conn: impl std::fmt::Display) -> String {
    format!("{node}.{worker}.{conn}")
}

/// What a command came to on a worker, a node or the cluster: the connections it acted
/// on, those it could not act on (counted by reason), and for a list the connections
/// (at most [`MAX_LISTED`]; `truncated` when there were more).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Tally {
    pub(crate) affected: u64,
    #[serde(default)]
    pub(crate) refused: BTreeMap<String, u64>,
    #[serde(default)]
    pub(crate) connections: Vec<UserConn>,
    #[serde(default)]
    pub(crate) truncated: bool,
}

impl Tally {
    /// Counts a connection the command could not act on, and why (a short snake_case
    /// word: `not_allowed`, `topic_full`...).
    pub(crate) fn refuse(&mut self, why: &str) {
        *self.refused.entry(why.to_owned()).or_default() += 1;
    }

    /// Lists `conn`, unless the list is full (it is then marked cut).
    pub(crate) fn list(&mut self, conn: UserConn) {
        if self.connections.len() < MAX_LISTED {
            self.connections.push(conn);
        } else {
            self.truncated = true;
        }
    }

    /// Adds `other` in: counts summed, lists joined up to [`MAX_LISTED`].
    pub(crate) fn merge(&mut self, other: Tally) {
        self.affected += other.affected;
        for (why, n) in other.refused {
            *self.refused.entry(why).or_default() += n;
        }
        self.truncated |= other.truncated;
        for conn in other.connections {
            self.list(conn);
        }
    }

    /// Connections refused, over every reason.
    pub(crate) fn refused_total(&self) -> u64 {
        self.refused.values().sum()
    }
}

/// What a cluster-wide command came to: the sum of what the nodes that answered said,
/// how many answered, and how many were up to hear it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ClusterTally {
    pub(crate) tally: Tally,
    pub(crate) answered: usize,
    pub(crate) nodes: usize,
}

/// Why a command could not go out to the cluster (the admin API answers 503).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum ClusterError {
    /// The broker is unreachable.
    #[error("the broker is unavailable")]
    BrokerUnavailable,
    /// As many user commands as a node may have in flight are waiting for answers.
    #[error("too many user commands are in flight on this node; try again shortly")]
    Busy,
}

/// The first word of a request on the control channel.
pub(crate) const REQUEST_WORD: &str = "user";
/// The first word of an answer on the control channel.
pub(crate) const REPLY_WORD: &str = "user-reply";

#[derive(Serialize, Deserialize)]
struct RequestWire {
    /// The asking node's name on the control channel.
    from: u64,
    id: u64,
    command: UserCommand,
}

#[derive(Serialize, Deserialize)]
struct ReplyWire {
    /// The asking node's name on the control channel.
    to: u64,
    id: u64,
    tally: Tally,
}

/// The control-channel words asking every node to apply `command` (request `id` of
/// node `from`).
pub(crate) fn encode_request(from: u64, id: u64, command: &UserCommand) -> Vec<u8> {
    let wire = RequestWire {
        from,
        id,
        command: command.clone(),
    };
    words(REQUEST_WORD, &wire)
}

/// The control-channel words answering request `id` of node `to` with `tally`.
pub(crate) fn encode_reply(to: u64, id: u64, tally: &Tally) -> Vec<u8> {
    #[derive(Serialize)]
    struct Borrowed<'a> {
        to: u64,
        id: u64,
        tally: &'a Tally,
    }
    words(REPLY_WORD, &Borrowed { to, id, tally })
}

fn words(word: &str, body: &impl Serialize) -> Vec<u8> {
    let mut out = format!("{word} ").into_bytes();
    // Serializing these plain structs cannot fail.
    let _ = serde_json::to_writer(&mut out, body);
    out
}

/// The JSON after `word` and a space in `payload`, if `payload` starts so and is not too
/// large.
fn body<'a>(payload: &'a [u8], word: &str) -> Option<&'a [u8]> {
    if payload.len() > MAX_WORDS_LEN {
        return None;
    }
    payload.strip_prefix(word.as_bytes())?.strip_prefix(b" ")
}

/// A request from the control channel: the asking node, the request's id, the command.
pub(crate) fn parse_request(payload: &[u8]) -> Option<(u64, u64, UserCommand)> {
    let wire: RequestWire = serde_json::from_slice(body(payload, REQUEST_WORD)?).ok()?;
    check_user(&wire.command.user).ok()?;
    Some((wire.from, wire.id, wire.command))
}

/// An answer from the control channel: the node it is for, the request's id, the tally.
pub(crate) fn parse_reply(payload: &[u8]) -> Option<(u64, u64, Tally)> {
    let mut wire: ReplyWire = serde_json::from_slice(body(payload, REPLY_WORD)?).ok()?;
    if wire.tally.connections.len() > MAX_LISTED {
        wire.tally.connections.truncate(MAX_LISTED);
        wire.tally.truncated = true;
    }
    Some((wire.to, wire.id, wire.tally))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(n: usize) -> UserConn {
        UserConn {
            client_id: client_id("n", 0, n),
            node: "n".into(),
            remote: "127.0.0.1".into(),
            protocol: "v1".into(),
            topics: vec!["t".into()],
            connected_since_ms: 1,
        }
    }

    #[test]
    fn close_codes_are_1000_or_private_and_reasons_fit_a_close_frame() {
        assert_eq!(
            close_params(None, None),
            Ok((4000, "disconnected by the server".into()))
        );
        assert_eq!(
            close_params(Some("1000"), Some("bye")),
            Ok((1000, "bye".into()))
        );
        assert_eq!(close_params(Some("3000"), None).map(|p| p.0), Ok(3000));
        assert_eq!(close_params(Some("4999"), None).map(|p| p.0), Ok(4999));
        for bad in [
            "999", "1001", "1008", "2999", "5000", "x", "", "-1", "70000",
        ] {
            assert_eq!(
                close_params(Some(bad), None),
                Err(CommandError::BadCode),
                "{bad}"
            );
        }
        let long = "é".repeat(62);
        assert_eq!(long.len(), 124);
        assert_eq!(
            close_params(None, Some(&long)),
            Err(CommandError::ReasonTooLong)
        );
        assert!(
            close_params(None, Some(&long[2..])).is_ok(),
            "123 bytes fit"
        );
        assert_eq!(check_user(""), Err(CommandError::BadUser));
        assert_eq!(check_user(&"u".repeat(1025)), Err(CommandError::BadUser));
        assert_eq!(check_user("alice"), Ok(()));
    }

    #[test]
    fn tallies_sum_counts_and_keep_lists_bounded() {
        let mut sum = Tally::default();
        let mut one = Tally {
            affected: 2,
            ..Tally::default()
        };
        one.refuse("not_allowed");
        one.refuse("not_allowed");
        one.refuse("topic_full");
        one.list(conn(1));
        sum.merge(one.clone());
        sum.merge(one);
        assert_eq!(sum.affected, 4);
        assert_eq!(sum.refused["not_allowed"], 4);
        assert_eq!(sum.refused["topic_full"], 2);
        assert_eq!(sum.refused_total(), 6);
        assert_eq!(sum.connections.len(), 2);
        assert!(!sum.truncated);
        let mut big = Tally::default();
        for n in 0..MAX_LISTED + 5 {
            big.list(conn(n));
        }
        assert_eq!(big.connections.len(), MAX_LISTED);
        assert!(big.truncated);
        sum.merge(big);
        assert_eq!(sum.connections.len(), MAX_LISTED, "bounded over nodes too");
        assert!(sum.truncated);
    }

    #[test]
    fn control_words_round_trip_and_junk_is_refused() {
        let command = UserCommand {
            user: "alice".into(),
            action: UserAction::Disconnect {
                code: 4001,
                reason: "bye".into(),
            },
        };
        let words = encode_request(7, 3, &command);
        assert!(words.starts_with(b"user {"));
        assert_eq!(parse_request(&words), Some((7, 3, command.clone())));
        assert_eq!(parse_reply(&words), None, "a request is not an answer");
        let mut tally = Tally {
            affected: 1,
            ..Tally::default()
        };
        tally.list(conn(1));
        let words = encode_reply(7, 3, &tally);
        assert_eq!(parse_reply(&words), Some((7, 3, tally)));
        assert_eq!(parse_request(&words), None, "an answer is not a request");
        for junk in [
            &b"user"[..],
            b"user {}",
            b"user-reply {\"to\":1}",
            b"overloaded 1 500",
            b"\xff",
            br#"user {"from":1,"id":1,"command":{"user":"","action":"list"}}"#,
            br#"user {"from":1,"id":1,"command":{"user":"a","action":"explode"}}"#,
        ] {
            assert_eq!(parse_request(junk), None, "{junk:?}");
            assert_eq!(parse_reply(junk), None, "{junk:?}");
        }
        let mut huge = b"user ".to_vec();
        huge.resize(MAX_WORDS_LEN + 1, b' ');
        assert_eq!(parse_request(&huge), None, "too large to parse");
        for action in [
            UserAction::List,
            UserAction::Subscribe { topic: "t".into() },
            UserAction::Unsubscribe { topic: "t".into() },
        ] {
            let command = UserCommand {
                user: "u".into(),
                action,
            };
            assert_eq!(
                parse_request(&encode_request(1, 2, &command)).map(|r| r.2),
                Some(command.clone())
            );
            assert_eq!(ACTIONS[command.action.index()], command.action.name());
        }
    }
}
