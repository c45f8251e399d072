//! Protocol errors: one variant per rule a peer can break, and the single place that maps
//! each to the close code the connection fails with.

use crate::close::CloseCode;

/// A violation of RFC 6455 (or of a configured limit) by the peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// Opcodes 3–7 and 0xB–0xF are reserved.
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    /// RSV bits set that no negotiated extension defines.
    #[error("reserved bits {0:#b} set without a negotiated extension")]
    ReservedBits(u8),
    /// RSV1 (compression) on a continuation or control frame.
    #[error("RSV1 set on a continuation or control frame")]
    Rsv1OnNonFirstFrame,
    /// A client sent an unmasked frame.
    #[error("client frame is not masked")]
    UnmaskedFrame,
    /// A server sent a masked frame.
    #[error("server frame is masked")]
    MaskedFrame,
    /// A control frame with more than 125 bytes of payload.
    #[error("control frame payload over 125 bytes")]
    ControlFrameTooLong,
    /// A control frame without FIN.
    #[error("fragmented control frame")]
    FragmentedControlFrame,
    /// A continuation frame with no fragmented message in progress.
    #[error("continuation frame with nothing to continue")]
    UnexpectedContinuation,
    /// A new text or binary frame while a fragmented message is still open.
    #[error("new data frame inside a fragmented message")]
    ExpectedContinuation,
    /// A 64-bit payload length with its most significant bit set.
    #[error("64-bit payload length has the top bit set")]
    InvalidLength,
    /// A frame whose declared length exceeds the frame limit.
    #[error("frame of {0} bytes exceeds the frame limit")]
    FrameTooLarge(u64),
    /// A message that would exceed the message limit (fragment overhead counted).
    #[error("message exceeds the message limit")]
    MessageTooLarge,
    /// A message in more fragments than the fragment limit.
    #[error("message exceeds the fragment limit")]
    TooManyFragments,
    /// A text message (or fragment) that is not UTF-8.
    #[error("invalid UTF-8 in a text message")]
    InvalidUtf8,
    /// A Close frame with a one-byte payload.
    #[error("close frame with a one-byte payload")]
    CloseWithOneByte,
    /// A Close frame with a code that may not be sent on the wire.
    #[error("invalid close code {0}")]
    InvalidCloseCode(u16),
    /// A Close frame whose reason is not UTF-8.
    #[error("close reason is not UTF-8")]
    InvalidCloseReason,
    /// A compressed message whose deflate data is corrupt or truncated.
    #[error("invalid compressed data")]
    InvalidCompressedData,
}

impl ProtocolError {
    /// The close code the connection is failed with.
    pub fn close_code(&self) -> CloseCode {
        match self {
            Self::ReservedOpcode(_)
            | Self::ReservedBits(_)
            | Self::Rsv1OnNonFirstFrame
            | Self::UnmaskedFrame
            | Self::MaskedFrame
            | Self::ControlFrameTooLong
            | Self::FragmentedControlFrame
            | Self::UnexpectedContinuation
            | Self::ExpectedContinuation
            | Self::InvalidLength
            | Self::CloseWithOneByte
            | Self::InvalidCloseCode(_) => CloseCode::PROTOCOL,
            Self::FrameTooLarge(_) | Self::MessageTooLarge | Self::TooManyFragments => {
                CloseCode::TOO_BIG
            }
            Self::InvalidUtf8 | Self::InvalidCloseReason | Self::InvalidCompressedData => {
                CloseCode::INVALID_PAYLOAD
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_close_code_may_be_sent() {
        let all = [
            ProtocolError::ReservedOpcode(3),
            ProtocolError::ReservedBits(2),
            ProtocolError::Rsv1OnNonFirstFrame,
            ProtocolError::UnmaskedFrame,
            ProtocolError::MaskedFrame,
            ProtocolError::ControlFrameTooLong,
            ProtocolError::FragmentedControlFrame,
            ProtocolError::UnexpectedContinuation,
            ProtocolError::ExpectedContinuation,
            ProtocolError::InvalidLength,
            ProtocolError::FrameTooLarge(1),
            ProtocolError::MessageTooLarge,
            ProtocolError::TooManyFragments,
            ProtocolError::InvalidUtf8,
            ProtocolError::CloseWithOneByte,
            ProtocolError::InvalidCloseCode(5),
            ProtocolError::InvalidCloseReason,
            ProtocolError::InvalidCompressedData,
        ];
        for err in all {
            assert!(err.close_code().is_valid_on_wire(), "{err}");
            assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn error_stays_small() {
        assert!(std::mem::size_of::<ProtocolError>() <= 16);
    }
}
