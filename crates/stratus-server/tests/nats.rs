//! The NATS broker (`--broker nats://...`, `tls://...`) against Debian's `nats-server` with
//! JetStream, as an operator runs it: two `stratus serve` nodes sharing topics over core
//! NATS subjects, a history namespace's topics kept in a JetStream stream (offsets
//! `0-<stream sequence>`) for resumes and history reads, an outage (503s, not ready, gap
//! notices and delivery again once it is back, on its own), a user and password or a token
//! that no log line, page or `config check` shows, TLS with a CA of the test's own, several
//! URLs as the servers of one cluster, and what NATS cannot answer (presence, occupancy,
//! the node list) refused as unavailable.
//!
//! Each test starts its own nats-server (`stratus_testkit::Nats`) on a free loopback port
//! and takes a few seconds at most. Needs `nats-server` (`scripts/install-nats.sh`;
//! `scripts/test.sh` runs it). The Redis equivalents are in `cluster.rs`,
//! `redis_tls.rs` and `sharding.rs`; `broker_faults.rs` runs its faults over NATS too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::certs::Certs;
use common::logged_node::{LoggedNode, assert_withheld, config_check};
use common::node::{Node, expect_gap, expect_next, history_after, offset_of, pushed, pushes};
use common::{Scratch, V1, free_addr};
use serde_json::{Value, json};
use stratus_testkit::{Nats, NatsAuth, NatsSetup};

/// The user's password: characters a URL would need escaped, so that it could not pass
/// through one by accident.
const PASSWORD: &str = "nats-s3cret:@/#%";
/// [`PASSWORD`] as a URL's user info carries it (percent-encoded).
const PASSWORD_IN_URL: &str = "nats-s3cret%3A%40%2F%23%25";
/// What a node is given instead, in the wrong-password test.
const WRONG: &str = "not-the-password-5e1c";
/// A token (a password without a user name).
const TOKEN: &str = "t0ken-9b2d-s3cret";

/// Topics under `h:` keep 100 messages; the others none.
const HISTORY_CONFIG: &str = "[namespace.\"h:\"]\nhistory = 100\n";
/// Topics under `short:` keep 3 messages, beside `h:`'s 100: JetStream (2.9) limits a
/// stream, which keeps the widest history any namespace asks for, so the node trims
/// `short:` topics to their own count after each publish (see `broker/task/nats.rs`).
const SHORT_HISTORY_CONFIG: &str =
    "[namespace.\"short:\"]\nhistory = 3\n[namespace.\"h:\"]\nhistory = 100\n";

#[test]
fn a_publish_on_one_node_reaches_raw_and_v1_subscribers_on_another_and_counts_no_nodes() {
    let nats = Nats::start();
    let (a, b) = (
        Node::start_on(&nats.url(), &[]),
        Node::start_on(&nats.url(), &[]),
    );
    let mut raw = vec![b.subscriber("news"), a.subscriber("news")];
    b.wait_topics(1);
    a.wait_topics(1);
    // Its reply means NATS has the subscription: what is published next reaches it.
    let (mut v1, _) = v1_subscribed(&b, "news", None);
    for i in 0..10 {
        let (status, body) = a.publish("news", &format!("m{i}"));
        assert_eq!(status, 200, "{body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            body.get("nodes"),
            Some(&Value::Null),
            "NATS counts no receivers: {body}"
        );
    }
    for i in 0..10 {
        expect_next(&mut raw, &format!("m{i}"));
    }
    let want: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    assert_eq!(pushes(&mut v1, "news", 10), want, "each once, in order");
    // And the other way, once those are in.
    assert_eq!(b.publish("news", "from b").0, 200);
    expect_next(&mut raw, "from b");
    assert_eq!(pushed(&v1.recv(), "news"), "from b");

    // A topic nobody takes: taken all the same, and nobody counted.
    let (status, body) = a.publish("nobody", "x");
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body.get("nodes"), Some(&Value::Null), "{body}");

    // The last subscriber leaving a node drops its subscription.
    drop(raw);
    drop(v1);
    a.wait_topics(0);
    b.wait_topics(0);
    for node in [&a, &b] {
        assert_eq!(node.metric("stratus_broker_up"), 1);
        assert_eq!(node.metric("stratus_broker_disconnects_total"), 0);
    }
}

