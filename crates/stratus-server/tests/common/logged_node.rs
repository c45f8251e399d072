//! `stratus` as an operator runs it, for the broker credential and TLS tests
//! (`redis_tls.rs`, `nats.rs`): `serve` nodes logging into a file a test reads (why a node
//! is not ready; what it never shows, a password), `config check`, and the check that a
//! secret is withheld.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::node::Node;
use crate::common::spawn_server_with;

/// A node of the shared kind ([`Node`]) started with environment variables and logging
/// into a file, not waited for beyond its listener (so it may start not ready).
pub struct LoggedNode {
    node: Node,
    log: PathBuf,
}

impl std::ops::Deref for LoggedNode {
    type Target = Node;

    fn deref(&self) -> &Node {
        &self.node
    }
}

impl LoggedNode {
    /// A node with the broker at `url`, these environment variables (and no broker
    /// password from the test's own environment) and flags, logging into `log`.
    pub fn start(url: &str, env: &[(&str, &str)], extra: &[&str], log: PathBuf) -> Self {
        let serve = [
            "serve",
            "--workers",
            "1",
            "--log-level",
            "info",
            "--broker",
            url,
        ];
        let (child, ws, admin) = spawn_server_with(
            &[&serve[..], extra].concat(),
            |command| {
                command
                    .env_remove("STRATUS_BROKER_PASSWORD")
                    .envs(env.iter().copied())
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(&log).unwrap());
            },
            || {
                let last = std::fs::read_to_string(&log).unwrap_or_default();
                format!("its last log:\n{last}")
            },
        );
        Self {
            node: Node { child, ws, admin },
            log,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }

    /// The first log line that contains `needle`, waiting for it.
    pub fn wait_log(&self, needle: &str) -> String {
        self.wait_log_matching(&format!("{needle:?}"), |l| l.contains(needle))
    }

    /// The first log line that `matches` (saying `what`), waiting for it.
    pub fn wait_log_matching(&self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(line) = self.log().lines().find(|l| matches(l)) {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no line about {what} in the log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `/readyz` answers 200 (`ready`) or 503 with the broker down; a failure
    /// shows the node's log.
    pub fn wait_ready(&self, ready: bool) {
        self.node.wait_ready_or(ready, || self.log());
    }

    /// Asserts that it is still running (a failure to connect is not a crash).
    pub fn assert_running(&mut self) {
        let log = self.log();
        assert!(self.node.child.try_wait().unwrap().is_none(), "{log}");
    }
}

/// Asserts that no secret in `secrets` is in `text` (named `what`).
pub fn assert_withheld(what: &str, text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(!text.contains(secret), "{what} shows {secret:?}:\n{text}");
    }
}

/// `stratus config check FILE` with these environment variables (and no broker password
/// from the test's own environment).
pub fn config_check(file: &Path, env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stratus"))
        .args(["config", "check"])
        .arg(file)
        .env_remove("STRATUS_BROKER_PASSWORD")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}
