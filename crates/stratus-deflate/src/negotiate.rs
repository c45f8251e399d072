//! Negotiation (RFC 7692 §7.1): the server picks the first offer it can honour and
//! answers with the parameters it will hold to; the client checks that answer.

use stratus_proto::Role;
use stratus_proto::extensions;

use stratus_proto::MessageCompression;

use crate::EXTENSION_NAME;
use crate::compact::{StatelessDeflate, StatelessInflate};
use crate::engine::{Engine, PerMessageDeflate};
use crate::params::{DeflateParams, ParamError, WindowBits};
use crate::stateless::Stateless;
use crate::zlib::Zlib;

/// How a server compresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No context takeover in either direction, the stateless engine on both: nothing kept per
    /// connection between messages, and a broadcast is compressed once for everyone.
    /// A client that requires a smaller server window than the shared frames use is
    /// answered as it asked, and the server sends it every message uncompressed (see
    /// [`Negotiated::inflate_only`]): no client can opt itself into a compressor of its
    /// own.
    Shared,
    /// Context takeover wherever the client allows it (better ratios, state kept per
    /// connection): the streaming engine.
    Dedicated,
}

/// Server-side compression settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateConfig {
    /// How to compress.
    pub mode: Mode,
    /// Messages shorter than this many bytes are sent uncompressed.
    pub threshold: usize,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Shared,
            threshold: 64,
        }
    }
}

/// What was agreed on a connection, from one side's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// The parameters of the server's response.
    pub params: DeflateParams,
    /// Which side this is.
    pub role: Role,
}

impl Negotiated {
    /// The Sec-WebSocket-Extensions value the server answers with.
    pub fn response(&self) -> String {
        self.params.to_string()
    }

    /// What this side sends: whether the agreed parameters tell the peer we reset our
    /// context after every message, whether we actually do, and the window bits.
    fn outgoing(&self) -> (bool, bool, u8) {
        let p = &self.params;
        match self.role {
            Role::Server => {
                let reset = p.server_no_context_takeover;
                (reset, reset, p.server_max_window_bits.bits().unwrap_or(15))
            }
            // The client offered client_no_context_takeover, so it never keeps context;
            // but unless the answer says so the server may keep its inflater running.
            Role::Client => (
                p.client_no_context_takeover,
                true,
                p.client_max_window_bits.bits().unwrap_or(15),
            ),
        }
    }

    /// Whether the peer resets its context after every message.
    fn peer_resets(&self) -> bool {
        match self.role {
            Role::Server => self.params.client_no_context_takeover,
            Role::Client => self.params.server_no_context_takeover,
        }
    }

    /// Whether this side's compressed messages are the context-free, full-window output
    /// of the stateless engine, identical for every connection that agreed the same: a broadcast
    /// may then be compressed once and the frame shared.
    pub fn shares_frames(&self) -> bool {
        let (announced, _, bits) = self.outgoing();
        announced && bits == 15
    }

    /// The inflater for what the peer sends: the stateless engine where the peer
    /// resets its context after every message; the streaming engine with context
    /// elsewhere.
    fn inflater(&self) -> Box<dyn Engine> {
        if self.peer_resets() {
            Box::new(Stateless)
        } else {
            Box::new(Zlib::new(15, false))
        }
    }

    /// The connection's compression for a side that sends every message uncompressed
    /// (RFC 7692 lets any message go without RSV1) and only inflates what it receives.
    /// A shared-mode server gives this to a connection that cannot take the shared
    /// frames, instead of a per-connection compressor (about 130 KiB of zlib state for
    /// the connection's life, and a compression per broadcast per connection).
    pub fn inflate_only(&self) -> PerMessageDeflate {
        PerMessageDeflate {
            outgoing: None,
            incoming: self.inflater(),
            threshold: usize::MAX,
        }
    }

    /// The connection's compression. Outgoing: the stateless engine where the peer knows
    /// we keep no context and the full window is allowed; the streaming engine elsewhere;
    /// nothing for an 8-bit window. Incoming: the stateless engine where the peer resets; the
    /// streaming engine with context elsewhere.
    pub fn compression(&self, threshold: usize) -> PerMessageDeflate {
        let (announced, resets, bits) = self.outgoing();
        let outgoing: Option<Box<dyn Engine>> = match bits {
            8 => None,
            15 if announced => Some(Box::new(Stateless)),
            bits => Some(Box::new(Zlib::new(bits, resets))),
        };
        let incoming = self.inflater();
        PerMessageDeflate {
            outgoing,
            incoming,
            threshold,
        }
    }

