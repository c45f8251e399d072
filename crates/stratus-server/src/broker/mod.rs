//! The Redis backbone that lets several nodes share topics.
//!
//! With a broker, a publish on any node goes to Redis (`PUBLISH stratus:{topic}`) instead
//! of straight to the workers, and each node fans out locally, with the same encode-once
//! path, what Redis hands it. A node subscribes in Redis only to the topics it has local
//! subscribers for: the hub reports a topic's first and last subscriber on the node, in
//! order, and this thread keeps that set and mirrors it into Redis.
//!
//! One thread runs a small tokio runtime with Redis connections: a multiplexed one that
//! publishes (requests waiting are pipelined in one batch, in arrival order, so one
//! publisher's messages keep their order), one for history reads, and a pub/sub one that
//! receives. Redis passes
//! a channel's messages on in the order it executed the PUBLISHes, so every node sees a
//! topic in one order.
//!
//! With a history (`history`), a publish is an XADD and a PUBLISH in one Lua call, and
//! this thread also fetches the missed messages of connections that resume.
//!
//! When Redis is unreachable the node says so instead of dropping anything: publishes fail
//! with `PublishError::BrokerUnavailable` (503), readiness turns false, and the thread
//! reconnects with exponential backoff and resubscribes every topic it still needs.
//! Messages published elsewhere during the outage are not replayed: the node's
//! subscribers of each topic get a gap notice instead (see `commands`).
//!
//! Several Redis (`--broker redis://a,redis://b`) are shards: each topic lives on the one
//! `model::shard` names (its channel, its history, the node's subscription), and the
//! thread runs one task per shard, each with its own session, backoff and
//! resubscription, so a shard lost fails only its own topics (their publishes 503, their
//! subscribers a gap notice when it is back) and readiness turns false only when every
//! shard is lost. What is the node's rather than a topic's (the control channel, presence
//! reports and reads, the node list, user-level control) is the first shard's task's
//! alone; the node's `BrokerLink` routes each request to its shard.
//!
//! A Redis Cluster (`--broker redis+cluster://a,redis+cluster://b`, `cluster`) is shards
//! too: its masters, read from a seed's `CLUSTER SLOTS` at start, each with a task of its
//! own and plain connections to it, the master of the node-wide slot first; a topic goes
//! to the master that serves its slot. The task is the same; only how it names and
//! publishes differs ([`Keyspace`]: sharded pub/sub, `SPUBLISH` and `SSUBSCRIBE` on a
//! RESP3 connection; the topic as the hash tag of its channel and history key, so the
//! publish script stays on one slot; `{stratus!}` as the tag of everything node-wide). The
//! slot map is not followed afterwards: once a slot has moved away, its old master
//! answers its topics' publishes `MOVED` (a 503, logged) and ends their subscriptions (an
//! unasked `sunsubscribe`, which ends the session, logged with what to do: restart).
//!
//! Here: the task (`task`: the session, the publish pipeline, subscriptions, the control
//! channel), the wire format (`wire`: channel names, Redis keys, the payload encoding,
//! the publish script), and history reads (`history`). The task reaches the node only
//! through the [`Node`](crate::messages::Node) trait and the channels the server made;
//! it must not touch the hub, a worker or a connection (its tests run it against a fake
//! node).

pub(crate) mod cluster;
mod history;
mod presence;
mod task;
mod wire;

pub(crate) use task::{BrokerTask, Link, NatsLink};
pub(crate) use wire::Keyspace;
