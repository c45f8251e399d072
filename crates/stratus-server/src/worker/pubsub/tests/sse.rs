//! Event streams: when a stream starts.

use super::*;

/// Connection `id` (an event stream) asks for `topics` at its request.
fn open_stream(world: &mut World, id: ConnId, topics: &[&str]) {
    let topics: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
    world.with(|pubsub, clients, ctx| {
        let client = clients.0.get_mut(&id).expect("connected");
        pubsub.on_stream(ctx, id, client, &topics, None);
    });
}

/// What the stream's peer reads.
fn output(world: &mut World, id: ConnId) -> String {
    let out = testing::take_output(world.client(id));
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn with_a_broker_a_stream_starts_once_every_topic_is_confirmed() {
    let mut world = World::with_broker(Config::default(), 0);
    let id = world.connect_speaking(Protocol::Sse, None);
    open_stream(&mut world, id, &["news", "sports"]);
    let deadline = world.now + Duration::from_secs(1);
    let gap = Notice::Gap {
        topic: "news",
        reason: "r",
    };
    world.client(id).notify(&gap, deadline);
    assert!(!world.client(id).has_pending(), "nothing goes out yet");
    assert_eq!(output(&mut world, id), "");
    world.confirm("news", 0);
    assert_eq!(output(&mut world, id), "", "sports is not confirmed yet");
    world.confirm("sports", 1);
    assert!(world.client(id).has_pending());
    assert!(output(&mut world, id).contains("event: gap"));
}

#[test]
fn a_closing_stream_is_not_held_and_without_a_broker_none_is() {
    let mut world = World::with_broker(Config::default(), 0);
    let id = world.connect_speaking(Protocol::Sse, None);
    open_stream(&mut world, id, &["news"]);
    let deadline = world.now + Duration::from_secs(1);
    let gap = Notice::Gap {
        topic: "news",
        reason: "r",
    };
    world.client(id).notify(&gap, deadline);
    assert!(!world.client(id).has_pending());
    world
        .client(id)
        .close(CloseCode::GOING_AWAY, "draining", deadline, false);
    assert!(
        world.client(id).has_pending(),
        "what is queued goes, then FIN"
    );
    assert!(output(&mut world, id).contains("event: gap"));

    let mut local = World::local(Config::default());
    let id = local.connect_speaking(Protocol::Sse, None);
    open_stream(&mut local, id, &["news"]);
    let gap = Notice::Gap {
        topic: "news",
        reason: "r",
    };
    let deadline = local.now + Duration::from_secs(1);
    local.client(id).notify(&gap, deadline);
    assert!(output(&mut local, id).contains("event: gap"));
}
