//! Server settings and their defaults.

use std::net::SocketAddr;
use std::time::Duration;

use stratus_deflate::DeflateConfig;
use stratus_proto::Limits;
use stratus_proto::handshake::HandshakeLimits;

/// Everything a server needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// WebSocket listen address.
    pub listen: SocketAddr,
    /// Worker threads, each with its own io_uring runtime and SO_REUSEPORT listener.
    pub workers: usize,
    /// Frame, message and fragment limits for received messages.
    pub limits: Limits,
    /// Request head limits for the opening handshake.
    pub handshake_limits: HandshakeLimits,
    /// How long a client has to complete the opening handshake.
    pub handshake_timeout: Duration,
    /// How long the server waits for the peer's Close (or FIN) after sending its Close.
    pub close_timeout: Duration,
    /// Bytes queued for a connection above which the server stops reading from it.
    pub max_send_queue: usize,
    /// permessage-deflate: `None` declines every offer.
    pub deflate: Option<DeflateConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9001)),
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            limits: Limits::default(),
            handshake_limits: HandshakeLimits::default(),
            handshake_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(3),
            max_send_queue: 1 << 20,
            deflate: Some(DeflateConfig::default()),
        }
    }
}
