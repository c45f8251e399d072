//! A Redis Cluster as the broker (`--broker redis+cluster://a,redis+cluster://b`): its
//! masters and which hash slots each serves, read once at start from the first seed that
//! answers `CLUSTER SLOTS`.
//!
//! Each master then gets a broker task of its own, with plain connections to it, exactly
//! as an independent shard does (its own session, backoff, resubscription, 503s and gap
//! notices), and a topic goes to the master that serves its slot. So a master lost fails
//! only its own topics, and no cluster-aware client (with its redirections and topology
//! refreshes shared by every master) stands between a master's failure and the others.
//!
//! The slot map is not followed while the node runs: after a resharding or a failover
//! that puts a slot on another address, the old master answers the slot's publishes
//! `MOVED` (a 503, logged at most once per period) and ends the node's subscriptions
//! there unasked, which ends the session (`task::unasked_drop`, logged with what to do);
//! resubscribing a moved channel is refused, so that master stays down for the node, as
//! does a master that is gone; the nodes are restarted to read the map again. A master
//! that comes back on its address with its slots (its `nodes.conf` kept) is simply
//! reconnected.
//!
//! Discovery refuses a seed older than Redis 7 (no sharded pub/sub) and a master whose
//! endpoint is `?`; a NULL (or empty) endpoint is the seed's host; an IPv6 address goes
//! in brackets in the master's URL.

use std::time::Duration;

use redis::Value;

use crate::config::{BrokerAuth, redact};
use crate::model::shard::{MAX_SHARDS, SLOTS, key_slot};

/// How long a seed has to connect and answer.
const SEED_TIMEOUT: Duration = Duration::from_secs(2);

/// The hash tag of what is node-wide (`model::keyspace::Keyspace::node_key`): its master
/// is the first task's, which carries the control channel, presence and the rest.
const NODE_WIDE: &[u8] = b"stratus!";

/// One master of the cluster: a client for its publishes and reads, and a RESP3 one for
/// its sharded pub/sub.
pub(crate) struct Master {
    /// `host:port`, for the log.
    pub(crate) address: String,
    pub(crate) client: redis::Client,
    pub(crate) resp3: redis::Client,
}

/// The cluster as the node found it at start.
pub(crate) struct ClusterMap {
    /// The masters; the first serves the slot of what is node-wide.
    pub(crate) masters: Vec<Master>,
    /// For each slot, the index of its master in `masters`.
    pub(crate) slots: Box<[u8]>,
}

/// Asks the `seeds` (plain URLs, see `Config::broker_cluster`) in turn for the cluster's
/// slots, and makes a client of each master with the first seed's URL (its credentials,
/// TLS and CA) and the master's address. Every slot must be served. The error names the
/// seeds with their passwords masked.
pub(crate) fn discover(seeds: &[String], auth: &BrokerAuth) -> Result<ClusterMap, String> {
    let mut failures = Vec::new();
    for seed in seeds {
        let asked = auth.client(seed).and_then(|client| {
            let mut conn = client
                .get_connection_with_timeout(SEED_TIMEOUT)
                .map_err(|e| crate::config::connect_failure(&client, &e))?;
            conn.set_read_timeout(Some(SEED_TIMEOUT))
                .map_err(|e| e.to_string())?;
            let info = redis::cmd("INFO")
                .arg("server")
                .query::<String>(&mut conn)
                .map_err(|e| e.to_string())?;
            supported(&info)?;
            redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query::<Value>(&mut conn)
                .map_err(|e| e.to_string())
        });
        match asked.and_then(|reply| ranges(&reply, seed)) {
            Ok(ranges) => return map(&ranges, seeds, auth),
            Err(why) => failures.push(format!("{}: {why}", redact(seed))),
        }
    }
    Err(format!(
        "broker: no seed of the Redis Cluster told its slots ({})",
        failures.join("; ")
    ))
}

/// The oldest Redis with sharded pub/sub (`SSUBSCRIBE`, `SPUBLISH`).
const MIN_REDIS_MAJOR: u32 = 7;

