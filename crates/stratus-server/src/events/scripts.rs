//! The cluster's occupancy state in Redis, and the Lua scripts that change it. Each
//! transition is decided inside one script, so Redis runs it atomically: however many
//! nodes report or sweep at once, a topic is marked occupied once and vacated once, and
//! each decision appends its event to the stream in the same step. Time is Redis's
//! (`TIME`), so the nodes' clocks do not matter.
//!
//! Keys (the scripts touch keys they do not declare, so in a Redis Cluster they all carry
//! the node-wide hash tag instead of `stratus:`, `{stratus!}occupancy:leases` and
//! `{stratus!}events`: one slot, on the master the node-wide task uses; see
//! [`Scripts::new`]):
//! - `stratus:occupancy:leases`: sorted set, node id -> lease expiry (ms); refreshed by
//!   each node every presence interval. A node whose lease expired is taken for crashed.
//! - `stratus:occupancy:node:{node}`: set of the topics the node has subscribers of.
//! - `stratus:occupancy:topic:{topic}`: set of the nodes with subscribers of the topic
//!   (occupants; only those with a live lease count).
//! - `stratus:occupancy:occupied`: set of the topics marked occupied.
//! - `stratus:occupancy:vacating`: sorted set, topic -> vacate deadline (ms): occupied
//!   topics with no live occupant, waiting out the grace.
//! - `stratus:events`: the stream of events (`event`, `topic`, `time` fields; the entry id
//!   is the event's offset), trimmed to about [`EVENTS_MAXLEN`] entries.

use crate::model::keyspace::Keyspace;

/// The event stream.
pub(crate) const EVENTS: &str = "stratus:events";

/// The event stream's key where keys are named as `keys` says.
pub(crate) fn events_key(keys: Keyspace) -> &'static str {
    match keys {
        Keyspace::Plain | Keyspace::Nats => EVENTS,
        Keyspace::Cluster => "{stratus!}events",
    }
}

/// `script` with its keys named as `keys` says (in a cluster: under the node-wide tag).
fn in_keyspace(script: &str, keys: Keyspace) -> String {
    match keys {
        Keyspace::Plain | Keyspace::Nats => script.to_owned(),
        Keyspace::Cluster => script
            .replace("'stratus:occupancy:", "'{stratus!}occupancy:")
            .replace(&format!("'{EVENTS}'"), &format!("'{}'", events_key(keys))),
    }
}
/// The consumer group the nodes deliver the webhook from.
pub(crate) const GROUP: &str = "stratus-webhook";
/// About how many events the stream keeps (`XADD MAXLEN ~`).
pub(crate) const EVENTS_MAXLEN: u64 = 10_000;
/// Most crashed nodes and due vacates one sweep handles (the rest: the next sweep).
pub(crate) const SWEEP_LIMIT: u64 = 256;

/// What every script shares: Redis's clock, whether a topic has a live occupant, and
/// appending an event.
const PRELUDE: &str = r"
local LEASES = 'stratus:occupancy:leases'
local OCCUPIED = 'stratus:occupancy:occupied'
local VACATING = 'stratus:occupancy:vacating'
local function node_key(node) return 'stratus:occupancy:node:' .. node end
local function topic_key(topic) return 'stratus:occupancy:topic:' .. topic end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function live(topic, now)
  for _, node in ipairs(redis.call('SMEMBERS', topic_key(topic))) do
    local expiry = redis.call('ZSCORE', LEASES, node)
    if expiry and tonumber(expiry) >= now then return true end
  end
  return false
end
local function emit(kind, topic, now, maxlen)
  return redis.call('XADD', 'stratus:events', 'MAXLEN', '~', maxlen, '*',
    'event', kind, 'topic', topic, 'time', tostring(now))
end
-- A node gone from `topic`: if no live occupant is left, the topic's vacate is scheduled
-- (`nx`: an earlier schedule stands).
local function left(node, topic, now, grace, nx)
  redis.call('SREM', topic_key(topic), node)
  if redis.call('SISMEMBER', OCCUPIED, topic) == 1 and not live(topic, now) then
    if nx then
      redis.call('ZADD', VACATING, 'NX', now + grace, topic)
    else
      redis.call('ZADD', VACATING, now + grace, topic)
    end
  end
