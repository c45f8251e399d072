//! Raw mode: subscribe and unsubscribe commands, broker confirmations, recoveries.

use super::*;

#[test]
fn subscribe_deliver_and_unsubscribe_on_the_local_broker() {
    let mut world = World::local(Config::default());
    let (a, b) = (world.connect(None), world.connect(None));
    world.command(a, r#"{"op":"subscribe","topic":"t"}"#);
    assert_eq!(world.texts(a), [ok("subscribe", "t")]);
    assert_eq!(
        world.hub.topic_count(),
        1,
        "the hub knows the worker has a subscriber"
    );
    let fanout = world.publish("t", "hello", None);
    assert_eq!(
        fanout,
        Fanout {
            queued: 1,
            ..Fanout::default()
        }
    );
    assert_eq!(world.texts(a), ["hello"]);
    assert!(world.texts(b).is_empty(), "b is not subscribed");
    assert_eq!(world.hub.stats.delivered.load(Ordering::Relaxed), 1);
    world.command(a, r#"{"op":"subscribe","topic":"t"}"#);
    assert_eq!(world.texts(a), [ok("subscribe", "t")], "idempotent");
    assert_eq!(
        world.publish("t", "once", None).queued,
        1,
        "still one subscription"
    );
    world.texts(a);
    world.command(a, r#"{"op":"unsubscribe","topic":"t"}"#);
    assert_eq!(world.texts(a), [ok("unsubscribe", "t")]);
    assert_eq!(world.hub.topic_count(), 0);
    assert_eq!(world.publish("t", "gone", None).queued, 0);
    assert!(world.texts(a).is_empty());
}

#[test]
fn refused_commands_get_error_replies_that_say_why() {
    let config = Config {
        max_topics_per_connection: 2,
        ..Config::default()
    };
    let mut world = World::local(config);
    let grant = Grant::new("u", &["news.*", "a", "b", "c"], u64::MAX);
    let a = world.connect(Some(grant));
    let refusals = [
        (
            r#"{"op":"subscribe","topic":"a b"}"#,
            "topic has a character other than letters, digits and - _ . : /",
        ),
        (
            r#"{"op":"subscribe","topic":"secret"}"#,
            "the token does not allow this topic",
        ),
        (r#"{"op":"unsubscribe","topic":"a"}"#, "not subscribed"),
        (
            r#"{"op":"subscribe","topic":"a","since":"$"}"#,
            "no history is kept for this topic (--history, or its namespace's history)",
        ),
    ];
    for (command, why) in refusals {
        world.command(a, command);
        let replies = world.texts(a);
        assert_eq!(replies.len(), 1, "{command}: {replies:?}");
        assert_eq!(error_of(&replies[0]), why, "{command}");
    }
    world.command(a, r#"{"op":"subscribe","topic":"a"}"#);
    world.command(a, r#"{"op":"subscribe","topic":"b"}"#);
    world.command(a, r#"{"op":"subscribe","topic":"c"}"#);
    let replies = world.texts(a);
    assert_eq!(error_of(&replies[2]), "at most 2 topics per connection");
    world.send(a, Message::Binary(Bytes::from_static(b"{}")));
    assert_eq!(
        error_of(&world.texts(a)[0]),
        "binary messages are not commands"
    );
    world.command(a, "not json");
    assert!(error_of(&world.texts(a)[0]).starts_with("expected {"));
    world.send(a, Message::Pong(Bytes::new()));
    assert!(world.texts(a).is_empty(), "control messages get no reply");
}

#[test]
fn commands_past_the_message_budget_are_refused_until_it_refills() {
    // Each command costs COMMAND_COST (10) messages: 25 a second allows two at once.
    let config = Config {
        message_rate: 25,
        ..Config::default()
    };
    let mut world = World::local(config);
    let a = world.connect(None);
    for topic in ["x", "y", "z"] {
        world.command(a, &format!(r#"{{"op":"subscribe","topic":"{topic}"}}"#));
    }
    let replies = world.texts(a);
    assert_eq!(replies[..2], [ok("subscribe", "x"), ok("subscribe", "y")]);
    assert_eq!(
        error_of(&replies[2]),
        "rate limited: at most 2 commands a second"
    );
    assert_eq!(
        world.hub.workers[0]
            .commands_limited
            .load(Ordering::Relaxed),
        1
    );
    world.now_ms += 1000;
    world.command(a, r#"{"op":"subscribe","topic":"z"}"#);
    assert_eq!(
        world.texts(a),
        [ok("subscribe", "z")],
        "refilled a second later"
    );
}

#[test]
fn with_a_broker_the_subscribe_reply_waits_for_the_topics_confirmation() {
    let mut world = World::with_broker(Config::default(), 0);
    let (a, b) = (world.connect(None), world.connect(None));
    world.command(a, r#"{"op":"subscribe","topic":"t"}"#);
    assert!(
        world.texts(a).is_empty(),
        "not before Redis has the subscription"
    );
    assert!(matches!(&world.requests()[..], [BrokerRequest::Add(t, 0)] if &**t == "t"));
    world.command(b, r#"{"op":"subscribe","topic":"t"}"#);
    assert!(world.requests().is_empty(), "the node asks once");
    world.confirm("t", 7);
    assert!(
        world.texts(a).is_empty(),
        "a confirmation for another arrival is not this one's"
    );
    world.confirm("t", 0);
    assert_eq!(world.texts(a), [ok("subscribe", "t")]);
    assert_eq!(world.texts(b), [ok("subscribe", "t")]);
    world.confirm("t", 0);
    assert!(world.texts(a).is_empty(), "answered once");
    let c = world.connect(None);
    world.command(c, r#"{"op":"subscribe","topic":"t"}"#);
    assert_eq!(
        world.texts(c),
        [ok("subscribe", "t")],
        "a confirmed topic answers at once"
    );
}

#[test]
fn an_unsubscribe_first_answers_the_subscribe_still_waiting() {
    let mut world = World::with_broker(Config::default(), 0);
    let a = world.connect(None);
    world.command(a, r#"{"op":"subscribe","topic":"t"}"#);
    world.command(a, r#"{"op":"unsubscribe","topic":"t"}"#);
    assert_eq!(
        world.texts(a),
        [ok("subscribe", "t"), ok("unsubscribe", "t")]
    );
    let requests = world.requests();
    assert!(
        matches!(&requests[..], [BrokerRequest::Add(..), BrokerRequest::Remove(t)] if &**t == "t")
    );
    world.confirm("t", 0);
    assert!(
        world.texts(a).is_empty(),
        "nothing more for an unsubscribed topic"
    );
}

#[test]
fn a_connection_that_leaves_gives_its_topics_and_waiting_replies_back() {
    let mut world = World::with_broker(Config::default(), 0);
    let (a, b) = (world.connect(None), world.connect(None));
    world.command(a, r#"{"op":"subscribe","topic":"t"}"#);
    world.command(a, r#"{"op":"subscribe","topic":"u"}"#);
    world.command(b, r#"{"op":"subscribe","topic":"u"}"#);
    world.requests();
    let gone = world.clients.0.remove(&a).expect("a");
    world.with(|pubsub, _, ctx| pubsub.on_left(ctx, a, &gone));
    let removed: Vec<String> = world
        .requests()
        .into_iter()
        .filter_map(|r| match r {
            BrokerRequest::Remove(t) => Some(t.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(removed, ["t"], "u still has b");
    assert!(
        world.pubsub.pending.take("t").is_empty(),
        "its waiting reply is forgotten"
    );
    assert_eq!(world.hub.topic_count(), 1);
    world.confirm("u", 1);
    assert_eq!(world.texts(b), [ok("subscribe", "u")]);
}

#[test]
fn a_recovery_sends_the_history_then_the_live_messages_held_meanwhile_each_once() {
    let mut world = World::with_broker(Config::default(), 100);
    let a = world.connect(None);
    world.command(a, r#"{"op":"subscribe","topic":"t","since":"5-0"}"#);
    world.confirm("t", 0);
    assert_eq!(world.texts(a), [ok("subscribe", "t")]);
    let reads = world.history_reads();
    let [(topic, read)] = &reads[..] else {
        panic!("one history read: {reads:?}");
    };
    assert_eq!(
        (&**topic, read.from, read.fetched),
        ("t", Since::After(offset(5)), 0)
    );
    assert_eq!(
        read.budget,
        Config::default().max_send_queue,
        "the queue's room"
    );
    // Live messages while the history is read are held.
    world.publish("t", "seven", Some(offset(7)));
    world.publish("t", "eight", Some(offset(8)));
    assert!(world.texts(a).is_empty(), "held during the recovery");
    // The page overlaps what was held: each message goes out once, in order.
    world.answer("t", *read, page(&[(6, "six"), (7, "seven")], 5, false));
    let texts = world.texts(a);
    assert_eq!(data(&texts), ["six", "seven", "eight"]);
    assert_eq!(
        offsets(&texts),
        ["6-0", "7-0", "8-0"],
        "each message after its offset notice"
    );
    // Live messages the history already had are skipped; the first newer ends it.
    world.publish("t", "eight", Some(offset(8)));
    world.publish("t", "nine", Some(offset(9)));
    assert_eq!(data(&world.texts(a)), ["nine"]);
    assert!(
        world
            .client(a)
            .recoveries_mut()
            .iter()
            .all(|r| !r.is_recovering())
    );
}

#[test]
fn a_history_reply_to_an_earlier_read_is_dropped_and_a_gap_is_named() {
    let mut world = World::with_broker(Config::default(), 100);
    let a = world.connect(None);
    world.command(a, r#"{"op":"subscribe","topic":"t","since":"5-0"}"#);
    let first = world.history_reads()[0].1;
    // Resuming again replaces the recovery: the first read's answer is stale.
    world.command(a, r#"{"op":"subscribe","topic":"t","since":"6-0"}"#);
    let second = world.history_reads()[0].1;
    assert_ne!(first.to.request, second.to.request);
    world.confirm("t", 0);
    world.texts(a);
    world.answer("t", first, page(&[(6, "stale")], 5, false));
    assert!(world.texts(a).is_empty(), "a stale page is dropped");
    let mut trimmed = page(&[(9, "nine")], 8, false);
    trimmed.gap = Some("the history no longer reaches back to the offset");
    world.answer("t", second, trimmed);
    let texts = world.texts(a);
    let gap: serde_json::Value = serde_json::from_str(&texts[0]).expect("JSON");
    assert_eq!(
        (gap["op"].as_str(), gap["topic"].as_str()),
        (Some("gap"), Some("t"))
    );
    assert_eq!(data(&texts), ["nine"]);
}

#[test]
fn a_long_history_is_read_a_page_at_a_time_at_the_readers_pace() {
    let (mut world, a, read) = resuming(4096);
    // More than half the queue's cap in one page: the rest waits for the next page.
    let big = "x".repeat(1500);
    let entries = [(1, big.as_str()), (2, big.as_str()), (3, big.as_str())];
    world.answer("t", read, page(&entries, 0, true));
    assert!(
        world.history_reads().is_empty(),
        "no next page while the queue is half full"
    );
    assert_eq!(world.client(a).recoveries_mut()[0].fetched, 2);
    // The reader takes what was queued: the next page is read from where this one stopped.
    assert_eq!(data(&world.texts(a)).len(), 2);
    world.with(|pubsub, clients, ctx| {
        let client = clients.client(a).expect("a");
        pubsub.on_sent(ctx, a, client);
    });
    let reads = world.history_reads();
    let [(_, next)] = &reads[..] else {
        panic!("the next page is read: {reads:?}");
    };
    assert_eq!((next.from, next.fetched), (Since::After(offset(2)), 2));
    assert!(next.average >= 1500, "sized from the entries so far");
    world.answer("t", *next, page(&[(3, big.as_str())], 2, false));
    assert_eq!(offsets(&world.texts(a)), ["3-0"]);
}

#[test]
fn live_messages_past_the_hold_end_the_recovery_with_a_gap_notice() {
    let (mut world, a, read) = resuming(2048);
    let big = "y".repeat(1000);
    for ms in 1..=4 {
        world.publish("t", &big, Some(offset(ms)));
    }
    let recovery = &world.client(a).recoveries_mut()[0];
    assert!(
        recovery.held.len() == 2 && recovery.overflowed,
        "its bytes are capped at the queue's"
    );
    world.answer("t", read, page(&[], 0, false));
    let texts = world.texts(a);
    assert_eq!(data(&texts).len(), 1, "what the queue had room for");
    let gap = texts.iter().find(|t| t.contains(r#""op":"gap""#));
    assert!(
        gap.is_some_and(|g| g.contains("more came during the recovery")),
        "{texts:?}"
    );
}

#[test]
fn the_slow_consumer_policy_drops_or_closes_past_the_queue_cap() {
    for (policy, closes) in [(SlowConsumer::Drop, false), (SlowConsumer::Close, true)] {
        let config = Config {
            max_send_queue: 1024,
            slow_consumer: policy,
            ..Config::default()
        };
        let mut world = World::local(config);
        let a = world.connect(None);
        world.command(a, r#"{"op":"subscribe","topic":"t"}"#);
        let big = "z".repeat(600);
        let first = world.publish("t", &big, None);
        let second = world.publish("t", &big, None);
        assert_eq!(first.queued, 1);
        assert_eq!(
            (second.dropped, second.closed),
            (u64::from(!closes), u64::from(closes))
        );
        let sent = testing::sent_to(world.client(a));
        let close = sent.iter().find_map(|m| match m {
            Message::Close(frame) => frame.as_ref().map(|f| f.code().0),
            _ => None,
        });
        assert_eq!(close, closes.then_some(1008), "{policy:?}");
    }
}

#[test]
fn an_overdue_recovery_is_given_up_with_a_gap_notice() {
    let (mut world, a, _) = resuming(Config::default().max_send_queue);
    let later = world.now + Duration::from_secs(61);
    let config = world.config.clone();
    let tick = world.client(a).tick(&config, later, 0, None);
    assert_eq!(tick, crate::connection::Tick::Changed);
    let texts = world.texts(a);
    assert!(
        texts[0].contains("the recovery did not finish in time"),
        "{texts:?}"
    );
    world.publish("t", "live", Some(offset(1)));
    assert_eq!(data(&world.texts(a)), ["live"], "live messages flow again");
}