/// Whether the Redis whose `INFO server` is `info` has sharded pub/sub (7 or later); the
/// error says which version it is.
fn supported(info: &str) -> Result<(), String> {
    let version = info
        .lines()
        .find_map(|line| line.trim().strip_prefix("redis_version:"))
        .map(str::trim);
    let major = version.and_then(|v| v.split('.').next()?.parse::<u32>().ok());
    match (version, major) {
        (_, Some(major)) if major >= MIN_REDIS_MAJOR => Ok(()),
        (Some(version), Some(_)) => Err(format!(
            "Redis {version} has no sharded pub/sub (SSUBSCRIBE): a Redis Cluster broker needs \
             Redis {MIN_REDIS_MAJOR} or later"
        )),
        _ => Err(format!(
            "INFO server tells no Redis version (redis_version): a Redis Cluster broker needs \
             Redis {MIN_REDIS_MAJOR} or later"
        )),
    }
}

/// A range of slots and the master that serves it.
#[derive(Debug, PartialEq, Eq)]
struct Range {
    first: u16,
    last: u16,
    host: String,
    port: u16,
}

/// The ranges in a `CLUSTER SLOTS` reply (`[[first, last, [endpoint, port, id, ...],
/// replicas...], ...]`). A master's endpoint NULL (or empty, before Redis 7) means the
/// host the `seed` was reached at; `?` means the master does not know its own endpoint
/// (`cluster-announce-*` or `cluster-preferred-endpoint-type` misconfigured), an error.
fn ranges(reply: &Value, seed: &str) -> Result<Vec<Range>, String> {
    let bad = || format!("an unexpected CLUSTER SLOTS reply: {reply:?}");
    let Value::Array(entries) = reply else {
        return Err(bad());
    };
    let int = |v: &Value| match v {
        Value::Int(n) => u16::try_from(*n).ok(),
        _ => None,
    };
    let seed_host = url::Url::parse(seed)
        .ok()
        .and_then(|u| u.host_str().map(|h| unbracket(h).to_owned()))
        .unwrap_or_default();
    let mut ranges = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(parts) = entry else {
            return Err(bad());
        };
        let [first, last, Value::Array(master), ..] = parts.as_slice() else {
            return Err(bad());
        };
        let (Some(first), Some(last)) = (int(first), int(last)) else {
            return Err(bad());
        };
        if first > last || usize::from(last) >= SLOTS {
            return Err(bad());
        }
        let host = match master.first() {
            Some(Value::Nil) => seed_host.clone(),
            Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(Value::SimpleString(s)) => s.clone(),
            _ => return Err(bad()),
        };
        let host = match host.as_str() {
            "" => seed_host.clone(),
            "?" => {
                return Err(format!(
                    "the master of slots {first}-{last} has an unknown endpoint (\"?\"): \
                     check its cluster-announce-* and cluster-preferred-endpoint-type"
                ));
            }
            _ => unbracket(&host).to_owned(),
        };
        let Some(port) = master.get(1).and_then(int) else {
            return Err(bad());
        };
        ranges.push(Range {
            first,
            last,
            host,
            port,
        });
    }
    Ok(ranges)
}