#[test]
fn a_v1_resume_through_jetstream_gets_what_it_missed_once_in_order_then_live_ones() {
    let scratch = Scratch::new("nats-resume");
    let config = scratch.write("stratus.toml", HISTORY_CONFIG);
    let flags = ["--config", config.as_str()];
    let nats = Nats::start();
    let (a, b) = (
        Node::start_on(&nats.url(), &flags),
        Node::start_on(&nats.url(), &flags),
    );
    let offsets: Vec<String> = (0..5)
        .map(|i| offset_of(&a, "h:feed", &format!("m{i}")))
        .collect();
    let sequences: Vec<u64> = offsets.iter().map(|o| stream_sequence(o)).collect();
    assert!(
        sequences.windows(2).all(|w| w[0] < w[1]),
        "increasing: {offsets:?}"
    );

    // On the other node, from the second one's offset: the three after it, with the
    // offsets their publishes answered, then a live one, and nothing twice.
    let (mut client, reply) = v1_subscribed(&b, "h:feed", Some(&offsets[1]));
    assert_eq!(
        (&reply["recovering"], &reply["offset"]),
        (&json!(true), &json!(offsets[1])),
        "{reply}"
    );
    for (i, offset) in offsets.iter().enumerate().skip(2) {
        let push = client.recv();
        assert_eq!(pushed(&push, "h:feed"), format!("m{i}"), "{push}");
        assert_eq!(
            push["offset"],
            json!(offset),
            "the publish's offset: {push}"
        );
    }
    let live = offset_of(&a, "h:feed", "live");
    let push = client.recv();
    assert_eq!(pushed(&push, "h:feed"), "live", "{push}");
    assert_eq!(push["offset"], json!(live), "{push}");
    let pong = client.ask(json!({"id": 2, "op": "ping"}));
    assert_eq!(
        (&pong["type"], &pong["id"]),
        (&json!("reply"), &json!(2)),
        "nothing more came first: {pong}"
    );

    // The history reads the same through the admin API and the v1 command, on either node.
    let (data, page) = history_after(&a, "h:feed", &offsets[1]);
    assert_eq!(data, ["m2", "m3", "m4", "live"], "{page}");
    assert_eq!(page["gap"], Value::Null, "{page}");
    let reply =
        client.ask(json!({"id": 3, "op": "history", "topic": "h:feed", "since": offsets[3]}));
    assert_eq!(reply["type"], "reply", "{reply}");
    assert_eq!(publications(&reply), ["m4", "live"], "{reply}");
    assert_eq!(reply["gap"], Value::Null, "{reply}");
}

#[test]
fn a_v1_resume_from_before_what_jetstream_keeps_gets_a_gap_notice_then_what_is_kept() {
    let scratch = Scratch::new("nats-trimmed");
    let config = scratch.write("stratus.toml", SHORT_HISTORY_CONFIG);
    let flags = ["--config", config.as_str()];
    let nats = Nats::start();
    let (a, b) = (
        Node::start_on(&nats.url(), &flags),
        Node::start_on(&nats.url(), &flags),
    );
    // `short:` keeps 3: the first three are gone.
    let offsets: Vec<String> = (0..6)
        .map(|i| offset_of(&a, "short:feed", &format!("m{i}")))
        .collect();
    let (data, page) = history_after(&b, "short:feed", &offsets[0]);
    assert_eq!(data, ["m3", "m4", "m5"], "{page}");
    assert!(page["gap"].is_string(), "a gap: {page}");

    let (mut client, reply) = v1_subscribed(&b, "short:feed", Some(&offsets[0]));
    assert_eq!(reply["offset"], json!(offsets[0]), "{reply}");
    let gap = client.recv();
    assert_eq!(
        (&gap["type"], &gap["topic"]),
        (&json!("gap"), &json!("short:feed")),
        "first the gap notice: {gap}"
    );
    assert!(
        gap["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no longer reaches")),
        "{gap}"
    );
    assert_eq!(pushes(&mut client, "short:feed", 3), ["m3", "m4", "m5"]);
    offset_of(&a, "short:feed", "live");
    assert_eq!(pushed(&client.recv(), "short:feed"), "live", "then live");
}

