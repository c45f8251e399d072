//! `stratus`: the command line of the Stratus WebSocket server.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use stratus_deflate::{DeflateConfig, Mode};
use stratus_proto::Limits;
use stratus_server::{Config, Server};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "stratus", version, about = "io_uring WebSocket push server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Echo every text and binary message back to its sender (Autobahn's testee).
    Echo(EchoArgs),
}

#[derive(Args)]
struct EchoArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: SocketAddr,
    /// Worker threads (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    deflate: DeflateArgs,
}

/// permessage-deflate (RFC 7692).
#[derive(Args)]
struct DeflateArgs {
    /// off: decline every offer; shared: no context takeover, libdeflate, a broadcast
    /// compressed once for all; dedicated: context takeover per connection (zlib-rs).
    #[arg(long, value_enum, default_value_t = DeflateMode::Shared)]
    deflate: DeflateMode,
    /// Messages shorter than this many bytes are sent uncompressed.
    #[arg(long, default_value_t = 64)]
    deflate_threshold: usize,
}

#[derive(Clone, Copy, ValueEnum)]
enum DeflateMode {
    Off,
    Shared,
    Dedicated,
}

impl DeflateArgs {
    fn config(&self) -> Option<DeflateConfig> {
        let mode = match self.deflate {
            DeflateMode::Off => return None,
            DeflateMode::Shared => Mode::Shared,
            DeflateMode::Dedicated => Mode::Dedicated,
        };
        Some(DeflateConfig {
            mode,
            threshold: self.deflate_threshold,
        })
    }
}

/// Limits on what a client may send; the defaults let every Autobahn case pass.
#[derive(Args)]
struct LimitArgs {
    /// Largest message in bytes (fragments' header bytes count too).
    #[arg(long, default_value_t = 16 << 20)]
    max_message: usize,
    /// Largest single frame payload in bytes.
    #[arg(long, default_value_t = 16 << 20)]
    max_frame: usize,
    /// Most frames in one message (Autobahn 9.3.1 sends 65,537).
    #[arg(long, default_value_t = 1 << 17)]
    max_fragments: usize,
    /// Seconds a client has to finish the opening handshake.
    #[arg(long, default_value_t = 10.0)]
    handshake_timeout: f64,
    /// Seconds to wait for the peer's Close or FIN after the server's Close.
    #[arg(long, default_value_t = 3.0)]
    close_timeout: f64,
    /// Bytes queued to a client above which the server stops reading from it.
    #[arg(long, default_value_t = 1 << 20)]
    max_send_queue: usize,
}

fn seconds(value: f64, name: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value).map_err(|e| anyhow::anyhow!("--{name}: {e}"))
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let Command::Echo(args) = Cli::parse().command;
    let defaults = Config::default();
    let config = Config {
        listen: args.listen,
        workers: args.workers.unwrap_or(defaults.workers),
        limits: Limits {
            max_frame: args.limits.max_frame,
            max_message: args.limits.max_message,
            max_fragments: args.limits.max_fragments,
        },
        handshake_timeout: seconds(args.limits.handshake_timeout, "handshake-timeout")?,
        close_timeout: seconds(args.limits.close_timeout, "close-timeout")?,
        max_send_queue: args.limits.max_send_queue,
        deflate: args.deflate.config(),
        ..defaults
    };
    Server::start(config)?.join()?;
    Ok(())
}
