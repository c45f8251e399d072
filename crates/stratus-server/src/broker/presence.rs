//! The cluster's view of presence, in Redis. Each node reports, every presence interval,
//! what changed in its own presence: per topic its connections and distinct users (one
//! hash per node), and the members of topics that list them (one hash per node and
//! topic). Each node holds a lease, renewed at every report, in a sorted set scored by
//! its expiry in Redis's own clock: a reader sums the nodes whose lease is live, so a
//! node that crashed drops out of every count and list when its lease runs out, without
//! anyone cleaning up after it (its keys expire on their own).
//!
//! The cost is per topic that changed, never per subscriber: occupancy is two numbers
//! per node and topic, and a member list is rewritten only where it is at most its cap.
//! Distinct users across nodes are the sum of each node's distinct users: exact while a
//! user's connections are on one node, an overcount by one per extra node otherwise.

use std::sync::Arc;

use redis::aio::MultiplexedConnection;

use crate::model::keyspace::Keyspace;

use crate::model::presence::{Member, Occupancy, PresenceAnswer, PresenceReport};

/// The nodes' leases: node id -> lease expiry (ms, Redis time).
fn nodes_key(keys: Keyspace) -> String {
    keys.node_key("presence:nodes")
}
/// How long a member list lives without being rewritten (a full report rewrites every
/// list well within it).
pub(crate) const MEMBERS_TTL_MS: u64 = 3_600_000;
/// Leases expired longer ago than this are removed from the leases ([`nodes_key`]).
const FORGET_AFTER_MS: u64 = 600_000;

/// A node's occupancy hash: topic -> `"<connections> <users>"`.
fn occupancy_key(keys: Keyspace, node: &str) -> String {
    keys.node_key(&format!("presence:occupancy:{node}"))
}

/// A node's figures: name -> value, expiring with its lease.
fn figures_key(keys: Keyspace, node: &str) -> String {
    keys.node_key(&format!("presence:node:{node}"))
}

/// A node's members of a topic: client id -> the member as JSON.
fn members_key(keys: Keyspace, node: &str, topic: &str) -> String {
    keys.node_key(&format!("presence:members:{node}:{topic}"))
}

/// Renews a node's lease: KEYS = the leases; ARGV = the node, the lease (ms), how long
/// after expiry a lease is dropped. Returns 1 if the lease was live, 0 if it had lapsed
/// (or was never taken, or Redis lost it): then the cluster dropped what the node reported
/// before, and its next report must carry everything.
const LEASE_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local before = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[3]))
if before and tonumber(before) >= now then return 1 end
return 0
";

/// The nodes whose lease is live: KEYS = the leases.
const LIVE_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
";

/// Writes `report` for `node` and renews its lease of `lease_ms`, in one round trip; a
/// `full` report replaces the node's counts (a topic it no longer reports is gone).
/// Whether the lease was still live (if not, the next report should be full).
pub(crate) async fn report(
    conn: &mut MultiplexedConnection,
    keys: Keyspace,
    node: &str,
    lease_ms: u64,
    report: &PresenceReport,
    full: bool,
) -> redis::RedisResult<bool> {
    let occupancy = occupancy_key(keys, node);
    let mut pipe = redis::pipe();
    pipe.atomic();
    pipe.cmd("EVAL")
        .arg(LEASE_SCRIPT)
        .arg(1)
        .arg(nodes_key(keys))
        .arg(node)
        .arg(lease_ms)
        .arg(FORGET_AFTER_MS);
    if full {
        pipe.del(&occupancy).ignore();
    }
    for topic in &report.topics {
        let members = members_key(keys, node, &topic.topic);
        if topic.occupancy.connections == 0 {
            pipe.hdel(&occupancy, &*topic.topic).ignore();
            pipe.del(&members).ignore();
            continue;
        }
        let counts = format!("{} {}", topic.occupancy.connections, topic.occupancy.users);
        pipe.hset(&occupancy, &*topic.topic, counts).ignore();
        pipe.del(&members).ignore();
        if let Some(list) = topic.members.as_ref().filter(|l| !l.is_empty()) {
            let fields: Vec<(&str, String)> = list
                .iter()
                .map(|m| {
                    let mut json = String::new();
                    m.write_json(&mut json);
                    (&*m.client, json)
                })
                .collect();
            pipe.hset_multiple(&members, &fields).ignore();
            pipe.pexpire(&members, MEMBERS_TTL_MS as i64).ignore();
        }
    }
    // The occupancy hash and the figures live as long as the lease, renewed with it.
    pipe.pexpire(&occupancy, lease_ms as i64).ignore();
    if !report.node.is_empty() {
        let figures = figures_key(keys, node);
        pipe.hset_multiple(&figures, &report.node).ignore();
        pipe.pexpire(&figures, lease_ms as i64).ignore();
    }
    let (live,): (i64,) = pipe.query_async(conn).await?;
    Ok(live == 1)
}

