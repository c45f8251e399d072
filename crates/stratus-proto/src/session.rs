//! One endpoint's protocol state over a connection: decode, answer, close.
//!
//! Call order, as in quinn-proto: feed received bytes with [`Session::handle_read`] until
//! it yields `Ok(None)`, then drain [`Session::poll_transmit`] and write what it returns,
//! in order. The session never writes behind the caller's back: the obligations RFC 6455
//! puts on an endpoint (a pong for each ping, the echo of a Close, a Close with the right
//! code when the peer breaks the protocol) come out of `poll_transmit` as frames.
//!
//! After a Close is received, or the peer broke the protocol, every further byte is
//! ignored and exactly one Close is sent. The driver closes TCP once
//! [`Session::is_closed`] is true (the server at once, a client after the server did),
//! and owns the timeouts.
//!
//! A server holds a session per connection, nearly all of them idle: the frames waiting
//! to be polled are boxed apart ([`Outgoing`]), made by the first frame queued and freed
//! once the driver has polled them all, so an idle session holds no queue (one kept after
//! the first ping would be a 256-byte allocation in every connection).

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use crate::close::{CloseCode, CloseFrame};
use crate::codec::{Decoded, Decoder, Encoder, Limits};
use crate::compression::{DecompressError, MessageCompression};
use crate::error::ProtocolError;
use crate::frame::{OpCode, RSV1};
use crate::message::Message;

/// The session is closing: no more messages may be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the session is closing")]
pub struct Closing;

/// Data payloads at least this long go out as header plus the shared payload (no copy)
/// when the frame needs no masking and no compression.
const SHARE_PAYLOAD_MIN: usize = 4096;

/// Frames a session has queued and the driver has not yet polled.
#[derive(Default)]
struct Outgoing {
    /// Frames to send: whole, or a header with its payload beside it.
    transmit: VecDeque<(Bytes, Option<Bytes>)>,
    /// The payload of the frame whose header `poll_transmit` returned last.
    rest: Option<Bytes>,
    /// At most one pong waits: a peer that floods pings gets an answer to the latest.
    pong: Option<Bytes>,
}

impl Outgoing {
    fn is_empty(&self) -> bool {
        self.transmit.is_empty() && self.rest.is_none() && self.pong.is_none()
    }
}

/// A WebSocket endpoint's protocol state.
pub struct Session {
    decoder: Decoder,
    encoder: Encoder,
    /// What waits to be polled; `None` (no allocation) once all of it was.
    outgoing: Option<Box<Outgoing>>,
    compression: Option<Box<dyn MessageCompression>>,
    close_sent: bool,
    close_received: bool,
    failed: bool,
    /// The code of the Close sent (the peer's own code when answering its Close).
    close_code: Option<CloseCode>,
}

impl Session {
    /// A server's session, with decoder limits.
    pub fn server(limits: Limits) -> Self {
        Self::with_encoder(Encoder::server(), limits)
    }

    /// A client's session; `seed` seeds the masking keys and must be unpredictable.
    pub fn client(limits: Limits, seed: [u8; 32]) -> Self {
        Self::with_encoder(Encoder::client(seed), limits)
    }

    fn with_encoder(encoder: Encoder, limits: Limits) -> Self {
        Self {
            decoder: Decoder::new(encoder.role(), limits),
            encoder,
            outgoing: None,
            compression: None,
            close_sent: false,
            close_received: false,
            failed: false,
            close_code: None,
        }
    }

    /// Bytes the read buffer must hold to finish the frame in progress (a read-size hint).
    pub fn wanted_len(&self) -> usize {
        self.decoder.frame_len()
    }

    /// Whether a fragmented message has begun and not ended (a driver that wants every
    /// message finished within a deadline times it from there, or from a partial frame).
    pub fn is_mid_message(&self) -> bool {
        self.decoder.is_mid_message()
    }

    /// Turns on a negotiated per-message compression: RSV1 becomes legal on the first
    /// frame of a data message, and data messages are compressed as the extension decides.
    pub fn set_compression(&mut self, compression: Box<dyn MessageCompression>) {
        self.decoder.set_rsv1_allowed(true);
        self.compression = Some(compression);
    }

