//! A publication on its way to subscribers, encoded once per protocol that has
//! subscribers for it: raw mode's frame (made when it is published) and protocol v1's
//! envelope (made the first time a v1 subscriber needs it), each with its shared
//! compressed frame (made the first time a subscriber with shared-mode compression needs
//! it); and which frame a connection takes ([`FrameChoice`]). Every frame is `Bytes`:
//! each subscriber's queue gets a clone of the same allocation, never a copy.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use stratus_proto::frame::RSV1;
use stratus_proto::{Encoder, Message, OpCode};

use crate::model::offset::Offset;
use crate::model::protocol::{Protocol, raw, sse, v1};
use crate::model::publication::Publication;
use crate::stats::{self, WorkerStats};

/// Which frame of a broadcast a connection gets.
#[derive(Debug, Clone, Copy)]
pub(crate) enum FrameChoice {
    /// No compression negotiated: the plain frame.
    Plain,
    /// Shared-mode compression: the broadcast's compressed frame (made once).
    /// (`threshold` as u32 keeps the choice in 8 bytes of every connection.)
    Shared { threshold: u32 },
    /// A per-connection compressor (context takeover or a smaller window): compressed
    /// for this connection alone.
    PerConnection,
}

/// One protocol's encoding of a broadcast: the message as that protocol sends it, its
/// plain frame, and its shared compressed frame.
#[derive(Debug)]
pub(crate) struct Encoding {
    pub(crate) message: Message,
    pub(crate) plain: Bytes,
    compressed: OnceLock<Option<Bytes>>,
}

impl Encoding {
    fn new(message: Message) -> Self {
        Self {
            plain: Encoder::server().message(&message),
            message,
            compressed: OnceLock::new(),
        }
    }

    /// An encoding sent as `bytes`, unframed (an event stream's event).
    fn unframed(bytes: Bytes) -> Self {
        Self {
            plain: bytes.clone(),
            message: Message::Text(bytes),
            compressed: OnceLock::new(),
        }
    }

    fn payload(&self) -> &[u8] {
        match &self.message {
            Message::Text(p) | Message::Binary(p) => p,
            _ => &[],
        }
    }

    /// The frame for a connection with shared-mode compression: compressed once (by
    /// whichever worker asks first, counting it in its `stats`) when the payload reaches
    /// `threshold`, else plain.
    pub(crate) fn shared_frame(&self, threshold: usize, stats: &WorkerStats) -> &Bytes {
        if self.payload().len() < threshold {
            return &self.plain;
        }
        let compressed = self.compressed.get_or_init(|| {
            let opcode = if matches!(self.message, Message::Text(_)) {
                OpCode::Text
            } else {
                OpCode::Binary
            };
            let frame = stratus_deflate::stateless::compress_message(self.payload())
                .map(|z| Encoder::server().frame(opcode, RSV1, &z));
            if let Some(frame) = &frame {
                stats::add(&stats.deflate_in, self.payload().len() as u64);
                stats::add(&stats.deflate_out, frame.len() as u64);
                stats::add(&stats.compressions, 1);
            }
            frame
        });
        compressed.as_ref().unwrap_or(&self.plain)
    }

    /// The frame a connection taking `choice` gets (`None`: it compresses the message
    /// itself).
    pub(crate) fn frame(&self, choice: FrameChoice, stats: &WorkerStats) -> Option<&Bytes> {
        match choice {
            FrameChoice::Plain => Some(&self.plain),
            FrameChoice::Shared { threshold } => Some(self.shared_frame(threshold as usize, stats)),
            FrameChoice::PerConnection => None,
        }
    }
}

/// A publication on `topic`, and its encodings.
#[derive(Debug)]
pub(crate) struct Broadcast {
    pub(crate) topic: Arc<str>,
    pub(crate) publication: Publication,
    /// When it was published (for the publish-to-send latency).
    pub(crate) published: Instant,
    /// Its offset in the topic's history (where one is kept).
    pub(crate) offset: Option<Offset>,
    raw: Encoding,
    v1: OnceLock<Encoding>,
    /// Raw mode's offset notice, which precedes the message on subscriptions with
    /// offsets, framed once.
    offset_frame: OnceLock<Bytes>,
    /// Its Server-Sent Events event (unframed), made the first time an event-stream
    /// subscriber needs it.
    sse: OnceLock<Encoding>,
}

impl Broadcast {
    /// `publication` on `topic`, at `offset` in its history, published at `published`;
    /// framed for raw mode at once.
    pub(crate) fn new(
        topic: Arc<str>,
        publication: Publication,
        offset: Option<Offset>,
        published: Instant,
    ) -> Self {
        Self {
            raw: Encoding::new(publication.message()),
            topic,
            publication,
            published,
            offset,
            v1: OnceLock::new(),
            offset_frame: OnceLock::new(),
            sse: OnceLock::new(),
        }
    }

    /// What it holds while it waits for a worker: the payload, its raw frame and itself
    /// (a v1 encoding, made later by a worker, about doubles it).
    pub(crate) fn cost(&self) -> usize {
        size_of::<Self>() + self.publication.payload.len() + self.raw.plain.len()
    }

    /// Its encoding for `protocol` (v1's made on first use).
    pub(crate) fn encoding(&self, protocol: Protocol) -> &Encoding {
        match protocol {
            Protocol::Raw => &self.raw,
            Protocol::V1 => self.v1.get_or_init(|| {
                Encoding::new(v1::publication(&self.topic, &self.publication, self.offset))
            }),
            Protocol::Sse => self.sse.get_or_init(|| {
                Encoding::unframed(sse::publication(
                    &self.topic,
                    &self.publication,
                    self.offset,
                ))
            }),
        }
    }

    /// Bytes of its raw frame (what byte budgets count it as).
    pub(crate) fn len(&self) -> usize {
        self.raw.plain.len()
    }

    /// Raw mode's framed offset notice for it, if it has an offset.
    pub(crate) fn offset_frame(&self) -> Option<&Bytes> {
        let offset = self.offset?;
        Some(self.offset_frame.get_or_init(|| {
            let notice = Message::text(raw::offset_notice(&self.topic, offset));
            Encoder::server().message(&notice)
        }))
    }

    /// A text publication on `topic` (for tests).
    #[cfg(test)]
    pub(crate) fn text(topic: &str, text: &str, offset: Option<Offset>) -> Arc<Self> {
        Arc::new(Self::new(
            Arc::from(topic),
            Publication::text(text),
            offset,
            Instant::now(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_protocol_is_encoded_once_and_shared() {
        let broadcast = Broadcast::text("t", "hello", None);
        let first = broadcast.encoding(Protocol::V1).plain.clone();
        let again = broadcast.encoding(Protocol::V1).plain.clone();
        assert_eq!(first.as_ptr(), again.as_ptr(), "the same allocation");
        assert_ne!(first, broadcast.encoding(Protocol::Raw).plain);
        assert_eq!(
            broadcast.encoding(Protocol::Raw).message,
            Message::text("hello"),
            "raw mode sends the message as published"
        );
        let event = broadcast.encoding(Protocol::Sse).plain.clone();
        assert_eq!(
            &event[..],
            b"event: t\ndata: hello\n\n",
            "an event, unframed"
        );
        let again = broadcast.encoding(Protocol::Sse).plain.clone();
        assert_eq!(event.as_ptr(), again.as_ptr(), "made once");
    }
}