#[test]
fn a_nats_outage_gives_503s_and_not_ready_then_gap_notices_and_delivery_on_its_own() {
    let nats = Nats::start();
    let (a, b) = (
        Node::start_on(&nats.url(), &[]),
        Node::start_on(&nats.url(), &[]),
    );
    let mut raw = vec![b.subscriber("feed")];
    b.wait_topics(1);
    let (mut v1, _) = v1_subscribed(&a, "feed", None);
    assert_eq!(a.publish("feed", "before").0, 200);
    expect_next(&mut raw, "before");
    assert_eq!(pushed(&v1.recv(), "feed"), "before");

    let port = nats.stop();
    for node in [&a, &b] {
        node.wait_ready(false);
        let (status, body) = node.publish("feed", "lost?");
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("broker is unavailable"), "{body}");
        assert_eq!(node.metric("stratus_broker_up"), 0);
    }
    // A subscription made during the outage is made in NATS once it is back.
    let mut late = vec![a.subscriber("late")];

    let _nats = Nats::start_on(port);
    for node in [&a, &b] {
        node.wait_ready(true);
        assert_eq!(node.metric("stratus_broker_disconnects_total"), 1);
    }
    // Each subscriber is told it may have missed messages (raw mode and v1), then gets
    // what is published again, across the nodes.
    expect_gap(&mut raw, "feed");
    expect_gap(&mut late, "late");
    let gap = v1.recv();
    assert_eq!(
        (&gap["type"], &gap["topic"]),
        (&json!("gap"), &json!("feed")),
        "{gap}"
    );
    assert!(
        gap["reason"]
            .as_str()
            .is_some_and(|r| r.contains("cut off from the broker")),
        "{gap}"
    );
    assert_eq!(b.publish("feed", "after").0, 200);
    expect_next(&mut raw, "after");
    assert_eq!(pushed(&v1.recv(), "feed"), "after");
    assert_eq!(b.publish("late", "welcome").0, 200);
    expect_next(&mut late, "welcome");
}

#[test]
fn a_user_and_password_from_a_file_or_the_url_and_a_token_sign_in_and_none_is_shown() {
    let scratch = Scratch::new("nats-credentials");
    let nats = Nats::start_with(user_setup(PASSWORD));
    let file = scratch.write("password", &format!("{PASSWORD}\n"));
    let from_file = LoggedNode::start(
        &nats.url(),
        &[],
        &[
            "--broker-username",
            "stratus",
            "--broker-password-file",
            &file,
        ],
        scratch.path("file.log"),
    );
    let in_url = nats
        .url()
        .replace("nats://", &format!("nats://stratus:{PASSWORD_IN_URL}@"));
    let from_url = LoggedNode::start(&in_url, &[], &[], scratch.path("url.log"));
    let token_nats = Nats::start_with(NatsSetup {
        tls: None,
        auth: Some(NatsAuth::Token(TOKEN.to_owned())),
    });
    // A password without a user name: the token.
    let with_token = LoggedNode::start(
        &token_nats.url(),
        &[("STRATUS_BROKER_PASSWORD", TOKEN)],
        &[],
        scratch.path("token.log"),
    );
    for node in [&from_file, &from_url, &with_token] {
        node.wait_ready(true);
    }

    let mut on_url = vec![from_url.subscriber("signed")];
    from_url.wait_topics(1);
    assert_eq!(from_file.publish("signed", "in").0, 200);
    expect_next(&mut on_url, "in");
    let mut on_token = vec![with_token.subscriber("signed")];
    with_token.wait_topics(1);
    assert_eq!(with_token.publish("signed", "with a token").0, 200);
    expect_next(&mut on_token, "with a token");

    let secrets = [PASSWORD, PASSWORD_IN_URL, TOKEN];
    for node in [&from_file, &from_url, &with_token] {
        assert_withheld("the log", &node.log(), &secrets);
        assert_withheld("/metrics", &node.get("/metrics").1, &secrets);
        assert_withheld("/readyz", &node.get("/readyz").1, &secrets);
    }
}

