//! Forgetting the webhook consumers of nodes that are gone. Each node reads the
//! `stratus-webhook` group as a consumer named for its node id, which is new every
//! process, so without this the group would keep a consumer per node that ever ran.
//!
//! A consumer is deleted (`XGROUP DELCONSUMER`) only when it holds no pending event
//! (`XAUTOCLAIM` has moved a dead node's events to a live one first) and Redis has seen
//! no activity from it for [`IDLE_LEASES`] leases. The check and the delete run in one
//! script, so a node that reads between them cannot lose the events it just took. What
//! makes the delete safe is the empty pending list, not the idle time: before Redis 7.2
//! an empty read is no activity, so a live node that has had no events for a while may
//! lose its consumer too; harmless, it held nothing, and its next read that takes an
//! event makes it again. The idle bound only keeps the churn down.

use std::time::Duration;

use redis::aio::MultiplexedConnection;

use super::scripts::GROUP;

/// How many leases a consumer with nothing pending may go without reading before it is
/// taken for a node that is gone.
pub(crate) const IDLE_LEASES: u32 = 10;

/// Deletes the consumers other than `node`'s with nothing pending that have been idle
/// longer than `lease` × [`IDLE_LEASES`] (`XINFO CONSUMERS` reports a flat list of
/// field/value pairs per consumer). Returns how many went.
const REMOVE_IDLE: &str = r"
local removed = 0
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local field = {}
  for i = 1, #consumer, 2 do field[consumer[i]] = consumer[i + 1] end
  if field['name'] ~= ARGV[2] and field['pending'] == 0
      and field['idle'] > tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], field['name'])
    removed = removed + 1
  end
end
return removed
";

/// Deletes the webhook group's consumers of nodes that are gone (see the module docs);
/// how many went.
pub(crate) async fn remove_idle(
    conn: &mut MultiplexedConnection,
    events: &str,
    node: &str,
    lease: Duration,
) -> redis::RedisResult<u64> {
    let min_idle = (lease * IDLE_LEASES).as_millis() as u64;
    redis::Script::new(REMOVE_IDLE)
        .key(events)
        .arg(GROUP)
        .arg(node)
        .arg(min_idle)
        .invoke_async(conn)
        .await
}
