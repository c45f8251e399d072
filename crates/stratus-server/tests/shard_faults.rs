//! Nodes over three broker shards, each reached through a fault proxy of its own
//! (`common::proxy`), for both kinds of sharded broker:
//!
//! - the three masters of a Redis Cluster, which announce the proxies' ports (`CLUSTER
//!   SLOTS` names them, which the nodes follow; their cluster bus stays direct): a
//!   topic's shard is its slot's master, and the first shard, which carries what is
//!   node-wide (the control channel, presence, the node list), is the control channel's;
//! - three independent Redis instances (`--broker redis://a,redis://b,redis://c`, each URL
//!   a proxy's): a topic's shard is the one the nodes' jump hash names (`common::shard`,
//!   the server's own code), and the first in the list carries what is node-wide.
//!
//! One shard is cut off from every node for five seconds while the publishing node
//! publishes steadily to a topic without history and one with (`h:`) on every shard, and
//! a second node subscribes. For each kind, one test blackholes a shard that does not
//! carry what is node-wide, the other resets every connection to the one that does (the
//! four run side by side).
//!
//! While cut: publishes to the cut shard's topics are answered 503 within the response
//! timeout (never a hang), the other shards' topics keep being taken and reach the second
//! node's subscriber promptly with nothing missing, every node stays ready and `/readyz`
//! shows the cut shard down. Once let back, that shard comes back up on its own (the time
//! it takes is printed), a subscriber of its topic without history gets one gap notice,
//! and a v1 subscriber of its history topic that resumes from its last offset at the gap
//! notice gets every message that was taken exactly once, in order. A publish refused as
//! the cut began may still have reached Redis (the proxy delivers what it held at the
//! restore, as TCP would once a partition heals): such a message may come too, at most
//! once and in order.
//!
//! The nodes share each shard's proxy, so they lose the shard and get it back together:
//! little or nothing is published to its topics while one node is back and another not.
//! In the blackhole tests a third node is frozen (`SIGSTOP`) across the restore, so that
//! it comes back after messages were taken: its subscriber without history misses them,
//! and its resuming one must get them from the history. Needs `redis-server` and
//! `redis-cli` on the PATH (`scripts/install-redis.sh`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/shard.rs"]
mod shard;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::V1;
use common::faults::{
    Answer, Delivered, HISTORY_PREFIX, NamespaceFile, Raise, publish_until, read_plain,
    read_resuming, subscribed, witness_delivery,
};
use common::node::{Node, wait_broker};
use common::proxy::{Cut, Faults, Proxy};
use stratus_testkit::{Redis, RedisCluster};

/// How many shards: Redis Cluster masters, or independent Redis instances.
const SHARDS: usize = 3;
/// How long the cut lasts.
const CUT: Duration = Duration::from_secs(5);
/// How long a publish to the cut shard may wait for its 503: the broker's response
/// timeout (2 s), and room for a busy machine.
const REFUSED_WITHIN: Duration = Duration::from_secs(4);
/// How soon every node must show the cut shard down: the ping's interval (1 s) and
/// timeout (2 s), and room for a busy machine.
const NOTICED_WITHIN: Duration = Duration::from_secs(4);
/// The longest the other shards' topics may go without a publish taken, or a message
/// from the publishing node may take to reach the other node's subscriber (it takes
/// milliseconds; the cut lasts five seconds).
const PROMPT: Duration = Duration::from_secs(1);
/// The control channel: its master carries what is node-wide, the nodes' first shard.
const NODE_WIDE: &str = "{stratus!}control";

#[test]
fn a_master_blackholed_fails_only_its_topics_which_come_back_on_their_own() {
    cut_one_shard(Kind::Cluster, Cut::Blackhole, Carrying::TopicsOnly, true);
}

/// No late node: every node retries on the same backoff from the same moment (the reset),
/// so the others are back only a second or more after the restore, longer than a node
/// may be frozen without its requests to the other shards timing out (2 s).
#[test]
fn the_node_wide_master_reset_fails_only_its_topics_which_come_back_on_their_own() {
    cut_one_shard(Kind::Cluster, Cut::Drop, Carrying::NodeWide, false);
}

#[test]
fn an_independent_shard_blackholed_fails_only_its_topics_which_come_back_on_their_own() {
    cut_one_shard(
        Kind::Independent,
        Cut::Blackhole,
        Carrying::TopicsOnly,
        true,
    );
}