    /// Decodes the next message from `buf`. `Ok(None)`: need more bytes (or the session no
    /// longer reads). On `Err` the session has queued a Close with the error's code and
    /// ignores all further input.
    pub fn handle_read(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, ProtocolError> {
        if self.close_received || self.failed {
            buf.clear();
            return Ok(None);
        }
        let message = match self.decoder.decode(buf).and_then(|d| self.finish(d)) {
            Ok(Some(message)) => message,
            Ok(None) => return Ok(None),
            Err(err) => {
                self.failed = true;
                buf.clear();
                self.close(err.close_code(), "");
                return Err(err);
            }
        };
        match &message {
            Message::Ping(payload) if !self.close_sent => {
                let pong = self.encoder.message(&Message::Pong(payload.clone()));
                self.outgoing().pong = Some(pong);
            }
            Message::Close(frame) => {
                self.close_received = true;
                buf.clear();
                let code = frame.as_ref().map_or(CloseCode::NORMAL, CloseFrame::code);
                self.close(code, "");
            }
            _ => {}
        }
        Ok(Some(message))
    }

    /// Turns a decoded frame into a message, decompressing and validating compressed ones.
    fn finish(&mut self, decoded: Option<Decoded>) -> Result<Option<Message>, ProtocolError> {
        let raw = match decoded {
            None => return Ok(None),
            Some(Decoded::Control(control)) => return Ok(Some(control)),
            Some(Decoded::Data(raw)) => raw,
        };
        let payload = if raw.compressed {
            let compression = self
                .compression
                .as_mut()
                .ok_or(ProtocolError::InvalidCompressedData)?;
            let payload = compression
                .decompress(&raw.payload, self.decoder.limits().max_message)
                .map_err(|e| match e {
                    DecompressError::TooLarge => ProtocolError::MessageTooLarge,
                    DecompressError::Corrupt => ProtocolError::InvalidCompressedData,
                })?;
            if raw.text && simdutf8::basic::from_utf8(&payload).is_err() {
                return Err(ProtocolError::InvalidUtf8);
            }
            payload
        } else {
            raw.payload
        };
        Ok(Some(if raw.text {
            Message::Text(payload)
        } else {
            Message::Binary(payload)
        }))
    }

    /// Queues a message. Fails once a Close has been sent; a `Message::Close` starts the
    /// closing handshake.
    pub fn send(&mut self, message: &Message) -> Result<(), Closing> {
        if self.close_sent {
            return Err(Closing);
        }
        let frame = match message {
            Message::Close(frame) => {
                self.close_sent = true;
                self.close_code = Some(frame.as_ref().map_or(CloseCode(1005), CloseFrame::code));
                if let Some(outgoing) = &mut self.outgoing {
                    outgoing.pong = None;
                }
                self.encoder.message(message)
            }
            Message::Text(payload) | Message::Binary(payload) => {
                let opcode = if matches!(message, Message::Text(_)) {
                    OpCode::Text
                } else {
                    OpCode::Binary
                };
                match self.compression.as_mut().and_then(|c| c.compress(payload)) {
                    Some(compressed) => self.encoder.frame(opcode, RSV1, &compressed),
                    None if payload.len() >= SHARE_PAYLOAD_MIN => {
                        match self.encoder.unmasked_parts(opcode, payload) {
                            Some((head, payload)) => {
                                self.outgoing().transmit.push_back((head, Some(payload)));
                                return Ok(());
                            }
                            None => self.encoder.message(message),
                        }
                    }
                    None => self.encoder.message(message),
                }
            }
            _ => self.encoder.message(message),
        };
        self.outgoing().transmit.push_back((frame, None));
        Ok(())
    }

    /// The frames waiting to be polled, made on first use.
    fn outgoing(&mut self) -> &mut Outgoing {
        self.outgoing.get_or_insert_with(Box::default)
    }

    /// Frees the frames' box once all of them were polled.
    fn release_if_drained(&mut self) {
        if self.outgoing.as_ref().is_some_and(|o| o.is_empty()) {
            self.outgoing = None;
        }
    }

    /// Starts the closing handshake with `code`, unless a Close was already sent.
    pub fn close(&mut self, code: CloseCode, reason: &str) {
        let _ = self.send(&Message::Close(Some(CloseFrame::new(code, reason))));
    }

    /// The next bytes to write, in order: a whole frame, or (for a large frame a server
    /// sends uncompressed) its header, then its payload shared with the message.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.poll_transmit_part().map(|(bytes, _)| bytes)
    }

    /// As [`Session::poll_transmit`], saying whether the bytes start a frame (a writer
    /// that may drop unsent frames must keep the payload of a header already sent).
    pub fn poll_transmit_part(&mut self) -> Option<(Bytes, bool)> {
        let outgoing = self.outgoing.as_mut()?;
        let part = if let Some(rest) = outgoing.rest.take() {
            Some((rest, false))
        } else if let Some(pong) = outgoing.pong.take() {
            Some((pong, true))
        } else {
            outgoing.transmit.pop_front().map(|(head, rest)| {
                outgoing.rest = rest;
                (head, true)
            })
        };
        self.release_if_drained();
        part
    }