    /// [`inflate_only`](Self::inflate_only), boxed for a session, in its compact form where
    /// the peer resets its context: [`StatelessInflate`], a zero-sized type that costs the
    /// connection no heap (a `PerMessageDeflate` costs 40 bytes: two engine boxes and a
    /// threshold). The same inflation either way.
    pub fn boxed_inflate_only(&self) -> Box<dyn MessageCompression> {
        if self.peer_resets() {
            Box::new(StatelessInflate)
        } else {
            Box::new(self.inflate_only())
        }
    }

    /// [`compression`](Self::compression), boxed for a session, in a compact form where
    /// both directions use the stateless engine (the server's shared mode, and a peer that
    /// resets its context): [`StatelessDeflate`], which holds only the threshold (4 bytes
    /// of heap per connection instead of a `PerMessageDeflate`'s 40), or
    /// [`StatelessInflate`] (none) where this side may not compress. Every other case,
    /// and a threshold past `u32::MAX`, gets the `PerMessageDeflate`. The messages
    /// sent and the inflation are the same either way.
    pub fn boxed_compression(&self, threshold: usize) -> Box<dyn MessageCompression> {
        if !self.peer_resets() {
            return Box::new(self.compression(threshold));
        }
        // As `compression` picks the outgoing engine.
        match self.outgoing() {
            (_, _, 8) => Box::new(StatelessInflate),
            (true, _, 15) => match u32::try_from(threshold) {
                Ok(threshold) => Box::new(StatelessDeflate::new(threshold)),
                Err(_) => Box::new(self.compression(threshold)),
            },
            _ => Box::new(self.compression(threshold)),
        }
    }
}

/// Server side: the first permessage-deflate offer in `header_values` (every
/// Sec-WebSocket-Extensions value, in order) that is valid and can be honoured, or `None`.
/// Offers with invalid parameters are declined, as are offers requiring an 8-bit server
/// window, which zlib cannot produce.
pub fn negotiate(header_values: &[String], config: &DeflateConfig) -> Option<Negotiated> {
    extensions::parse(header_values)
        .into_iter()
        .flatten()
        .filter(|ext| ext.name.eq_ignore_ascii_case(EXTENSION_NAME))
        .filter_map(|ext| DeflateParams::parse(&ext, true).ok())
        .find(|offer| offer.server_max_window_bits != WindowBits::Bits(8))
        .map(|offer| {
            let params = match config.mode {
                Mode::Shared => DeflateParams {
                    server_no_context_takeover: true,
                    client_no_context_takeover: true,
                    server_max_window_bits: offer.server_max_window_bits,
                    client_max_window_bits: WindowBits::Absent,
                },
                Mode::Dedicated => DeflateParams {
                    client_max_window_bits: WindowBits::Absent,
                    ..offer
                },
            };
            Negotiated {
                params,
                role: Role::Server,
            }
        })
}

/// The client's offer: it never keeps compression context (so the server may inflate
/// statelessly), and lets the server choose the client's window.
pub fn client_offer() -> String {
    format!("{EXTENSION_NAME}; client_no_context_takeover; client_max_window_bits")
}

/// Why a server's answer to [`client_offer`] is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientNegotiationError {
    /// An extension the client did not offer, or more than one.
    #[error("server chose an extension that was not offered")]
    Unsolicited,
    /// permessage-deflate with invalid parameters.
    #[error("invalid permessage-deflate response: {0}")]
    Params(#[from] ParamError),
}

/// Client side: checks the Sec-WebSocket-Extensions values of the 101 against
/// [`client_offer`]. `Ok(None)`: the server declined compression.
pub fn accept_response(
    header_values: &[String],
) -> Result<Option<Negotiated>, ClientNegotiationError> {
    let mut chosen = extensions::parse(header_values).into_iter();
    let Some(first) = chosen.next() else {
        return Ok(None);
    };
    if chosen.next().is_some() {
        return Err(ClientNegotiationError::Unsolicited);
    }
    let ext = first.map_err(|_| ClientNegotiationError::Unsolicited)?;
    if !ext.name.eq_ignore_ascii_case(EXTENSION_NAME) {
        return Err(ClientNegotiationError::Unsolicited);
    }
    Ok(Some(Negotiated {
        params: DeflateParams::parse(&ext, false)?,
        role: Role::Client,
    }))
}

#[cfg(test)]
mod tests;