/// No late node, as with the node-wide master.
#[test]
fn the_first_independent_shard_reset_fails_only_its_topics_which_come_back_on_their_own() {
    cut_one_shard(Kind::Independent, Cut::Drop, Carrying::NodeWide, false);
}

/// What the nodes' broker is made of.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// The masters of one Redis Cluster.
    Cluster,
    /// Independent Redis instances, one `redis://` URL each.
    Independent,
}

/// Which shard a test cuts.
#[derive(Clone, Copy, Debug)]
enum Carrying {
    /// The first: it carries what is node-wide (the control channel, presence, the node
    /// list).
    NodeWide,
    /// The second, which carries topics only.
    TopicsOnly,
}

/// The Redis instances behind the nodes' broker, each behind a proxy of its own.
struct Broker {
    redis: Instances,
    /// The proxies in the nodes' shard order: shard `s` is reached through `proxies[s]`.
    proxies: Vec<Proxy>,
    /// The nodes' `--broker`.
    url: String,
}

/// The Redis instances of a [`Broker`], kept running as long as it lives.
enum Instances {
    /// The cluster, and its masters in the nodes' shard order.
    Cluster(RedisCluster, Vec<usize>),
    /// The independent instances, in the `--broker` list's order.
    Independent(Vec<Redis>),
}

impl Broker {
    fn start(kind: Kind) -> Self {
        match kind {
            Kind::Cluster => {
                let (cluster, proxies) = proxied_cluster();
                assert_slots_name_the_proxies(&cluster, &proxies);
                let order = shard_order(&cluster);
                let mut proxies: Vec<Option<Proxy>> = proxies.into_iter().map(Some).collect();
                let proxies = order.iter().map(|&m| proxies[m].take().unwrap()).collect();
                // The seeds are the masters' own ports: the nodes follow `CLUSTER SLOTS`
                // to the proxies.
                let url = cluster.url();
                Self {
                    redis: Instances::Cluster(cluster, order),
                    proxies,
                    url,
                }
            }
            Kind::Independent => {
                let instances: Vec<Redis> = (0..SHARDS).map(|_| Redis::start()).collect();
                let proxies: Vec<Proxy> = instances
                    .iter()
                    .map(|redis| {
                        let target = SocketAddr::from(([127, 0, 0, 1], redis.port()));
                        Proxy::start(target, Faults::default())
                    })
                    .collect();
                let url = proxies
                    .iter()
                    .map(|proxy| format!("redis://{}", proxy.addr))
                    .collect::<Vec<_>>()
                    .join(",");
                Self {
                    redis: Instances::Independent(instances),
                    proxies,
                    url,
                }
            }
        }
    }

    /// How many shards.
    fn len(&self) -> usize {
        self.proxies.len()
    }

    /// The shard that carries `topic`: the one whose master serves its channel's slot, as
    /// the cluster says; or the one the nodes' jump hash names over the list.
    fn shard_of(&self, topic: &str) -> usize {
        match &self.redis {
            Instances::Cluster(cluster, order) => {
                let master = cluster.master_of(&format!("stratus:{{{topic}}}"));
                order.iter().position(|&m| m == master).unwrap()
            }
            Instances::Independent(instances) => shard::shard_of(topic, instances.len()),
        }
    }
}

/// A cluster whose masters each announce the port of a proxy of their own; the proxies
/// in the masters' order.
fn proxied_cluster() -> (RedisCluster, Vec<Proxy>) {
    let mut proxies: HashMap<u16, Proxy> = HashMap::new();
    let cluster = RedisCluster::start_announcing(SHARDS, |port| {
        let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], port)), Faults::default());
        let announced = proxy.addr.port();
        proxies.insert(port, proxy);
        announced
    });
    // Those of masters that could not start on their port go.
    let proxies = (0..cluster.len())
        .map(|m| proxies.remove(&cluster.port(m)).unwrap())
        .collect();
    (cluster, proxies)
}
/// Checks that every master's `CLUSTER SLOTS` names each master (by its id) at its
/// proxy's address: what the nodes reach it through.
fn assert_slots_name_the_proxies(cluster: &RedisCluster, proxies: &[Proxy]) {
    let ids: Vec<String> = (0..cluster.len())
        .map(|m| {
            redis::cmd("CLUSTER")
                .arg("MYID")
                .query(&mut cluster.connection(m))
                .unwrap()
        })
        .collect();
    for asked in 0..cluster.len() {
        // Each range: its first and last slot, and its master's endpoint, port, id and
        // networking metadata (no replicas).
        type Range = (u16, u16, (String, u16, String, redis::Value));
        let slots: Vec<Range> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query(&mut cluster.connection(asked))
            .unwrap();
        assert_eq!(slots.len(), cluster.len(), "{slots:?}");
        for (first, last, (host, port, id, _)) in &slots {
            let master = ids.iter().position(|i| i == id).unwrap();
            let proxy = proxies[master].addr;
            assert_eq!(
                (host.as_str(), *port),
                ("127.0.0.1", proxy.port()),
                "master {asked} names master {master} (slots {first}-{last}) elsewhere \
                 than its proxy"
            );
            assert_ne!(*port, cluster.port(master));
        }
    }
}