/// `host` without the brackets an IPv6 address has in a URL.
fn unbracket(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// `host:port`, with an IPv6 address in brackets (`[2001:db8::5]:7000`).
fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The masters of `ranges` (the node-wide slot's first, then by address) and each
/// slot's master; an error if a slot is served by none.
fn map(ranges: &[Range], seeds: &[String], auth: &BrokerAuth) -> Result<ClusterMap, String> {
    let node_wide = key_slot(NODE_WIDE);
    let mut addresses: Vec<(String, u16)> =
        ranges.iter().map(|r| (r.host.clone(), r.port)).collect();
    addresses.sort();
    addresses.dedup();
    if let Some(first) = ranges
        .iter()
        .find(|r| (r.first..=r.last).contains(&node_wide))
        .and_then(|r| {
            addresses
                .iter()
                .position(|a| *a == (r.host.clone(), r.port))
        })
    {
        let address = addresses.remove(first);
        addresses.insert(0, address);
    }
    if addresses.len() > MAX_SHARDS {
        return Err(format!(
            "broker: the Redis Cluster has {} masters, at most {MAX_SHARDS}",
            addresses.len()
        ));
    }
    let mut slots = vec![u8::MAX; SLOTS].into_boxed_slice();
    for range in ranges {
        let index = addresses
            .iter()
            .position(|a| *a == (range.host.clone(), range.port))
            .and_then(|i| u8::try_from(i).ok())
            .unwrap_or(u8::MAX);
        for slot in range.first..=range.last {
            slots[usize::from(slot)] = index;
        }
    }
    if let Some(slot) = slots.iter().position(|&m| m == u8::MAX) {
        return Err(format!(
            "broker: slot {slot} of the Redis Cluster is served by no master \
             (cluster_state is not ok?)"
        ));
    }
    let seed = seeds.first().map_or("", String::as_str);
    let masters = addresses
        .into_iter()
        .map(|(host, port)| {
            let url = master_url(seed, &host, port)?;
            Ok(Master {
                address: host_port(&host, port),
                client: auth.client(&url)?,
                resp3: auth.client(&format!("{url}?protocol=resp3"))?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(ClusterMap { masters, slots })
}

/// `seed` (a plain URL, with its user and password if it has them) at `host:port`,
/// database 0 (the only one a cluster has).
fn master_url(seed: &str, host: &str, port: u16) -> Result<String, String> {
    let fail = |why: String| format!("broker {}: {why}", redact(seed));
    let mut url = url::Url::parse(seed).map_err(|e| fail(e.to_string()))?;
    // `Url::set_host` reads "2001:db8::5" as a host and a port: an IPv6 address goes in
    // brackets.
    let bracketed;
    let host = if host.contains(':') {
        bracketed = format!("[{host}]");
        bracketed.as_str()
    } else {
        host
    };
    url.set_host(Some(host)).map_err(|e| fail(e.to_string()))?;
    url.set_port(Some(port))
        .map_err(|()| fail("cannot take a port".into()))?;
    url.set_path("/0");
    url.set_query(None);
    Ok(url.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    fn entry(first: i64, last: i64, host: &str, port: i64) -> Value {
        let node = |port: i64| Value::Array(vec![bulk(host), Value::Int(port), bulk("id")]);
        Value::Array(vec![
            Value::Int(first),
            Value::Int(last),
            node(port),
            node(port + 100),
        ])
    }

    #[test]
    fn the_slot_map_puts_the_node_wide_master_first() {
        let seeds = ["redis://u:hunter2@127.0.0.1:7000".to_owned()];
        let reply = Value::Array(vec![
            entry(0, 5460, "127.0.0.1", 7000),
            entry(5461, 10922, "", 7001),
            entry(10923, 16383, "127.0.0.1", 7002),
        ]);
        let ranges = ranges(&reply, &seeds[0]).unwrap();
        assert_eq!(ranges[1].host, "127.0.0.1", "no host: the seed's");
        let map = map(&ranges, &seeds, &BrokerAuth::default()).unwrap();
        // The node-wide tag's slot (4794) is on the first range's master.
        assert_eq!(key_slot(NODE_WIDE), 4794);
        let addresses: Vec<&str> = map.masters.iter().map(|m| m.address.as_str()).collect();
        assert_eq!(
            addresses,
            ["127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7002"]
        );
        assert_eq!((map.slots[0], map.slots[5461], map.slots[16383]), (0, 1, 2));
        let info = map.masters[2].client.get_connection_info();
        assert_eq!(info.addr().to_string(), "127.0.0.1:7002");
        assert_eq!(info.redis_settings().password(), Some("hunter2"));
        let resp3 = map.masters[2].resp3.get_connection_info();
        assert_eq!(
            resp3.redis_settings().protocol(),
            redis::ProtocolVersion::RESP3
        );
        // The node-wide slot on another master: that one goes first.
        let moved = Value::Array(vec![
            entry(0, 100, "127.0.0.1", 7000),
            entry(101, 16383, "127.0.0.1", 7005),
        ]);
        let map2 = super::map(
            &super::ranges(&moved, &seeds[0]).unwrap(),
            &seeds,
            &BrokerAuth::default(),
        )
        .unwrap();
        assert_eq!(map2.masters[0].address, "127.0.0.1:7005");
        // A TLS seed: every master over TLS, with the seed's credentials.
        let tls = ["rediss://u:hunter2@127.0.0.1:7000".to_owned()];
        let map3 = super::map(&ranges, &tls, &BrokerAuth::default()).unwrap();
        for master in &map3.masters {
            let info = master.client.get_connection_info();
            assert!(
                matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }),
                "{}",
                master.address
            );
            assert_eq!(info.redis_settings().username(), Some("u"));
        }
        assert_eq!((map2.slots[0], map2.slots[101]), (1, 0));
    }

    #[test]
    fn a_slot_without_a_master_or_a_strange_reply_is_refused() {
        let seeds = ["redis://127.0.0.1:7000".to_owned()];
        let reply = Value::Array(vec![entry(0, 16000, "127.0.0.1", 7000)]);
        let ranges = ranges(&reply, &seeds[0]).unwrap();
        let err = map(&ranges, &seeds, &BrokerAuth::default()).err().unwrap();
        assert!(err.contains("slot 16001"), "{err}");
        for junk in [Value::Int(1), Value::Array(vec![Value::Int(1)])] {
            assert!(super::ranges(&junk, &seeds[0]).is_err());
        }
    }

    #[test]
    fn a_null_endpoint_is_the_seed_host_and_a_question_mark_an_error() {
        let seed = "redis://u:pw@10.1.2.3:7000";
        let node = |host: Value, port: i64| Value::Array(vec![host, Value::Int(port)]);
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(8000),
                node(Value::Nil, 7000),
            ]),
            Value::Array(vec![
                Value::Int(8001),
                Value::Int(16383),
                node(bulk("redis-b.example"), 7001),
            ]),
        ]);
        let ranges = ranges(&reply, seed).unwrap();
        assert_eq!(ranges[0].host, "10.1.2.3", "NULL: the seed's host");
        assert_eq!(ranges[1].host, "redis-b.example");
        let unknown = Value::Array(vec![Value::Array(vec![
            Value::Int(0),
            Value::Int(16383),
            node(bulk("?"), 7000),
        ])]);
        let err = super::ranges(&unknown, seed).unwrap_err();
        assert!(
            err.contains("unknown endpoint") && err.contains("0-16383"),
            "{err}"
        );
    }

    #[test]
    fn an_ipv6_master_is_put_in_brackets() {
        let seeds = ["redis://u:pw@[2001:db8::1]:7000".to_owned()];
        let reply = Value::Array(vec![
            entry(0, 8000, "2001:db8::5", 7000),
            Value::Array(vec![
                Value::Int(8001),
                Value::Int(16383),
                Value::Array(vec![Value::Nil, Value::Int(7001)]),
            ]),
        ]);
        let ranges = ranges(&reply, &seeds[0]).unwrap();
        assert_eq!(
            ranges[1].host, "2001:db8::1",
            "the seed's host, unbracketed"
        );
        let map = map(&ranges, &seeds, &BrokerAuth::default()).unwrap();
        let addresses: Vec<&str> = map.masters.iter().map(|m| m.address.as_str()).collect();
        assert_eq!(addresses, ["[2001:db8::5]:7000", "[2001:db8::1]:7001"]);
        let url = master_url(&seeds[0], "2001:db8::5", 7000).unwrap();
        assert_eq!(url, "redis://u:pw@[2001:db8::5]:7000/0");
        let info = map.masters[0].client.get_connection_info();
        assert!(
            info.addr().to_string().contains("2001:db8::5"),
            "{}",
            info.addr()
        );
    }

    #[test]
    fn a_redis_before_7_is_refused_for_want_of_sharded_pub_sub() {
        let info = |v: &str| format!("# Server\r\nredis_version:{v}\r\nredis_mode:cluster\r\n");
        assert_eq!(supported(&info("7.0.0")), Ok(()));
        assert_eq!(supported(&info("7.2.4")), Ok(()));
        assert_eq!(supported(&info("8.0.1")), Ok(()));
        let err = supported(&info("6.2.14")).unwrap_err();
        assert!(
            err.contains("Redis 6.2.14") && err.contains("7 or later"),
            "{err}"
        );
        assert!(supported("# Server\r\nredis_mode:cluster\r\n").is_err());
        assert!(supported(&info("x.y")).is_err());
    }

    #[test]
    fn no_seed_answering_is_an_error_without_the_password() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let seeds = [format!("redis://u:hunter2@127.0.0.1:{port}")];
        let err = discover(&seeds, &BrokerAuth::default()).err().unwrap();
        assert!(err.contains("no seed") && err.contains("u:***@"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
}