    /// The pong answering the latest ping, if one waits, apart from the other frames: a
    /// driver whose peer has not taken its earlier frames may let it replace a pong it
    /// still holds (RFC 6455 5.5.3 allows answering only the most recent ping). `None`
    /// while the payload of a frame begun is still to be polled: the pong must not split
    /// it. Otherwise [`poll_transmit_part`](Self::poll_transmit_part) hands the pong out
    /// first, as a whole frame.
    pub fn poll_pong(&mut self) -> Option<Bytes> {
        let outgoing = self.outgoing.as_mut()?;
        if outgoing.rest.is_some() {
            return None;
        }
        let pong = outgoing.pong.take();
        self.release_if_drained();
        pong
    }

    /// A Close was sent.
    pub fn close_sent(&self) -> bool {
        self.close_sent
    }

    /// The code of the Close sent, which echoes the peer's code when the peer closed
    /// first (1005 if the Close sent had no code); `None` before any Close.
    pub fn close_code(&self) -> Option<CloseCode> {
        self.close_code
    }

    /// A Close was received.
    pub fn close_received(&self) -> bool {
        self.close_received
    }

    /// The peer broke the protocol; a Close with the error's code is queued.
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Nothing more will be read: the closing handshake is complete, or the session
    /// failed. The driver may close TCP once the queued frames are written.
    pub fn is_closed(&self) -> bool {
        self.failed || (self.close_sent && self.close_received)
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("close_sent", &self.close_sent)
            .field("close_received", &self.close_received)
            .field("failed", &self.failed)
            .field("compression", &self.compression)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Role;
    use crate::frame::OpCode;

    fn client_frames(messages: &[Message]) -> BytesMut {
        let mut enc = Encoder::client([1; 32]);
        let mut buf = BytesMut::new();
        for m in messages {
            buf.extend_from_slice(&enc.message(m));
        }
        buf
    }

    fn drain(session: &mut Session) -> Vec<Bytes> {
        std::iter::from_fn(|| session.poll_transmit()).collect()
    }

    fn server_view(frame: &Bytes) -> Message {
        let mut dec = Decoder::new(Role::Client, Limits::default());
        let mut buf = BytesMut::from(&frame[..]);
        match dec.decode(&mut buf).unwrap().unwrap() {
            Decoded::Control(m) => m,
            Decoded::Data(d) if d.text => Message::Text(d.payload),
            Decoded::Data(d) => Message::Binary(d.payload),
        }
    }

    /// A server keeps a session in every connection, nearly all idle: it stays a few
    /// words (the server's idle-memory budget, issue 19), and what it queued is freed
    /// once polled (a queue kept after the first ping cost every connection 256 B).
    #[test]
    fn an_idle_session_is_small_and_keeps_no_queue() {
        assert!(
            size_of::<Session>() <= 88,
            "a session is {} bytes",
            size_of::<Session>()
        );
        let mut s = Session::server(Limits::default());
        s.send(&Message::Ping(Bytes::new())).unwrap();
        let mut buf = client_frames(&[Message::Ping(Bytes::from_static(b"p"))]);
        s.handle_read(&mut buf).unwrap();
        assert!(s.outgoing.is_some());
        assert_eq!(drain(&mut s).len(), 2, "the pong and the ping");
        assert!(s.outgoing.is_none(), "freed once polled");
        s.send(&Message::text("x")).unwrap();
        assert!(s.poll_pong().is_none());
        assert_eq!(drain(&mut s).len(), 1);
        assert!(s.outgoing.is_none());
    }

    #[test]
    fn ping_is_answered_with_pong_of_same_payload() {
        let mut s = Session::server(Limits::default());
        let mut buf = client_frames(&[Message::Ping(Bytes::from_static(b"hi"))]);
        assert_eq!(
            s.handle_read(&mut buf).unwrap(),
            Some(Message::Ping(Bytes::from_static(b"hi")))
        );
        let out = drain(&mut s);
        assert_eq!(out.len(), 1);
        assert_eq!(
            server_view(&out[0]),
            Message::Pong(Bytes::from_static(b"hi"))
        );
    }

    #[test]
    fn large_server_payload_goes_out_shared_and_a_pong_never_splits_it() {
        let mut s = Session::server(Limits::default());
        let payload = Bytes::from(vec![7u8; SHARE_PAYLOAD_MIN]);
        s.send(&Message::Binary(payload.clone())).unwrap();
        let head = s.poll_transmit().unwrap();
        // A ping read between the two pieces: its pong must wait for the frame's end.
        let mut buf = client_frames(&[Message::Ping(Bytes::from_static(b"p"))]);
        assert!(s.handle_read(&mut buf).unwrap().is_some());
        let body = s.poll_transmit().unwrap();
        assert_eq!(body.as_ptr(), payload.as_ptr(), "the payload is not copied");
        let mut frame = head.to_vec();
        frame.extend_from_slice(&body);
        assert_eq!(server_view(&Bytes::from(frame)), Message::Binary(payload));
        let pong = drain(&mut s);
        assert_eq!(pong.len(), 1);
        assert_eq!(
            server_view(&pong[0]),
            Message::Pong(Bytes::from_static(b"p"))
        );
        // Below the threshold, and from a client, frames stay whole.
        s.send(&Message::binary(vec![1; SHARE_PAYLOAD_MIN - 1]))
            .unwrap();
        assert_eq!(drain(&mut s).len(), 1);
        let mut c = Session::client(Limits::default(), [2; 32]);
        c.send(&Message::binary(vec![1; 2 * SHARE_PAYLOAD_MIN]))
            .unwrap();
        assert_eq!(drain(&mut c).len(), 1);
    }

    #[test]
    fn ping_flood_keeps_one_pong() {
        let mut s = Session::server(Limits::default());
        let pings: Vec<Message> = (0..1000)
            .map(|i| Message::Ping(Bytes::from(format!("{i}"))))
            .collect();
        let mut buf = client_frames(&pings);
        while s.handle_read(&mut buf).unwrap().is_some() {}
        let out = drain(&mut s);
        assert_eq!(out.len(), 1);
        assert_eq!(
            server_view(&out[0]),
            Message::Pong(Bytes::from_static(b"999"))
        );
    }

    #[test]
    fn the_pong_is_polled_apart_but_never_inside_a_frame() {
        let mut s = Session::server(Limits::default());
        let payload = Bytes::from(vec![7u8; SHARE_PAYLOAD_MIN]);
        s.send(&Message::Binary(payload)).unwrap();
        let _head = s.poll_transmit().unwrap();
        let mut buf = client_frames(&[Message::Ping(Bytes::from_static(b"p"))]);
        assert!(s.handle_read(&mut buf).unwrap().is_some());
        assert_eq!(
            s.poll_pong(),
            None,
            "the payload of the frame begun comes first"
        );
        let _body = s.poll_transmit().unwrap();
        let pong = s.poll_pong().unwrap();
        assert_eq!(server_view(&pong), Message::Pong(Bytes::from_static(b"p")));
        assert_eq!(s.poll_pong(), None);
        assert!(drain(&mut s).is_empty(), "taken once");
    }

    #[test]
    fn close_is_echoed_once_and_later_data_ignored() {
        let mut s = Session::server(Limits::default());
        let close = Message::Close(Some(CloseFrame::new(CloseCode(3000), "bye")));
        let mut buf = client_frames(&[
            close.clone(),
            Message::text("late"),
            Message::Ping(Bytes::new()),
        ]);
        assert_eq!(s.handle_read(&mut buf).unwrap(), Some(close));
        assert_eq!(s.handle_read(&mut buf).unwrap(), None);
        assert!(s.is_closed());
        let out = drain(&mut s);
        assert_eq!(out.len(), 1);
        match server_view(&out[0]) {
            Message::Close(Some(f)) => assert_eq!(f.code(), CloseCode(3000)),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.send(&Message::text("x")), Err(Closing));
        assert_eq!(s.close_code(), Some(CloseCode(3000)), "the peer's code");
    }

    #[test]
    fn empty_close_is_answered_with_1000() {
        let mut s = Session::server(Limits::default());
        let mut buf = client_frames(&[Message::Close(None)]);
        assert_eq!(s.handle_read(&mut buf).unwrap(), Some(Message::Close(None)));
        match server_view(&drain(&mut s)[0]) {
            Message::Close(Some(f)) => assert_eq!(f.code(), CloseCode::NORMAL),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.close_code(), Some(CloseCode::NORMAL));
    }

    #[test]
    fn protocol_error_queues_close_with_its_code_and_stops_reading() {
        // Autobahn 3.2 (client role): a good message, a frame with RSV=2, then a ping.
        let mut s = Session::client(Limits::default(), [1; 32]);
        let mut server = Encoder::server();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&server.message(&Message::text("Hello")));
        buf.extend_from_slice(&server.frame(OpCode::Text, 0b010, b"bad"));
        buf.extend_from_slice(&server.message(&Message::Ping(Bytes::new())));
        assert_eq!(
            s.handle_read(&mut buf).unwrap(),
            Some(Message::text("Hello"))
        );
        s.send(&Message::text("Hello")).unwrap();
        assert_eq!(
            s.handle_read(&mut buf),
            Err(ProtocolError::ReservedBits(0b010))
        );
        assert_eq!(s.handle_read(&mut buf).unwrap(), None);
        assert!(s.is_closed());
        assert_eq!(s.close_code(), Some(CloseCode::PROTOCOL));
        let out = drain(&mut s);
        assert_eq!(out.len(), 2, "the echo, then the close; no pong");
        let mut dec = Decoder::new(crate::Role::Server, Limits::default());
        let mut wire = BytesMut::new();
        for f in &out {
            wire.extend_from_slice(f);
        }
        assert!(matches!(
            dec.decode(&mut wire).unwrap(),
            Some(Decoded::Data(_))
        ));
        match dec.decode(&mut wire).unwrap() {
            Some(Decoded::Control(Message::Close(Some(f)))) => {
                assert_eq!(f.code(), CloseCode::PROTOCOL)
            }
            other => panic!("{other:?}"),
        }
    }