#[test]
fn a_wrong_password_leaves_the_node_not_ready_retrying_unlogged_until_nats_takes_it() {
    let scratch = Scratch::new("nats-wrong");
    let nats = Nats::start_with(user_setup(PASSWORD));
    let mut wrong = LoggedNode::start(
        &nats.url(),
        &[("STRATUS_BROKER_PASSWORD", WRONG)],
        &["--broker-username", "stratus"],
        scratch.path("wrong.log"),
    );
    let mut anonymous = LoggedNode::start(&nats.url(), &[], &[], scratch.path("anonymous.log"));
    for node in [&mut wrong, &mut anonymous] {
        node.wait_ready(false);
        let (status, body) = node.publish("t", "refused");
        assert_eq!(status, 503, "{body}");
        // Its log says why.
        let line = node.wait_log_matching("the refusal", |l| {
            let l = l.to_lowercase();
            l.contains("authoriz") || l.contains("credentials")
        });
        println!("{line}");
        node.assert_running();
        assert_withheld("/readyz", &node.get("/readyz").1, &[WRONG, PASSWORD]);
    }

    // It keeps trying with backoff: a server that takes its password, on the same port,
    // has it ready on its own.
    let port = nats.stop();
    let _nats = Nats::start_on_with(port, user_setup(WRONG));
    wrong.wait_ready(true);
    assert_eq!(wrong.publish("t", "taken").0, 200);
    anonymous.wait_ready(false);
    for node in [&wrong, &anonymous] {
        assert_withheld("the log", &node.log(), &[WRONG, PASSWORD]);
    }
}

#[test]
fn config_check_withholds_a_nats_password_or_token_wherever_it_comes_from() {
    let scratch = Scratch::new("nats-check");
    let pki = Certs::new(&scratch);
    let file = scratch.path("stratus.toml");
    let check = |contents: &str, env: &[(&str, &str)]| {
        std::fs::write(&file, contents).unwrap();
        let out = config_check(&file, env);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        (out.status.success(), stdout, stderr)
    };

    // A tls:// URL, the user from the file, the password from the environment. (A user
    // name alone in a NATS URL is a token.)
    let (ok, stdout, stderr) = check(
        &format!(
            "broker = \"tls://127.0.0.1:4443\"\nbroker-username = \"stratus\"\n\
             broker-ca = {:?}\n",
            pki.ca()
        ),
        &[("STRATUS_BROKER_PASSWORD", PASSWORD)],
    );
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("# broker-password is set (not shown)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("broker = \"tls://127.0.0.1:4443\""),
        "{stdout}"
    );
    assert_withheld("config check", &format!("{stdout}{stderr}"), &[PASSWORD]);

    // In the URL: masked.
    let (ok, stdout, stderr) = check(
        "broker = \"nats://stratus:hunter2-in-url@127.0.0.1:4222\"\n",
        &[],
    );
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("nats://stratus:***@127.0.0.1:4222"),
        "{stdout}"
    );
    assert_withheld(
        "config check",
        &format!("{stdout}{stderr}"),
        &["hunter2-in-url"],
    );

    // A token as NATS's URLs carry it (a user name alone), in each server of a cluster.
    let (ok, stdout, stderr) = check(
        "broker = \"nats://tok3n-in-url@127.0.0.1:4222,nats://tok3n-in-url@127.0.0.1:4223\"\n",
        &[],
    );
    assert!(ok, "{stdout}{stderr}");
    assert_withheld(
        "config check",
        &format!("{stdout}{stderr}"),
        &["tok3n-in-url"],
    );

    // A token from a file.
    let token_file = scratch.write("token", &format!("{TOKEN}\n"));
    let (ok, stdout, stderr) = check(
        &format!("broker = \"nats://127.0.0.1:4222\"\nbroker-password-file = {token_file:?}\n"),
        &[],
    );
    assert!(ok, "{stdout}{stderr}");
    assert_withheld("config check", &format!("{stdout}{stderr}"), &[TOKEN]);

    // In both places: refused, and the reason shows neither.
    let (ok, stdout, stderr) = check(
        "broker = \"nats://stratus:hunter2-in-url@127.0.0.1:4222\"\n",
        &[("STRATUS_BROKER_PASSWORD", PASSWORD)],
    );
    assert!(!ok, "{stdout}");
    assert!(
        stderr.contains("give it") || stderr.contains("give them"),
        "{stderr}"
    );
    assert_withheld(
        "config check",
        &format!("{stdout}{stderr}"),
        &[PASSWORD, "hunter2-in-url"],
    );
}

