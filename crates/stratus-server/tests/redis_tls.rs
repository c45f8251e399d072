//! Redis over TLS (`rediss://`) with an ACL user, run as an operator would: a TLS-only
//! `redis-server` whose certificate a test CA signed (rcgen), a user whose password the node
//! takes from `STRATUS_BROKER_PASSWORD` or a file, `stratus serve` processes whose log is
//! kept so a test can say what it shows (why a node is not ready) and what it never shows
//! (a password). Needs Debian's `redis-server` (7.0, built with TLS); each test starts its
//! own on a free loopback port.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{free_addr, node};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use stratus_proto::Message;
use stratus_testkit::{Redis, RedisSetup, RedisTls};

/// The ACL user's password: characters a URL would need escaped, so that it could not pass
/// through one by accident.
const PASSWORD: &str = "tls-acl-s3cret:@/#%";
/// What a node is given instead, in the wrong-password test.
const WRONG: &str = "not-the-password-7f3a";

/// The rights the README asks for: Stratus's keys and channels, no dangerous commands.
fn stratus_user(password: &str) -> Vec<String> {
    let password = format!(">{password}");
    let words = ["stratus", "on", &password, "~stratus:*", "~stratus!*"];
    let more = ["&stratus:*", "&stratus!*", "+@all", "-@dangerous"];
    words.iter().chain(&more).map(|w| (*w).to_owned()).collect()
}

/// A directory of its own for a test, with a CA, a certificate it signed for 127.0.0.1
/// and its key, and another CA that signed nothing of Redis's.
struct Pki {
    dir: PathBuf,
    tls: RedisTls,
    other_ca: PathBuf,
}

impl Pki {
    fn new(test: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("stratus-redis-tls-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            let key = KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            (cert, Issuer::new(params, key))
        };
        let (ca_cert, issuer) = ca("Stratus test CA");
        let (other_cert, _) = ca("Another CA");
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let tls = RedisTls {
            cert: dir.join("redis.pem"),
            key: dir.join("redis-key.pem"),
            ca: dir.join("ca.pem"),
        };
        std::fs::write(&tls.cert, leaf.pem()).unwrap();
        std::fs::write(&tls.key, key.serialize_pem()).unwrap();
        std::fs::write(&tls.ca, ca_cert.pem()).unwrap();
        let other_ca = dir.join("other-ca.pem");
        std::fs::write(&other_ca, other_cert.pem()).unwrap();
        Self { dir, tls, other_ca }
    }

