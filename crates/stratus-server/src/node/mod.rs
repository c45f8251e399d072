//! What the workers of one node share: the hub (which workers have subscribers for which
//! topic, the publish path, readiness and drain), the node's history (without a broker),
//! the connection caps per address, and the node's side of the broker. It owns the
//! cross-worker state and its locks; it must not touch a connection (those belong to
//! their worker) or a ring.

pub(crate) mod admission;
pub(crate) mod broker_link;
pub(crate) mod delivery;
pub(crate) mod history;
pub(crate) mod hook_link;
pub(crate) mod hub;
pub(crate) mod occupancy_events;
pub(crate) mod presence;
pub(crate) mod user_control;