/// The nodes whose lease is live.
async fn live_nodes(
    conn: &mut MultiplexedConnection,
    keys: Keyspace,
) -> redis::RedisResult<Vec<String>> {
    redis::cmd("EVAL")
        .arg(LIVE_SCRIPT)
        .arg(1)
        .arg(nodes_key(keys))
        .query_async(conn)
        .await
}

/// Every live node and the figures it last reported.
pub(crate) async fn nodes(
    conn: &mut MultiplexedConnection,
    keys: Keyspace,
) -> redis::RedisResult<Vec<(String, Vec<(String, u64)>)>> {
    let nodes = live_nodes(conn, keys).await?;
    let mut pipe = redis::pipe();
    for node in &nodes {
        pipe.hgetall(figures_key(keys, node));
    }
    let figures: Vec<Vec<(String, u64)>> = pipe.query_async(conn).await?;
    Ok(nodes.into_iter().zip(figures).collect())
}

/// `topic`'s presence over the live nodes: the summed occupancy, and with `members`
/// (the cap) at most that many members and whether they are all.
pub(crate) async fn read(
    conn: &mut MultiplexedConnection,
    keys: Keyspace,
    topic: &str,
    members: Option<usize>,
) -> redis::RedisResult<PresenceAnswer> {
    let nodes = live_nodes(conn, keys).await?;
    let mut pipe = redis::pipe();
    for node in &nodes {
        pipe.hget(occupancy_key(keys, node), topic);
    }
    let counts: Vec<Option<String>> = pipe.query_async(conn).await?;
    let occupancy = counts
        .iter()
        .flatten()
        .filter_map(|c| parse_counts(c))
        .fold(Occupancy::default(), |sum, o| Occupancy {
            connections: sum.connections + o.connections,
            users: sum.users + o.users,
        });
    let Some(cap) = members else {
        return Ok(PresenceAnswer {
            occupancy,
            members: None,
        });
    };
    // Only nodes that count the topic now: a list left behind by a report that never
    // landed is not taken for members.
    let counting: Vec<&String> = nodes
        .iter()
        .zip(&counts)
        .filter(|(_, c)| c.is_some())
        .map(|(n, _)| n)
        .collect();
    if counting.is_empty() {
        return Ok(PresenceAnswer {
            occupancy,
            members: Some((Vec::new(), occupancy.connections == 0)),
        });
    }
    let mut pipe = redis::pipe();
    for node in counting {
        pipe.hvals(members_key(keys, node, topic));
    }
    let lists: Vec<Vec<String>> = pipe.query_async(conn).await?;
    let listed: usize = lists.iter().map(Vec::len).sum();
    let list: Vec<Member> = lists
        .iter()
        .flatten()
        .filter_map(|json| parse_member(json))
        .take(cap)
        .collect();
    let complete = listed as u64 == occupancy.connections && list.len() == listed;
    Ok(PresenceAnswer {
        occupancy,
        members: Some((list, complete)),
    })
}

/// `"<connections> <users>"`.
fn parse_counts(counts: &str) -> Option<Occupancy> {
    let (connections, users) = counts.split_once(' ')?;
    Some(Occupancy {
        connections: connections.parse().ok()?,
        users: users.parse().ok()?,
    })
}