/// The masters in the nodes' shard order: the node-wide slot's master first, then the
/// others by the address they announce.
fn shard_order(cluster: &RedisCluster) -> Vec<usize> {
    let node_wide = cluster.master_of(NODE_WIDE);
    let mut order: Vec<usize> = (0..cluster.len()).filter(|&m| m != node_wide).collect();
    order.sort_by_key(|&m| cluster.announced_port(m));
    order.insert(0, node_wide);
    order
}

/// A topic without history and one with, on each shard: `[plain, history]` by shard.
fn topics_by_shard(broker: &Broker) -> Vec<[String; 2]> {
    let mut plain = vec![None; broker.len()];
    let mut history = vec![None; broker.len()];
    for i in 0.. {
        if plain.iter().chain(&history).all(Option::is_some) {
            break;
        }
        for (prefix, topics) in [("plain:", &mut plain), (HISTORY_PREFIX, &mut history)] {
            let topic = format!("{prefix}{i}");
            topics[broker.shard_of(&topic)].get_or_insert(topic);
        }
    }
    plain
        .into_iter()
        .zip(history)
        .map(|(p, h)| [p.unwrap(), h.unwrap()])
        .collect()
}

/// The answers to one topic's publishes: the sequence numbers taken (200) and refused
/// (503, the broker unavailable), and when each was answered.
#[derive(Debug, Default)]
struct Outcomes {
    taken: Vec<(u64, Duration)>,
    refused: Vec<u64>,
}

impl Outcomes {
    fn taken(&self) -> Vec<u64> {
        self.taken.iter().map(|(seq, _)| *seq).collect()
    }
}

/// Checks a publish's `answer`: taken, or (`may_fail`) refused as unavailable; either
/// within [`REFUSED_WITHIN`]. Records it.
fn judge(answer: &Answer<'_>, may_fail: bool, started: Instant, outcomes: &mut Outcomes) {
    let Answer {
        topic,
        seq,
        status,
        body,
        took,
    } = *answer;
    assert!(
        took < REFUSED_WITHIN,
        "{topic} {seq}: answered after {took:?}"
    );
    match status {
        200 => outcomes.taken.push((seq, started.elapsed())),
        503 if may_fail => {
            assert!(body.contains("broker is unavailable"), "{topic}: {body}");
            outcomes.refused.push(seq);
        }
        _ => panic!("{topic} {seq}: {status} {body}"),
    }
}

/// Polls `node`'s `/readyz` until `stop`: always ready (200), every shard but `cut` up;
/// the states `cut` went through, each once in a row (`["up", "down", "up"]`).
fn watch_readiness(node: &Node, cut: usize, stop: &AtomicBool) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let (status, body) = node.get("/readyz");
        assert_eq!(status, 200, "{body}");
        let readiness: serde_json::Value = serde_json::from_str(&body).unwrap();
        let shards = readiness["shards"].as_array().unwrap();
        for (shard, state) in shards.iter().enumerate() {
            let state = state.as_str().unwrap();
            if shard != cut {
                assert_eq!(state, "up", "shard {shard}: {body}");
            } else if seen.last().is_none_or(|s| s != state) {
                seen.push(state.to_owned());
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    seen
}

/// A node of the test, and what it is for.
struct Member {
    /// `publishing` (every publish goes through it), `subscribing` (it also carries the
    /// subscriber of the other shards' topics) or `late` (frozen across the restore).
    role: &'static str,
    node: Node,
}

/// Subscribers of the lost shard's topics on a node: one of the topic without history,
/// and one of the history topic that resumes from its last offset at a gap notice (its
/// first offset).
struct LostReaders {
    plain: V1,
    resuming: V1,
    since: String,
}

impl LostReaders {
    fn subscribe(node: &Node, plain: &str, history: &str) -> Self {
        let (plain, _) = subscribed(node, &[plain]);
        let (resuming, replies) = subscribed(node, &[history]);
        let since = replies[0]["offset"].as_str().unwrap().to_owned();
        Self {
            plain,
            resuming,
            since,
        }
    }
}

/// Sends `SIGCONT` to a node frozen with `SIGSTOP` when dropped (also while a panic
/// unwinds).
struct Thaw<'a>(&'a Node);

