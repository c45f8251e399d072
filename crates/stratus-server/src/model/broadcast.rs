//! A published message, framed once: the plain frame, and the shared compressed frame
//! made the first time a subscriber that can take it needs it; and which of them a
//! connection takes ([`FrameChoice`]). Both are `Bytes`: every
//! subscriber's queue gets a clone of the same allocation, never a copy.

use std::sync::OnceLock;
use std::time::Instant;

use bytes::Bytes;
use stratus_proto::frame::RSV1;
use stratus_proto::{Encoder, Message, OpCode};

use crate::model::commands::offset_notice;
use crate::model::offset::Offset;
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

/// A published message and its frames.
#[derive(Debug)]
pub(crate) struct Broadcast {
    pub(crate) message: Message,
    pub(crate) plain: Bytes,
    compressed: OnceLock<Option<Bytes>>,
    /// When it was published (for the publish-to-send latency).
    pub(crate) published: Instant,
    /// Its offset in the topic's history (with a broker keeping one).
    pub(crate) offset: Option<Offset>,
    /// The offset notice that precedes it on subscriptions with offsets, framed once.
    offset_frame: OnceLock<Bytes>,
}

impl Broadcast {
    /// Frames `message` (a Text or Binary message), published at `published`, once.
    pub(crate) fn new(message: Message, offset: Option<Offset>, published: Instant) -> Self {
        let plain = Encoder::server().message(&message);
        Self {
            message,
            plain,
            compressed: OnceLock::new(),
            published,
            offset,
            offset_frame: OnceLock::new(),
        }
    }

    /// What it holds while it waits for a worker: the message, its frame and itself.
    pub(crate) fn cost(&self) -> usize {
        size_of::<Self>() + self.message.payload_len() + self.plain.len()
    }

    /// The framed offset notice for this message on `topic`, if it has an offset.
    pub(crate) fn offset_frame(&self, topic: &str) -> Option<&Bytes> {
        let offset = self.offset?;
        Some(self.offset_frame.get_or_init(|| {
            let notice = Message::text(offset_notice(topic, offset));
            Encoder::server().message(&notice)
        }))
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
            let frame = stratus_deflate::libdeflate::compress_message(self.payload())
                .map(|z| Encoder::server().frame(opcode, RSV1, &z));
            if let Some(frame) = &frame {
                stats::add(&stats.deflate_in, self.payload().len() as u64);
                stats::add(&stats.deflate_out, frame.len() as u64);
            }
            frame
        });
        compressed.as_ref().unwrap_or(&self.plain)
    }
}
