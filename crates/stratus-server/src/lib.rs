//! Stratus server: an io_uring WebSocket push server, thread per core, on the sans-IO
//! `stratus-proto` core.
//!
//! [`Server::start`] binds one SO_REUSEPORT listener per worker thread; each worker drives
//! its own io_uring and owns its connections and its topic table outright.
//! [`Server::publish`] frames a message once and hands the same bytes to every
//! subscriber's send queue, across workers, with no lock per recipient. The binary
//! `stratus` wraps it in a command line (serve, echo, publish). With
//! [`Config::broker`] set, several servers share topics through Redis.
//!
//! The layers, each importing only from those below it (`scripts/layers.py` checks):
//!
//! - `server`: the composition root, the only module that knows every layer.
//! - `admin` (the HTTP API and `/metrics`), `worker` (one thread, one ring: the driver
//!   and its ring-free pub/sub part), `broker` (the Redis session).
//! - `node`: what the workers share (the hub, the publish path, admission caps, the
//!   node's side of the broker).
//! - `connection` (one connection's state, without a ring) and `messages` (what the
//!   threads send each other, and the `Node` trait the broker reaches the node through).
//! - `config`: the settings.
//! - `model`: plain values (topics, ids, offsets, broadcasts, recoveries, commands).
//! - `stats` (the counters) and `tls` (certificate files).
//!
//! Not here: protocol rules (in `stratus-proto`), compression (in `stratus-deflate`), and
//! io_uring calls (in `stratus-uring`).

mod admin;
mod broker;
mod config;
mod connection;
mod events;
mod hooks;
mod messages;
mod model;
mod node;
mod server;
mod stats;
#[cfg(test)]
mod testing;
mod tls;
mod worker;

pub use config::{
    App, BrokerAuth, ClientPublish, Config, Hooks, Namespace, NamespaceOptions, PresenceMode,
    Secret, SlowConsumer, redact,
};
pub use messages::{PublishError, Published, Reach};
pub use model::auth::{Auth, AuthAlgorithm};
pub use model::topic;
pub use node::delivery::Delivery;
pub use server::Server;
pub use stats::Stats;
pub use tls::{TlsError, TlsFiles};
