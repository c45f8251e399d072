//! Test support for Stratus: the outside services its tests need, real and local. Each
//! test starts its own on a free loopback port, fails (with what to install) if it cannot,
//! and the service is stopped when the handle is dropped.
//!
//! Used by the unit tests of `stratus-server` (the broker task against a real Redis) and
//! by the integration and load tests, so that each service is started one way.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback address (the port may be taken again by the time it is used: callers
/// that bind it retry).
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A `redis-server` on a loopback port, killed when dropped.
pub struct Redis {
    child: Child,
    port: u16,
    setup: RedisSetup,
}

/// What a test Redis has beyond a plain port: TLS, ACL users.
#[derive(Debug, Clone, Default)]
pub struct RedisSetup {
    /// TLS only (its port speaks nothing else), with these files.
    pub tls: Option<RedisTls>,
    /// ACL users, each the words of a `user` directive after `user` (`["stratus", "on",
    /// ">secret", "~stratus:*", "+@all"]`). With any, Redis's `default` user is turned off
    /// and the testkit signs in as a user of its own (`testkit`, every right).
    pub users: Vec<Vec<String>>,
}

/// The PEM files of a TLS Redis. It asks clients for no certificate
/// (`tls-auth-clients no`); `ca` is what Redis would check them against, and what the
/// testkit trusts Redis's certificate with.
#[derive(Debug, Clone)]
pub struct RedisTls {
    /// Redis's certificate chain (for 127.0.0.1), leaf first.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The CA certificate that signed it.
    pub ca: PathBuf,
}

/// The testkit's own ACL user's password, when `RedisSetup::users` turns `default` off.
const TESTKIT_PASSWORD: &str = "testkit-only";

impl Redis {
    /// A redis-server on a free port (another, if a concurrent test took that one).
    pub fn start() -> Self {
        Self::start_with(RedisSetup::default())
    }

    /// A redis-server with `setup` (TLS, users) on a free port.
    pub fn start_with(setup: RedisSetup) -> Self {
        (0..5)
            .find_map(|_| Self::try_start(free_addr().port(), &setup))
            .expect("redis-server did not start on any of 5 free ports")
    }

    /// A plain redis-server (no TLS, no users) on `port` (one stopped earlier, started
    /// again; a TLS or ACL one comes back plain).
    pub fn start_on(port: u16) -> Self {
        Self::try_start(port, &RedisSetup::default())
            .expect("redis-server could not take its port again")
    }

    /// `None` if the server that answers on `port` is not the one started here.
    fn try_start(port: u16, setup: &RedisSetup) -> Option<Self> {
        let mut command = Command::new("redis-server");
        match &setup.tls {
            None => command.args(["--port", &port.to_string()]),
            Some(tls) => command
                .args(["--port", "0", "--tls-port", &port.to_string()])
                .arg("--tls-cert-file")
                .arg(&tls.cert)
                .arg("--tls-key-file")
                .arg(&tls.key)
                .arg("--tls-ca-cert-file")
                .arg(&tls.ca)
                .args(["--tls-auth-clients", "no"]),
        };
        if !setup.users.is_empty() {
            let testkit = format!(">{TESTKIT_PASSWORD}");
            command.args(["--user", "testkit", "on", &testkit, "~*", "&*", "+@all"]);
            command.args(["--user", "default", "off"]);
            for user in &setup.users {
                command.arg("--user").args(user);
            }
        }
        let child = command
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server (install it: scripts/install-redis.sh): {e}")
            });
        let setup = setup.clone();
        let mut redis = Self { child, port, setup };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut conn) = redis.connection() {
                let info: String = redis::cmd("INFO").arg("server").query(&mut conn).unwrap();
                let ours = format!("process_id:{}", redis.child.id());
                return info.lines().any(|l| l.trim() == ours).then_some(redis);
            }
            if redis.child.try_wait().unwrap().is_some() {
                return None;
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its URL, database 0 (`rediss://` with TLS), without credentials.
    pub fn url(&self) -> String {
        let scheme = if self.setup.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    /// A connection to it, answering PING (signed in as the testkit's own user, over TLS
    /// trusting its CA, as the setup asks).
    pub fn connection(&self) -> redis::RedisResult<redis::Connection> {
        let mut info = redis::IntoConnectionInfo::into_connection_info(self.url())?;
        if !self.setup.users.is_empty() {
            let settings = info
                .redis_settings()
                .clone()
                .set_username("testkit")
                .set_password(TESTKIT_PASSWORD);
            info = info.set_redis_settings(settings);
        }
        let client = match &self.setup.tls {
            None => redis::Client::open(info)?,
            Some(tls) => {
                let _ = rustls::crypto::ring::default_provider().install_default();
                let certificates = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(std::fs::read(&tls.ca)?),
                };
                redis::Client::build_with_tls(info, certificates)?
            }
        };
        let mut conn = client.get_connection()?;
        redis::cmd("PING").query::<String>(&mut conn)?;
        Ok(conn)
    }

    /// How many connections are subscribed to `topic`'s channel.
    pub fn subscribers(&self, topic: &str) -> usize {
        let mut conn = self.connection().unwrap();
        let counts: Vec<(String, usize)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(format!("stratus:{topic}"))
            .query(&mut conn)
            .unwrap();
        counts[0].1
    }

    /// Waits until `count` connections are subscribed to `topic`'s channel.
    pub fn wait_subscribers(&self, topic: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.subscribers(topic) != count {
            assert!(
                Instant::now() < deadline,
                "{topic} never had {count} subscribers"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends it the signal `name` (`STOP` freezes it, `CONT` thaws it).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    /// Stops it; returns its port (to start one on it again).
    pub fn stop(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