#[test]
fn tls_with_the_broker_ca_shares_topics_and_a_ca_that_signed_nothing_is_refused() {
    let scratch = Scratch::new("nats-tls");
    let pki = Certs::new(&scratch);
    let nats = Nats::start_with(NatsSetup {
        tls: Some(pki.nats_tls()),
        auth: None,
    });
    let url = nats.url();
    assert!(url.starts_with("tls://"), "{url}");
    let info = nats.info().unwrap();
    assert!(info.contains("\"tls_required\":true"), "{info}");
    let (a, b) = (
        Node::start_on(&url, &["--broker-ca", pki.ca()]),
        Node::start_on(&url, &["--broker-ca", pki.ca()]),
    );
    let mut on_b = vec![b.subscriber("tls-news")];
    b.wait_topics(1);
    let (status, body) = a.publish("tls-news", "over TLS");
    assert_eq!(status, 200, "{body}");
    expect_next(&mut on_b, "over TLS");

    // A CA that signed nothing of the server's: not ready, running, and saying why.
    let mut stranger = LoggedNode::start(
        &url,
        &[],
        &["--broker-ca", pki.other_ca()],
        scratch.path("stranger.log"),
    );
    stranger.wait_ready(false);
    let line = stranger.wait_log_matching("the certificate", |l| l.contains("certificate"));
    println!("{line}");
    let (status, body) = stranger.publish("tls-news", "refused");
    assert_eq!(status, 503, "{body}");
    stranger.assert_running();
}

#[test]
fn several_urls_are_the_servers_of_one_cluster_not_shards() {
    let nats = Nats::start();
    // Nothing listens on the first: the node is up (not degraded) through the second.
    let url = format!("nats://{},{}", free_addr(), nats.url());
    let (a, b) = (Node::start_on(&url, &[]), Node::start_on(&nats.url(), &[]));
    let (status, body) = a.get("/readyz");
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("degraded"), "{body}");
    let mut on_a = vec![a.subscriber("both")];
    a.wait_topics(1);
    assert_eq!(b.publish("both", "through the second").0, 200);
    expect_next(&mut on_a, "through the second");
}

#[test]
fn presence_occupancy_and_the_node_list_answer_unavailable_over_nats() {
    let nats = Nats::start();
    let flags = ["--presence", "members", "--presence-interval", "0.2"];
    let node = Node::start_on(&nats.url(), &flags);
    let (mut client, _) = v1_subscribed(&node, "room", None);
    for path in ["/nodes", "/presence/room", "/occupancy/room"] {
        node.assert_unavailable(path);
    }
    for (id, op) in [(2, "presence"), (3, "occupancy")] {
        let reply = client.ask(json!({"id": id, "op": op, "topic": "room"}));
        assert_eq!(
            (&reply["type"], &reply["id"], &reply["code"]),
            (&json!("error"), &json!(id), &json!("unavailable")),
            "{op}: {reply}"
        );
    }
    // Publishing is not affected.
    assert_eq!(node.publish("room", "still here").0, 200);
    assert_eq!(pushed(&client.recv(), "room"), "still here");
}

// Helpers.

/// A v1 client of `node` subscribed to `topic` (from `since`, if given); its reply.
fn v1_subscribed(node: &Node, topic: &str, since: Option<&str>) -> (V1, Value) {
    let mut client = V1::connect(node.ws, "");
    let mut command = json!({"id": 1, "op": "subscribe", "topic": topic});
    if let Some(since) = since {
        command["since"] = json!(since);
    }
    let reply = client.ask(command);
    assert_eq!(
        (&reply["type"], &reply["id"]),
        (&json!("reply"), &json!(1)),
        "{reply}"
    );
    (client, reply)
}

/// The stream sequence of an offset over NATS (`0-<sequence>`).
fn stream_sequence(offset: &str) -> u64 {
    offset
        .strip_prefix("0-")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{offset}: not 0-<stream sequence>"))
}

/// The data of a history reply's publications.
fn publications(reply: &Value) -> Vec<&str> {
    reply["publications"]
        .as_array()
        .unwrap_or_else(|| panic!("no publications: {reply}"))
        .iter()
        .map(|p| p["data"].as_str().unwrap())
        .collect()
}

/// A nats-server setup with the user `stratus` and `password`.
fn user_setup(password: &str) -> NatsSetup {
    NatsSetup {
        tls: None,
        auth: Some(NatsAuth::User {
            user: "stratus".to_owned(),
            password: password.to_owned(),
        }),
    }
}