/// A member as [`Member::write_json`] wrote it.
fn parse_member(json: &str) -> Option<Member> {
    #[derive(serde::Deserialize)]
    struct Wire<'a> {
        client: String,
        user: Option<String>,
        #[serde(borrow)]
        info: Option<&'a serde_json::value::RawValue>,
    }
    let wire: Wire<'_> = serde_json::from_str(json).ok()?;
    Some(Member {
        client: Arc::from(wire.client),
        user: wire.user.map(Arc::from),
        info: wire
            .info
            .filter(|raw| raw.get() != "null")
            .map(|raw| Arc::from(raw.get())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::presence::TopicReport;
    use stratus_testkit::Redis;

    fn member(client: &str, user: &str) -> Member {
        Member {
            client: Arc::from(client),
            user: Some(Arc::from(user)),
            info: Some(Arc::from(r#"{"n":1}"#)),
        }
    }

    fn topic(name: &str, connections: u64, members: Option<Vec<Member>>) -> TopicReport {
        TopicReport {
            topic: Arc::from(name),
            occupancy: Occupancy {
                connections,
                users: connections,
            },
            members,
        }
    }

    #[test]
    fn members_round_trip_through_their_json() {
        let m = member("n.0.1", "al");
        let mut json = String::new();
        m.write_json(&mut json);
        assert_eq!(parse_member(&json), Some(m));
        assert_eq!(
            parse_counts("3 2"),
            Some(Occupancy {
                connections: 3,
                users: 2
            })
        );
        assert_eq!(parse_counts("3"), None);
    }

    #[test]
    fn nodes_are_summed_while_their_lease_lives_and_a_left_topic_is_gone() {
        let redis = Redis::start();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let client = redis::Client::open(redis.url()).expect("a URL");
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .expect("connected");
            let a = PresenceReport {
                topics: vec![topic(
                    "t",
                    2,
                    Some(vec![member("a.0.1", "x"), member("a.0.2", "y")]),
                )],
                node: vec![("connections", 2)],
            };
            let b = PresenceReport {
                topics: vec![topic("t", 1, Some(vec![member("b.0.1", "z")]))],
                node: vec![("connections", 1)],
            };
            let first = report(&mut conn, Keyspace::Plain, "a", 60_000, &a, true)
                .await
                .expect("a");
            assert!(!first, "no lease before the first report");
            report(&mut conn, Keyspace::Plain, "b", 300, &b, true)
                .await
                .expect("b");
            let mut live = nodes(&mut conn, Keyspace::Plain).await.expect("nodes");
            live.sort();
            assert_eq!(
                live,
                [
                    ("a".to_owned(), vec![("connections".to_owned(), 2)]),
                    ("b".to_owned(), vec![("connections".to_owned(), 1)])
                ]
            );
            let both = read(&mut conn, Keyspace::Plain, "t", Some(10))
                .await
                .expect("read");
            assert_eq!(both.occupancy.connections, 3);
            let (list, complete) = both.members.expect("members");
            assert_eq!((list.len(), complete), (3, true));
            let capped = read(&mut conn, Keyspace::Plain, "t", Some(2))
                .await
                .expect("read");
            assert_eq!(capped.members.map(|(l, c)| (l.len(), c)), Some((2, false)));
            // b's lease runs out: it no longer counts.
            tokio::time::sleep(std::time::Duration::from_millis(400)).await;
            let alone = read(&mut conn, Keyspace::Plain, "t", None)
                .await
                .expect("read");
            assert_eq!(alone.occupancy.connections, 2);
            assert_eq!(alone.members, None, "counts only were asked for");
            // a's last subscriber left.
            let gone = PresenceReport {
                topics: vec![topic("t", 0, None)],
                node: Vec::new(),
            };
            let live = report(&mut conn, Keyspace::Plain, "a", 60_000, &gone, false)
                .await
                .expect("a");
            assert!(live, "a's lease was live");
            let empty = read(&mut conn, Keyspace::Plain, "t", Some(10))
                .await
                .expect("read");
            assert_eq!(empty.occupancy, Occupancy::default());
            assert_eq!(empty.members, Some((Vec::new(), true)));
        });
    }
}
