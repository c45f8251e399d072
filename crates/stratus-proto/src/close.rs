//! Close codes (RFC 6455 §7.4) and the Close frame payload: which codes may appear on the
//! wire, and how a received payload is validated before it is echoed.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::ProtocolError;

/// A close status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: normal closure.
    pub const NORMAL: Self = Self(1000);
    /// 1001: the endpoint is going away (server shutdown).
    pub const GOING_AWAY: Self = Self(1001);
    /// 1002: protocol error.
    pub const PROTOCOL: Self = Self(1002);
    /// 1003: a data type the endpoint cannot accept.
    pub const UNSUPPORTED: Self = Self(1003);
    /// 1007: payload inconsistent with the message type (invalid UTF-8, corrupt deflate).
    pub const INVALID_PAYLOAD: Self = Self(1007);
    /// 1008: policy violation (slow consumer, auth).
    pub const POLICY: Self = Self(1008);
    /// 1009: a message too big to process.
    pub const TOO_BIG: Self = Self(1009);
    /// 1010: the client expected an extension the server did not negotiate.
    pub const EXTENSION_REQUIRED: Self = Self(1010);
    /// 1011: unexpected condition on the server.
    pub const INTERNAL: Self = Self(1011);
    /// 1013: try again later (a temporary condition on the server, such as a full topic).
    pub const TRY_AGAIN_LATER: Self = Self(1013);

    /// Whether this code may be sent in a Close frame. 1004, 1005, 1006 and 1015 are
    /// reserved for local use and must never appear on the wire; 1016–2999 are unassigned
    /// protocol codes; 3000–4999 belong to libraries and applications.
    pub fn is_valid_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

/// A Close frame's payload once validated: a code and a UTF-8 reason of at most 123
/// bytes (so the frame fits the 125-byte control-frame limit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    code: CloseCode,
    reason: Bytes,
}

impl CloseFrame {
    /// Parses a received Close payload. An empty payload means "no status code" (`None`);
    /// a single byte, a code that may not be on the wire, or a reason that is not UTF-8
    /// are protocol errors.
    pub fn parse(payload: Bytes) -> Result<Option<Self>, ProtocolError> {
        match payload.len() {
            0 => Ok(None),
            1 => Err(ProtocolError::CloseWithOneByte),
            _ => {
                let code = CloseCode(u16::from_be_bytes([payload[0], payload[1]]));
                if !code.is_valid_on_wire() {
                    return Err(ProtocolError::InvalidCloseCode(code.0));
                }
                if simdutf8::basic::from_utf8(&payload[2..]).is_err() {
                    return Err(ProtocolError::InvalidCloseReason);
                }
                Ok(Some(Self {
                    code,
                    reason: payload.slice(2..),
                }))
            }
        }
    }

    /// A close frame with this code and reason; the reason is cut to 123 bytes on a
    /// character boundary.
    pub fn new(code: CloseCode, reason: &str) -> Self {
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        Self {
            code,
            reason: Bytes::copy_from_slice(&reason.as_bytes()[..end]),
        }
    }

    /// The status code.
    pub fn code(&self) -> CloseCode {
        self.code
    }

    /// The reason.
    pub fn reason(&self) -> &str {
        std::str::from_utf8(&self.reason).unwrap_or_default()
    }

    /// The frame payload: the code in network order, then the reason.
    pub fn payload(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(2 + self.reason.len());
        out.put_u16(self.code.0);
        out.put_slice(&self.reason);
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_validity_matches_rfc_registry() {
        for code in 0..=u16::MAX {
            let expected = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            assert_eq!(CloseCode(code).is_valid_on_wire(), expected, "code {code}");
        }
    }

    #[test]
    fn empty_payload_is_no_code() {
        assert_eq!(CloseFrame::parse(Bytes::new()).unwrap(), None);
    }

    #[test]
    fn one_byte_payload_is_protocol_error() {
        let err = CloseFrame::parse(Bytes::from_static(&[3])).unwrap_err();
        assert_eq!(err, ProtocolError::CloseWithOneByte);
        assert_eq!(err.close_code(), CloseCode::PROTOCOL);
    }

    #[test]
    fn reserved_codes_are_protocol_errors() {
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
            let err = CloseFrame::parse(Bytes::copy_from_slice(&code.to_be_bytes())).unwrap_err();
            assert_eq!(err.close_code(), CloseCode::PROTOCOL, "code {code}");
        }
    }

    #[test]
    fn invalid_utf8_reason_is_1007() {
        let err = CloseFrame::parse(Bytes::from_static(&[0x03, 0xe8, 0xce, 0xba, 0xe1, 0xbd]))
            .unwrap_err();
        assert_eq!(err.close_code(), CloseCode::INVALID_PAYLOAD);
    }

    #[test]
    fn valid_code_and_reason_parse() {
        let frame = CloseFrame::parse(CloseFrame::new(CloseCode(4000), "bye").payload())
            .unwrap()
            .unwrap();
        assert_eq!(frame.code(), CloseCode(4000));
        assert_eq!(frame.reason(), "bye");
    }

    #[test]
    fn long_reason_is_cut_on_a_char_boundary() {
        let reason = "é".repeat(100);
        let payload = CloseFrame::new(CloseCode::NORMAL, &reason).payload();
        assert!(payload.len() <= 125);
        assert!(CloseFrame::parse(payload).unwrap().is_some());
    }
}