    /// A TLS-only Redis with the `stratus` user.
    fn redis(&self) -> Redis {
        Redis::start_with(RedisSetup {
            tls: Some(self.tls.clone()),
            users: vec![stratus_user(PASSWORD)],
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn ca(&self) -> &str {
        self.tls.ca.to_str().unwrap()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A node of the shared test kind (`common::node`), started with environment variables and
/// logging into a file the tests read; not waited for beyond its listener.
struct Node {
    node: node::Node,
    log: PathBuf,
}

impl std::ops::Deref for Node {
    type Target = node::Node;

    fn deref(&self) -> &node::Node {
        &self.node
    }
}

impl Node {
    /// A node with the broker at `url`, these environment variables and flags, logging
    /// into `log`.
    fn start(url: &str, env: &[(&str, &str)], extra: &[&str], log: PathBuf) -> Self {
        for _ in 0..5 {
            let (ws, admin) = (free_addr(), free_addr());
            let child = Command::new(env!("CARGO_BIN_EXE_stratus"))
                .args(["serve", "--workers", "1", "--log-level", "info"])
                .args(["--broker", url, "--listen", &ws.to_string()])
                .args(["--admin-listen", &admin.to_string()])
                .args(extra)
                .envs(env.iter().copied())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap();
            let mut node = Self {
                node: node::Node { child, ws, admin },
                log: log.clone(),
            };
            if node.listens() {
                return node;
            }
        }
        panic!("stratus did not start on any of 5 pairs of free ports");
    }

    /// Whether it listens on its WebSocket address (and still runs a moment later, so the
    /// listener is its own).
    fn listens(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(self.ws).is_err() {
            if self.node.child.try_wait().unwrap().is_some() {
                return false;
            }
            assert!(Instant::now() < deadline, "no listener on {}", self.ws);
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(100));
        self.node.child.try_wait().unwrap().is_none()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }

    /// The first log line that contains `needle`, waiting for it.
    fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(line) = self.log().lines().find(|l| l.contains(needle)) {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `/readyz` answers 200 (`ready`) or 503 with the broker down; a failure
    /// shows the node's log.
    fn wait_ready(&self, ready: bool) {
        self.node.wait_ready_or(ready, || self.log());
    }

    /// Asserts that it is still running (a failure to connect is not a crash).
    fn assert_running(&mut self) {
        let log = self.log();
        assert!(self.node.child.try_wait().unwrap().is_none(), "{log}");
    }
}

/// Asserts that no secret in `secrets` is in `text` (named `what`).
fn assert_withheld(what: &str, text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(!text.contains(secret), "{what} shows {secret:?}:\n{text}");
    }
}

#[test]
fn two_nodes_share_topics_over_tls_signed_in_as_an_acl_user() {
    let pki = Pki::new("share");
    let redis = pki.redis();
    let url = redis.url();
    assert!(url.starts_with("rediss://"), "{url}");
    // One node takes the password from the environment and the user from a flag, and keeps
    // occupied/vacated events (scripts and a stream in Redis); the other the user from the
    // URL and the password from a file, and keeps a history (a publish is a script). The
    // ACL must allow all of it.
    let a = Node::start(
        &url,
        &[("STRATUS_BROKER_PASSWORD", PASSWORD)],
        &[
            "--broker-username",
            "stratus",
            "--broker-ca",
            pki.ca(),
            "--occupancy-events",
        ],
        pki.path("a.log"),
    );
    let password_file = pki.path("redis-password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let with_user = url.replace("rediss://", "rediss://stratus@");
    let b = Node::start(
        &with_user,
        &[],
        &[
            "--broker-password-file",
            password_file.to_str().unwrap(),
            "--broker-ca",
            pki.ca(),
            "--history",
            "10",
        ],
        pki.path("b.log"),
    );
    a.wait_ready(true);
    b.wait_ready(true);

    let mut on_a = a.subscriber("tls-news");
    let mut on_b = b.subscriber("tls-news");
    redis.wait_subscribers("tls-news", 2);
    let (status, body) = b.publish("tls-news", "from b, over TLS");
    assert_eq!(status, 200, "{body}");
    let (status, body) = a.publish("tls-news", "from a, over TLS");
    assert_eq!(status, 200, "{body}");
    for peer in [&mut on_a, &mut on_b] {
        for text in ["from b, over TLS", "from a, over TLS"] {
            assert_eq!(peer.recv(), Some(Message::Text(text.into())));
        }
    }

    // The topic's occupied event went through Redis (its scripts and stream) too.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !a
        .get("/events?since=0-0")
        .1
        .contains("\"topic\":\"tls-news\"")
    {
        assert!(Instant::now() < deadline, "no occupied event: {}", a.log());
        std::thread::sleep(Duration::from_millis(50));
    }

    // Redis saw the nodes as `stratus`, on TLS: its only port.
    let mut conn = redis.connection().unwrap();
    let clients: String = redis::cmd("CLIENT").arg("LIST").query(&mut conn).unwrap();
    let as_stratus = clients
        .lines()
        .filter(|l| l.contains(" user=stratus "))
        .count();
    assert!(
        as_stratus >= 4,
        "two nodes, two connections each at least:\n{clients}"
    );

    for node in [&a, &b] {
        node.wait_log("connected to the broker");
        let log = node.log();
        assert!(
            !log.contains("NOPERM"),
            "the README's ACL is not enough:\n{log}"
        );
        assert_withheld("the log", &log, &[PASSWORD]);
        assert_withheld("/metrics", &node.get("/metrics").1, &[PASSWORD]);
        assert_withheld("/readyz", &node.get("/readyz").1, &[PASSWORD]);
    }
}

#[test]
fn a_wrong_password_leaves_the_node_not_ready_retrying_and_the_password_unlogged() {
    let pki = Pki::new("wrongpass");
    let redis = pki.redis();
    let mut node = Node::start(
        &redis.url(),
        &[("STRATUS_BROKER_PASSWORD", WRONG)],
        &["--broker-username", "stratus", "--broker-ca", pki.ca()],
        pki.path("node.log"),
    );
    // And one that gives no credentials at all, where Redis's default user is off.
    let mut anonymous = Node::start(
        &redis.url(),
        &[],
        &["--broker-ca", pki.ca()],
        pki.path("anonymous.log"),
    );
    for node in [&mut node, &mut anonymous] {
        let line = node.wait_log("cannot reach the broker");
        println!("{line}");
        assert!(line.contains("Redis refused the credentials"), "{line}");
        node.wait_ready(false);
        let (status, body) = node.publish("t", "refused");
        assert_eq!(status, 503, "{body}");
        node.assert_running();
    }

    // The node keeps trying with backoff: once Redis takes its password, it is ready on
    // its own.
    let mut conn = redis.connection().unwrap();
    let () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("stratus")
        .arg(format!(">{WRONG}"))
        .query(&mut conn)
        .unwrap();
    node.wait_ready(true);
    node.wait_log("connected to the broker");
    let log = node.log();
    assert_eq!(
        log.matches("cannot reach the broker").count(),
        1,
        "one line per outage, not one per attempt:\n{log}"
    );
    assert_withheld("the log", &log, &[WRONG, PASSWORD]);
}

#[test]
fn plain_to_a_tls_port_tls_to_a_plain_port_and_an_unknown_ca_fail_clearly() {
    let pki = Pki::new("mismatch");
    let redis = pki.redis();
    let plain = Redis::start();
    let password = [("STRATUS_BROKER_PASSWORD", PASSWORD)];
    let user = ["--broker-username", "stratus"];
    let tls_port = redis.url().replace("rediss://", "redis://");
    let tls_on_plain = plain.url().replace("redis://", "rediss://");
    let other_ca = pki.other_ca.to_str().unwrap();
    let cases = [
        (
            tls_port.as_str(),
            &[][..],
            "if this port only takes TLS, use rediss://",
        ),
        (&redis.url(), &["--broker-ca", other_ca][..], "certificate"),
        (&redis.url(), &[][..], "certificate"),
        (
            tls_on_plain.as_str(),
            &[][..],
            "if this port takes plain connections, use redis://",
        ),
    ];
    let nodes: Vec<(Node, &str)> = cases
        .iter()
        .enumerate()
        .map(|(i, (url, flags, hint))| {
            let flags = [&user[..], flags].concat();
            let log = pki.path(&format!("node-{i}.log"));
            (Node::start(url, &password, &flags, log), *hint)
        })
        .collect();
    for (mut node, hint) in nodes {
        let line = node.wait_log("cannot reach the broker");
        println!("{line}");
        assert!(line.contains(hint), "{hint:?} not in: {line}");
        node.wait_ready(false);
        node.assert_running();
        assert_withheld("the log", &node.log(), &[PASSWORD]);
    }
}

/// `stratus config check FILE` with these environment variables.
fn config_check(file: &Path, env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stratus"))
        .args(["config", "check"])
        .arg(file)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

#[test]
fn config_check_withholds_the_broker_password_wherever_it_comes_from() {
    let pki = Pki::new("check");
    let file = pki.path("stratus.toml");
    std::fs::write(
        &file,
        format!(
            "broker = \"rediss://stratus@127.0.0.1:6380/0\"\nbroker-ca = {:?}\n",
            pki.ca()
        ),
    )
    .unwrap();
    let out = config_check(&file, &[("STRATUS_BROKER_PASSWORD", PASSWORD)]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("# broker-password is set (not shown)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("broker = \"rediss://stratus@127.0.0.1:6380/0\""),
        "{stdout}"
    );
    assert!(stdout.contains("broker-ca = "), "{stdout}");
    assert_withheld("config check", &format!("{stdout}{stderr}"), &[PASSWORD]);

    // In the URL: masked.
    std::fs::write(
        &file,
        "broker = \"redis://stratus:hunter2-in-url@127.0.0.1:6379/0\"\n",
    )
    .unwrap();
    let out = config_check(&file, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("redis://stratus:***@127.0.0.1:6379/0"),
        "{stdout}"
    );
    assert_withheld("config check", &stdout, &["hunter2-in-url"]);

    // In both places: refused, and the reason shows neither.
    let out = config_check(&file, &[("STRATUS_BROKER_PASSWORD", PASSWORD)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("give it in one place"), "{stderr}");
    assert_withheld(
        "config check",
        &format!("{stderr}{}", String::from_utf8_lossy(&out.stdout)),
        &[PASSWORD, "hunter2-in-url"],
    );
}
