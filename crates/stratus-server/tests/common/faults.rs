//! What the tests of nodes cut off from their broker share (`broker_faults.rs`,
//! `shard_faults.rs`): a config with a history namespace, a steady publisher of numbered
//! messages, and subscribers that read them to the end markers and say what they got (in
//! order, none twice, where the gap notices came), one of them resuming from its last
//! offset at each gap notice.
//!
//! A message is `"{seq}:{ms since the test started}"`, its topic's `seq`-th publish; after
//! the last, `"end"`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::V1;
use crate::common::node::Node;

/// The namespace that keeps a history in [`NamespaceFile`]'s config.
pub const HISTORY_PREFIX: &str = "h:";

/// How often [`publish_until`] publishes to each of its topics.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(20);

/// A config file for the nodes: topics under [`HISTORY_PREFIX`] keep a history (5000),
/// the others none. Removed when dropped.
pub struct NamespaceFile(PathBuf);

impl NamespaceFile {
    /// The file of the test `name` (tests run side by side: each its own).
    pub fn new(name: &str) -> Self {
        let name = format!("stratus-{name}-{}.toml", std::process::id());
        let path = std::env::temp_dir().join(name);
        let config = format!("[namespace.\"{HISTORY_PREFIX}\"]\nhistory = 5000\n");
        std::fs::write(&path, config).unwrap();
        Self(path)
    }

    pub fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for NamespaceFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Raises its flag when dropped (also while a panic unwinds): a publisher stops.
pub struct Raise<'a>(pub &'a AtomicBool);

impl Drop for Raise<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A v1 client of `node` subscribed to `topics`, reading for longer than a cut and a
/// recovery take; the subscribe replies.
pub fn subscribed(node: &Node, topics: &[&str]) -> (V1, Vec<Value>) {
    let mut client = V1::connect(node.ws, "");
    client
        .peer
        .stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let replies = topics
        .iter()
        .enumerate()
        .map(|(id, topic)| {
            let reply = client.ask(json!({"id": id, "op": "subscribe", "topic": topic}));
            assert_eq!(
                (&reply["type"], &reply["id"]),
                (&json!("reply"), &json!(id)),
                "{reply}"
            );
            reply
        })
        .collect();
    (client, replies)
}

/// A publish's answer, for [`publish_until`]'s caller to judge: its topic and sequence
/// number, the status and body, and how long it took.
pub struct Answer<'a> {
    pub topic: &'a str,
    pub seq: u64,
    pub status: u16,
    pub body: &'a str,
    pub took: Duration,
}

