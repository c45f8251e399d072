//! With Redis: the node reports its topics' first and last subscribers to the cluster's
//! state through the scripts (`scripts`), refreshes its lease and sweeps every presence
//! interval, and delivers the webhook from the `stratus:events` stream through a consumer
//! group:
//! - `XREADGROUP` hands each new event to one node;
//! - the node holds at most [`FETCH`] x 2 events at once, and touches them every interval
//!   (`XCLAIM ... JUSTID`), so they stay idle for less than its lease while it lives;
//! - `XAUTOCLAIM` takes over events idle longer than the lease (their node died before
//!   posting them);
//! - `XACK` after a 2xx, or after the last attempt failed (counted as dropped).
//!
//! So under normal operation each event is posted once, by one node, and an event whose
//! node crashed is posted by another (at least once: a node that stalls past its lease
//! may see its events posted twice).
//!
//! Redis unreachable: changes wait (coalesced per topic) and go once it is back; the
//! scripts are idempotent, so one that may or may not have run is simply run again. A
//! Redis that lost its data (or a node that stalled past its lease) is noticed by the
//! lease refresh, and the node reports all its topics again.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::Value;
use redis::aio::MultiplexedConnection;
use tracing::warn;

use super::consumers;
use super::scripts::{EVENTS_MAXLEN, GROUP, SWEEP_LIMIT, Scripts, events_key};
use super::{EventsTask, Sending, count, set_queued};
use crate::model::keyspace::Keyspace;
use crate::model::occupancy_events::{EventKind, OccupancyEvent};
use crate::model::offset::Offset;
use crate::node::occupancy_events::EventsShared;
use crate::stats;

/// Events a node takes from the stream at once (and takes more only below it).
const FETCH: usize = 16;
/// Scripts in flight at once on the node's connection while reporting a burst of changes.
const IN_FLIGHT: usize = 32;
/// How long Redis has to answer.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The node's view of its part in the cluster's state.
struct Cluster {
    task: EventsTask,
    shared: Arc<EventsShared>,
    client: redis::Client,
    conn: Option<MultiplexedConnection>,
    scripts: Scripts,
    /// The event stream's key.
    events: &'static str,
    /// Topics with subscribers on the node now.
    present: HashSet<Arc<str>>,
    /// Each topic's state on the node not yet reported to Redis.
    pending: HashMap<Arc<str>, bool>,
    /// Events taken from the stream for the webhook, waiting to be posted.
    queue: VecDeque<(String, OccupancyEvent)>,
    /// The stream id of the event being posted.
    inflight: Option<String>,
    /// Whether to look for events for the webhook.
    fetch: bool,
    /// Whether the node's lease was found gone: refresh it, and report again.
    relogin: bool,
    /// Whether the loss of Redis was logged (once per outage).
    reported: bool,
}

/// Runs the cluster side until the hub is gone.
pub(super) async fn run(task: EventsTask, client: redis::Client, keys: Keyspace) {
    let shared = task.inbox.shared.clone();
    let mut ticks = tokio::time::interval(task.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cluster = Cluster {
        task,
        shared: shared.clone(),
        client,
        conn: None,
        scripts: Scripts::new(keys),
        events: events_key(keys),
        present: HashSet::new(),
        pending: HashMap::new(),
        queue: VecDeque::new(),
        inflight: None,
        fetch: false,
        relogin: false,
        reported: false,
    };
    let mut sending: Option<Sending> = None;
    loop {
        if sending.is_none()
            && let Some((id, event)) = cluster.queue.pop_front()
        {
            sending = cluster.task.send(event);
            cluster.inflight = sending.as_ref().map(|_| id);
        }
        set_queued(
            &shared,
            cluster.queue.len() + usize::from(sending.is_some()),
        );
        tokio::select! {
            _ = ticks.tick() => cluster.tick().await,
            () = shared.wake.notified() => {
                cluster.take_changes();
                cluster.report().await;
            }
            read = cluster.task.inbox.reads.recv() => match read {
                Some(read) => {
                    let events = cluster.read(read.since, read.limit).await;
                    let _ = read.reply.send(events);
                }
                None => return,
            },
            Some(_) = async { Some(sending.as_mut()?.await) }, if sending.is_some() => {
                sending = None;
                cluster.finished().await;
            }
        }
        if cluster.relogin {
            cluster.relogin = false;
            cluster.tick().await;
        }
        if cluster.fetch {
            cluster.fetch = false;
            cluster.take_events().await;
        }
    }
}

/// Runs a Redis request, failing it if Redis has not answered in time.
async fn within<T>(request: impl Future<Output = redis::RedisResult<T>>) -> redis::RedisResult<T> {
    tokio::time::timeout(RESPONSE_TIMEOUT, request)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()))
}

