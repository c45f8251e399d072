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
//! Not here: protocol rules (in `stratus-proto`), compression (in `stratus-deflate`), and
//! io_uring calls (in `stratus-uring`).

mod admin;
mod auth;
mod broadcast;
mod broker;
mod commands;
mod config;
mod connection;
mod history;
mod hub;
mod metrics;
mod pending_replies;
mod rate;
mod server;
mod status_page;
mod tls;
mod tls_conn;
pub mod topic;
mod unupgraded;
mod upgrade;
mod worker;

pub use auth::{Auth, AuthAlgorithm};
pub use config::{App, Config, SlowConsumer};
pub use hub::{Delivery, PublishError, Reach, Stats};
pub use server::Server;
pub use tls::{TlsError, TlsFiles};
