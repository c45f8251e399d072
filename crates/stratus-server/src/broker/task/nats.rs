//! The broker task's session with NATS (`--broker nats://`): the same task as with Redis
//! (`task`: the interest mirrored into subscriptions, confirmations, history reads, the
//! control subject, reconnecting with backoff), over a NATS connection instead.
//!
//! - Fan-out: a topic is the core subject `stratus.t.<topic>` ([`Keyspace::Nats`]); the
//!   node subscribes to the topics it has subscribers for, and confirms a subscription
//!   after a round trip (a request nobody answers: the server's "no responders" comes
//!   back after it took every `SUB` sent before it).
//! - Histories: JetStream. A publish to a topic that keeps one goes to
//!   `stratus.h.<topic>`, which the node's stream ([`STREAM`]) stores and republishes on
//!   the topic's subject with its sequence in a header (`Nats-Sequence`), so every node
//!   receives it in stream order with its offset, as Redis's publish script does. An
//!   offset is `0-<stream sequence>`: one sequence for all topics, so offsets of
//!   different topics compare as moments do. JetStream (2.9) limits a stream, not a
//!   subject: the stream keeps per topic the most entries, and for the longest age, any
//!   topic's options ask for (`Config::widest_history`); a topic that keeps fewer entries
//!   is trimmed to its count after each of its publishes (a purge that keeps that many),
//!   while a shorter age than the widest is not applied (the longest one is).
//! - A lost connection: the client's `Disconnected` (or a slow-consumer drop, which would
//!   lose messages) ends the stream of what arrives, and with it the session; the task
//!   then drops the client and reconnects as it does to Redis, so publishes answer 503
//!   meanwhile and subscribers get their gap notice when it is back. A core publish is
//!   answered once a round trip after it came back (the server has it); a history
//!   publish once JetStream acknowledged it.
//! - What NATS has no counterpart for: the receivers of a publish (the answer's reach is
//!   [`Reach::Broker`]), presence and the node list (answered as unreadable).

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures_util::stream::{AbortHandle, Abortable, SelectAll};
use futures_util::{Stream, StreamExt};

use tokio::sync::mpsc;
use tracing::warn;

use super::subscriber::{Incoming, Messages};
use super::{RESPONSE_TIMEOUT, RefusalLog, Wanted, answer_publish, next_batch};
use crate::broker::wire::{self, Keyspace};
use crate::config::{NatsBroker, NatsCredentials};
use crate::messages::{HistoryPage, HistoryRead, Node, Outgoing, Published};
use crate::model::history::Extent;
use crate::model::offset::{Offset, Since};
use crate::stats::BrokerStats;

/// The JetStream stream that keeps every topic's history.
pub(super) const STREAM: &str = "STRATUS";
/// The subject a round trip asks (nobody answers it).
const NOBODY: &str = "stratus.nobody";
/// Messages a subscription may hold while the node is behind; past it the client drops
/// them and says so, which ends the session (the topics get their gap notices).
const SUBSCRIPTION_CAPACITY: usize = 8192;
/// How long a history read's consumer lives once idle (it is deleted after the read).
const CONSUMER_IDLE: Duration = Duration::from_secs(10);

/// What the node needs to open a NATS session.
#[derive(Debug)]
pub(crate) struct NatsLink {
    pub(crate) broker: NatsBroker,
    /// With a history: the most entries and the longest age a topic keeps.
    pub(crate) history: Option<(usize, Option<Duration>)>,
}

/// The publishing side of a session.
pub(super) struct Publisher {
    client: async_nats::Client,
    /// With a history.
    js: Option<History>,
}

/// What a publish that keeps a history goes through.
struct History {
    js: jetstream::Context,
    stream: stream::Stream<()>,
    /// The entries the stream keeps per topic: a topic that keeps fewer is trimmed to
    /// its own count after each publish.
    widest: usize,
}

/// The side that reads histories.
#[derive(Clone)]
pub(super) struct Reader {
    stream: stream::Stream<()>,
}

/// The subscribing side of a session (clones share it): a new subscription goes to the
/// stream of what arrives through `added`; dropping one (its abort handle) unsubscribes.
#[derive(Clone)]
pub(super) struct Subscriptions {
    client: async_nats::Client,
    added: mpsc::UnboundedSender<Change>,
}

/// A subscription added (with what ends it) or a topic's channel to drop.
enum Change {
    Add(String, async_nats::Subscriber),
    Drop(String),
}