impl Drop for Thaw<'_> {
    fn drop(&mut self) {
        common::signal(&self.0.child, "CONT");
    }
}

/// What the nodes' subscribers got, and saw of their readiness.
struct Seen {
    /// The longest a message on the other shards' topics took to the subscribing node.
    worst: Duration,
    /// How many messages each of the other shards' topics had there.
    witnessed: HashMap<String, u64>,
    /// Per node: the lost shard's topic without history, and its history topic resumed.
    delivered: Vec<(Delivered, Delivered)>,
    /// Per node: the states the lost shard went through.
    states: Vec<Vec<String>>,
}

/// Starts a `kind` broker, cuts its `carrying` shard off from the nodes with `cut`, and
/// checks all. With `late`, a third node is frozen across the restore (`SIGSTOP`, until
/// the others have had the lost shard's topics back for a while): it is back after
/// messages were taken there, which its resuming subscriber must recover from the history
/// (the two others come back together, with little or nothing published meanwhile).
fn cut_one_shard(kind: Kind, cut: Cut, carrying: Carrying, late: bool) {
    let name = format!("{kind:?}: {cut:?} of the {carrying:?} shard");
    let broker = Broker::start(kind);
    let lost = match carrying {
        Carrying::NodeWide => 0,
        Carrying::TopicsOnly => 1,
    };
    let topics = topics_by_shard(&broker);
    let [lost_plain, lost_history] = [&topics[lost][0], &topics[lost][1]];
    let others: Vec<&str> = (0..broker.len())
        .filter(|&s| s != lost)
        .flat_map(|s| topics[s].iter().map(String::as_str))
        .collect();

    let config = NamespaceFile::new(&format!("shard-faults-{kind:?}-{cut:?}"));
    let flags = ["--config", config.path()];
    let up = vec!["up"; broker.len()];
    let mut roles = vec!["publishing", "subscribing"];
    roles.extend(late.then_some("late"));
    let members: Vec<Member> = std::thread::scope(|scope| {
        let starting: Vec<_> = roles
            .iter()
            .map(|&role| {
                let (url, up) = (&broker.url, &up);
                scope.spawn(move || {
                    let node = Node::start_on(url, &flags);
                    wait_broker(&node, "up", up);
                    Member { role, node }
                })
            })
            .collect();
        starting.into_iter().map(|s| s.join().unwrap()).collect()
    });
    let (publisher, subscriber) = (&members[0].node, &members[1].node);
    let (witness, _) = subscribed(subscriber, &others);
    let readers: Vec<LostReaders> = members
        .iter()
        .map(|m| LostReaders::subscribe(&m.node, lost_plain, lost_history))
        .collect();
    // Every node has its topics on the shards the test expects them on: the lost shard's
    // on it, the others' (on the subscribing node) two on each other shard.
    for member in &members {
        let subscribing = member.role == "subscribing";
        let more = if subscribing { others.len() } else { 0 };
        member.node.wait_topics(2 + more as u64);
        for shard in 0..broker.len() {
            let metric = format!("stratus_broker_shard_topics{{shard=\"{shard}\"}}");
            let expected = if shard == lost || subscribing { 2 } else { 0 };
            let role = member.role;
            assert_eq!(
                member.node.metric(&metric),
                expected,
                "{name}: {role}: {metric}"
            );
        }
    }

    let started = Instant::now();
    let stop = AtomicBool::new(false);
    let outcomes: Mutex<HashMap<String, Outcomes>> = Mutex::new(HashMap::new());
    let seen = std::thread::scope(|scope| {
        // Raised when the cut is over and its topics are back, or as a check fails.
        let stopping = Raise(&stop);
        let (stop, outcomes) = (&stop, &outcomes);
        // One publisher per shard: a publish to the lost one that waits must not hold up
        // the others.
        let publishing: Vec<_> = topics
            .iter()
            .enumerate()
            .map(|(shard, pair)| {
                scope.spawn(move || {
                    let pair = [pair[0].as_str(), pair[1].as_str()];
                    let mut mine: [Outcomes; 2] = Default::default();
                    publish_until(publisher, &pair, stop, started, |answer| {
                        let i = usize::from(answer.topic != pair[0]);
                        judge(&answer, shard == lost, started, &mut mine[i]);
                    });
                    let mut outcomes = outcomes.lock().unwrap();
                    for (topic, mine) in pair.into_iter().zip(mine) {
                        outcomes.insert(topic.to_owned(), mine);
                    }
                })
            })
            .collect();
        let watched = others.len();
        let mut witness = witness;
        let witnessing = scope.spawn(move || witness_delivery(&mut witness, watched, started));
        let reading: Vec<_> = readers
            .into_iter()
            .map(|r| {
                let lost_history = lost_history.as_str();
                (
                    scope.spawn(move || read_plain(r.plain, 1)),
                    scope.spawn(move || read_resuming(r.resuming, lost_history, r.since)),
                )
            })
            .collect();
        let watching: Vec<_> = members
            .iter()
            .map(|m| scope.spawn(move || watch_readiness(&m.node, lost, stop)))
            .collect();

        std::thread::sleep(Duration::from_millis(500));
        let shard = (lost, broker.len());
        cut_and_restore(&name, &broker.proxies[lost], cut, &members, shard);
        // Some messages after the recovery, then the end.
        std::thread::sleep(Duration::from_millis(500));
        drop(stopping);
        for publishing in publishing {
            publishing.join().unwrap();
        }
        let (worst, witnessed) = witnessing.join().unwrap();
        Seen {
            worst,
            witnessed,
            delivered: reading
                .into_iter()
                .map(|(plain, resuming)| (plain.join().unwrap(), resuming.join().unwrap()))
                .collect(),
            states: watching.into_iter().map(|w| w.join().unwrap()).collect(),
        }
    });
    let outcomes = outcomes.into_inner().unwrap();
    check_other_shards(&name, &others, &outcomes, &seen);
    check_lost_shard(
        &name,
        [lost_plain, lost_history],
        &outcomes,
        &members,
        &seen,
    );
    // One session lost with the lost shard, on each node; none with the others.
    for member in &members {
        for shard in 0..broker.len() {
            let metric = format!("stratus_broker_shard_disconnects_total{{shard=\"{shard}\"}}");
            let disconnects = u64::from(shard == lost);
            let role = member.role;
            assert_eq!(
                member.node.metric(&metric),
                disconnects,
                "{name}: {role}: {metric}"
            );
        }
    }
}

