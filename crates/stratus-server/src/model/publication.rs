//! What a publish carries: its payload, how the payload reads (text, JSON or binary), and
//! an optional key. Raw-mode subscribers get the payload as it was published (JSON as a
//! text frame); protocol v1 embeds JSON as a value, text as a string, and sends binary in
//! a binary frame (see `broadcast`). The key names what a publication is the newest value
//! of: a lagging subscriber under the `conflate` policy keeps only the newest per key.

use std::sync::Arc;

use bytes::Bytes;
use stratus_proto::Message;

/// Longest publication key, in bytes.
pub(crate) const MAX_KEY_LEN: usize = 128;

/// How a publication's payload reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PayloadKind {
    /// UTF-8 text.
    Text,
    /// A JSON value (valid JSON, checked when published).
    Json,
    /// Bytes.
    Binary,
    /// A server event for protocol v1 subscribers (presence, occupancy): the payload is
    /// the whole v1 push; raw-mode subscribers do not get it, and it is never kept.
    Event,
}

/// A publication's content: its payload, what kind it is, and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Publication {
    pub(crate) kind: PayloadKind,
    pub(crate) payload: Bytes,
    pub(crate) key: Option<Arc<str>>,
}

/// Why a payload cannot be published as given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PayloadError {
    #[error("only text and binary messages can be published")]
    NotData,
    #[error("the payload is not valid JSON")]
    InvalidJson,
    #[error("the key is longer than {MAX_KEY_LEN} bytes")]
    KeyTooLong,
}

impl Publication {
    /// A text or binary message, published as it is.
    pub(crate) fn from_message(message: Message) -> Result<Self, PayloadError> {
        let (kind, payload) = match message {
            Message::Text(payload) => (PayloadKind::Text, payload),
            Message::Binary(payload) => (PayloadKind::Binary, payload),
            _ => return Err(PayloadError::NotData),
        };
        Ok(Self {
            kind,
            payload,
            key: None,
        })
    }

    /// A JSON value, checked.
    pub(crate) fn json(payload: Bytes) -> Result<Self, PayloadError> {
        serde_json::from_slice::<serde::de::IgnoredAny>(&payload)
            .map_err(|_| PayloadError::InvalidJson)?;
        Ok(Self {
            kind: PayloadKind::Json,
            payload,
            key: None,
        })
    }

    /// The same publication under `key`.
    pub(crate) fn with_key(mut self, key: Option<&str>) -> Result<Self, PayloadError> {
        self.key = match key {
            Some(key) if key.len() > MAX_KEY_LEN => return Err(PayloadError::KeyTooLong),
            Some(key) => Some(Arc::from(key)),
            None => None,
        };
        Ok(self)
    }

    /// A server event: `text` is its v1 push.
    pub(crate) fn event(text: String) -> Self {
        Self {
            kind: PayloadKind::Event,
            payload: Bytes::from(text),
            key: None,
        }
    }

    /// The message raw mode sends: text (JSON too) or binary, as published.
    pub(crate) fn message(&self) -> Message {
        match self.kind {
            PayloadKind::Text | PayloadKind::Json | PayloadKind::Event => {
                Message::Text(self.payload.clone())
            }
            PayloadKind::Binary => Message::Binary(self.payload.clone()),
        }
    }

    /// A text publication of `text` (for tests and notices).
    #[cfg(test)]
    pub(crate) fn text(text: &str) -> Self {
        Self {
            kind: PayloadKind::Text,
            payload: Bytes::copy_from_slice(text.as_bytes()),
            key: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_checked_and_keys_are_bounded() {
        assert!(Publication::json(Bytes::from_static(br#"{"a":[1,2]}"#)).is_ok());
        assert!(Publication::json(Bytes::from_static(b"\"s\"")).is_ok());
        assert_eq!(
            Publication::json(Bytes::from_static(b"{oops")),
            Err(PayloadError::InvalidJson)
        );
        let text = Publication::from_message(Message::text("x")).expect("text");
        assert_eq!(text.kind, PayloadKind::Text);
        assert!(text.clone().with_key(Some(&"k".repeat(128))).is_ok());
        assert_eq!(
            text.with_key(Some(&"k".repeat(129))),
            Err(PayloadError::KeyTooLong)
        );
        assert_eq!(
            Publication::from_message(Message::Ping(Bytes::new())),
            Err(PayloadError::NotData)
        );
    }
}
