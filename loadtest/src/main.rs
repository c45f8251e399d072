//! `stratus-load`: load generators for Stratus and any server speaking WebSocket (and,
//! for fanout, Stratus's publish API). Every scenario is bounded in time, shows a live
//! progress bar, prints a summary and can write a JSON result (`--out`).
//!
//! Traffic goes only where the URL points; run it against loopback.

mod broadcast_peer;
mod churn;
mod compare;
mod connections;
mod driver;
mod echo;
mod fanout;
mod hostile;
mod peers;
mod pin;
mod plot;
mod progress;
mod report;
mod sse;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "stratus-load",
    version,
    about = "Load generators for WebSocket servers"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Round trips against an echo server.
    Echo(echo::EchoArgs),
    /// Subscribers on one topic or several (`--topics`), publishers posting to them.
    Fanout(fanout::FanoutArgs),
    /// Honest subscribers beside hostile clients: every message in order, latency, RSS.
    Hostile(hostile::HostileArgs),
    /// Idle connections opened at a bounded rate; server memory per connection.
    Connections(connections::ConnectionsArgs),
    /// Subscribers held on a topic while connections come and go; server CPU per churned
    /// connection.
    Churn(churn::ChurnArgs),
    /// The echo scenario against several servers, A B A B, with ratios.
    Compare(compare::CompareArgs),
    /// Run a peer server to compare against (tokio-tungstenite, fastwebsockets, raw TCP).
    Peer(peers::PeerArgs),
    /// Render `compare` results as SVG charts.
    Plot(plot::PlotArgs),
}

/// Options every scenario takes.
#[derive(Args, Debug, Clone)]
struct Common {
    /// Write the result as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Pin the load generator to this CPU.
    #[arg(long)]
    client_cpu: Option<usize>,
    /// Pin the server (`--server-pid`) to this CPU.
    #[arg(long)]
    server_cpu: Option<usize>,
    /// The server's PID, for `--server-cpu` (and, in `churn` and `fanout`, to read its CPU
    /// time: server CPU per churned connection, per delivery).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Report how busy this CPU (the server's) was while measuring: a server core short
    /// of 100% means the load generator, not the server, set the pace.
    #[arg(long)]
    watch_cpu: Option<usize>,
}

impl Common {
    fn pin(&self) -> anyhow::Result<()> {
        pin::client(self.client_cpu)?;
        pin::server(self.server_cpu, self.server_pid)
    }
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Scenario::Echo(args) => {
            args.common.pin()?;
            echo::run(args)
        }
        Scenario::Fanout(args) => {
            args.common.pin()?;
            fanout::run(args)
        }
        Scenario::Hostile(args) => {
            args.common.pin()?;
            hostile::run(args)
        }
        Scenario::Connections(args) => {
            args.common.pin()?;
            connections::run(args)
        }
        Scenario::Churn(args) => {
            args.common.pin()?;
            churn::run(args)
        }
        Scenario::Compare(args) => {
            args.common().pin()?;
            compare::run(args)
        }
        Scenario::Peer(args) => peers::run(args),
        Scenario::Plot(args) => plot::run(args),
    }
}
