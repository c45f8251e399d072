//! The frame-level state machine: [`Decoder`] turns a read buffer into messages under
//! limits, [`Encoder`] turns a message into one frame in one `Bytes`.
//!
//! The decoder unmasks and validates a frame's payload in place as its bytes arrive, so
//! invalid UTF-8 fails in the read that brings it, and hands out complete payloads with
//! `split_to(..).freeze()`: no copy for unfragmented messages. Fragmented messages are
//! joined into one buffer under the message and fragment limits, which are checked
//! against each frame's declared length before any of its payload is buffered.
//!
//! A server holds one decoder per connection, nearly all of them idle between messages:
//! what only a frame cut across reads or a fragmented message needs is boxed, made when
//! one begins and freed when it ends, so an idle decoder is a few words (see its size
//! test).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use rand_chacha::ChaCha12Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

use crate::Role;
use crate::close::CloseFrame;
use crate::error::ProtocolError;
use crate::frame::{FrameHeader, MAX_HEADER_LEN, OpCode, RSV1};
use crate::mask::apply_mask;
use crate::message::Message;
use crate::utf8::Utf8Validator;

/// Size limits enforced by the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload of a single frame.
    pub max_frame: usize,
    /// Largest message; every fragment after the first also counts its header bytes, so
    /// a flood of tiny fragments reaches the cap.
    pub max_message: usize,
    /// Most data frames in one message.
    pub max_fragments: usize,
}

impl Default for Limits {
    /// 16 MiB frames and messages, 131,072 fragments: enough for Autobahn's largest
    /// cases (9.3.1 sends 4 MiB in 65,536 fragments of 64 bytes plus an empty final one).
    fn default() -> Self {
        Self {
            max_frame: 16 << 20,
            max_message: 16 << 20,
            max_fragments: 1 << 17,
        }
    }
}

/// A frame whose header is parsed and whose payload is still arriving.
#[derive(Debug, Clone, Copy)]
struct InFrame {
    header: FrameHeader,
    header_len: usize,
    payload_len: usize,
    /// Payload bytes already unmasked (and validated, for text).
    done: usize,
    validate_utf8: bool,
}

/// A fragmented message being joined.
#[derive(Debug)]
struct Assembly {
    text: bool,
    compressed: bool,
    data: BytesMut,
    charged: usize,
    fragments: usize,
}

/// Decodes frames for one role into [`Message`]s.
#[derive(Debug)]
pub struct Decoder {
    role: Role,
    limits: Limits,
    rsv1_allowed: bool,
    /// The frame cut off at the end of the last read, if one is.
    frame: Option<Box<InFrame>>,
    /// The fragmented message being joined, if one is.
    assembly: Option<Box<Assembly>>,
    utf8: Utf8Validator,
}

/// A data message as the decoder completes it, before any decompression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    /// Text (else binary).
    pub text: bool,
    /// RSV1 was set on the first frame: the payload is compressed and, for text, not yet
    /// UTF-8 validated.
    pub compressed: bool,
    /// The payload.
    pub payload: Bytes,
}

/// What [`Decoder::decode`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A complete data message.
    Data(RawMessage),
    /// A control frame (Ping, Pong or Close).
    Control(Message),
}

impl Decoder {
    /// A decoder for frames received by `role`.
    pub fn new(role: Role, limits: Limits) -> Self {
        Self {
            role,
            limits,
            rsv1_allowed: false,
            frame: None,
            assembly: None,
            utf8: Utf8Validator::new(),
        }
    }

