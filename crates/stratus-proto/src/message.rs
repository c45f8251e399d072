//! What the codec yields and accepts: whole messages and control frames over `Bytes`.

use bytes::Bytes;

use crate::close::CloseFrame;

/// A complete message or control frame. Payloads share the read buffer's allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message; the decoder guarantees the payload is valid UTF-8.
    Text(Bytes),
    /// A binary message.
    Binary(Bytes),
    /// A ping (at most 125 bytes).
    Ping(Bytes),
    /// A pong (at most 125 bytes).
    Pong(Bytes),
    /// A close frame: its code and reason, or `None` for an empty payload.
    Close(Option<CloseFrame>),
}

impl Message {
    /// A text message from a string.
    pub fn text(s: impl Into<String>) -> Self {
        Self::Text(Bytes::from(s.into()))
    }

    /// A binary message from bytes.
    pub fn binary(b: impl Into<Bytes>) -> Self {
        Self::Binary(b.into())
    }

    /// Text or Binary.
    pub fn is_data(&self) -> bool {
        matches!(self, Self::Text(_) | Self::Binary(_))
    }

    /// Bytes of payload (a Close counts its code and reason).
    pub fn payload_len(&self) -> usize {
        match self {
            Self::Text(p) | Self::Binary(p) | Self::Ping(p) | Self::Pong(p) => p.len(),
            Self::Close(None) => 0,
            Self::Close(Some(frame)) => 2 + frame.reason().len(),
        }
    }
}
