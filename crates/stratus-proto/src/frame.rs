//! The frame header (RFC 6455 §5.2): parse from the front of a buffer, reporting "need more
//! bytes" on a partial header, and encode into a stack buffer.
//!
//! Parsing checks only what the header alone decides (reserved opcodes, control-frame
//! rules, the 64-bit length's top bit); rules that depend on the role, the negotiated
//! extensions or the message in progress live in the [`Decoder`](crate::Decoder).

use crate::error::ProtocolError;

/// The largest header: 2 bytes, an 8-byte extended length and a 4-byte masking key.
pub const MAX_HEADER_LEN: usize = 14;

/// The largest control-frame payload.
pub const MAX_CONTROL_PAYLOAD: u64 = 125;

/// A frame opcode; reserved values are rejected at parse time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    /// Continues a fragmented message.
    Continuation,
    /// First frame of a text message.
    Text,
    /// First frame of a binary message.
    Binary,
    /// Close control frame.
    Close,
    /// Ping control frame.
    Ping,
    /// Pong control frame.
    Pong,
}

impl OpCode {
    /// The 4-bit wire value.
    pub fn bits(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    fn from_bits(bits: u8) -> Result<Self, ProtocolError> {
        Ok(match bits {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            other => return Err(ProtocolError::ReservedOpcode(other)),
        })
    }

    /// Close, Ping and Pong.
    pub fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Final fragment of a message.
    pub fin: bool,
    /// The three RSV bits, RSV1 as `0b100`.
    pub rsv: u8,
    /// The opcode.
    pub opcode: OpCode,
    /// The masking key, when the frame is masked.
    pub mask: Option<[u8; 4]>,
    /// The payload length.
    pub payload_len: u64,
}

/// RSV1, the bit permessage-deflate uses to mark a compressed message.
pub const RSV1: u8 = 0b100;

impl FrameHeader {
    /// Parses a header from the front of `buf`. `Ok(None)` means more bytes are needed;
    /// `Ok(Some((header, len)))` gives the header and its length in bytes.
    pub fn parse(buf: &[u8]) -> Result<Option<(Self, usize)>, ProtocolError> {
        let [b0, b1, ..] = *buf else {
            return Ok(None);
        };
        let fin = b0 & 0x80 != 0;
        let rsv = (b0 >> 4) & 0b111;
        let opcode = OpCode::from_bits(b0 & 0x0F)?;
        let masked = b1 & 0x80 != 0;
        let (payload_len, mut len) = match b1 & 0x7F {
            126 => {
                let Some(ext) = buf.get(2..4) else {
                    return Ok(None);
                };
                (u64::from(u16::from_be_bytes([ext[0], ext[1]])), 4)
            }
            127 => {
                let Some(ext) = buf.get(2..10) else {
                    return Ok(None);
                };
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(ext);
                let n = u64::from_be_bytes(bytes);
                if n >> 63 != 0 {
                    return Err(ProtocolError::InvalidLength);
                }
                (n, 10)
            }
            n => (u64::from(n), 2),
        };
        if opcode.is_control() {
            if !fin {
                return Err(ProtocolError::FragmentedControlFrame);
            }
            if payload_len > MAX_CONTROL_PAYLOAD {
                return Err(ProtocolError::ControlFrameTooLong);
            }
        }
        let mask = if masked {
            let Some(key) = buf.get(len..len + 4) else {
                return Ok(None);
            };
            len += 4;
            Some([key[0], key[1], key[2], key[3]])
        } else {
            None
        };
        Ok(Some((
            Self {
                fin,
                rsv,
                opcode,
                mask,
                payload_len,
            },
            len,
        )))
    }

    /// Encodes the header into `out`, returning the number of bytes written. The shortest
    /// length encoding is always used.
    pub fn encode(&self, out: &mut [u8; MAX_HEADER_LEN]) -> usize {
        out[0] = (u8::from(self.fin) << 7) | ((self.rsv & 0b111) << 4) | self.opcode.bits();
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let mut len = match self.payload_len {
            n @ 0..=125 => {
                out[1] = mask_bit | n as u8;
                2
            }
            n @ 126..=0xFFFF => {
                out[1] = mask_bit | 126;
                out[2..4].copy_from_slice(&(n as u16).to_be_bytes());
                4
            }
            n => {
                out[1] = mask_bit | 127;
                out[2..10].copy_from_slice(&n.to_be_bytes());
                10
            }
        };
        if let Some(key) = self.mask {
            out[len..len + 4].copy_from_slice(&key);
            len += 4;
        }
        len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(payload_len: u64, mask: Option<[u8; 4]>) -> FrameHeader {
        FrameHeader {
            fin: true,
            rsv: 0,
            opcode: OpCode::Binary,
            mask,
            payload_len,
        }
    }

    #[test]
    fn roundtrip_every_length_class() {
        for len in [0, 1, 125, 126, 127, 0xFFFF, 0x1_0000, u64::MAX >> 1] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let h = header(len, mask);
                let mut out = [0u8; MAX_HEADER_LEN];
                let n = h.encode(&mut out);
                assert_eq!(FrameHeader::parse(&out[..n]).unwrap(), Some((h, n)));
                for short in 0..n {
                    assert_eq!(
                        FrameHeader::parse(&out[..short]).unwrap(),
                        None,
                        "{len} {short}"
                    );
                }
            }
        }
    }

    #[test]
    fn header_lengths_are_minimal() {
        let mut out = [0u8; MAX_HEADER_LEN];
        assert_eq!(header(125, None).encode(&mut out), 2);
        assert_eq!(header(126, None).encode(&mut out), 4);
        assert_eq!(header(0xFFFF, None).encode(&mut out), 4);
        assert_eq!(header(0x1_0000, None).encode(&mut out), 10);
        assert_eq!(header(0x1_0000, Some([0; 4])).encode(&mut out), 14);
    }

    #[test]
    fn reserved_opcodes_are_rejected() {
        for op in (3..=7).chain(0xB..=0xF) {
            assert_eq!(
                FrameHeader::parse(&[0x80 | op, 0]),
                Err(ProtocolError::ReservedOpcode(op))
            );
        }
    }

    #[test]
    fn top_bit_of_64_bit_length_is_rejected() {
        let mut buf = vec![0x82, 127];
        buf.extend_from_slice(&(1u64 << 63).to_be_bytes());
        assert_eq!(FrameHeader::parse(&buf), Err(ProtocolError::InvalidLength));
    }

    #[test]
    fn control_frame_rules() {
        assert_eq!(
            FrameHeader::parse(&[0x09, 0]),
            Err(ProtocolError::FragmentedControlFrame)
        );
        assert_eq!(
            FrameHeader::parse(&[0x89, 126, 0, 126]),
            Err(ProtocolError::ControlFrameTooLong)
        );
        assert!(FrameHeader::parse(&[0x89, 125]).unwrap().is_some());
    }

    #[test]
    fn rsv_bits_are_reported() {
        let (h, _) = FrameHeader::parse(&[0xF1, 0]).unwrap().unwrap();
        assert_eq!(h.rsv, 0b111);
        let (h, _) = FrameHeader::parse(&[0xC1, 0]).unwrap().unwrap();
        assert_eq!(h.rsv, RSV1);
    }
}
