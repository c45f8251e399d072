//! Subscribes and publishes that wait for a backend hook: what is asked, what each answer
//! sets off, the per-connection bound, and an answer for a connection that has gone.

use serde_json::{Value, json};

use super::*;
use crate::config::{ClientPublish, Hooks};
use crate::model::hook::{HookAnswer, HookJob, HookKind, Pending, PublishVerdict, Refused};
use crate::node::hook_link::HookLink;

/// A worker of a node whose subscribe and publish hooks are set, and the line of requests
/// its hook thread would take.
fn hooked() -> (World, mpsc::Receiver<HookJob>) {
    let config = Config {
        client_publish: ClientPublish::Subscribers,
        hooks: Hooks {
            subscribe: Some("http://backend.invalid/subscribe".into()),
            publish: Some("http://backend.invalid/publish".into()),
            ..Hooks::default()
        },
        ..Config::default()
    };
    let world = World::local(config);
    let (tx, rx) = mpsc::channel(64);
    assert!(
        world
            .hub
            .hooks
            .set(HookLink::new(tx, Arc::default()))
            .is_ok()
    );
    (world, rx)
}

/// Connection `id` sends `command`.
fn send(world: &mut World, id: ConnId, command: Value) {
    world.command(id, &command.to_string());
}

fn json_texts(world: &mut World, id: ConnId) -> Vec<Value> {
    world
        .texts(id)
        .iter()
        .map(|t| serde_json::from_str(t).expect("JSON"))
        .collect()
}

/// The hook thread answers `job` with `answer` (the parsed verdict) and it reaches the
/// worker.
fn answer(world: &mut World, job: HookJob, make: impl FnOnce(Pending) -> HookAnswer) {
    let pending = job.pending.expect("a subscribe or publish");
    let answer = make(pending);
    world.with(|pubsub, clients, ctx| pubsub.on_hook_answer(ctx, clients, job.to.conn, answer));
}

#[test]
fn a_subscribe_waits_for_the_hook_and_is_answered_as_it_says() {
    let (mut world, mut jobs) = hooked();
    let a = world.connect_speaking(Protocol::V1, Some(Grant::new("ann", &["*"], u64::MAX)));
    send(
        &mut world,
        a,
        json!({"id": 1, "op": "subscribe", "topic": "room"}),
    );
    send(
        &mut world,
        a,
        json!({"id": 2, "op": "subscribe", "topic": "vault"}),
    );
    assert!(
        world.texts(a).is_empty(),
        "both replies wait for the backend"
    );
    let first = jobs.try_recv().expect("asked");
    assert_eq!(first.kind, HookKind::Subscribe);
    let body: Value = serde_json::from_slice(&first.body).unwrap();
    assert_eq!(
        (body["user"].as_str(), body["topic"].as_str()),
        (Some("ann"), Some("room"))
    );
    answer(&mut world, first, |p| HookAnswer::Subscribe(p, Ok(Ok(()))));
    let second = jobs.try_recv().expect("asked");
    let refused = Refused {
        status: 403,
        reason: "not yours".into(),
    };
    answer(&mut world, second, |p| {
        HookAnswer::Subscribe(p, Ok(Err(refused)))
    });
    let replies = json_texts(&mut world, a);
    assert_eq!(
        (replies[0]["type"].as_str(), replies[0]["id"].as_u64()),
        (Some("reply"), Some(1))
    );
    assert_eq!(replies[1]["code"], "forbidden");
    assert_eq!(replies[1]["message"], "not yours");
    assert_eq!(
        world.publish("room", "x", None).queued,
        1,
        "subscribed to room only"
    );
    assert_eq!(world.publish("vault", "x", None).queued, 0);
}

#[test]
fn past_sixteen_waiting_a_connection_is_rate_limited_and_a_gone_one_gets_nothing() {
    let (mut world, mut jobs) = hooked();
    let a = world.connect_speaking(Protocol::V1, None);
    for id in 0..17 {
        send(
            &mut world,
            a,
            json!({"id": id, "op": "subscribe", "topic": format!("t{id}")}),
        );
    }
    let replies = json_texts(&mut world, a);
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(
        (replies[0]["id"].as_u64(), replies[0]["code"].as_str()),
        (Some(16), Some("rate_limited"))
    );
    // The connection goes; the answers for it find nothing, and free its share.
    world.clients.0.remove(&a);
    while let Ok(job) = jobs.try_recv() {
        answer(&mut world, job, |p| HookAnswer::Subscribe(p, Ok(Ok(()))));
    }
    assert!(world.pubsub.hook_waits.is_empty());
    assert_eq!(world.hub.topic_count(), 0);
}

#[test]
fn a_publish_goes_on_with_the_data_the_hook_gives() {
    let (mut world, mut jobs) = hooked();
    let a = world.connect_speaking(Protocol::V1, None);
    send(
        &mut world,
        a,
        json!({"id": 1, "op": "subscribe", "topic": "chat"}),
    );
    let job = jobs.try_recv().expect("subscribe asked");
    answer(&mut world, job, |p| HookAnswer::Subscribe(p, Ok(Ok(()))));
    world.texts(a);
    send(
        &mut world,
        a,
        json!({"id": 2, "op": "publish", "topic": "chat", "data": {"t": "darn"}}),
    );
    assert!(
        world.texts(a).is_empty(),
        "the publish waits for the backend"
    );
    let job = jobs.try_recv().expect("publish asked");
    let body: Value = serde_json::from_slice(&job.body).unwrap();
    assert_eq!(body["data"], json!({"t": "darn"}));
    let data = serde_json::value::RawValue::from_string(r#"{"t":"****"}"#.into()).unwrap();
    answer(&mut world, job, |p| {
        HookAnswer::Publish(p, Ok(Ok(PublishVerdict::Replace(data))))
    });
    world.pump();
    let sent = json_texts(&mut world, a);
    let push = sent
        .iter()
        .find(|m| m["topic"] == "chat" && m["type"] != "reply");
    assert_eq!(
        push.map(|p| &p["data"]),
        Some(&json!({"t": "****"})),
        "{sent:?}"
    );
    assert!(
        sent.iter().any(|m| m["id"] == 2 && m["type"] == "reply"),
        "{sent:?}"
    );
}

#[test]
fn an_ask_the_hook_cannot_take_or_a_connection_that_leaves_keeps_no_hook_count() {
    let (mut world, mut jobs) = hooked();
    let a = world.connect_speaking(Protocol::V1, None);
    send(
        &mut world,
        a,
        json!({"id": 1, "op": "subscribe", "topic": "room"}),
    );
    assert!(jobs.try_recv().is_ok(), "asked");
    assert_eq!(world.pubsub.hook_waits.get(&a), Some(&1));
    // It leaves before the answer: its count goes with it.
    let gone = world.clients.0.remove(&a).expect("connected");
    world.with(|pubsub, _, ctx| pubsub.on_left(ctx, a, &gone));
    assert!(world.pubsub.hook_waits.is_empty());

    // The hook thread has stopped: the ask is refused and nothing is counted.
    drop(jobs);
    let b = world.connect_speaking(Protocol::V1, None);
    send(
        &mut world,
        b,
        json!({"id": 2, "op": "subscribe", "topic": "room"}),
    );
    let replies = json_texts(&mut world, b);
    assert_eq!(replies[0]["code"], "unavailable", "{replies:?}");
    assert!(world.pubsub.hook_waits.is_empty());
}
