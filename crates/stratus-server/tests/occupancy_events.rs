//! Occupied/vacated events from outside: `stratus serve` processes posting to a real HTTP
//! backend the test runs (a TcpListener thread that records every post and answers with
//! the statuses the test scripts), alone and as a 3-node cluster on a real Redis
//! (`redis-server` on the PATH; each test starts its own and fails if it cannot).
//! Leases and graces are short (1-3 s) so the suite stays quick; what is asserted is
//! which events fire and how often, never how fast.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Peer, admin, sample, spawn_server};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use stratus_testkit::Redis;

const SECRET: &str = "s3cret";

/// One post the backend received.
#[derive(Debug, Clone)]
struct Post {
    headers: HashMap<String, String>,
    body: String,
    /// What the backend answered.
    status: u16,
}

impl Post {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap()
    }

    /// `("occupied", "topic")`.
    fn event(&self) -> (String, String) {
        let json = self.json();
        (
            json["event"].as_str().unwrap().to_owned(),
            json["topic"].as_str().unwrap().to_owned(),
        )
    }

    /// Whether the signature verifies as a receiver would check it: HMAC-SHA256 of
    /// `"<timestamp>.<body>"` under the shared secret.
    fn signature_verifies(&self, secret: &str) -> bool {
        let (Some(ts), Some(sig)) = (
            self.headers.get("x-stratus-timestamp"),
            self.headers.get("x-stratus-signature"),
        ) else {
            return false;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{ts}.{}", self.body).as_bytes());
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        *sig == format!("sha256={hex}")
    }
}

/// The application's backend: records every post, answers with the scripted statuses
/// (then 200).
struct Backend {
    addr: SocketAddr,
    posts: Arc<Mutex<Vec<Post>>>,
    statuses: Arc<Mutex<VecDeque<u16>>>,
}

