//! Test support for Stratus: the outside services its tests need, real and local. Each
//! test starts its own on a free loopback port, fails (with what to install) if it cannot,
//! and the service is stopped when the handle is dropped.
//!
//! Used by the unit tests of `stratus-server` (the broker task against a real Redis) and
//! by the integration and load tests, so that each service is started one way: Redis
//! ([`Redis`], [`RedisCluster`]) and NATS with JetStream ([`Nats`]).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod nats;
mod process;

pub use nats::{Nats, NatsAuth, NatsSetup, NatsTls};

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
        process::start_on_a_free_port("redis-server", |port| Self::try_start(port, &setup))
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
        process::signal(&self.child, name);
    }

    /// Stops it; returns its port (to start one on it again).
    pub fn stop(mut self) -> u16 {
        process::end(&mut self.child);
        self.port
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        process::end(&mut self.child);
    }
}

/// A Redis Cluster of masters only (no replicas) on loopback ports, each a
/// `redis-server --cluster-enabled yes` keeping its `nodes.conf` in a directory of the
/// cluster's own, joined by `redis-cli --cluster create`; killed and removed when dropped.
///
/// `cluster-require-full-coverage no`: with a master down the others go on serving their
/// slots (without replicas, nothing takes the lost master's slots over).
///
/// Its masters may announce another client port than their own
/// ([`RedisCluster::start_announcing`]: a fault proxy's before each, say), which is what
/// `CLUSTER SLOTS` then tells clients.
pub struct RedisCluster {
    dir: PathBuf,
    /// Each master's port, and its process while it runs.
    masters: Vec<(u16, Option<Child>)>,
    /// Each master's announced client port, where it announces one (`masters`' order).
    announced: Vec<Option<u16>>,
}

impl RedisCluster {
    /// `masters` masters (3 or more: `redis-cli --cluster create` wants 3), once every one
    /// says `cluster_state:ok`.
    pub fn start(masters: usize) -> Self {
        Self::start_with(masters, |_| None)
    }

    /// The same, each master announcing (`cluster-announce-port`, with
    /// `cluster-announce-ip 127.0.0.1`) the client port `announce` gives for its own port:
    /// what `CLUSTER SLOTS` and `CLUSTER NODES` then say, so clients that follow them (the
    /// nodes) reach the master there, through a proxy to its port, say. The cluster bus
    /// stays direct (`cluster-announce-bus-port` is the master's own bus port).
    ///
    /// `announce` is called before each master starts; a master that cannot start on its
    /// port (taken meanwhile) is started on another, with `announce` called again. The
    /// announced ports must carry to the masters by the time this is called:
    /// `redis-cli --cluster create` is given the masters' own ports, but checks the cluster
    /// it made through the announced ones (and says `[ERR] Not all 16384 slots are
    /// covered` if it cannot reach them, though it made the cluster).
    pub fn start_announcing(masters: usize, mut announce: impl FnMut(u16) -> u16) -> Self {
        Self::start_with(masters, |port| Some(announce(port)))
    }

