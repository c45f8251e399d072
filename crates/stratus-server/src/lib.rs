//! Stratus server: an io_uring WebSocket server, thread per core, on the sans-IO
//! `stratus-proto` core.
//!
//! [`Server::start`] binds one SO_REUSEPORT listener per worker thread; each worker runs
//! its own tokio-uring runtime and owns its connections outright, so nothing is shared or
//! locked per connection. The binary `stratus` wraps it in a command line.
//!
//! Not here: protocol rules (in `stratus-proto`), and tokio-uring calls (in `stratus-uring`).

mod config;
mod connection;
mod send_queue;
mod server;

pub use config::Config;
pub use server::Server;