    /// A stand-in extension: "compresses" by reversing the bytes.
    #[derive(Debug)]
    struct Reverse;

    impl MessageCompression for Reverse {
        fn compress(&mut self, payload: &[u8]) -> Option<Bytes> {
            (payload.len() > 1).then(|| payload.iter().rev().copied().collect())
        }
        fn decompress(&mut self, payload: &[u8], max: usize) -> Result<Bytes, DecompressError> {
            if payload.first() == Some(&0xFF) {
                return Err(DecompressError::Corrupt);
            }
            if payload.len() > max {
                return Err(DecompressError::TooLarge);
            }
            Ok(payload.iter().rev().copied().collect())
        }
    }

    fn compressed_session() -> Session {
        let mut s = Session::server(Limits {
            max_message: 8,
            ..Limits::default()
        });
        s.set_compression(Box::new(Reverse));
        s
    }

    fn rsv1_frame(payload: &[u8]) -> BytesMut {
        BytesMut::from(&Encoder::client([1; 32]).frame(OpCode::Text, RSV1, payload)[..])
    }

    #[test]
    fn compressed_messages_are_decompressed_and_sent_compressed() {
        let mut s = compressed_session();
        let mut buf = rsv1_frame(b"olleh");
        assert_eq!(
            s.handle_read(&mut buf).unwrap(),
            Some(Message::text("hello"))
        );
        s.send(&Message::text("abc")).unwrap();
        s.send(&Message::text("z")).unwrap();
        let out = drain(&mut s);
        let (h, n) = crate::FrameHeader::parse(&out[0]).unwrap().unwrap();
        assert_eq!((h.rsv, &out[0][n..]), (RSV1, &b"cba"[..]));
        let (h, n) = crate::FrameHeader::parse(&out[1]).unwrap().unwrap();
        assert_eq!(
            (h.rsv, &out[1][n..]),
            (0, &b"z"[..]),
            "the extension declined"
        );
    }

    #[test]
    fn corrupt_compressed_data_is_1007() {
        let mut s = compressed_session();
        let mut buf = rsv1_frame(&[0xFF, 1]);
        let err = s.handle_read(&mut buf).unwrap_err();
        assert_eq!(err.close_code(), CloseCode::INVALID_PAYLOAD);
    }

    #[test]
    fn decompressed_message_over_limit_is_1009() {
        let mut s = compressed_session();
        let mut buf = rsv1_frame(b"123456789");
        assert_eq!(
            s.handle_read(&mut buf).unwrap_err().close_code(),
            CloseCode::TOO_BIG
        );
    }

    #[test]
    fn decompressed_text_must_be_utf8() {
        let mut s = compressed_session();
        let mut buf = rsv1_frame(&[0xC0, 0x80]);
        assert_eq!(
            s.handle_read(&mut buf).unwrap_err(),
            ProtocolError::InvalidUtf8
        );
    }

    #[test]
    fn rsv1_without_negotiation_is_1002() {
        let mut s = Session::server(Limits::default());
        let mut buf = rsv1_frame(b"x");
        assert_eq!(
            s.handle_read(&mut buf).unwrap_err().close_code(),
            CloseCode::PROTOCOL
        );
    }
}
