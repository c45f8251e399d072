//! A `nats-server` (Debian's package) with JetStream on a loopback port, for the tests of
//! the NATS broker: plain or TLS, with a user and password or a token if asked; its
//! JetStream store and its log in a directory of its own, removed when it is dropped.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::process;

/// A `nats-server -js` on a loopback port, killed (and its store removed) when dropped.
pub struct Nats {
    child: Child,
    port: u16,
    setup: NatsSetup,
    /// Its JetStream store (`-sd`) and its log (`nats.log`).
    dir: PathBuf,
}

/// What a test nats-server has beyond a plain port: TLS, credentials.
#[derive(Debug, Clone, Default)]
pub struct NatsSetup {
    /// TLS on its port (`--tls`: it asks clients for no certificate), with these files.
    pub tls: Option<NatsTls>,
    /// What a client must sign in with.
    pub auth: Option<NatsAuth>,
}

/// The PEM files of a TLS nats-server.
#[derive(Debug, Clone)]
pub struct NatsTls {
    /// Its certificate chain (for 127.0.0.1), leaf first.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// The credentials a nats-server requires.
#[derive(Debug, Clone)]
pub enum NatsAuth {
    /// `--user` and `--pass`.
    User {
        /// The user name.
        user: String,
        /// Its password.
        password: String,
    },
    /// `--auth`: a token, with no user name.
    Token(String),
}

/// The nats-server binary: on the PATH, or where Debian's package puts it (`/usr/sbin`,
/// which a user's PATH may lack).
fn binary() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("nats-server"))
            .find(|file| file.is_file())
    });
    on_path
        .or_else(|| Some(PathBuf::from("/usr/sbin/nats-server")).filter(|f| f.is_file()))
        .unwrap_or_else(|| {
            panic!(
                "nats-server is not on the PATH nor in /usr/sbin (install it: \
                 scripts/install-nats.sh)"
            )
        })
}

impl Nats {
    /// A nats-server on a free port (another, if a concurrent test took that one).
    pub fn start() -> Self {
        Self::start_with(NatsSetup::default())
    }

    /// A nats-server with `setup` (TLS, credentials) on a free port.
    pub fn start_with(setup: NatsSetup) -> Self {
        process::start_on_a_free_port("nats-server", |port| Self::try_start(port, &setup))
    }

    /// A plain nats-server (no TLS, no credentials) on `port` (one stopped earlier, started
    /// again), with an empty JetStream store.
    pub fn start_on(port: u16) -> Self {
        Self::start_on_with(port, NatsSetup::default())
    }

    /// A nats-server with `setup` on `port`, with an empty JetStream store. The port may be
    /// briefly taken still (a connection of the stopped server's): it tries again for up
    /// to 10 s before giving up.
    pub fn start_on_with(port: u16, setup: NatsSetup) -> Self {
        process::start_again("nats-server", port, || Self::try_start(port, &setup))
    }