/// A connected session's parts.
pub(super) struct Session {
    pub(super) publisher: Publisher,
    pub(super) reader: Option<Reader>,
    pub(super) subscriptions: Subscriptions,
    pub(super) messages: Messages,
}

/// Connects to NATS: the client, the history stream (made or brought to this node's
/// limits), the control subject on the first shard, and a subscription for every topic
/// in `wanted`, confirmed by a round trip.
pub(super) async fn connect(
    link: &NatsLink,
    keys: Keyspace,
    first: bool,
    wanted: &Wanted,
) -> Result<Session, String> {
    let (events_tx, events) = mpsc::channel(64);
    let mut options = async_nats::ConnectOptions::new()
        .name("stratus")
        .connection_timeout(RESPONSE_TIMEOUT)
        .request_timeout(Some(RESPONSE_TIMEOUT))
        .subscription_capacity(SUBSCRIPTION_CAPACITY)
        // The task reconnects, with its own backoff; the client tries once.
        .max_reconnects(1)
        .require_tls(link.broker.tls)
        .event_callback(move |event| {
            let events_tx = events_tx.clone();
            async move {
                let _ = events_tx.try_send(event);
            }
        });
    options = match &link.broker.credentials {
        NatsCredentials::None => options,
        NatsCredentials::UserPassword(user, password) => {
            options.user_and_password(user.clone(), password.expose().to_owned())
        }
        NatsCredentials::Token(token) => options.token(token.expose().to_owned()),
    };
    if let Some(ca) = &link.broker.ca {
        options = options.add_root_certificates(ca.clone());
    }
    let client = options
        .connect(link.broker.servers.as_slice())
        .await
        .map_err(|err| connect_failure(&err))?;
    let (js, reader) = match link.history {
        Some(limits) => {
            let mut js = jetstream::new(client.clone());
            js.set_timeout(RESPONSE_TIMEOUT);
            let stream = js
                .create_or_update_stream(stream_config(limits))
                .await
                .map(|info| info.config.name)
                .map_err(|err| {
                    format!(
                        "JetStream refused the history stream {STREAM}: {err} (nats-server \
                         needs JetStream, `-js`, for --history)"
                    )
                })?;
            let stream = js
                .get_stream_no_info(stream)
                .await
                .map_err(|err| format!("JetStream stream {STREAM}: {err}"))?;
            let history = History {
                js,
                stream: stream.clone(),
                widest: limits.0,
            };
            (Some(history), Some(Reader { stream }))
        }
        None => (None, None),
    };
    let (added, changes) = mpsc::unbounded_channel();
    let mut subscriptions = Subscriptions { client, added };
    let mut channels: Vec<String> = wanted.keys().map(|t| keys.channel(t)).collect();
    if first {
        channels.push(keys.control().to_owned());
    }
    subscriptions.subscribe(&channels).await?;
    let messages = arrivals(changes, events);
    let publisher = Publisher {
        client: subscriptions.client.clone(),
        js,
    };
    Ok(Session {
        publisher,
        reader,
        subscriptions,
        messages,
    })
}

/// The history stream: every topic's history subject, kept per subject to `limits`,
/// republished with its sequence on the topic's subject.
fn stream_config((count, age): (usize, Option<Duration>)) -> stream::Config {
    stream::Config {
        name: STREAM.to_owned(),
        subjects: vec!["stratus.h.>".to_owned()],
        max_messages_per_subject: i64::try_from(count).unwrap_or(i64::MAX),
        max_age: age.unwrap_or(Duration::ZERO),
        discard: stream::DiscardPolicy::Old,
        republish: Some(stream::Republish {
            source: "stratus.h.>".to_owned(),
            destination: "stratus.t.>".to_owned(),
            headers_only: false,
        }),
        ..Default::default()
    }
}

/// What a failed connection means, for the log (NATS's errors name no credential).
fn connect_failure(err: &async_nats::ConnectError) -> String {
    use async_nats::ConnectErrorKind as Kind;
    let hint = match err.kind() {
        Kind::AuthorizationViolation | Kind::Authentication => {
            " (NATS refused the credentials: check broker-username and broker-password, or \
             the URL's)"
        }
        Kind::Tls => {
            " (the TLS handshake failed: the server's certificate must be signed by a CA in \
             broker-ca, or a public CA, and name the URL's host)"
        }
        _ => "",
    };
    format!("{err}{hint}")
}

