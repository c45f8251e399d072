//! Which of independent Redis shards (`--broker redis://a,redis://b,…`) carries a topic,
//! computed as the nodes compute it: the server's own `model::shard`, compiled in here from
//! its source rather than written again (its unit tests come along and run in the test
//! binary that uses it). A test declares it beside `mod common;`, not through
//! `common/mod.rs`, so that only the tests that need it carry those:
//!
//! ```ignore
//! #[path = "common/shard.rs"]
//! mod shard;
//! ```
//!
//! With a Redis Cluster a topic's shard is its slot's master instead: ask the cluster
//! (`stratus_testkit::RedisCluster::master_of`).

// What the server's module has for Redis Cluster (slots) no test here needs.
#[allow(dead_code)]
#[path = "../../src/model/shard.rs"]
mod server;

/// The shard, an index into a `--broker` list of `shards` independent Redis URLs, that
/// carries `topic`: its channel, its history stream and its subscriptions.
pub(crate) fn shard_of(topic: &str, shards: usize) -> usize {
    server::shard_of(topic, shards)
}
