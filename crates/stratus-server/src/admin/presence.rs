//! Presence on the admin API: `GET /occupancy/{topic}` (connections and distinct users,
//! over the cluster with a broker), `GET /presence/{topic}` (the same and the members,
//! where the topic's namespace lists them), `GET /topics?limit=` (this node's busiest
//! topics) and `GET /nodes` (every live node's figures), for the admin page.

use serde_json::json;

use super::{Admin, Request, Response, error, query, respond};
use crate::config::PresenceMode;
use crate::model::topic;

/// Most topics `GET /topics` lists.
const MAX_TOPICS: usize = 1000;

/// Answers `GET /occupancy/{topic}` (`members`: false) or `GET /presence/{topic}`.
pub(super) async fn answer(admin: &Admin, topic: &str, members: bool) -> Response {
    if let Err(e) = topic::validate(topic) {
        return error(400, &e.to_string());
    }
    match admin.config.options(topic).presence {
        PresenceMode::Off => return error(404, "no presence is kept for this topic"),
        PresenceMode::Counts if members => {
            return error(
                404,
                "this topic's presence is counts only: ask /occupancy/{topic}",
            );
        }
        _ => {}
    }
    let Some(answer) = admin.hub.cluster_presence(topic, members).await else {
        return error(
            503,
            "the cluster's presence could not be read from the broker",
        );
    };
    let mut body = answer.fields();
    body.insert("topic".into(), topic.into());
    respond(200, body.into())
}

/// Answers `GET /nodes`: every live node (this one alone without a broker) with the
/// figures it last reported: `{"node":<this node>,"nodes":[{"node":id,"connections":..,
/// "topics":..,"published":..,"delivered":..}]}`.
pub(super) async fn nodes(admin: &Admin) -> Response {
    let Some(nodes) = admin.hub.nodes().await else {
        return error(503, "the nodes could not be read from the broker");
    };
    let nodes: Vec<_> = nodes
        .into_iter()
        .map(|(node, figures)| {
            let mut entry = serde_json::Map::new();
            entry.insert("node".into(), node.into());
            for (name, value) in figures {
                entry.insert(name, value.into());
            }
            serde_json::Value::Object(entry)
        })
        .collect();
    respond(200, json!({"node": &*admin.hub.node_id, "nodes": nodes}))
}

/// Answers `GET /topics?limit=N` (default 20): this node's topics with the most
/// connections, each with its occupancy on the node.
pub(super) fn busiest(admin: &Admin, request: &Request) -> Response {
    let limit = match query(&request.path, "limit").map(|l| l.parse::<usize>()) {
        None => 20,
        Some(Ok(n)) if (1..=MAX_TOPICS).contains(&n) => n,
        Some(_) => return error(400, "limit must be 1 to 1000"),
    };
    let topics: Vec<_> = admin
        .hub
        .busiest_topics(limit)
        .into_iter()
        .map(|(topic, o)| json!({"topic": &*topic, "connections": o.connections, "users": o.users}))
        .collect();
    respond(200, json!({"node": &*admin.hub.node_id, "topics": topics}))
}