/// What arrives: the messages of every subscription, merged, ending (with
/// [`Incoming::Lost`]) when the client reports the connection lost or messages dropped.
fn arrivals(
    mut changes: mpsc::UnboundedReceiver<Change>,
    mut events: mpsc::Receiver<async_nats::Event>,
) -> Messages {
    let mut merged: SelectAll<Abortable<async_nats::Subscriber>> = SelectAll::new();
    let mut handles: HashMap<String, AbortHandle> = HashMap::new();
    let mut ended = false;
    Box::pin(futures_util::stream::poll_fn(move |cx| {
        use std::task::Poll;
        if ended {
            return Poll::Ready(None);
        }
        while let Poll::Ready(event) = events.poll_recv(cx) {
            let lost = match event {
                None => Some("the NATS client stopped".to_owned()),
                Some(event) => lost(&event),
            };
            if let Some(why) = lost {
                ended = true;
                return Poll::Ready(Some(Incoming::Lost(why)));
            }
        }
        while let Poll::Ready(Some(change)) = changes.poll_recv(cx) {
            match change {
                Change::Add(channel, subscriber) => {
                    let (handle, registration) = AbortHandle::new_pair();
                    if let Some(old) = handles.insert(channel, handle) {
                        old.abort();
                    }
                    merged.push(Abortable::new(subscriber, registration));
                }
                Change::Drop(channel) => {
                    if let Some(handle) = handles.remove(&channel) {
                        handle.abort();
                    }
                }
            }
        }
        match Pin::new(&mut merged).poll_next(cx) {
            Poll::Ready(Some(message)) => Poll::Ready(Some(Incoming::Nats(message))),
            // Every subscription ended (or none yet): wait for more.
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }))
}

/// Why `event` ends the session, if it does.
fn lost(event: &async_nats::Event) -> Option<String> {
    use async_nats::Event;
    match event {
        Event::Disconnected | Event::Closed => Some(format!("NATS: {event}")),
        Event::SlowConsumer(_) => Some(format!(
            "NATS dropped messages the node could not take in time ({event})"
        )),
        Event::ServerError(err) => {
            warn!(error = %err, "the NATS server reported an error");
            None
        }
        Event::ClientError(err) => {
            warn!(error = %err, "the NATS client reported an error");
            None
        }
        Event::Connected | Event::LameDuckMode | Event::Draining => None,
    }
}

impl Subscriptions {
    /// Subscribes `channels`, then makes a round trip so that the server has them all.
    pub(super) async fn subscribe(&mut self, channels: &[String]) -> Result<(), String> {
        for channel in channels {
            let subscriber = self
                .client
                .subscribe(channel.clone())
                .await
                .map_err(|err| format!("NATS subscribe: {err}"))?;
            let _ = self.added.send(Change::Add(channel.clone(), subscriber));
        }
        round_trip(&self.client).await
    }

    /// Unsubscribes `channels` (dropping a subscription sends its `UNSUB`).
    pub(super) fn unsubscribe(&mut self, channels: &[String]) {
        for channel in channels {
            let _ = self.added.send(Change::Drop(channel.clone()));
        }
    }

    /// A round trip to the server.
    pub(super) async fn ping(&mut self) -> Result<(), String> {
        round_trip(&self.client).await
    }
}

/// A request to a subject nobody answers: the server's "no responders" comes back once
/// it has processed everything the client sent before it.
async fn round_trip(client: &async_nats::Client) -> Result<(), String> {
    use async_nats::RequestErrorKind;
    match tokio::time::timeout(RESPONSE_TIMEOUT, client.request(NOBODY, Bytes::new())).await {
        Ok(Err(err)) if err.kind() == RequestErrorKind::NoResponders => Ok(()),
        // Someone answers the subject: still a round trip.
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) => Err(format!("NATS round trip: {err}")),
        Err(_) => Err("NATS did not answer within the response timeout".to_owned()),
    }
}

/// The offset of a message republished by the history stream (`None` without one).
pub(super) fn offset(message: &async_nats::Message) -> Option<Offset> {
    let sequence = message.headers.as_ref()?.get("Nats-Sequence")?;
    Some(Offset(0, sequence.as_str().parse().ok()?))
}