end
-- Takes a node's records out (a crash, or its own lease found expired).
local function forget(node, now, grace)
  local key = node_key(node)
  for _, topic in ipairs(redis.call('SMEMBERS', key)) do
    left(node, topic, now, grace, true)
  end
  redis.call('DEL', key)
  redis.call('ZREM', LEASES, node)
end
";

/// A node's first subscriber of a topic. ARGV: node, topic, lease ms, stream maxlen.
/// Returns -1 if the node's lease is gone or expired (it must run [`TICK`] first, then
/// report again), the id of the `occupied` event it appended, or nil.
const JOIN_BODY: &str = r"
local node, topic = ARGV[1], ARGV[2]
local now = now_ms()
local expiry = redis.call('ZSCORE', LEASES, node)
if not expiry or tonumber(expiry) < now then return -1 end
redis.call('ZADD', LEASES, now + tonumber(ARGV[3]), node)
redis.call('SADD', topic_key(topic), node)
redis.call('SADD', node_key(node), topic)
redis.call('ZREM', VACATING, topic)
if redis.call('SADD', OCCUPIED, topic) == 1 then
  return emit('occupied', topic, now, ARGV[4])
end
return false
";

/// A node's last subscriber of a topic has gone. ARGV: node, topic, grace ms. The vacate
/// is scheduled (or put off) if no live occupant is left.
const LEAVE_BODY: &str = r"
local node, topic = ARGV[1], ARGV[2]
local now = now_ms()
redis.call('SREM', node_key(node), topic)
left(node, topic, now, tonumber(ARGV[3]), false)
return false
";

/// Every presence interval, on every node (any may sweep; the scripts make it
/// idempotent). ARGV: node, lease ms, grace ms, stream maxlen, sweep limit.
/// 1. Refreshes the node's lease. If it was gone or had expired (the node stalled past
///    its lease), the node's records are taken out as for a crash and the lease made
///    anew: the reply's first element is 1, and the node reports all its topics again.
/// 2. Crashed nodes (leases expired): taken out of their topics, whose vacates are
///    scheduled where no live occupant is left.
/// 3. Due vacates with still no live occupant: unmarked, and a `vacated` event appended.
///
/// Returns `{lost, {vacated event ids}}`.
const TICK_BODY: &str = r"
local node, lease, grace = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local maxlen, limit = ARGV[4], tonumber(ARGV[5])
local now = now_ms()
local lost = 0
local expiry = redis.call('ZSCORE', LEASES, node)
if not expiry or tonumber(expiry) < now then
  lost = 1
  forget(node, now, grace)
end
redis.call('ZADD', LEASES, now + lease, node)
for _, dead in ipairs(redis.call('ZRANGEBYSCORE', LEASES, '-inf', '(' .. now, 'LIMIT', 0, limit)) do
  forget(dead, now, grace)
end
local events = {}
for _, topic in ipairs(redis.call('ZRANGEBYSCORE', VACATING, '-inf', now, 'LIMIT', 0, limit)) do
  redis.call('ZREM', VACATING, topic)
  if not live(topic, now) and redis.call('SREM', OCCUPIED, topic) == 1 then
    table.insert(events, emit('vacated', topic, now, maxlen))
  end
end
return {lost, events}
";

/// The scripts, each with the prelude.
pub(crate) struct Scripts {
    pub(crate) join: redis::Script,
    pub(crate) leave: redis::Script,
    pub(crate) tick: redis::Script,
}

impl Scripts {
    /// The scripts, naming their keys as `keys` says.
    pub(crate) fn new(keys: Keyspace) -> Self {
        let with_prelude =
            |body: &str| redis::Script::new(&in_keyspace(&format!("{PRELUDE}{body}"), keys));
        Self {
            join: with_prelude(JOIN_BODY),
            leave: with_prelude(LEAVE_BODY),
            tick: with_prelude(TICK_BODY),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_a_cluster_every_key_the_scripts_touch_is_on_the_node_wide_slot() {
        let script = in_keyspace(
            &format!("{PRELUDE}{JOIN_BODY}{LEAVE_BODY}{TICK_BODY}"),
            Keyspace::Cluster,
        );
        assert!(!script.contains("'stratus:"), "{script}");
        assert_eq!(script.matches("'{stratus!}occupancy:").count(), 5);
        assert_eq!(script.matches("'{stratus!}events'").count(), 1);
        let plain = in_keyspace(PRELUDE, Keyspace::Plain);
        assert_eq!(plain, PRELUDE);
    }
}
