//! Nodes cut off from their broker by a fault proxy (`common::proxy`) for five seconds, then
//! let back, while another node publishes steadily: one node per kind of fault (every
//! connection reset, a blackhole, what the node sends held, what the broker sends held), and
//! one whose link is only slowed, all at the same moment in one shared setup so that a broker
//! kind takes one fault's time. Every fault case runs for every broker kind, Redis and NATS
//! (one test each, run side by side), with the same checks.
//!
//! For each cut node, while cut: a publish on it is answered 503 within the response
//! timeout (never a hang) and readiness turns false; once let back, readiness turns true on
//! its own (the time it takes is printed), subscribers of a topic without history get one
//! gap notice per topic, and a v1 subscriber of a history topic that resumes from its last
//! offset at the gap notice gets every message published meanwhile exactly once, in order.
//! The slowed node stays ready and misses nothing. The publishing node's own subscribers
//! are never interrupted. Needs `redis-server` on the PATH and Debian's `nats-server`
//! (`scripts/test.sh` installs both: `scripts/install-redis.sh`, `scripts/install-nats.sh`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::faults::{
    Delivered, NamespaceFile, Raise, publish_until, read_plain, read_resuming, subscribed,
    witness_delivery,
};
use common::node::Node;
use common::proxy::{Cut, Faults, Proxy};
use stratus_testkit::{Nats, Redis};

/// How long each fault lasts.
const CUT: Duration = Duration::from_secs(5);
/// Latency added each way on the slowed node's broker link: a round trip well within the
/// broker's response timeout (2 s).
const SLOW: Duration = Duration::from_millis(400);
/// A topic in the namespace that keeps a history (see [`NamespaceFile`]).
const HISTORY_TOPIC: &str = "h:feed";
/// Topics without a history.
const PLAIN_TOPICS: [&str; 2] = ["plain:a", "plain:b"];
/// How long a publish to a node that has not yet noticed the cut may wait for its 503:
/// the broker's response timeout (2 s), and room for a busy machine.
const REFUSED_WITHIN: Duration = Duration::from_secs(4);
/// How soon a cut node must notice the cut by itself: the ping's interval (1 s) and
/// timeout (2 s), and room for a busy machine.
const NOTICED_WITHIN: Duration = Duration::from_secs(4);
/// The longest a message from the publishing node may take to reach its own subscriber,
/// whatever the cut nodes do (it takes milliseconds; the cut lasts five seconds).
const PROMPT: Duration = Duration::from_secs(1);

#[test]
fn nodes_cut_from_redis_come_back_on_their_own_and_a_slow_link_costs_nothing() {
    cut_nodes_come_back_and_a_slow_link_costs_nothing(&Broker::Redis(Redis::start()));
}

#[test]
fn nodes_cut_from_nats_come_back_on_their_own_and_a_slow_link_costs_nothing() {
    cut_nodes_come_back_and_a_slow_link_costs_nothing(&Broker::Nats(Nats::start()));
}

/// A broker the nodes share, of either kind.
enum Broker {
    Redis(Redis),
    /// Its history topics go through JetStream (offsets `0-<sequence>`).
    Nats(Nats),
}

impl Broker {
    /// Its kind, for the test's messages.
    fn kind(&self) -> &'static str {
        match self {
            Self::Redis(_) => "redis",
            Self::Nats(_) => "nats",
        }
    }

    /// Where it listens: the proxies' target.
    fn addr(&self) -> SocketAddr {
        let port = match self {
            Self::Redis(redis) => redis.port(),
            Self::Nats(nats) => nats.port(),
        };
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// `--broker` for a node that reaches it at `addr` (itself, or a proxy before it).
    fn url_at(&self, addr: SocketAddr) -> String {
        match self {
            Self::Redis(_) => format!("redis://{addr}/0"),
            Self::Nats(_) => format!("nats://{addr}"),
        }
    }
}