/// Cuts `proxy` off with `cut` for [`CUT`]: every node shows shard `lost` of `shards`
/// down (and is still ready: the watchers check), then up on its own once the cut ends;
/// prints how long each took. A `late` node is frozen across the restore until the others
/// have been back half a second.
fn cut_and_restore(
    name: &str,
    proxy: &Proxy,
    cut: Cut,
    members: &[Member],
    (lost, shards): (usize, usize),
) {
    let up = vec!["up"; shards];
    let mut degraded = up.clone();
    degraded[lost] = "down";
    proxy.cut(cut);
    let cut_at = Instant::now();
    for member in members {
        wait_broker(&member.node, "degraded", &degraded);
    }
    let noticed = cut_at.elapsed();
    assert!(noticed < NOTICED_WITHIN, "{name}: {noticed:?}");
    std::thread::sleep(CUT.saturating_sub(cut_at.elapsed() + Duration::from_millis(100)));
    let (on_time, late): (Vec<&Member>, Vec<&Member>) =
        members.iter().partition(|m| m.role != "late");
    let frozen: Vec<Thaw<'_>> = late
        .iter()
        .map(|m| {
            common::signal(&m.node.child, "STOP");
            Thaw(&m.node)
        })
        .collect();
    std::thread::sleep(CUT.saturating_sub(cut_at.elapsed()));
    proxy.restore();
    let restored_at = Instant::now();
    for member in &on_time {
        wait_broker(&member.node, "up", &up);
    }
    let recovered = restored_at.elapsed();
    eprintln!(
        "{name}: every node showed its shard down {noticed:?} after the cut; up again \
         {recovered:?} after the restore"
    );
    if !frozen.is_empty() {
        std::thread::sleep(Duration::from_millis(500));
        drop(frozen);
        let thawed_at = Instant::now();
        for member in &late {
            wait_broker(&member.node, "up", &up);
        }
        eprintln!(
            "{name}: the late node, thawed {:?} after the restore: up {:?} after",
            thawed_at - restored_at,
            thawed_at.elapsed()
        );
    }
}