impl Backend {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let posts: Arc<Mutex<Vec<Post>>> = Arc::default();
        let statuses: Arc<Mutex<VecDeque<u16>>> = Arc::default();
        let (p, s) = (posts.clone(), statuses.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (p, s) = (p.clone(), s.clone());
                std::thread::spawn(move || serve(stream, &p, &s));
            }
        });
        Self {
            addr,
            posts,
            statuses,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Answers the next posts with these statuses.
    fn answer_with(&self, statuses: &[u16]) {
        self.statuses.lock().unwrap().extend(statuses);
    }

    fn posts(&self) -> Vec<Post> {
        self.posts.lock().unwrap().clone()
    }

    /// The events of the posts answered with 200, in arrival order.
    fn delivered(&self) -> Vec<(String, String)> {
        self.posts()
            .iter()
            .filter(|p| p.status == 200)
            .map(Post::event)
            .collect()
    }

    /// Waits until `n` posts were answered with 200.
    fn wait_delivered(&self, n: usize) -> Vec<(String, String)> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let delivered = self.delivered();
            if delivered.len() >= n {
                return delivered;
            }
            assert!(
                Instant::now() < deadline,
                "{n} deliveries expected, got {delivered:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Serves one keep-alive connection: request after request.
fn serve(stream: TcpStream, posts: &Mutex<Vec<Post>>, statuses: &Mutex<VecDeque<u16>>) {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = HashMap::new();
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap();
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
        let length: usize = headers
            .get("content-length")
            .map_or(0, |l| l.parse().unwrap());
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let status = statuses.lock().unwrap().pop_front().unwrap_or(200);
        assert!(line.starts_with("POST /hook "), "{line}");
        posts.lock().unwrap().push(Post {
            headers,
            body: String::from_utf8(body).unwrap(),
            status,
        });
        let response = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// A `stratus serve` process, killed when dropped.
struct Node {
    child: Child,
    ws: SocketAddr,
    admin: SocketAddr,
}

impl Node {
    fn start(extra: &[&str]) -> Self {
        let mut args = vec!["serve", "--workers", "2", "--log-level", "warn"];
        args.extend_from_slice(extra);
        let (child, ws, admin) = spawn_server(&args);
        let node = Self { child, ws, admin };
        let deadline = Instant::now() + Duration::from_secs(15);
        while node.get("/readyz").0 != 200 {
            assert!(Instant::now() < deadline, "never ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        node
    }

    fn get(&self, path: &str) -> (u16, String) {
        admin(
            self.admin,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        )
    }

    fn metric(&self, name: &str) -> u64 {
        sample(&self.get("/metrics").1, name)
    }

    /// A client subscribed to `topic` at the upgrade.
    fn subscriber(&self, topic: &str) -> Peer {
        let mut peer = Peer::connect(self.ws);
        peer.send(common::upgrade_request(&format!("/ws?topic={topic}")).as_bytes());
        let head = peer.read_head();
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        peer
    }

    /// `GET /events?since=`: the events and the next offset.
    fn events(&self, since: &str) -> (Vec<(String, String)>, String) {
        let (status, body) = self.get(&format!("/events?since={since}&limit=1000"));
        assert_eq!(status, 200, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        let events = json["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["event"].as_str().unwrap().to_owned(),
                    e["topic"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        (events, json["next"].as_str().unwrap().to_owned())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pair(event: &str, topic: &str) -> (String, String) {
    (event.to_owned(), topic.to_owned())
}

/// Lets the grace (and the sweeps after it) pass, so that anything that was going to fire
/// has fired.
fn let_pass(grace_s: f64) {
    std::thread::sleep(Duration::from_secs_f64(grace_s + 1.5));
}

#[test]
fn one_node_posts_signed_events_retries_a_500_and_a_flap_within_the_grace_fires_nothing() {
    let backend = Backend::start();
    backend.answer_with(&[500]);
    let url = backend.url();
    let node = Node::start(&[
        "--occupancy-webhook",
        &url,
        "--webhook-secret",
        SECRET,
        "--vacate-grace",
        "1",
    ]);
    let peer = node.subscriber("room");
    // The first attempt gets a 500; the retry gets through.
    assert_eq!(backend.wait_delivered(1), [pair("occupied", "room")]);
    let posts = backend.posts();
    assert_eq!(posts.len(), 2, "{posts:?}");
    assert_eq!((posts[0].status, posts[1].status), (500, 200));
    assert_eq!(posts[0].body, posts[1].body, "the same event again");
    for post in &posts {
        assert!(post.signature_verifies(SECRET), "{post:?}");
        assert!(!post.signature_verifies("other"), "keyed");
        assert_eq!(post.headers["x-stratus-event"], "occupied");
        assert_eq!(post.headers["content-type"], "application/json");
    }
    let occupied = posts[1].json();
    assert!(
        occupied["offset"].as_str().unwrap().contains('-'),
        "{occupied}"
    );
    assert!(occupied["time"].as_u64().unwrap() > 1_700_000_000_000);
    // A tampered body does not verify.
    let mut tampered = posts[1].clone();
    tampered.body = tampered.body.replace("room", "roon");
    assert!(!tampered.signature_verifies(SECRET));

    // A flapping client: gone and back within the grace, three times: nothing fires.
    drop(peer);
    let mut peer = node.subscriber("room");
    for _ in 0..2 {
        drop(peer);
        peer = node.subscriber("room");
    }
    let_pass(1.0);
    assert_eq!(backend.delivered().len(), 1, "{:?}", backend.delivered());

    // Gone for good: vacated once, after the grace.
    drop(peer);
    assert_eq!(
        backend.wait_delivered(2),
        [pair("occupied", "room"), pair("vacated", "room")]
    );
    let_pass(1.0);
    assert_eq!(backend.delivered().len(), 2);

    // The same events by offset, from the node's own log.
    let (events, next) = node.events("0-0");
    assert_eq!(events, [pair("occupied", "room"), pair("vacated", "room")]);
    let first = occupied["offset"].as_str().unwrap();
    assert_eq!(node.events(first).0, [pair("vacated", "room")]);
    assert_eq!(
        node.events(&next),
        (vec![], next.clone()),
        "nothing after the last"
    );
    assert_eq!(node.get("/events?since=nope").0, 400);
    assert_eq!(node.get("/events?limit=0").0, 400);

    assert_eq!(node.metric("stratus_webhook_sent_total"), 2);
    assert_eq!(node.metric("stratus_webhook_failed_total"), 1);
    assert_eq!(node.metric("stratus_webhook_retried_total"), 1);
    assert_eq!(node.metric("stratus_webhook_dropped_total"), 0);
    assert_eq!(node.metric("stratus_occupancy_occupied_total"), 1);
    assert_eq!(node.metric("stratus_occupancy_vacated_total"), 1);
}

#[test]
fn events_are_off_unless_asked_for() {
    let node = Node::start(&[]);
    assert_eq!(node.get("/events").0, 404);
}

/// Flags for a cluster node with short leases and grace.
fn cluster_node(redis: &Redis, backend: &Backend, grace: &str) -> Node {
    Node::start(&[
        "--broker",
        &redis.url(),
        "--occupancy-webhook",
        &backend.url(),
        "--webhook-secret",
        SECRET,
        "--vacate-grace",
        grace,
        "--presence-interval",
        "0.2",
        "--presence-lease",
        "1",
    ])
}

#[test]
fn a_cluster_fires_occupied_once_and_vacated_once_after_the_last_subscriber_leaves() {
    let redis = Redis::start();
    let backend = Backend::start();
    let nodes: Vec<Node> = (0..3)
        .map(|_| cluster_node(&redis, &backend, "1"))
        .collect();
    // Subscribers on two nodes at once (and two on one of them).
    let a = nodes[0].subscriber("lobby");
    let b = nodes[1].subscriber("lobby");
    let c = nodes[1].subscriber("lobby");
    assert_eq!(backend.wait_delivered(1), [pair("occupied", "lobby")]);
    drop(a);
    drop(b);
    let_pass(1.0);
    assert_eq!(
        backend.delivered().len(),
        1,
        "one subscriber is left on node 1"
    );
    drop(c);
    assert_eq!(
        backend.wait_delivered(2),
        [pair("occupied", "lobby"), pair("vacated", "lobby")]
    );
    let_pass(1.0);
    assert_eq!(
        backend.posts().len(),
        2,
        "each event posted once, by one node"
    );
    for post in backend.posts() {
        assert!(post.signature_verifies(SECRET));
    }
    // The stream in Redis, read by offset from any node.
    let (events, _) = nodes[2].events("0-0");
    assert_eq!(
        events,
        [pair("occupied", "lobby"), pair("vacated", "lobby")]
    );
    let decided: u64 = nodes
        .iter()
        .map(|n| n.metric("stratus_occupancy_occupied_total"))
        .sum();
    assert_eq!(decided, 1);
}

#[test]
fn a_node_killed_with_sigkill_has_its_topics_vacated_once_after_its_lease() {
    let redis = Redis::start();
    let backend = Backend::start();
    let mut nodes: Vec<Node> = (0..3)
        .map(|_| cluster_node(&redis, &backend, "1"))
        .collect();
    let _doomed = [nodes[2].subscriber("doomed"), nodes[2].subscriber("doomed")];
    let _shared = [nodes[2].subscriber("shared"), nodes[0].subscriber("shared")];
    let _other = nodes[1].subscriber("other");
    let delivered = backend.wait_delivered(3);
    assert_eq!(delivered.len(), 3, "{delivered:?}");
    for topic in ["doomed", "shared", "other"] {
        assert!(
            delivered.contains(&pair("occupied", topic)),
            "{delivered:?}"
        );
    }
    // SIGKILL: no goodbye, its connections die with it.
    let mut killed = nodes.pop().unwrap();
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    assert_eq!(backend.wait_delivered(4)[3], pair("vacated", "doomed"));
    let_pass(2.0);
    assert_eq!(
        backend.delivered().len(),
        4,
        "only the dead node's own topic, once: {:?}",
        backend.delivered()
    );
    let (events, _) = nodes[0].events("0-0");
    assert_eq!(events.len(), 4, "{events:?}");
    assert_eq!(events[3], pair("vacated", "doomed"));
}

#[test]
fn a_mass_reconnect_of_1000_clients_within_the_grace_fires_no_vacated_or_occupied() {
    const CLIENTS: usize = 1000;
    const TOPICS: usize = 100;
    let redis = Redis::start();
    let backend = Backend::start();
    let nodes: Vec<Node> = (0..3)
        .map(|_| cluster_node(&redis, &backend, "3"))
        .collect();
    // Each topic's ten clients on one node; after the reconnect, all on the next node, so
    // every topic leaves one node and arrives on another.
    let connect_all = |shift: usize| -> Vec<Peer> {
        (0..CLIENTS)
            .map(|i| nodes[(i % TOPICS + shift) % 3].subscriber(&format!("m{}", i % TOPICS)))
            .collect()
    };
    let peers = connect_all(0);
    assert_eq!(backend.wait_delivered(TOPICS).len(), TOPICS);
    let (_, settled) = nodes[0].events("0-0");
    // Every client drops and comes back, to another node (a rolling restart's pattern).
    drop(peers);
    // Every node has seen its clients go (and reported its topics left) before they come
    // back elsewhere.
    for node in &nodes {
        let deadline = Instant::now() + Duration::from_secs(10);
        while node.metric("stratus_topics") != 0 {
            assert!(Instant::now() < deadline, "the closes never reached a node");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    std::thread::sleep(Duration::from_millis(400));
    let peers = connect_all(1);
    let_pass(3.0);
    let (after, _) = nodes[1].events(&settled);
    assert_eq!(after, vec![], "no vacated/occupied pair");
    assert_eq!(backend.delivered().len(), TOPICS);
    // And when they all leave for good, each topic is vacated once.
    drop(peers);
    let delivered = backend.wait_delivered(2 * TOPICS);
    let_pass(3.0);
    assert_eq!(backend.delivered().len(), 2 * TOPICS, "{delivered:?}");
    let vacated = delivered.iter().filter(|(e, _)| e == "vacated").count();
    assert_eq!(vacated, TOPICS);
}

#[test]
fn an_event_left_unposted_by_a_node_that_died_is_posted_by_another() {
    let redis = Redis::start();
    let backend = Backend::start();
    // The backend is down for now: every attempt fails.
    backend.answer_with(&[503; 50]);
    let (broker, url) = (redis.url(), backend.url());
    let short = ["--presence-interval", "0.2", "--presence-lease", "1"];
    let hooked = [
        &["--broker", &*broker, "--occupancy-webhook", &*url],
        &short[..],
    ]
    .concat();
    // Only `poster` has the webhook, so only it takes events; `keeper` decides them.
    let poster = Node::start(&hooked);
    let keeper = Node::start(&[&["--broker", &*broker, "--occupancy-events"], &short[..]].concat());
    let _peer = keeper.subscriber("orphan");
    let deadline = Instant::now() + Duration::from_secs(10);
    while backend.posts().len() < 2 {
        assert!(Instant::now() < deadline, "the poster never tried");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The poster dies mid-retry (SIGKILL); the backend comes back; a new node with the
    // webhook claims the event once it has been idle longer than a lease.
    drop(poster);
    backend.statuses.lock().unwrap().clear();
    let _successor = Node::start(&hooked);
    assert_eq!(backend.wait_delivered(1), [pair("occupied", "orphan")]);
    let_pass(1.0);
    assert_eq!(
        backend.delivered().len(),
        1,
        "posted once, by the successor"
    );
}

/// The names of the webhook group's consumers.
fn webhook_consumers(redis: &Redis) -> Vec<String> {
    let mut conn = redis.connection().unwrap();
    let reply: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg("stratus:events")
        .arg("stratus-webhook")
        .query(&mut conn)
        .unwrap();
    reply
        .iter()
        .filter_map(|c| match c.get("name") {
            Some(redis::Value::BulkString(name)) => Some(String::from_utf8_lossy(name).into()),
            _ => None,
        })
        .collect()
}

#[test]
fn the_webhook_consumer_of_a_node_that_is_gone_is_removed_once_long_idle() {
    let redis = Redis::start();
    let backend = Backend::start();
    let mut conn = redis.connection().unwrap();
    // A node that ran once and is gone: its consumer holds nothing and never reads again.
    let _: redis::Value = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("stratus:events")
        .arg("stratus-webhook")
        .arg("$")
        .arg("MKSTREAM")
        .query(&mut conn)
        .unwrap();
    let _: redis::Value = redis::cmd("XGROUP")
        .arg("CREATECONSUMER")
        .arg("stratus:events")
        .arg("stratus-webhook")
        .arg("ghost")
        .query(&mut conn)
        .unwrap();
    let (broker, url) = (redis.url(), backend.url());
    // Removed past 10 leases (3 s) idle.
    let _node = Node::start(&[
        "--broker",
        &*broker,
        "--occupancy-webhook",
        &*url,
        "--presence-interval",
        "0.1",
        "--presence-lease",
        "0.3",
    ]);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let consumers = webhook_consumers(&redis);
        if !consumers.iter().any(|c| c == "ghost") {
            break;
        }
        assert!(Instant::now() < deadline, "never removed: {consumers:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