/// The whole fault test against `broker`: the publishing node reaches it directly, each
/// faulty node through a proxy of its own.
fn cut_nodes_come_back_and_a_slow_link_costs_nothing(broker: &Broker) {
    let config = NamespaceFile::new(&format!("broker-faults-{}", broker.kind()));
    let flags = ["--config", config.path()];
    let publisher = Node::start_on(&broker.url_at(broker.addr()), &flags);
    let mut faults = vec![Fault::Cut(Cut::Drop, Probe::AtOnce), Fault::Slow(SLOW)];
    for cut in [Cut::Blackhole, Cut::ToTarget, Cut::ToClient] {
        faults.extend([
            Fault::Cut(cut, Probe::AtOnce),
            Fault::Cut(cut, Probe::Later),
        ]);
    }
    // Started side by side: each start waits for its node to listen and subscribe.
    let nodes: Vec<FaultyNode> = std::thread::scope(|scope| {
        let starting: Vec<_> = faults
            .iter()
            .map(|&fault| scope.spawn(move || FaultyNode::start(fault, broker, &flags)))
            .collect();
        starting.into_iter().map(|s| s.join().unwrap()).collect()
    });
    let (mut witness, _) = subscribed(&publisher, &all_topics());
    publisher.wait_topics(3);

    let started = Instant::now();
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        // Raised when the nodes are done, or as a check fails: the publisher stops.
        let stopping = Raise(&stop);
        let publishing = scope.spawn(|| {
            publish_until(&publisher, &all_topics(), &stop, started, |answer| {
                assert_eq!(
                    answer.status, 200,
                    "the publishing node refused: {}",
                    answer.body
                );
            })
        });
        let witnessed =
            scope.spawn(move || witness_delivery(&mut witness, all_topics().len(), started).0);
        let faulted: Vec<_> = nodes
            .iter()
            .map(|node| scope.spawn(move || node.fault_and_check(started)))
            .collect();
        // Every node is back, and has had messages since: then the last ones.
        for node in faulted {
            node.join().unwrap();
        }
        std::thread::sleep(Duration::from_millis(300));
        drop(stopping);
        let rounds = publishing.join().unwrap();
        let worst = witnessed.join().unwrap();
        let kind = broker.kind();
        eprintln!(
            "{kind}: the publishing node: {rounds} messages per topic, each at its own \
             subscriber within {worst:?}"
        );
        assert!(
            worst < PROMPT,
            "{kind}: the publishing node stalled: {worst:?}"
        );
        for node in &nodes {
            node.check_delivery(rounds);
        }
    });
    assert_eq!(
        publisher.metric("stratus_broker_disconnects_total"),
        0,
        "{}",
        broker.kind()
    );
    for node in &nodes {
        let lost = match node.fault {
            Fault::Cut(..) => 1,
            Fault::Slow(_) => 0,
        };
        assert_eq!(
            node.node.metric("stratus_broker_disconnects_total"),
            lost,
            "{}: sessions lost",
            node.label
        );
    }
}

/// What the proxy does to a node's broker connections for [`CUT`].
#[derive(Clone, Copy, Debug)]
enum Fault {
    Cut(Cut, Probe),
    /// This much more latency each way: slower, never lost.
    Slow(Duration),
}

/// When a cut node is first asked to publish.
#[derive(Clone, Copy, Debug)]
enum Probe {
    /// As the cut starts: the publish waits for the broker, which never answers, and is
    /// refused at the response timeout (which also ends the session).
    AtOnce,
    /// Once the node has noticed the cut by itself (the pub/sub connection's ping, or
    /// the connection closing).
    Later,
}

/// A node whose broker connections go through a proxy, with its subscribers: the
/// resuming one of the history topic, the one of the topics without history (each on its
/// own thread until the end markers).
struct FaultyNode {
    fault: Fault,
    /// The broker's kind and the fault, for the messages.
    label: String,
    node: Node,
    proxy: Proxy,
    readers: Mutex<Vec<JoinHandle<Delivered>>>,
}

impl FaultyNode {
    fn start(fault: Fault, broker: &Broker, flags: &[&str]) -> Self {
        let proxy = Proxy::start(broker.addr(), Faults::default());
        let node = Node::start_on(&broker.url_at(proxy.addr), flags);
        let (resuming, replies) = subscribed(&node, &[HISTORY_TOPIC]);
        let since = replies[0]["offset"].as_str().unwrap().to_owned();
        let (plain, _) = subscribed(&node, &PLAIN_TOPICS);
        node.wait_topics(3);
        let readers = vec![
            std::thread::spawn(move || read_resuming(resuming, HISTORY_TOPIC, since)),
            std::thread::spawn(move || read_plain(plain, PLAIN_TOPICS.len())),
        ];
        Self {
            fault,
            label: format!("{} {fault:?}", broker.kind()),
            node,
            proxy,
            readers: Mutex::new(readers),
        }
    }

    /// Lets traffic flow a moment, applies the fault for [`CUT`], lifts it, and checks
    /// what the node says and answers meanwhile.
    fn fault_and_check(&self, started: Instant) {
        std::thread::sleep(Duration::from_millis(500).saturating_sub(started.elapsed()));
        match self.fault {
            Fault::Cut(cut, probe) => self.cut(cut, probe),
            Fault::Slow(latency) => self.slow(latency),
        }
        // Publishes on it work again.
        let (status, body) = self.node.publish("probe", "back");
        assert_eq!(status, 200, "{}: {body}", self.label);
    }