impl Cluster {
    fn ms(d: Duration) -> u64 {
        d.as_millis() as u64
    }

    /// The connection, connecting (and making the webhook's consumer group) if there is
    /// none.
    async fn connection(&mut self) -> Option<MultiplexedConnection> {
        if let Some(conn) = &self.conn {
            return Some(conn.clone());
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(RESPONSE_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let connected = within(
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await;
        let mut conn = match connected {
            Ok(conn) => conn,
            Err(err) => {
                self.lost(&err);
                return None;
            }
        };
        if self.task.webhook.is_some() {
            let made: redis::RedisResult<Value> = within(
                redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(self.events)
                    .arg(GROUP)
                    .arg("$")
                    .arg("MKSTREAM")
                    .query_async(&mut conn),
            )
            .await;
            if let Err(err) = made
                && err.code() != Some("BUSYGROUP")
            {
                self.lost(&err);
                return None;
            }
        }
        self.reported = false;
        self.conn = Some(conn.clone());
        Some(conn)
    }

    /// Redis failed a request: count it, and reconnect on the next use.
    fn lost(&mut self, err: &redis::RedisError) {
        stats::add(&self.shared.stats.redis_errors, 1);
        if !self.reported {
            self.reported = true;
            warn!(error = %err, "occupancy events: Redis request failed; retrying");
        }
        self.conn = None;
    }

    /// Takes the hub's reports.
    fn take_changes(&mut self) {
        for (topic, present) in self.shared.take_changes() {
            if present {
                self.present.insert(topic.clone());
            } else {
                self.present.remove(&topic);
            }
            self.pending.insert(topic, present);
        }
    }

    /// Every interval: the lease and the sweep, the changes still waiting, and the
    /// webhook's events.
    async fn tick(&mut self) {
        let Some(mut conn) = self.connection().await else {
            return;
        };
        let mut invocation = self.scripts.tick.prepare_invoke();
        invocation
            .arg(&*self.task.node_id)
            .arg(Self::ms(self.task.lease))
            .arg(Self::ms(self.task.grace))
            .arg(EVENTS_MAXLEN)
            .arg(SWEEP_LIMIT);
        let ticked: redis::RedisResult<Value> = within(invocation.invoke_async(&mut conn)).await;
        let reply = match ticked {
            Ok(Value::Array(reply)) => reply,
            Ok(_) => return,
            Err(err) => return self.lost(&err),
        };
        if matches!(reply.first(), Some(Value::Int(1))) {
            // Gone from Redis (a stall past the lease, or a Redis that lost its data):
            // report every topic again.
            for topic in &self.present {
                self.pending.insert(topic.clone(), true);
            }
        }
        if let Some(Value::Array(vacated)) = reply.get(1) {
            for _ in vacated {
                count(&self.shared, EventKind::Vacated);
            }
        }
        self.report().await;
        if self.task.webhook.is_some() {
            self.touch().await;
            self.fetch = true;
        }
    }

    /// Reports the changes waiting, [`IN_FLIGHT`] scripts at a time.
    async fn report(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let Some(conn) = self.connection().await else {
            return;
        };
        let (node, lease, grace) = (
            self.task.node_id.clone(),
            Self::ms(self.task.lease),
            Self::ms(self.task.grace),
        );
        let scripts = &self.scripts;
        let changes: Vec<(Arc<str>, bool)> = self.pending.drain().collect();
        let results: Vec<_> =
            futures_util::stream::iter(changes.into_iter().map(|(topic, present)| {
                let (mut conn, node) = (conn.clone(), node.clone());
                async move {
                    let invocation = if present {
                        let mut join = scripts.join.prepare_invoke();
                        join.arg(&*node).arg(&*topic).arg(lease).arg(EVENTS_MAXLEN);
                        join
                    } else {
                        let mut leave = scripts.leave.prepare_invoke();
                        leave.arg(&*node).arg(&*topic).arg(grace);
                        leave
                    };
                    let result: redis::RedisResult<Value> =
                        within(invocation.invoke_async(&mut conn)).await;
                    (topic, present, result)
                }
            }))
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        let mut failure = None;
        for (topic, present, result) in results {
            match result {
                Ok(Value::Int(-1)) => {
                    self.relogin = true;
                    self.pending.entry(topic).or_insert(present);
                }
                Ok(Value::BulkString(_) | Value::SimpleString(_)) => {
                    count(&self.shared, EventKind::Occupied);
                    self.fetch = true;
                }
                Ok(_) => {}
                Err(err) => {
                    self.pending.entry(topic).or_insert(present);
                    failure = Some(err);
                }
            }
        }
        if let Some(err) = failure {
            self.lost(&err);
        }
    }

    /// At most `limit` events after `since` (`XRANGE`).
    async fn read(&mut self, since: Offset, limit: usize) -> Result<Vec<OccupancyEvent>, String> {
        let Some(mut conn) = self.connection().await else {
            return Err("the broker is unreachable".into());
        };
        let range: redis::RedisResult<Value> = within(
            redis::cmd("XRANGE")
                .arg(self.events)
                .arg(format!("({since}"))
                .arg("+")
                .arg("COUNT")
                .arg(limit)
                .query_async(&mut conn),
        )
        .await;
        match range {
            Ok(Value::Array(entries)) => {
                Ok(entries.iter().filter_map(entry).map(|(_, e)| e).collect())
            }
            Ok(_) => Ok(Vec::new()),
            Err(err) => {
                self.lost(&err);
                Err("the events could not be read from the broker".into())
            }
        }
    }

    /// Takes events for the webhook: those other nodes left pending too long (they died),
    /// then new ones.
    async fn take_events(&mut self) {
        if self.task.webhook.is_none() || self.queue.len() >= FETCH {
            return;
        }
        let Some(mut conn) = self.connection().await else {
            return;
        };
        let node = &*self.task.node_id;
        let min_idle = Self::ms(self.task.lease + self.task.interval * 2);
        let claimed: redis::RedisResult<Value> = within(
            redis::cmd("XAUTOCLAIM")
                .arg(self.events)
                .arg(GROUP)
                .arg(node)
                .arg(min_idle)
                .arg("0-0")
                .arg("COUNT")
                .arg(FETCH)
                .query_async(&mut conn),
        )
        .await;
        let mut taken = match claimed {
            Ok(Value::Array(reply)) => match reply.get(1) {
                Some(Value::Array(entries)) => entries.iter().filter_map(entry).collect(),
                _ => Vec::new(),
            },
            Ok(_) => Vec::new(),
            Err(err) => return self.lost(&err),
        };
        // What dead nodes held has moved: their consumers can go.
        match within(consumers::remove_idle(
            &mut conn,
            self.events,
            node,
            self.task.lease,
        ))
        .await
        {
            Ok(0) => {}
            Ok(removed) => tracing::debug!(removed, "webhook consumers of gone nodes removed"),
            Err(err) => return self.lost(&err),
        }
        let read: redis::RedisResult<Value> = within(
            redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(GROUP)
                .arg(node)
                .arg("COUNT")
                .arg(FETCH)
                .arg("STREAMS")
                .arg(self.events)
                .arg(">")
                .query_async(&mut conn),
        )
        .await;
        match read {
            Ok(reply) => taken.extend(stream_entries(&reply)),
            Err(err) => self.lost(&err),
        }
        for (id, event) in taken {
            let held =
                self.inflight.as_ref() == Some(&id) || self.queue.iter().any(|(q, _)| *q == id);
            if !held {
                self.queue.push_back((id, event));
            }
        }
    }

    /// Keeps the events this node holds from looking abandoned (resets their idle time).
    async fn touch(&mut self) {
        let ids: Vec<&String> = self
            .inflight
            .iter()
            .chain(self.queue.iter().map(|(id, _)| id))
            .collect();
        if ids.is_empty() {
            return;
        }
        let Some(mut conn) = self.conn.clone() else {
            return;
        };
        let touched: redis::RedisResult<Value> = within(
            redis::cmd("XCLAIM")
                .arg(self.events)
                .arg(GROUP)
                .arg(&*self.task.node_id)
                .arg(0)
                .arg(&ids)
                .arg("JUSTID")
                .query_async(&mut conn),
        )
        .await;
        if let Err(err) = touched {
            self.lost(&err);
        }
    }

    /// The event in flight has been posted, or given up on: acknowledged, so no node
    /// posts it again.
    async fn finished(&mut self) {
        let Some(id) = self.inflight.take() else {
            return;
        };
        let Some(mut conn) = self.connection().await else {
            return;
        };
        let acked: redis::RedisResult<Value> = within(
            redis::cmd("XACK")
                .arg(self.events)
                .arg(GROUP)
                .arg(&id)
                .query_async(&mut conn),
        )
        .await;
        if let Err(err) = acked {
            self.lost(&err);
        }
    }
}

/// A string reply.
fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// A stream entry `[id, [field, value, ...]]` as an event (`None`: not one of ours, or
/// deleted).
fn entry(value: &Value) -> Option<(String, OccupancyEvent)> {
    let Value::Array(parts) = value else {
        return None;
    };
    let id = text(parts.first()?)?;
    let pairs: Vec<(String, String)> = match parts.get(1)? {
        Value::Array(fields) => fields
            .chunks(2)
            .filter_map(|kv| Some((text(kv.first()?)?, text(kv.get(1)?)?)))
            .collect(),
        Value::Map(fields) => fields
            .iter()
            .filter_map(|(k, v)| Some((text(k)?, text(v)?)))
            .collect(),
        _ => return None,
    };
    let field = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let event = OccupancyEvent {
        kind: EventKind::parse(field("event")?)?,
        topic: Arc::from(field("topic")?),
        offset: Offset::parse(&id)?,
        time_ms: field("time")?.parse().ok()?,
    };
    Some((id, event))
}

/// The entries of an `XREADGROUP` reply (RESP2 arrays or RESP3 maps; nil: none).
fn stream_entries(reply: &Value) -> Vec<(String, OccupancyEvent)> {
    let streams: Vec<&Value> = match reply {
        Value::Array(streams) => streams
            .iter()
            .filter_map(|s| match s {
                Value::Array(parts) => parts.get(1),
                _ => None,
            })
            .collect(),
        Value::Map(streams) => streams.iter().map(|(_, v)| v).collect(),
        _ => Vec::new(),
    };
    streams
        .into_iter()
        .filter_map(|entries| match entries {
            Value::Array(entries) => Some(entries.iter().filter_map(entry)),
            _ => None,
        })
        .flatten()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::scripts::EVENTS;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn stream_entries_are_read_as_events_and_strangers_skipped() {
        let ours = Value::Array(vec![
            bulk("1700000000000-3"),
            Value::Array(vec![
                bulk("event"),
                bulk("vacated"),
                bulk("topic"),
                bulk("chat:1"),
                bulk("time"),
                bulk("1700000000000"),
            ]),
        ]);
        let stranger = Value::Array(vec![
            bulk("1700000000001-0"),
            Value::Array(vec![bulk("event"), bulk("exploded")]),
        ]);
        let reply = Value::Array(vec![Value::Array(vec![
            bulk(EVENTS),
            Value::Array(vec![ours, stranger]),
        ])]);
        let entries = stream_entries(&reply);
        assert_eq!(entries.len(), 1);
        let (id, event) = &entries[0];
        assert_eq!(id, "1700000000000-3");
        assert_eq!(event.kind, EventKind::Vacated);
        assert_eq!(&*event.topic, "chat:1");
        assert_eq!(event.offset, Offset(1_700_000_000_000, 3));
        assert_eq!(event.time_ms, 1_700_000_000_000);
        assert!(stream_entries(&Value::Nil).is_empty());
    }
}
