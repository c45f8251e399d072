//! The broker task against a real Redis and a fake node: what the task tells the node
//! (confirmations, messages, history pages) is recorded, and the node can say it is
//! behind. No hub, no worker.

use std::sync::Mutex;
use std::sync::atomic::AtomicU32;
use std::thread::JoinHandle;
use std::time::Instant;

use stratus_testkit::Redis;

use super::*;
use crate::messages::Overloaded;
use crate::model::conn_id::ConnId;
use crate::model::offset::Since;

/// A node that records what the broker hands it, and refuses the first `behind`
/// deliveries (its workers are behind).
#[derive(Default)]
struct FakeNode {
    seen: Mutex<Vec<String>>,
    pages: Mutex<Vec<HistoryPage>>,
    behind: AtomicU32,
}

impl FakeNode {
    fn seen(&self) -> Vec<String> {
        self.seen.lock().expect("lock").clone()
    }

    /// Waits (up to 10 s) until it has seen `what`.
    fn wait_for(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.seen().iter().any(|s| s == what) {
            assert!(
                Instant::now() < deadline,
                "never saw {what:?}: {:?}",
                self.seen()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Node for FakeNode {
    fn confirm(&self, topic: &Arc<str>, arrival: u64) {
        self.seen
            .lock()
            .expect("lock")
            .push(format!("confirm {topic} {arrival}"));
    }

    fn unconfirm_shard(&self, shard: usize) {
        self.seen
            .lock()
            .expect("lock")
            .push(format!("unconfirm {shard}"));
    }

    fn dispatch(
        &self,
        topic: &str,
        publication: Publication,
        offset: Option<Offset>,
    ) -> Result<(), Overloaded> {
        if self
            .behind
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(Overloaded);
        }
        let text = String::from_utf8_lossy(&publication.payload).into_owned();
        let at = if offset.is_some() { " @" } else { "" };
        self.seen
            .lock()
            .expect("lock")
            .push(format!("deliver {topic} {text}{at}"));
        Ok(())
    }

    fn gap(&self, topic: &str, reason: &'static str) {
        self.seen
            .lock()
            .expect("lock")
            .push(format!("gap {topic} {reason}"));
    }

    fn published(
        &self,
        to: crate::messages::PublishDest,
        topic: Arc<str>,
        result: Result<crate::messages::Published, PublishError>,
    ) {
        let offset = result.ok().and_then(|p| p.offset).is_some();
        self.seen
            .lock()
            .expect("lock")
            .push(format!("published {topic} {} {offset}", to.conn));
    }

    fn history_page(&self, to: HistoryDest, topic: Arc<str>, page: HistoryPage) {
        let entries = page.entries.len();
        self.seen
            .lock()
            .expect("lock")
            .push(format!("page {topic} {} {entries}", to.request));
        self.pages.lock().expect("lock").push(page);
    }
}

/// A broker task on its own thread, the node it serves, and the node's ends of its
/// channels.
struct Running {
    node: Arc<FakeNode>,
    /// Messages kept per topic (0: none).
    history: usize,
    publishes: mpsc::UnboundedSender<Outgoing>,
    requests: mpsc::UnboundedSender<BrokerRequest>,
    stats: Arc<BrokerStats>,
    thread: Option<JoinHandle<()>>,
}

impl Running {
    fn start(redis: &Redis, history: usize) -> Self {
        let client = redis::Client::open(redis.url()).expect("a Redis URL");
        let (publish_tx, publish_rx) = mpsc::unbounded_channel();
        let (requests, request_rx) = mpsc::unbounded_channel();
        let stats = Arc::new(BrokerStats::default());
        let task = BrokerTask::new(
            Link::redis(client),
            history > 0,
            (publish_tx.clone(), publish_rx),
            request_rx,
            stats.clone(),
        );
        let node = Arc::new(FakeNode::default());
        let served: Arc<dyn Node + Send> = node.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let thread = std::thread::spawn(move || BrokerTask::run(vec![task], runtime, served));
        let running = Self {
            node,
            history,
            publishes: publish_tx,
            requests,
            stats,
            thread: Some(thread),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !running.stats.up.load(Ordering::Acquire) {
            assert!(Instant::now() < deadline, "the task never connected");
            std::thread::sleep(Duration::from_millis(10));
        }
        running
    }

    /// Publishes `text` on `topic`: the number of nodes Redis passed it to, and its
    /// offset where the topic keeps a history.
    fn publish_with_offset(
        &self,
        topic: &str,
        text: &str,
    ) -> Result<(usize, Option<String>), PublishError> {
        let (tx, reply) = oneshot::channel();
        let retention = Retention {
            count: self.history,
            ttl: None,
        };
        let outgoing = Outgoing::new(
            topic.into(),
            Publication::text(text),
            retention,
            ReplyTo::Caller(tx),
            self.stats.clone(),
        );
        self.publishes.send(outgoing).expect("the task is running");
        let published = reply.blocking_recv().expect("answered")?;
        let crate::messages::Reach::Nodes(nodes) = published.reach else {
            panic!("Redis answers with nodes");
        };
        Ok((nodes, published.offset))
    }

    /// Publishes `text` on `topic`; the number of nodes Redis passed it to.
    fn publish(&self, topic: &str, text: &str) -> Result<usize, PublishError> {
        self.publish_with_offset(topic, text)
            .map(|(nodes, _)| nodes)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.requests.send(BrokerRequest::Stop);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the task ended cleanly");
        }
    }
}

#[test]
fn the_task_mirrors_interest_publishes_and_reads_history_for_its_node() {
    let redis = Redis::start();
    let task = Running::start(&redis, 10);
    let topic: Arc<str> = Arc::from("t");
    task.requests
        .send(BrokerRequest::Add(topic.clone(), 3))
        .expect("sent");
    task.node.wait_for("confirm t 3");
    redis.wait_subscribers("t", 1);
    assert_eq!(
        task.publish("t", "hello"),
        Ok(1),
        "one node subscribed: this one"
    );
    task.node.wait_for("deliver t hello @");
    assert_eq!(
        task.stats.backlog.load(Ordering::Relaxed),
        0,
        "answered: nothing held"
    );
    assert_eq!(task.publish("t", "again"), Ok(1));
    task.node.wait_for("deliver t again @");
    // A connection resuming reads the history: from before it began, with a gap (what
    // came first may have been trimmed); from a message it saw, what came after it.
    let read = |after, request| {
        let to = HistoryDest {
            worker: 0,
            conn: ConnId::new(1, 1),
            request,
        };
        let read = HistoryRead {
            from: Since::After(after),
            to,
            budget: 1 << 20,
            fetched: 0,
            average: 0,
            page: crate::model::history::PAGE,
            limit: 100,
            resumes: true,
            shared_start: false,
        };
        let topic = topic.clone();
        task.requests
            .send(BrokerRequest::History { topic, read })
            .expect("sent");
    };
    read(Offset::ZERO, 8);
    task.node.wait_for("page t 8 2");
    let page = task.node.pages.lock().expect("lock").remove(0);
    assert!(page.gap.is_some() && !page.more);
    let texts: Vec<&[u8]> = page.entries.iter().map(|(_, p)| &p.payload[..]).collect();
    assert_eq!(texts, [&b"hello"[..], &b"again"[..]]);
    read(page.entries[0].0, 9);
    task.node.wait_for("page t 9 1");
    let page = task.node.pages.lock().expect("lock").remove(0);
    assert_eq!((page.gap, page.more), (None, false));
    assert_eq!(&page.entries[0].1.payload[..], b"again");
    // The node's last subscriber left: Redis no longer sends it the topic.
    task.requests
        .send(BrokerRequest::Remove(topic))
        .expect("sent");
    redis.wait_subscribers("t", 0);
    assert_eq!(task.publish("t", "nobody"), Ok(0));
}

#[test]
fn a_node_whose_workers_are_behind_is_waited_for_and_the_cluster_told() {
    let redis = Redis::start();
    let (behind, other) = (Running::start(&redis, 0), Running::start(&redis, 0));
    let topic: Arc<str> = Arc::from("t");
    behind
        .requests
        .send(BrokerRequest::Add(topic, 0))
        .expect("sent");
    behind.node.wait_for("confirm t 0");
    behind.node.behind.store(200, Ordering::Relaxed);
    assert_eq!(other.publish("t", "m1"), Ok(1));
    // Nothing is dropped: the message waits until the node takes it.
    behind.node.wait_for("deliver t m1");
    assert!(behind.stats.overload_signals.load(Ordering::Relaxed) >= 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while other.stats.cluster_overloaded_until.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "the other node never heard");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        behind
            .stats
            .cluster_overloaded_until
            .load(Ordering::Relaxed),
        0,
        "a node does not hold itself back for its own signal"
    );
}

#[test]
fn history_reads_while_redis_is_unreachable_are_answered_with_a_gap() {
    let redis = Redis::start();
    let task = Running::start(&redis, 10);
    let port = redis.stop();
    task.node.wait_for("unconfirm 0");
    let to = HistoryDest {
        worker: 0,
        conn: ConnId::new(2, 1),
        request: 4,
    };
    let read = HistoryRead {
        from: Since::After(Offset::ZERO),
        to,
        budget: 1 << 20,
        fetched: 0,
        average: 0,
        page: crate::model::history::PAGE,
        limit: 100,
        resumes: true,
        shared_start: false,
    };
    task.requests
        .send(BrokerRequest::History {
            topic: Arc::from("t"),
            read,
        })
        .expect("sent");
    task.node.wait_for("page t 4 0");
    let page = task.node.pages.lock().expect("lock").remove(0);
    assert!(page.gap.is_some(), "a gap, not silence");
    assert_eq!(task.publish("t", "x"), Err(PublishError::BrokerUnavailable));
    // The node's own words on the control channel fail too, but are not publishes.
    assert_eq!(
        task.publish("", "control"),
        Err(PublishError::BrokerUnavailable)
    );
    assert_eq!(task.stats.publish_errors.load(Ordering::Relaxed), 1);
    drop(Redis::start_on(port));
}

#[test]
fn an_unasked_sunsubscribe_ends_the_session_control_channel_included() {
    let keys = Keyspace::Cluster;
    let mut unsubscribing: HashMap<Arc<str>, usize> = HashMap::new();
    unsubscribing.insert(Arc::from("news"), 2);
    let news = keys.channel("news");
    // The answers to the node's own two SUNSUBSCRIBEs of `news`.
    assert_eq!(unasked_drop(&mut unsubscribing, keys, &news), None);
    assert_eq!(unsubscribing.get("news"), Some(&1));
    assert_eq!(unasked_drop(&mut unsubscribing, keys, &news), None);
    assert!(unsubscribing.is_empty());
    // A third, unasked: the session ends, naming the channel.
    let why = unasked_drop(&mut unsubscribing, keys, &news).expect("unasked: ends");
    assert!(
        why.contains("stratus:{news}") && why.contains("restart"),
        "{why}"
    );
    // The control channel (not a topic's) moved: the session ends too.
    let why = unasked_drop(&mut unsubscribing, keys, keys.control()).expect("control: ends");
    assert!(why.contains("{stratus!}control"), "{why}");
    // So does a topic the node no longer wants and never asked to leave, or a channel
    // that is no topic's.
    assert!(unasked_drop(&mut unsubscribing, keys, &keys.channel("gone")).is_some());
    assert!(unasked_drop(&mut unsubscribing, keys, "elsewhere").is_some());
}

#[test]
fn refused_publishes_are_logged_once_per_period_with_the_count_left_out() {
    let mut log = RefusalLog::default();
    let start = Instant::now();
    assert_eq!(log.note(start), Some(0), "the first is logged");
    for i in 1..=99 {
        assert_eq!(log.note(start + Duration::from_millis(i)), None);
    }
    let later = start + REFUSAL_LOG_EVERY;
    assert_eq!(
        log.note(later),
        Some(99),
        "the next period: logged, with the 99 left out"
    );
    assert_eq!(log.note(later + Duration::from_secs(1)), None);
    assert_eq!(log.note(later + REFUSAL_LOG_EVERY), Some(1));
}
