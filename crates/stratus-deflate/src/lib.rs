//! RFC 7692 permessage-deflate for Stratus: negotiation on both sides and two engines
//! behind one trait, plugged into `stratus-proto` as a
//! [`MessageCompression`](stratus_proto::MessageCompression).
//!
//! - [`stateless`]: a whole message at a time, no context takeover,
//!   no per-connection state (one zlib-rs compressor, reset per message, and one
//!   libdeflate decompressor per thread). The server's default ("shared" mode): it
//!   answers `server_no_context_takeover; client_no_context_takeover`, so a message
//!   compressed once is valid for every subscriber of a broadcast and nothing is kept per
//!   connection between messages.
//! - [`zlib`] (zlib-rs through flate2): streaming, for context takeover and
//!   LZ77 windows of 9..15 bits: the "dedicated" mode, and whatever a peer requires that
//!   the shared mode cannot honour (a client asking for `server_max_window_bits=9`).
//!
//! A connection's compression is a [`PerMessageDeflate`] (an engine per direction and a
//! threshold) or, where both directions use the stateless engine, one of the
//! [`compact`] forms, which keep only the threshold or nothing:
//! [`Negotiated::boxed_compression`] and [`Negotiated::boxed_inflate_only`] choose.
//!
//! Window bits 8: zlib cannot produce a 256-byte window. A server declines an offer with
//! `server_max_window_bits=8`; a client told `client_max_window_bits=8` accepts and sends
//! every message uncompressed (always legal, compression being per message).
//!
//! Inflation is always bounded: output is capped at the message limit (close 1009) and
//! corrupt or truncated data fails with close 1007.
#![forbid(unsafe_code)]

pub mod compact;
pub mod engine;
pub mod libdeflate;
pub mod negotiate;
pub mod params;
pub mod stateless;
pub mod zlib;

pub use compact::{StatelessDeflate, StatelessInflate};
pub use engine::{Engine, PerMessageDeflate};
pub use negotiate::{
    ClientNegotiationError, DeflateConfig, Mode, Negotiated, accept_response, client_offer,
    negotiate,
};
pub use params::{DeflateParams, ParamError};

/// The extension's registered name.
pub const EXTENSION_NAME: &str = "permessage-deflate";

/// The four bytes RFC 7692 §7.2.1 strips from (and §7.2.2 appends to) every message.
pub const TRAILER: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// An empty stored block with BFINAL=1: appended after the trailer, it closes a message
/// inflated on its own, so a message that stops mid-block fails instead of yielding what
/// it held so far.
pub(crate) const FINAL_EMPTY_BLOCK: [u8; 5] = [0x01, 0x00, 0x00, 0xff, 0xff];

/// An empty message: the header bits of an empty stored block, whose LEN and NLEN are
/// the stripped trailer. Valid with or without context takeover.
pub const EMPTY_MESSAGE: &[u8] = &[0x00];