/// Sends publishes to NATS in arrival order, as many per round as are waiting, and
/// answers each: a core publish once a round trip after it came back, a history publish
/// with its offset once JetStream acknowledged it. Returns why it stopped (the batch in
/// flight is refused by the caller).
pub(super) async fn publish_loop(
    publishes: &mut mpsc::UnboundedReceiver<Outgoing>,
    batch: &mut Vec<Outgoing>,
    publisher: Publisher,
    keys: Keyspace,
    stats: &BrokerStats,
    node: &dyn Node,
    shard: usize,
) -> String {
    let mut refusals = RefusalLog::default();
    loop {
        if !next_batch(publishes, batch).await {
            return "publishing stopped".into();
        }
        let mut acks = Vec::with_capacity(batch.len());
        for p in batch.iter() {
            let sent = match (&publisher.js, p.topic.is_empty()) {
                (_, true) => {
                    let words = p.publication.payload.clone();
                    publisher
                        .client
                        .publish(keys.control(), words)
                        .await
                        .map(|()| None)
                }
                (Some(history), false) if p.retention.count > 0 => {
                    let payload = Bytes::from(wire::payload(&p.publication));
                    match history.js.publish(keys.key(&p.topic), payload).await {
                        Ok(ack) => Ok(Some(ack)),
                        Err(err) => return format!("JetStream publish: {err}"),
                    }
                }
                _ => {
                    let payload = Bytes::from(wire::payload(&p.publication));
                    let channel = keys.channel(&p.topic);
                    publisher
                        .client
                        .publish(channel, payload)
                        .await
                        .map(|()| None)
                }
            };
            match sent {
                Ok(ack) => acks.push(ack),
                Err(err) => return format!("NATS publish: {err}"),
            }
        }
        if let Err(lost) = round_trip(&publisher.client).await {
            return lost;
        }
        // The topics of the batch to trim, each once: one purge that keeps the topic's
        // count covers every publish of it in the batch.
        let mut trims: HashMap<String, usize> = HashMap::new();
        for (p, ack) in batch.drain(..).zip(acks) {
            let offset = match ack {
                None => Ok(None),
                Some(ack) => match tokio::time::timeout(RESPONSE_TIMEOUT, ack).await {
                    Ok(Ok(ack)) => {
                        if publisher
                            .js
                            .as_ref()
                            .is_some_and(|h| p.retention.count < h.widest)
                        {
                            trims.insert(keys.key(&p.topic), p.retention.count);
                        }
                        Ok(Some(Offset(0, ack.sequence)))
                    }
                    Ok(Err(err)) => Err(err.to_string()),
                    Err(_) => Err("no acknowledgement within the response timeout".to_owned()),
                },
            };
            let reply = offset.map(Published::by_nats);
            answer_publish(p, reply, &mut refusals, (stats, node, shard));
        }
        // The trims of the batch's topics run together, after their publishes are answered;
        // one that fails only leaves more kept.
        let Some(history) = &publisher.js else {
            continue;
        };
        let trims = trims
            .into_iter()
            .map(|(subject, keep)| history.trim(subject, keep));
        for failure in futures_util::future::join_all(trims)
            .await
            .into_iter()
            .flatten()
        {
            if let Some(suppressed) = refusals.note(std::time::Instant::now()) {
                warn!(shard, error = %failure, suppressed, "JetStream did not trim a topic's history");
            }
        }
    }
}

impl History {
    /// Trims the history subject `subject` to its newest `keep` entries: its failure, if
    /// it fails.
    fn trim(&self, subject: String, keep: usize) -> impl Future<Output = Option<String>> + use<> {
        let keep = u64::try_from(keep).unwrap_or(u64::MAX);
        let purge = self.stream.purge().filter(subject).keep(keep);
        async move {
            match tokio::time::timeout(RESPONSE_TIMEOUT, purge.into_future()).await {
                Ok(Ok(_)) => None,
                Ok(Err(err)) => Some(err.to_string()),
                Err(_) => Some("no answer within the response timeout".to_owned()),
            }
        }
    }
}

impl Reader {
    /// One page of `topic`'s history for `read`, as Redis's is read (`broker::history`):
    /// the entries from the read's offset on, the newest offset, and whether an entry at
    /// or before the read's offset is still kept (JetStream drops the oldest first, so
    /// then nothing after it was dropped).
    pub(super) async fn history(
        &self,
        keys: Keyspace,
        topic: &str,
        read: HistoryRead,
    ) -> Result<HistoryPage, String> {
        use jetstream::stream::RawMessageErrorKind as Kind;
        let subject = keys.key(topic);
        let newest = match self.stream.get_last_raw_message_by_subject(&subject).await {
            Ok(message) => Some(Offset(0, message.sequence)),
            Err(err) if err.kind() == Kind::NoMessageFound => None,
            Err(err) => return Err(err.to_string()),
        };
        let mut entries = Vec::new();
        if let (Since::After(after), Some(newest)) = (read.from, newest)
            && after <= newest
        {
            entries = self
                .entries(&subject, after.1.max(1), read.wanted() + 1)
                .await?;
        }
        let mut oldest = None;
        if let Since::After(after) = read.from
            && entries.first().is_none_or(|(first, _)| *first != after)
            && newest.is_some()
        {
            match self
                .stream
                .get_first_raw_message_by_subject(&subject, 0)
                .await
            {
                Ok(first) if Offset(0, first.sequence) <= after => {
                    oldest = Some(Offset(0, first.sequence));
                }
                Ok(_) => {}
                Err(err) if err.kind() == Kind::NoMessageFound => {}
                Err(err) => return Err(err.to_string()),
            }
        }
        let extent = Extent {
            newest,
            removed_up_to: None,
            oldest,
        };
        Ok(HistoryPage::cut(&read, entries, extent))
    }