    /// `None` if the server that answers on `port` is not the one started here (or it
    /// exited: its port taken).
    fn try_start(port: u16, setup: &NatsSetup) -> Option<Self> {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        // Its name, in the INFO line it greets each client with: how a test knows that the
        // server answering on the port is this one.
        let name = format!("stratus-testkit-{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(&name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut command = Command::new(binary());
        command
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-n", &name])
            .arg("-js")
            .arg("-sd")
            .arg(&dir)
            .arg("-l")
            .arg(dir.join("nats.log"));
        if let Some(tls) = &setup.tls {
            command
                .arg("--tls")
                .arg("--tlscert")
                .arg(&tls.cert)
                .arg("--tlskey")
                .arg(&tls.key);
        }
        match &setup.auth {
            None => {}
            Some(NatsAuth::User { user, password }) => {
                command.args(["--user", user, "--pass", password]);
            }
            Some(NatsAuth::Token(token)) => {
                command.args(["--auth", token]);
            }
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                let _ = std::fs::remove_dir_all(&dir);
                panic!("cannot start nats-server (install it: scripts/install-nats.sh): {e}")
            });
        let mut nats = Self {
            child,
            port,
            setup: setup.clone(),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(info) = nats.info() {
                // Dropped (killed, its directory removed) if another server answers.
                let ours = info.contains(&format!("\"server_name\":\"{name}\""));
                if ours {
                    assert!(
                        info.contains("\"jetstream\":true"),
                        "nats-server started without JetStream: {info}"
                    );
                }
                return ours.then_some(nats);
            }
            if nats.child.try_wait().unwrap().is_some() {
                return None;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not start on {port} within 10 s; its log:\n{}",
                nats.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The `INFO {...}` line the server on its port greets a new client with (sent in
    /// plain text, TLS or not), or `None` if nothing answers there (yet).
    pub fn info(&self) -> Option<String> {
        let stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).ok()?;
        line.starts_with("INFO ").then_some(line)
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its URL (`tls://` with TLS, else `nats://`), without credentials.
    pub fn url(&self) -> String {
        let scheme = if self.setup.tls.is_some() {
            "tls"
        } else {
            "nats"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// What it has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("nats.log")
    }

    /// Its JetStream store directory.
    pub fn store_dir(&self) -> &Path {
        &self.dir
    }

    /// Sends it the signal `name` (`STOP` freezes it, `CONT` thaws it).
    pub fn signal(&self, name: &str) {
        process::signal(&self.child, name);
    }

    /// Stops it (SIGKILL) and removes its store; returns its port (to start one on it
    /// again).
    pub fn stop(mut self) -> u16 {
        process::end(&mut self.child);
        self.port
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        process::end(&mut self.child);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// Signs in on a plain connection with `fields` (more of the CONNECT line's JSON, each
    /// after a comma) and pings: what the server answers (`PONG`, or `-ERR ...`).
    fn sign_in(nats: &Nats, fields: &str) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", nats.port())).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut info = String::new();
        reader.read_line(&mut info).unwrap();
        assert!(info.starts_with("INFO "), "{info}");
        write!(stream, "CONNECT {{\"verbose\":false{fields}}}\r\nPING\r\n").unwrap();
        let mut answer = String::new();
        reader.read_line(&mut answer).unwrap();
        answer.trim_end().to_owned()
    }

    #[test]
    fn a_nats_server_starts_answers_restarts_on_its_port_and_is_cleaned_up() {
        let nats = Nats::start();
        assert_eq!(nats.url(), format!("nats://127.0.0.1:{}", nats.port()));
        let info = nats.info().unwrap();
        assert!(info.contains("\"jetstream\":true"), "{info}");
        assert_eq!(sign_in(&nats, ""), "PONG");
        let dir = nats.store_dir().to_owned();
        assert!(dir.is_dir());
        let port = nats.stop();
        assert!(!dir.exists(), "the store is removed");
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "stopped");

        let again = Nats::start_on(port);
        assert_eq!(again.port(), port);
        assert_eq!(sign_in(&again, ""), "PONG");
        // A second one on a port taken: another port.
        let other = Nats::start();
        assert_ne!(other.port(), again.port());
    }

    #[test]
    fn a_nats_server_with_credentials_refuses_others() {
        let user = Nats::start_with(NatsSetup {
            tls: None,
            auth: Some(NatsAuth::User {
                user: "stratus".into(),
                password: "pw:@/#%".into(),
            }),
        });
        let info = user.info().unwrap();
        assert!(info.contains("\"auth_required\":true"), "{info}");
        let good = r#","user":"stratus","pass":"pw:@/#%""#;
        assert_eq!(sign_in(&user, good), "PONG");
        let bad = sign_in(&user, r#","user":"stratus","pass":"nope""#);
        assert!(bad.starts_with("-ERR 'Authorization Violation'"), "{bad}");

        let token = Nats::start_with(NatsSetup {
            tls: None,
            auth: Some(NatsAuth::Token("t0ken".into())),
        });
        assert_eq!(sign_in(&token, r#","auth_token":"t0ken""#), "PONG");
        let bad = sign_in(&token, "");
        assert!(bad.starts_with("-ERR 'Authorization Violation'"), "{bad}");
    }
}