    fn start_with(masters: usize, mut announce: impl FnMut(u16) -> Option<u16>) -> Self {
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("stratus-cluster-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut cluster = Self {
            dir,
            masters: Vec::new(),
            announced: Vec::new(),
        };
        while cluster.masters.len() < masters {
            // The cluster bus takes the port 10000 above the client port.
            let port = free_addr().port();
            if port > 55_000 || TcpListener::bind(("127.0.0.1", port + 10_000)).is_err() {
                continue;
            }
            let announced = announce(port);
            if let Some(child) = cluster.spawn(port, announced) {
                cluster.masters.push((port, Some(child)));
                cluster.announced.push(announced);
            }
        }
        let addresses: Vec<String> = cluster
            .masters
            .iter()
            .map(|(port, _)| format!("127.0.0.1:{port}"))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-cli (install it: scripts/install-redis.sh): {e}")
            });
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&created.stderr)
        );
        cluster.wait_ok();
        cluster.wait_announced();
        cluster
    }

    /// Starts a master on `port` (its `nodes.conf` in the cluster's directory: one
    /// started again comes back with its identity and slots), announcing the client port
    /// `announced` if there is one. `None` if another server answers there.
    fn spawn(&self, port: u16, announced: Option<u16>) -> Option<Child> {
        let mut command = Command::new("redis-server");
        if let Some(announced) = announced {
            command
                .args(["--cluster-announce-ip", "127.0.0.1"])
                .args(["--cluster-announce-port", &announced.to_string()])
                .args(["--cluster-announce-bus-port", &(port + 10_000).to_string()]);
        }
        let mut child = command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes"])
            .arg("--cluster-config-file")
            .arg(self.dir.join(format!("nodes-{port}.conf")))
            .args(["--cluster-require-full-coverage", "no"])
            .args(["--cluster-node-timeout", "1000"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server (install it: scripts/install-redis.sh): {e}")
            });
        let deadline = Instant::now() + Duration::from_secs(10);
        let ours = format!("process_id:{}", child.id());
        loop {
            let info = connect(port)
                .and_then(|mut conn| redis::cmd("INFO").arg("server").query::<String>(&mut conn));
            if let Ok(info) = info {
                if info.lines().any(|l| l.trim() == ours) {
                    return Some(child);
                }
                // Another server answers on the port.
                process::end(&mut child);
                return None;
            }
            if !matches!(child.try_wait(), Ok(None)) {
                // It exited (its port taken, say), or cannot be waited for.
                process::end(&mut child);
                return None;
            }
            if Instant::now() >= deadline {
                process::end(&mut child);
                panic!("redis-server did not start on {port} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every running master says `cluster_state:ok` and sees every slot
    /// served.
    pub fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for (port, child) in &self.masters {
            if child.is_none() {
                continue;
            }
            loop {
                let info: String = connect(*port)
                    .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query(&mut c))
                    .unwrap_or_default();
                let ok = info.lines().any(|l| l.trim() == "cluster_state:ok")
                    && info.lines().any(|l| l.trim() == "cluster_slots_ok:16384");
                if ok {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the cluster never became ok on {port}: {info}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// `--broker` for it: every master as a seed (`redis+cluster://127.0.0.1:port,...`).
    pub fn url(&self) -> String {
        self.masters
            .iter()
            .map(|(port, _)| format!("redis+cluster://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// How many masters it has (running or not).
    pub fn len(&self) -> usize {
        self.masters.len()
    }

    /// Whether it has no master.
    pub fn is_empty(&self) -> bool {
        self.masters.is_empty()
    }

    /// The port of master `index`.
    pub fn port(&self, index: usize) -> u16 {
        self.masters[index].0
    }

    /// The client port master `index` announces (`CLUSTER SLOTS` tells it): the one
    /// [`Self::start_announcing`] gave it, or its own.
    pub fn announced_port(&self, index: usize) -> u16 {
        self.announced[index].unwrap_or_else(|| self.port(index))
    }

    /// A connection to master `index`.
    pub fn connection(&self, index: usize) -> redis::Connection {
        connect(self.port(index)).unwrap()
    }

    /// The slot of `key`, as Redis computes it (`CLUSTER KEYSLOT`, asked of a running
    /// master).
    pub fn slot(&self, key: &str) -> u16 {
        let index = self.masters.iter().position(|(_, c)| c.is_some()).unwrap();
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut self.connection(index))
            .unwrap()
    }

    /// The index of the master that serves `key`'s slot (as `CLUSTER SLOTS` says, asked
    /// of a running master, by the port it announces).
    pub fn master_of(&self, key: &str) -> usize {
        let slot = self.slot(key);
        let index = self.masters.iter().position(|(_, c)| c.is_some()).unwrap();
        let ranges = self.slot_ranges(index);
        let (_, _, port) = ranges
            .iter()
            .find(|(first, last, _)| (*first..=*last).contains(&slot))
            .unwrap_or_else(|| panic!("no master serves slot {slot}"));
        (0..self.len())
            .find(|&index| self.announced_port(index) == *port)
            .unwrap()
    }

    /// The slot ranges master `index` tells (`CLUSTER SLOTS`): the first and last slot of
    /// each, and the port of the master that serves it.
    fn slot_ranges(&self, index: usize) -> Vec<(u16, u16, u16)> {
        redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query::<Vec<redis::Value>>(&mut self.connection(index))
            .unwrap()
            .into_iter()
            .map(|entry| {
                let redis::Value::Array(parts) = entry else {
                    panic!("CLUSTER SLOTS: {entry:?}");
                };
                let first: u16 = redis::from_redis_value(parts[0].clone()).unwrap();
                let last: u16 = redis::from_redis_value(parts[1].clone()).unwrap();
                let redis::Value::Array(master) = &parts[2] else {
                    panic!("CLUSTER SLOTS: {parts:?}");
                };
                let port: u16 = redis::from_redis_value(master[1].clone()).unwrap();
                (first, last, port)
            })
            .collect()
    }

    /// Waits until every running master's `CLUSTER SLOTS` names the masters by the ports
    /// they announce (each learns the others' from the cluster bus, after it met them at
    /// their own ports).
    fn wait_announced(&self) {
        let mut announced: Vec<u16> = (0..self.len()).map(|i| self.announced_port(i)).collect();
        announced.sort_unstable();
        let deadline = Instant::now() + Duration::from_secs(10);
        for index in (0..self.len()).filter(|&i| self.masters[i].1.is_some()) {
            loop {
                let mut told: Vec<u16> = self.slot_ranges(index).iter().map(|r| r.2).collect();
                told.sort_unstable();
                told.dedup();
                if told == announced {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "master {index}'s CLUSTER SLOTS names {told:?}, not {announced:?}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Kills master `index` (SIGKILL); its `nodes.conf` stays, for [`Self::restart`].
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.masters[index].1.take() {
            process::end(&mut child);
        }
    }

    /// Starts master `index` again on its port with its `nodes.conf` (it rejoins with its
    /// slots, announcing what it announced), and waits until the cluster is ok again. The
    /// port (or its bus port) may be briefly taken still: it tries again for up to 10 s
    /// before giving up.
    pub fn restart(&mut self, index: usize) {
        let port = self.port(index);
        let child = process::start_again("redis-server", port, || {
            self.spawn(port, self.announced[index])
        });
        self.masters[index].1 = Some(child);
        self.wait_ok();
    }
}

/// A connection to the Redis on 127.0.0.1:`port`, answering PING.
fn connect(port: u16) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/0"))?;
    let mut conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
    redis::cmd("PING").query::<String>(&mut conn)?;
    Ok(conn)
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.masters {
            if let Some(mut child) = child.take() {
                process::end(&mut child);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