    /// Up to `count` entries of `subject` from stream sequence `from` on, read by a
    /// consumer made for the read and deleted after it.
    async fn entries(
        &self,
        subject: &str,
        from: u64,
        count: usize,
    ) -> Result<Vec<(Offset, crate::model::publication::Publication)>, String> {
        let config = consumer::pull::Config {
            filter_subject: subject.to_owned(),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: from,
            },
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: CONSUMER_IDLE,
            memory_storage: true,
            ..Default::default()
        };
        let reader = self
            .stream
            .create_consumer(config)
            .await
            .map_err(|err| format!("JetStream consumer: {err}"))?;
        let name = reader.cached_info().name.clone();
        let read = async {
            let mut batch = reader
                .fetch()
                .max_messages(count)
                .messages()
                .await
                .map_err(|err| err.to_string())?;
            let mut entries = Vec::with_capacity(count);
            while let Some(message) = batch.next().await {
                let message = message.map_err(|err| err.to_string())?;
                let sequence = message
                    .info()
                    .map_err(|err| err.to_string())?
                    .stream_sequence;
                if let Some(publication) = wire::publication(&message.payload) {
                    entries.push((Offset(0, sequence), publication));
                }
            }
            Ok(entries)
        };
        let entries = read.await;
        let _ = self.stream.delete_consumer(&name).await;
        entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(subject: &str, sequence: Option<&str>) -> async_nats::Message {
        let headers = sequence.map(|sequence| {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Sequence", sequence);
            headers
        });
        async_nats::Message {
            subject: subject.into(),
            reply: None,
            payload: Bytes::from_static(b"Thi"),
            headers,
            status: None,
            description: None,
            length: 0,
        }
    }

    #[test]
    fn a_republished_message_carries_its_offset_in_a_header() {
        let keys = Keyspace::Nats;
        let kept = message("stratus.t.news", Some("42"));
        assert_eq!(offset(&kept), Some(Offset(0, 42)));
        let (topic, _, at) =
            wire::decode_beside(keys, kept.subject.as_str(), &kept.payload, offset(&kept))
                .expect("decoded");
        assert_eq!((&*topic, at), ("news", Some(Offset(0, 42))));
        assert_eq!(
            offset(&message("stratus.t.news", None)),
            None,
            "a core publish"
        );
        assert_eq!(
            offset(&message("stratus.t.news", Some("x"))),
            None,
            "not a number"
        );
    }

    #[test]
    fn only_a_lost_connection_or_dropped_messages_end_the_session() {
        use async_nats::Event;
        for event in [Event::Disconnected, Event::Closed, Event::SlowConsumer(3)] {
            assert!(lost(&event).is_some(), "{event}");
        }
        for event in [Event::Connected, Event::LameDuckMode, Event::Draining] {
            assert!(lost(&event).is_none(), "{event}");
        }
    }

    #[test]
    fn the_history_stream_keeps_the_widest_history_and_republishes_on_the_topics() {
        let config = stream_config((100, Some(Duration::from_secs(60))));
        assert_eq!(config.name, STREAM);
        assert_eq!(config.max_messages_per_subject, 100);
        assert_eq!(config.max_age, Duration::from_secs(60));
        let republish = config.republish.expect("republished");
        let keys = Keyspace::Nats;
        // What the stream takes is the history subject; what it republishes on is the
        // topic's channel, under the same tokens.
        let take = republish.source.trim_end_matches('>');
        let give = republish.destination.trim_end_matches('>');
        let (key, channel) = (keys.key("a.b"), keys.channel("a.b"));
        assert_eq!(key.strip_prefix(take), channel.strip_prefix(give));
        assert_eq!(config.subjects, std::slice::from_ref(&republish.source));
        assert_eq!(
            stream_config((5, None)).max_age,
            Duration::ZERO,
            "no age bound"
        );
    }
}
