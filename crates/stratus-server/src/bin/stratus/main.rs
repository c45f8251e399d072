//! `stratus`: the command line of the Stratus WebSocket push server.
//!
//! `stratus` (or `stratus serve`) runs the push server with an embedded default that needs
//! nothing else; `stratus echo` runs the echo server Autobahn tests; `stratus publish`
//! posts a message to a running server; `stratus config` checks and writes config files.
//! SIGTERM or SIGINT drains and exits 0.

mod packaging;
mod publish;
mod settings;

use clap::{CommandFactory, Parser, Subcommand};
use signal_hook::consts::{SIGINT, SIGTERM};
use stratus_server::{Config, Server};

use tracing_subscriber::EnvFilter;

use crate::settings::{LogFormat, Settings};

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
    /// Print the completion script for SHELL (packaged for bash, zsh and fish).
    #[command(hide = true)]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write the man pages (stratus.1 and one per subcommand) into DIR.
    #[command(hide = true)]
    Man {
        /// The directory.
        dir: std::path::PathBuf,
    },
}

// Parsed once at start: the size of `Check`'s settings costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate FILE and print the effective configuration (flags over environment over
    /// file over defaults) as TOML; exit 1 with the reason if it is not valid.
    Check {
        /// The TOML file.
        file: std::path::PathBuf,
        /// Check against the defaults of `stratus echo` instead of `stratus serve`.
        #[arg(long)]
        echo: bool,
        #[command(flatten)]
        settings: Settings,
    },
    /// Print every option of `stratus serve`, commented out and set to its default: a
    /// config file to start from (the package installs it as /etc/stratus/stratus.toml).
    Default,
}

/// The log filter the settings ask for (else `RUST_LOG`, else info), without the NATS
/// client's own lines unless the filter names them ([`quiet_nats`]).
fn log_filter(settings: &Settings) -> anyhow::Result<EnvFilter> {
    let level = settings
        .log_level
        .clone()
        .or_else(|| std::env::var(EnvFilter::DEFAULT_ENV).ok())
        .filter(|level| !level.trim().is_empty())
        .unwrap_or_else(|| "info".to_owned());
    EnvFilter::try_new(quiet_nats(&level)).map_err(|e| anyhow::anyhow!("log-level {level:?}: {e}"))
}

/// `filter` with the NATS client turned off, unless it says what to do with it: the
/// broker task logs each connection, loss and retry itself, once, and the client's
/// account of the same (an ERROR when the single reconnect it is allowed fails, since the
/// task reconnects) would only mislead.
fn quiet_nats(filter: &str) -> String {
    if filter.contains("async_nats") {
        return filter.to_owned();
    }
    format!("{filter},async_nats=off")
}

/// Starts logging to stderr, as text or JSON lines.
fn init_logs(settings: &Settings) -> anyhow::Result<()> {
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(log_filter(settings)?);
    match settings.log_format {
        Some(LogFormat::Json) => logs.json().init(),
        _ => logs.init(),
    }
    Ok(())
}

/// `stratus config check`.
fn check(settings: Settings, echo: bool) -> anyhow::Result<()> {
    let base = if echo {
        Config::echo()
    } else {
        Config::default()
    };
    let settings = settings.resolve()?;
    log_filter(&settings)?;
    let config = settings.clone().apply(base)?;
    config.validate().map_err(anyhow::Error::msg)?;
    if config.admin_token.is_some() {
        println!("# admin-token is set (not shown)");
    }
    if settings.broker_password.is_some() {
        println!("# broker-password is set (not shown)");
    }
    print!("{}", toml::to_string(&settings.effective(&config))?);
    Ok(())
}

/// Raises the soft limit on open files to the hard limit, and says so: every connection
/// is a descriptor, and the usual soft limit (1,024) would make accepts fail long before
/// the server is busy. The caps on connections and on sockets mid-upgrade are what bound
/// the descriptors a peer can make the server hold.
fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let (Some(soft), Some(hard)) = (limit.current, limit.maximum) else {
        return;
    };
    if soft >= hard {
        tracing::info!(limit = soft, "open-file limit");
        return;
    }
    let raised = rustix::process::Rlimit {
        current: Some(hard),
        maximum: Some(hard),
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::info!(from = soft, to = hard, "raised the open-file limit"),
        Err(err) => {
            tracing::warn!(limit = soft, error = %err, "could not raise the open-file limit")
        }
    }
}

fn main() -> anyhow::Result<()> {
    // mimalloc asks for transparent huge pages: every 2 MiB region its heaps touch would
    // become resident whole, which costs more than the connections themselves (an idle
    // connection needs under 1 KiB). Off for the process, as Redis advises too.
    if let Err(err) = rustix::thread::disable_transparent_huge_pages(true) {
        eprintln!("stratus: could not turn transparent huge pages off: {err}");
    }
    let cli = Cli::parse();
    let (settings, base) = match cli.command {
        None => (cli.serve, Config::default()),
        Some(Command::Serve(settings)) => (settings, Config::default()),
        Some(Command::Echo(settings)) => (settings, Config::echo()),
        Some(Command::Publish(args)) => {
            init_logs(&Settings::default())?;
            return publish::run(args);
        }
        Some(Command::Config(ConfigCommand::Check {
            file,
            echo,
            mut settings,
        })) => {
            settings.config = Some(file);
            return check(settings, echo);
        }
        Some(Command::Config(ConfigCommand::Default)) => {
            print!("{}", packaging::default_config()?);
            return Ok(());
        }
        Some(Command::Completions { shell }) => {
            packaging::completions(shell, Cli::command());
            return Ok(());
        }
        Some(Command::Man { dir }) => return packaging::man(Cli::command(), &dir),
    };
    let settings = settings.resolve()?;
    init_logs(&settings)?;
    raise_fd_limit();
    let config = settings.apply(base)?;
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    let server = Server::start(config)?;
    if let Some(signal) = signals.forever().next() {
        tracing::info!(signal, "draining");
    }
    server.stop()?;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nats_clients_own_lines_are_off_unless_the_filter_names_them() {
        assert_eq!(quiet_nats("warn"), "warn,async_nats=off");
        assert_eq!(
            quiet_nats("info,stratus=debug"),
            "info,stratus=debug,async_nats=off"
        );
        assert_eq!(quiet_nats("info,async_nats=debug"), "info,async_nats=debug");
        assert!(EnvFilter::try_new(quiet_nats("warn")).is_ok());
    }
}