    /// Allows RSV1 on the first frame of a data message (permessage-deflate negotiated).
    pub fn set_rsv1_allowed(&mut self, allowed: bool) {
        self.rsv1_allowed = allowed;
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// How many bytes the buffer must hold to complete the frame in progress (0 when no
    /// frame is in progress): a hint for sizing the next read.
    pub fn frame_len(&self) -> usize {
        self.frame
            .as_ref()
            .map_or(0, |f| f.header_len + f.payload_len)
    }

    /// Whether a fragmented message has begun and not ended.
    pub fn is_mid_message(&self) -> bool {
        self.assembly.is_some()
    }

    /// Decodes from the front of `buf`. `Ok(None)` means more bytes are needed; consumed
    /// frames are removed from `buf`. After an error the decoder must not be used again.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, ProtocolError> {
        loop {
            // A frame continued from an earlier read keeps its box until it completes.
            let kept = self.frame.take();
            let mut frame = match &kept {
                Some(frame) => **frame,
                None => match FrameHeader::parse(buf)? {
                    None => return Ok(None),
                    Some((header, header_len)) => self.admit(header, header_len)?,
                },
            };
            let available = buf.len().min(frame.header_len + frame.payload_len) - frame.header_len;
            if available > frame.done {
                let piece = &mut buf[frame.header_len + frame.done..frame.header_len + available];
                if let Some(key) = frame.header.mask {
                    apply_mask(piece, key, frame.done);
                }
                if frame.validate_utf8 {
                    self.utf8
                        .feed(piece)
                        .map_err(|_| ProtocolError::InvalidUtf8)?;
                }
                frame.done = available;
            }
            if frame.done < frame.payload_len {
                self.frame = Some(match kept {
                    Some(mut boxed) => {
                        *boxed = frame;
                        boxed
                    }
                    None => Box::new(frame),
                });
                return Ok(None);
            }
            buf.advance(frame.header_len);
            let payload = buf.split_to(frame.payload_len).freeze();
            if let Some(decoded) = self.complete(frame.header, frame.header_len, payload)? {
                return Ok(Some(decoded));
            }
        }
    }

    /// Checks a new header against the role, extensions, message state and limits, before
    /// any of its payload is buffered.
    fn admit(&mut self, header: FrameHeader, header_len: usize) -> Result<InFrame, ProtocolError> {
        let rsv1_ok = self.rsv1_allowed && matches!(header.opcode, OpCode::Text | OpCode::Binary);
        if header.rsv & !RSV1 != 0 || (header.rsv & RSV1 != 0 && !self.rsv1_allowed) {
            return Err(ProtocolError::ReservedBits(header.rsv));
        }
        if header.rsv & RSV1 != 0 && !rsv1_ok {
            return Err(ProtocolError::Rsv1OnNonFirstFrame);
        }
        match (self.role, header.mask.is_some()) {
            (Role::Server, false) => return Err(ProtocolError::UnmaskedFrame),
            (Role::Client, true) => return Err(ProtocolError::MaskedFrame),
            _ => {}
        }
        if header.payload_len > self.limits.max_frame as u64 {
            return Err(ProtocolError::FrameTooLarge(header.payload_len));
        }
        // Bounded by max_frame, which is a usize.
        let payload_len = header.payload_len as usize;
        let validate_utf8 = match header.opcode {
            OpCode::Close | OpCode::Ping | OpCode::Pong => false,
            OpCode::Text | OpCode::Binary => {
                if self.assembly.is_some() {
                    return Err(ProtocolError::ExpectedContinuation);
                }
                if payload_len > self.limits.max_message {
                    return Err(ProtocolError::MessageTooLarge);
                }
                header.opcode == OpCode::Text && header.rsv & RSV1 == 0
            }
            OpCode::Continuation => {
                let Some(assembly) = &self.assembly else {
                    return Err(ProtocolError::UnexpectedContinuation);
                };
                if assembly.fragments >= self.limits.max_fragments {
                    return Err(ProtocolError::TooManyFragments);
                }
                if assembly.charged + header_len + payload_len > self.limits.max_message {
                    return Err(ProtocolError::MessageTooLarge);
                }
                assembly.text && !assembly.compressed
            }
        };
        Ok(InFrame {
            header,
            header_len,
            payload_len,
            done: 0,
            validate_utf8,
        })
    }

    /// Handles a frame whose payload is complete; `None` when it only extends a message.
    fn complete(
        &mut self,
        header: FrameHeader,
        header_len: usize,
        payload: Bytes,
    ) -> Result<Option<Decoded>, ProtocolError> {
        let finish_text = |utf8: &mut Utf8Validator, text: bool, compressed: bool| {
            if text && !compressed {
                utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)
            } else {
                Ok(())
            }
        };
        match header.opcode {
            OpCode::Ping => Ok(Some(Decoded::Control(Message::Ping(payload)))),
            OpCode::Pong => Ok(Some(Decoded::Control(Message::Pong(payload)))),
            OpCode::Close => Ok(Some(Decoded::Control(Message::Close(CloseFrame::parse(
                payload,
            )?)))),
            OpCode::Text | OpCode::Binary => {
                let text = header.opcode == OpCode::Text;
                let compressed = header.rsv & RSV1 != 0;
                if header.fin {
                    finish_text(&mut self.utf8, text, compressed)?;
                    return Ok(Some(Decoded::Data(RawMessage {
                        text,
                        compressed,
                        payload,
                    })));
                }
                let mut data = BytesMut::with_capacity(payload.len());
                data.extend_from_slice(&payload);
                self.assembly = Some(Box::new(Assembly {
                    text,
                    compressed,
                    data,
                    charged: payload.len(),
                    fragments: 1,
                }));
                Ok(None)
            }
            OpCode::Continuation => {
                let Some(assembly) = self.assembly.as_mut() else {
                    return Err(ProtocolError::UnexpectedContinuation);
                };
                assembly.data.extend_from_slice(&payload);
                assembly.charged += header_len + payload.len();
                assembly.fragments += 1;
                if !header.fin {
                    return Ok(None);
                }
                let Some(done) = self.assembly.take() else {
                    return Err(ProtocolError::UnexpectedContinuation);
                };
                finish_text(&mut self.utf8, done.text, done.compressed)?;
                Ok(Some(Decoded::Data(RawMessage {
                    text: done.text,
                    compressed: done.compressed,
                    payload: done.data.freeze(),
                })))
            }
        }
    }
}