/// The other shards: every publish taken, none paused, each message at the subscribing
/// node promptly, in order, none missing.
fn check_other_shards(
    name: &str,
    others: &[&str],
    outcomes: &HashMap<String, Outcomes>,
    seen: &Seen,
) {
    for &topic in others {
        let taken = &outcomes[topic].taken;
        let longest = taken
            .windows(2)
            .map(|w| w[1].1.saturating_sub(w[0].1))
            .max()
            .unwrap();
        assert!(longest < PROMPT, "{name}: {topic} paused {longest:?}");
        assert_eq!(seen.witnessed[topic], taken.len() as u64, "{name}: {topic}");
    }
    let worst = seen.worst;
    eprintln!(
        "{name}: the other shards' topics, {} messages each, at the other node within \
         {worst:?}",
        outcomes[others[0]].taken.len()
    );
    assert!(
        worst < PROMPT,
        "{name}: the other shards stalled: {worst:?}"
    );
}

/// The lost shard's topics: refused while cut, taken again after; on every node, the
/// shard went down and up, the topic without history had one gap notice and missed
/// nothing taken but where it came, and the resumed history topic had every message
/// taken, once, in order (and maybe some that were refused as the cut began, yet reached
/// Redis). The late node missed some, and recovered them.
fn check_lost_shard(
    name: &str,
    [plain, history]: [&str; 2],
    outcomes: &HashMap<String, Outcomes>,
    members: &[Member],
    seen: &Seen,
) {
    for topic in [plain, history] {
        let Outcomes { taken, refused } = &outcomes[topic];
        assert!(
            !refused.is_empty(),
            "{name}: {topic}: the cut refused nothing"
        );
        assert!(
            taken.last().unwrap().0 > *refused.last().unwrap(),
            "{name}: {topic}: nothing taken after the cut"
        );
        eprintln!(
            "{name}: {topic}: {} refused (the first {}) of {}",
            refused.len(),
            refused[0],
            refused.len() + taken.len()
        );
    }
    let (plain_taken, history_taken) = (outcomes[plain].taken(), outcomes[history].taken());
    let refused = &outcomes[history].refused;
    for (member, ((unresumed, resumed), states)) in
        members.iter().zip(seen.delivered.iter().zip(&seen.states))
    {
        let role = member.role;
        assert_eq!(states, &["up", "down", "up"], "{name}: {role}: readiness");
        assert_eq!(unresumed.gaps(plain), 1, "{name}: {role}");
        let missing = unresumed.missing_outside_gaps(plain, &plain_taken);
        assert_eq!(missing, [0; 0], "{name}: {role}: {plain}");
        let got = unresumed.seqs(plain);
        assert_eq!(got.last(), plain_taken.last(), "{name}: {role}");
        let unseen = plain_taken.iter().filter(|s| !got.contains(s)).count();
        assert_eq!(resumed.gaps(history), 1, "{name}: {role}");
        let (kept, extra): (Vec<u64>, Vec<u64>) = resumed
            .seqs(history)
            .iter()
            .partition(|s| history_taken.binary_search(s).is_ok());
        assert_eq!(kept, history_taken, "{name}: {role}: {history}");
        assert!(
            extra.iter().all(|s| refused.contains(s)),
            "{name}: {role}: {extra:?} were never published"
        );
        if role == "late" {
            assert!(unseen > 0, "{name}: the late node missed nothing");
            assert_eq!(resumed.recovering, [true], "{name}: the late node");
        }
        let recovered = if resumed.recovering == [true] {
            "from its history"
        } else {
            "with nothing to recover"
        };
        eprintln!(
            "{name}: the {role} node: {plain} without history missed {unseen} of {}; \
             {history} resumed {recovered}, and had all {} (and {} refused ones that \
             reached Redis)",
            plain_taken.len(),
            kept.len(),
            extra.len()
        );
    }
}
