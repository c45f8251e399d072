//! Redis over TLS (`rediss://`) with an ACL user, run as an operator would: a TLS-only
//! `redis-server` whose certificate a test CA signed (rcgen), a user whose password the node
//! takes from `STRATUS_BROKER_PASSWORD` or a file, `stratus serve` processes whose log is
//! kept so a test can say what it shows (why a node is not ready) and what it never shows
//! (a password). Needs Debian's `redis-server` (7.0, built with TLS); each test starts its
//! own on a free loopback port.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::Scratch;
use common::certs::Certs;
use common::logged_node::{LoggedNode, assert_withheld, config_check};
use stratus_proto::Message;
use stratus_testkit::{Redis, RedisSetup};

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

/// A directory of a test's own with the test certificates ([`Certs`]) in it.
struct Pki {
    scratch: Scratch,
    certs: Certs,
}

impl Pki {
    fn new(test: &str) -> Self {
        let scratch = Scratch::new(&format!("redis-tls-{test}"));
        let certs = Certs::new(&scratch);
        Self { scratch, certs }
    }

    /// A TLS-only Redis with the `stratus` user.
    fn redis(&self) -> Redis {
        Redis::start_with(RedisSetup {
            tls: Some(self.certs.redis_tls()),
            users: vec![stratus_user(PASSWORD)],
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.scratch.path(name)
    }

    fn ca(&self) -> &str {
        self.certs.ca()
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
    let a = LoggedNode::start(
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
    let b = LoggedNode::start(
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
    let mut node = LoggedNode::start(
        &redis.url(),
        &[("STRATUS_BROKER_PASSWORD", WRONG)],
        &["--broker-username", "stratus", "--broker-ca", pki.ca()],
        pki.path("node.log"),
    );
    // And one that gives no credentials at all, where Redis's default user is off.
    let mut anonymous = LoggedNode::start(
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
    let other_ca = pki.certs.other_ca();
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
    let nodes: Vec<(LoggedNode, &str)> = cases
        .iter()
        .enumerate()
        .map(|(i, (url, flags, hint))| {
            let flags = [&user[..], flags].concat();
            let log = pki.path(&format!("node-{i}.log"));
            (LoggedNode::start(url, &password, &flags, log), *hint)
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
