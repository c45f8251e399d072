//! The admin API's user-level control: `GET /users/{user}` lists the user's connections,
//! `POST /users/{user}/disconnect?code=&reason=` closes them, `POST
//! /users/{user}/unsubscribe/{topic}` and `POST /users/{user}/subscribe/{topic}` end or
//! make a subscription on each. A user is the `sub` of a connection's token (with auth
//! off no connection has one). With a broker the command reaches every node; the answer
//! says how many connections it acted on, how many it could not and why, and how many
//! nodes answered out of how many heard it.
//!
//! The path and the parameters are checked here (400 before anything goes out); the
//! node applies the command (`node::user_control`).

use serde_json::json;

use super::{Admin, Request, Response, error, query, respond};
use crate::model::topic;
use crate::model::user_control::{ClusterError, UserAction, UserCommand, check_user, close_params};

/// What a `/users/...` path asks for, decided on the head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Target {
    List,
    Disconnect,
    Unsubscribe(String),
    Subscribe(String),
}

/// A user-level request: the user (percent-decoded) and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct UserRoute {
    user: String,
    target: Target,
}

fn decode(part: &str) -> String {
    percent_encoding::percent_decode_str(part)
        .decode_utf8_lossy()
        .into_owned()
}

/// The route of `method` on `path` (without its query, starting `/users/`): 404 for a
/// path that is not one of these, 405 (with `Allow`) for the wrong method.
pub(super) fn route(method: &str, path: &str) -> Result<UserRoute, Response> {
    let rest = path.strip_prefix("/users/").unwrap_or_default();
    let (user, action) = rest.split_once('/').unwrap_or((rest, ""));
    let target = match action.split_once('/') {
        None if action.is_empty() => Target::List,
        None if action == "disconnect" => Target::Disconnect,
        Some(("unsubscribe", topic)) => Target::Unsubscribe(decode(topic)),
        Some(("subscribe", topic)) => Target::Subscribe(decode(topic)),
        _ => return Err(error(404, "no such endpoint")),
    };
    let wanted = if target == Target::List {
        "GET"
    } else {
        "POST"
    };
    if method != wanted {
        let allow = if wanted == "GET" {
            "Allow: GET\r\n"
        } else {
            "Allow: POST\r\n"
        };
        return Err(Response {
            extra: allow,
            ..error(405, &format!("use {wanted}"))
        });
    }
    Ok(UserRoute {
        user: decode(user),
        target,
    })
}

/// The command a route and its query name, or the 400 that says what is wrong.
fn command(route: UserRoute, request: &Request) -> Result<UserCommand, Response> {
    let bad = |e: &dyn std::fmt::Display| error(400, &e.to_string());
    check_user(&route.user).map_err(|e| bad(&e))?;
    let action = match route.target {
        Target::List => UserAction::List,
        Target::Disconnect => {
            let code = query(&request.path, "code");
            let reason = query(&request.path, "reason");
            let (code, reason) =
                close_params(code.as_deref(), reason.as_deref()).map_err(|e| bad(&e))?;
            UserAction::Disconnect { code, reason }
        }
        Target::Unsubscribe(topic) => {
            topic::validate(&topic).map_err(|e| bad(&e))?;
            UserAction::Unsubscribe { topic }
        }
        Target::Subscribe(topic) => {
            topic::validate(&topic).map_err(|e| bad(&e))?;
            UserAction::Subscribe { topic }
        }
    };
    Ok(UserCommand {
        user: route.user,
        action,
    })
}

/// Runs a user-level request and answers it.
pub(super) async fn answer(admin: &Admin, route: UserRoute, request: &Request) -> Response {
    let command = match command(route, request) {
        Ok(command) => command,
        Err(response) => return response,
    };
    let mut body = json!({ "user": command.user, "action": command.action.name() });
    match &command.action {
        UserAction::List => {}
        UserAction::Disconnect { code, reason } => {
            body["code"] = (*code).into();
            body["reason"] = reason.as_str().into();
        }
        UserAction::Unsubscribe { topic } | UserAction::Subscribe { topic } => {
            body["topic"] = topic.as_str().into();
        }
    }
    let listing = command.action == UserAction::List;
    let outcome = match admin.hub.control_users(command).await {
        Ok(outcome) => outcome,
        Err(e @ ClusterError::Busy) => {
            return Response {
                extra: "Retry-After: 1\r\n",
                ..error(429, &e.to_string())
            };
        }
        Err(e) => {
            return Response {
                extra: "Retry-After: 1\r\n",
                ..error(503, &e.to_string())
            };
        }
    };
    let tally = outcome.tally;
    body["affected"] = tally.affected.into();
    body["refused"] = tally.refused_total().into();
    body["refused_by_reason"] = json!(tally.refused);
    body["nodes"] = json!({ "answered": outcome.answered, "up": outcome.nodes });
    if listing {
        body["connections"] = json!(tally.connections);
        body["truncated"] = tally.truncated.into();
    }
    respond(200, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(method: &str, path: &str) -> UserRoute {
        match route(method, path) {
            Ok(route) => route,
            Err(response) => panic!("{path}: {} {}", response.status, response.body),
        }
    }

    fn status(method: &str, path: &str) -> u16 {
        route(method, path).map_or_else(|r| r.status, |_| 200)
    }

    #[test]
    fn user_paths_are_routed_and_decoded() {
        assert_eq!(
            ok("GET", "/users/alice%40example.com"),
            UserRoute {
                user: "alice@example.com".into(),
                target: Target::List
            }
        );
        assert_eq!(ok("POST", "/users/a/disconnect").target, Target::Disconnect);
        assert_eq!(
            ok("POST", "/users/a/unsubscribe/chat%3A1").target,
            Target::Unsubscribe("chat:1".into())
        );
        assert_eq!(
            ok("POST", "/users/a/subscribe/a/b").target,
            Target::Subscribe("a/b".into()),
            "a topic may hold slashes"
        );
        assert_eq!(status("POST", "/users/a"), 405);
        assert_eq!(status("GET", "/users/a/disconnect"), 405);
        assert_eq!(status("GET", "/users/a/subscribe/t"), 405);
        assert_eq!(status("POST", "/users/a/explode"), 404);
        assert_eq!(status("POST", "/users/a/disconnect/now"), 404);
        // Empty names pass the router and are refused with 400 by `command`.
        assert_eq!(status("GET", "/users/"), 200);
    }
}
