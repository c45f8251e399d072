//! Plain values, with no thread, no I/O and no clock of their own (time is passed in):
//! topic names and a worker's topic table, how a worker names a connection, offsets, a
//! publication and the frames each protocol sends of it, a recovery of missed messages,
//! the two protocols' commands, replies and notices, token verification, the
//! per-connection message budget, and which broker shard carries a topic.
//!
//! Everything above builds on these. Nothing here imports from above: only `stats`, to
//! count the compressions a broadcast makes.

pub(crate) mod auth;
pub(crate) mod broadcast;
pub(crate) mod conn_id;
pub(crate) mod history;
pub(crate) mod hook;
pub(crate) mod keyspace;
pub(crate) mod moment;
pub(crate) mod occupancy_events;
pub(crate) mod offset;
pub(crate) mod presence;
pub(crate) mod protocol;
pub(crate) mod publication;
pub(crate) mod rate;
pub(crate) mod recovery;
pub(crate) mod shard;
pub mod topic;
pub(crate) mod user_control;
