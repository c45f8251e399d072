//! Test support for Stratus: the outside services its tests need, real and local. Each
//! test starts its own on a free loopback port, fails (with what to install) if it cannot,
//! and the service is stopped when the handle is dropped.
//!
//! Used by the unit tests of `stratus-server` (the broker task against a real Redis) and
//! by the integration and load tests, so that each service is started one way.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{SocketAddr, TcpListener};
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
}

impl Redis {
    /// A redis-server on a free port (another, if a concurrent test took that one).
    pub fn start() -> Self {
        (0..5)
            .find_map(|_| Self::try_start(free_addr().port()))
            .expect("redis-server did not start on any of 5 free ports")
    }

    /// A redis-server on `port` (one stopped earlier, started again).
    pub fn start_on(port: u16) -> Self {
        Self::try_start(port).expect("redis-server could not take its port again")
    }

    /// `None` if the server that answers on `port` is not the one started here.
    fn try_start(port: u16) -> Option<Self> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server (install it: scripts/install-redis.sh): {e}")
            });
        let mut redis = Self { child, port };
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

    /// Its URL, database 0.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// A connection to it, answering PING.
    pub fn connection(&self) -> redis::RedisResult<redis::Connection> {
        let client = redis::Client::open(self.url())?;
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
