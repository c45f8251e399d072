//! Sans-IO RFC 6455 (WebSocket) protocol core shared by the Stratus server and client.
//!
//! Bytes go in and bytes come out: [`handshake`] parses and builds the opening handshake,
//! [`Session`] turns a read buffer into [`Message`]s and queues the frames the protocol
//! obliges us to send (pongs, the close echo). Nothing here touches a socket, a clock or
//! an async runtime, so every protocol rule is testable without a network and is fixed
//! in one place for both roles.
//!
//! Deliberately not here: I/O, timers (the driver owns timeouts), randomness (the client
//! passes a seed), compression (the `stratus-deflate` crate plugs in through
//! [`MessageCompression`]).
//!
//! The only `unsafe` code lives in [`mask`], each block with a `SAFETY` comment and tests
//! against a byte-at-a-time reference.

#![deny(unsafe_code)]

pub mod close;
pub mod codec;
pub mod compression;
pub mod error;
pub mod extensions;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod message;
pub mod session;
#[cfg(any(test, feature = "test-support"))]
pub mod test_support;
pub mod utf8;

pub use close::{CloseCode, CloseFrame};
pub use codec::{Decoder, Encoder, Limits};
pub use compression::{DecompressError, MessageCompression};
pub use error::ProtocolError;
pub use frame::{FrameHeader, OpCode};
pub use message::Message;
pub use session::Session;

/// Which end of the connection this endpoint is: it decides masking in both directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Accepts connections: requires masked frames, sends unmasked ones.
    Server,
    /// Opens connections: rejects masked frames, masks every frame it sends.
    Client,
}
