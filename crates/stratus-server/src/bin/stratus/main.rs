//! `stratus`: the command line of the Stratus WebSocket push server.
//!
//! `stratus` (or `stratus serve`) runs the push server with an embedded default that needs
//! nothing else; `stratus echo` runs the echo server Autobahn tests; `stratus publish`
//! posts a message to a running server. SIGTERM or SIGINT drains and exits 0.

mod publish;
mod settings;

use clap::{Parser, Subcommand};
use signal_hook::consts::{SIGINT, SIGTERM};
use stratus_server::{Config, Server};

use crate::settings::Settings;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "stratus", version, about = "io_uring WebSocket push server")]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: Settings,
}

#[derive(Subcommand)]
enum Command {
    /// Run the push server (the default command).
    Serve(Settings),
    /// Echo every text and binary message back (Autobahn's testee).
    Echo(Settings),
    /// Publish a message through a running server's admin API.
    Publish(publish::PublishArgs),
    /// Configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate FILE and print the effective configuration (file over defaults) as TOML;
    /// exit 1 with the reason if it is not valid.
    Check {
        /// The TOML file.
        file: std::path::PathBuf,
        /// Check against the defaults of `stratus echo` instead of `stratus serve`.
        #[arg(long)]
        echo: bool,
    },
}

/// `stratus config check`.
fn check(file: std::path::PathBuf, echo: bool) -> anyhow::Result<()> {
    let base = if echo {
        Config::echo()
    } else {
        Config::default()
    };
    let config = Settings::from_file(file).resolve()?.apply(base)?;
    config.validate().map_err(anyhow::Error::msg)?;
    if config.admin_token.is_some() {
        println!("# admin-token is set (not shown)");
    }
    print!("{}", toml::to_string(&Settings::of(&config))?);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // mimalloc asks for transparent huge pages: every 2 MiB region its heaps touch would
    // become resident whole, which costs more than the connections themselves (an idle
    // connection needs under 1 KiB). Off for the process, as Redis advises too.
    if let Err(err) = rustix::thread::disable_transparent_huge_pages(true) {
        eprintln!("stratus: could not turn transparent huge pages off: {err}");
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let config = match cli.command {
        None => cli.serve.resolve()?.apply(Config::default())?,
        Some(Command::Serve(settings)) => settings.resolve()?.apply(Config::default())?,
        Some(Command::Echo(settings)) => settings.resolve()?.apply(Config::echo())?,
        Some(Command::Publish(args)) => return publish::run(args),
        Some(Command::Config(ConfigCommand::Check { file, echo })) => return check(file, echo),
    };
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    let server = Server::start(config)?;
    if let Some(signal) = signals.forever().next() {
        tracing::info!(signal, "draining");
    }
    server.stop()?;
    tracing::info!("stopped");
    Ok(())
}