    /// Cuts the node off for [`CUT`]: readiness turns false (within the ping's interval
    /// and timeout, if no publish shows the cut first), publishes on it are refused within
    /// the response timeout, and readiness turns true again once the cut ends; prints how
    /// long each took.
    fn cut(&self, cut: Cut, probe: Probe) {
        self.proxy.cut(cut);
        let cut_at = Instant::now();
        // At once, before the node may have noticed: refused, not left hanging.
        let first = matches!(probe, Probe::AtOnce).then(|| self.refused());
        self.wait_ready(false, Duration::from_secs(10));
        let noticed = cut_at.elapsed();
        assert!(noticed < NOTICED_WITHIN, "{}: {noticed:?}", self.label);
        // Once it has noticed, refused at once.
        let then = self.refused();
        assert!(then < Duration::from_secs(1), "{}: {then:?}", self.label);
        while cut_at.elapsed() + Duration::from_millis(600) < CUT {
            self.refused();
            std::thread::sleep(Duration::from_millis(500));
        }
        std::thread::sleep(CUT.saturating_sub(cut_at.elapsed()));
        self.proxy.restore();
        let restored_at = Instant::now();
        self.wait_ready(true, Duration::from_secs(15));
        let recovered = restored_at.elapsed();
        let first = first.map_or(String::new(), |f| {
            format!("a publish refused after {f:?}, ")
        });
        eprintln!(
            "{}: {first}not ready after {noticed:?}; ready again {recovered:?} after the \
             restore",
            self.label
        );
    }

    /// Slows the node's broker link for [`CUT`]: it stays ready and its publishes are
    /// taken, each after the round trip; prints the slowest.
    fn slow(&self, latency: Duration) {
        self.proxy.slow(latency);
        let slowed_at = Instant::now();
        let mut slowest = Duration::ZERO;
        while slowed_at.elapsed() < CUT {
            let asked = Instant::now();
            let (status, body) = self.node.publish("probe", "slow");
            assert_eq!(status, 200, "{}: {body}", self.label);
            slowest = slowest.max(asked.elapsed());
            let (status, body) = self.node.get("/readyz");
            assert_eq!(status, 200, "{}: {body}", self.label);
            std::thread::sleep(Duration::from_millis(200));
        }
        self.proxy.restore();
        assert!(
            slowest >= 2 * latency,
            "{}: {slowest:?}: the link was not slowed",
            self.label
        );
        eprintln!(
            "{}: ready throughout, the slowest publish took {slowest:?}",
            self.label
        );
    }

    /// Publishes on the cut node: it must answer 503 within [`REFUSED_WITHIN`]; how long
    /// it took.
    fn refused(&self) -> Duration {
        let asked = Instant::now();
        let (status, body) = self.node.publish("probe", "lost?");
        let took = asked.elapsed();
        let fault = &self.label;
        assert_eq!(status, 503, "{fault}: {body}");
        assert!(body.contains("broker is unavailable"), "{fault}: {body}");
        assert!(took < REFUSED_WITHIN, "{fault}: the 503 took {took:?}");
        took
    }

    /// Waits until `/readyz` says `ready`, `within` at most.
    fn wait_ready(&self, ready: bool, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let (status, body) = self.node.get("/readyz");
            if (status == 200) == ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: readiness did not become {ready}: {status} {body}",
                self.label
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Checks what the node's subscribers got, `rounds` messages having been published to
    /// each topic: cut, one gap notice per topic (and everything for the resuming
    /// subscriber of the history topic); slowed, everything and no gap.
    fn check_delivery(&self, rounds: u64) {
        let fault = &self.label;
        let gaps = match self.fault {
            Fault::Cut(..) => 1,
            Fault::Slow(_) => 0,
        };
        let readers = std::mem::take(&mut *self.readers.lock().unwrap());
        let mut delivered = readers.into_iter().map(|r| r.join().unwrap());
        let (resumed, plain) = (delivered.next().unwrap(), delivered.next().unwrap());
        assert_eq!(resumed.gaps(HISTORY_TOPIC), gaps, "{fault}");
        // Published throughout: each resume had something to recover.
        assert_eq!(resumed.recovering, vec![true; gaps], "{fault}");
        let every: Vec<u64> = (0..rounds).collect();
        assert_eq!(
            resumed.seqs(HISTORY_TOPIC),
            every,
            "{fault}: every message, once, in order"
        );
        // The others: what came was in order, none twice (the reader checked), and one
        // run of messages was missing at the gap notice.
        for topic in PLAIN_TOPICS {
            assert_eq!(plain.gaps(topic), gaps, "{fault}: gap notices, {topic}");
            let missing = plain.missing_outside_gaps(topic, &every);
            assert_eq!(
                missing, [0; 0],
                "{fault}: {topic}: missed, not at the gap notice"
            );
            let seqs = plain.seqs(topic);
            assert_eq!(seqs.last(), Some(&(rounds - 1)), "{fault} {topic}");
            if gaps == 0 {
                assert_eq!(seqs, every, "{fault}: every message, once, in order");
            }
            eprintln!(
                "{fault}: {topic} without history missed {} of {rounds}",
                rounds as usize - seqs.len()
            );
        }
    }
}

/// Every topic the nodes' subscribers take.
fn all_topics() -> Vec<&'static str> {
    let mut topics = vec![HISTORY_TOPIC];
    topics.extend(PLAIN_TOPICS);
    topics
}