/// Encodes messages as single frames for one role: unmasked from a server (so one
/// encoded frame can go to every subscriber), masked with a fresh key from a client.
///
/// Masking keys come from a ChaCha12 stream seeded by the caller (the core does no I/O,
/// so it cannot ask the OS for entropy itself): seed it from the OS's random source.
#[derive(Debug, Clone)]
pub struct Encoder {
    /// Boxed: a server (which never masks) should not carry a client's 300-byte generator
    /// in every connection.
    mask_keys: Option<Box<ChaCha12Rng>>,
}

impl Encoder {
    /// An encoder for a server: frames are not masked.
    pub fn server() -> Self {
        Self { mask_keys: None }
    }

    /// An encoder for a client: every frame is masked with the next key of the stream
    /// seeded by `seed`, which must be unpredictable (e.g. from `getrandom`).
    pub fn client(seed: [u8; 32]) -> Self {
        Self {
            mask_keys: Some(Box::new(ChaCha12Rng::from_seed(seed))),
        }
    }

    /// The role this encoder sends for.
    pub fn role(&self) -> Role {
        if self.mask_keys.is_some() {
            Role::Client
        } else {
            Role::Server
        }
    }

    /// One final frame with the given opcode, RSV bits and payload, in one `Bytes`.
    pub fn frame(&mut self, opcode: OpCode, rsv: u8, payload: &[u8]) -> Bytes {
        let mask = self
            .mask_keys
            .as_mut()
            .map(|rng| rng.next_u32().to_ne_bytes());
        let mut head = [0u8; MAX_HEADER_LEN];
        let head_len = Self::encode_header(opcode, rsv, mask, payload.len(), &mut head);
        let mut out = BytesMut::with_capacity(head_len + payload.len());
        out.put_slice(&head[..head_len]);
        out.put_slice(payload);
        if let Some(key) = mask {
            apply_mask(&mut out[head_len..], key, 0);
        }
        out.freeze()
    }

    /// A server's frame as header and payload, the payload shared rather than copied
    /// (a client must mask, so it gets `None`: use [`Encoder::frame`]).
    pub fn unmasked_parts(&self, opcode: OpCode, payload: &Bytes) -> Option<(Bytes, Bytes)> {
        if self.mask_keys.is_some() {
            return None;
        }
        let mut head = [0u8; MAX_HEADER_LEN];
        let head_len = Self::encode_header(opcode, 0, None, payload.len(), &mut head);
        Some((Bytes::copy_from_slice(&head[..head_len]), payload.clone()))
    }

    fn encode_header(
        opcode: OpCode,
        rsv: u8,
        mask: Option<[u8; 4]>,
        payload_len: usize,
        out: &mut [u8; MAX_HEADER_LEN],
    ) -> usize {
        FrameHeader {
            fin: true,
            rsv,
            opcode,
            mask,
            payload_len: payload_len as u64,
        }
        .encode(out)
    }

    /// A message as one frame.
    pub fn message(&mut self, message: &Message) -> Bytes {
        match message {
            Message::Text(p) => self.frame(OpCode::Text, 0, p),
            Message::Binary(p) => self.frame(OpCode::Binary, 0, p),
            Message::Ping(p) => self.frame(OpCode::Ping, 0, p),
            Message::Pong(p) => self.frame(OpCode::Pong, 0, p),
            Message::Close(None) => self.frame(OpCode::Close, 0, &[]),
            Message::Close(Some(c)) => self.frame(OpCode::Close, 0, &c.payload()),
        }
    }
}

#[cfg(test)]
mod tests;