/// Publishes message `seq` (`"{seq}:{ms since started}"`) to each of `topics` in turn,
/// then sleeps [`PUBLISH_EVERY`], `seq` from 0 up, until `stop`; hands `answered` each
/// answer; then `"end"` to each topic, which must be taken. How many went to each.
pub fn publish_until(
    node: &Node,
    topics: &[&str],
    stop: &AtomicBool,
    started: Instant,
    mut answered: impl FnMut(Answer<'_>),
) -> u64 {
    let mut seq = 0;
    while !stop.load(Ordering::Relaxed) {
        for &topic in topics {
            let stamp = started.elapsed().as_millis();
            let asked = Instant::now();
            let (status, body) = node.publish(topic, &format!("{seq}:{stamp}"));
            let took = asked.elapsed();
            answered(Answer {
                topic,
                seq,
                status,
                body: &body,
                took,
            });
        }
        seq += 1;
        std::thread::sleep(PUBLISH_EVERY);
    }
    for &topic in topics {
        let (status, body) = node.publish(topic, "end");
        assert_eq!(status, 200, "the end marker to {topic}: {body}");
    }
    seq
}

/// A push: its topic, and its sequence number and stamp (`None` for the end marker).
pub fn parse_push(push: &Value) -> (String, Option<(u64, u64)>) {
    assert_eq!(push["type"], "pub", "{push}");
    let topic = push["topic"].as_str().unwrap().to_owned();
    let data = push["data"].as_str().unwrap();
    let numbers = data
        .split_once(':')
        .map(|(seq, stamp)| (seq.parse().unwrap(), stamp.parse().unwrap()));
    assert!(numbers.is_some() || data == "end", "{push}");
    (topic, numbers)
}

/// Whether `notice` is the gap notice of a node that was cut off from its broker.
pub fn is_cut_off(notice: &Value) -> bool {
    notice["reason"]
        .as_str()
        .is_some_and(|r| r.contains("cut off from the broker"))
}

/// Reads a subscriber to the end markers of its `topics` topics, none of which may miss
/// anything or pause: every message in order from 0, no gap notice. The longest any took
/// from its publish, and how many each topic had.
pub fn witness_delivery(
    client: &mut V1,
    topics: usize,
    started: Instant,
) -> (Duration, HashMap<String, u64>) {
    let mut next: HashMap<String, u64> = HashMap::new();
    let mut ended = 0;
    let mut worst = Duration::ZERO;
    while ended < topics {
        let (topic, numbers) = parse_push(&client.recv());
        let Some((seq, stamp)) = numbers else {
            ended += 1;
            continue;
        };
        let expected = next.entry(topic.clone()).or_default();
        assert_eq!(seq, *expected, "{topic}: in order, none missing");
        *expected += 1;
        worst = worst.max(
            started
                .elapsed()
                .saturating_sub(Duration::from_millis(stamp)),
        );
    }
    (worst, next)
}

/// What one subscriber got, per topic.
#[derive(Debug, Default)]
pub struct Delivered {
    /// Sequence numbers taken, in order of arrival.
    pub seqs: HashMap<String, Vec<u64>>,
    /// Where each gap notice came: how many of `seqs` had been taken by then.
    pub gaps: HashMap<String, Vec<usize>>,
    /// For a resuming subscriber ([`read_resuming`]), whether each resume had anything to
    /// recover (its reply's `recovering`: messages came after the offset it gave).
    pub recovering: Vec<bool>,
}

impl Delivered {
    /// How many gap notices `topic` had.
    pub fn gaps(&self, topic: &str) -> usize {
        self.gaps.get(topic).map_or(0, Vec::len)
    }

    /// What `topic` took.
    pub fn seqs(&self, topic: &str) -> &[u64] {
        self.seqs.get(topic).map_or(&[], Vec::as_slice)
    }

    /// Those of `published` (sequence numbers, ascending) that `topic` did not take, other
    /// than the ones that came, unseen, between the message before a gap notice and the
    /// one after it: what a gap notice does not explain.
    pub fn missing_outside_gaps(&self, topic: &str, published: &[u64]) -> Vec<u64> {
        let seqs = self.seqs(topic);
        let explained = |seq: u64| {
            self.gaps.get(topic).into_iter().flatten().any(|&at| {
                let after = at.checked_sub(1).map(|i| seqs[i]);
                let before = seqs.get(at).copied();
                after.is_none_or(|a| seq > a) && before.is_none_or(|b| seq < b)
            })
        };
        published
            .iter()
            .copied()
            .filter(|seq| seqs.binary_search(seq).is_err() && !explained(*seq))
            .collect()
    }

    /// Takes message `seq` on `topic`: after the one before (none twice, in order).
    fn take(&mut self, topic: String, seq: u64) {
        let seqs = self.seqs.entry(topic.clone()).or_default();
        assert!(
            seqs.last().is_none_or(|&last| seq > last),
            "{topic}: {seq} after {:?}: in order, none twice",
            seqs.last()
        );
        seqs.push(seq);
    }

    /// A gap notice on `topic`, after what it took so far.
    fn gap(&mut self, topic: String) {
        let at = self.seqs(&topic).len();
        self.gaps.entry(topic).or_default().push(at);
    }
}

/// Reads a subscriber of `topics` topics without history to their end markers: in order,
/// none twice, and where the gap notices came (which must say the node was cut off).
pub fn read_plain(mut client: V1, topics: usize) -> Delivered {
    let mut got = Delivered::default();
    let mut ended = 0;
    while ended < topics {
        let message = client.recv();
        if message["type"] == "gap" {
            assert!(is_cut_off(&message), "{message}");
            got.gap(message["topic"].as_str().unwrap().to_owned());
            continue;
        }
        match parse_push(&message) {
            (topic, Some((seq, _))) => got.take(topic, seq),
            (_, None) => ended += 1,
        }
    }
    got
}

/// Reads the subscriber of history topic `topic` (subscribed at offset `since`) to the
/// end marker, as a resuming client does: at a gap notice it subscribes again from the
/// offset of the last message it took, and takes nothing more until that subscribe's
/// reply (what came meanwhile follows it again), which must give that offset back. In
/// order, none twice. Offsets are opaque strings to it (Redis's are `<ms>-<seq>`, NATS's
/// `0-<stream sequence>`).
pub fn read_resuming(mut client: V1, topic: &str, since: String) -> Delivered {
    let mut got = Delivered::default();
    let mut last = since;
    let mut resuming: Option<u64> = None;
    let mut ids = 100;
    loop {
        let message = client.recv();
        match message["type"].as_str() {
            Some("gap") => {
                assert!(is_cut_off(&message), "{message}");
                assert_eq!(message["topic"], topic, "{message}");
                got.gap(topic.to_owned());
                ids += 1;
                let since = last.clone();
                client.send(json!({"id": ids, "op": "subscribe", "topic": topic, "since": since}));
                resuming = Some(ids);
            }
            Some("reply") => {
                assert_eq!(Some(message["id"].as_u64().unwrap()), resuming, "{message}");
                assert_eq!(message["offset"].as_str(), Some(last.as_str()), "{message}");
                got.recovering
                    .push(message["recovering"].as_bool().unwrap());
                resuming = None;
            }
            _ if resuming.is_some() => {}
            _ => {
                let (pushed, numbers) = parse_push(&message);
                assert_eq!(pushed, topic);
                let Some((seq, _)) = numbers else {
                    return got;
                };
                got.take(pushed, seq);
                message["offset"].as_str().unwrap().clone_into(&mut last);
            }
        }
    }
}
