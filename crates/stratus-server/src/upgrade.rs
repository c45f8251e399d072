//! Turning a parsed upgrade request into a WebSocket session, or the HTTP refusal to
//! answer it with: the drain, the origin, the token, the endpoint and its topics,
//! permessage-deflate.

use stratus_proto::Session;
use stratus_proto::handshake::{HandshakeError, UpgradeRequest, http_error};

use crate::auth::{self, Grant};
use crate::config::{App, Config};
use crate::connection::FrameChoice;
use crate::topic;

/// An accepted upgrade: the session, the frames it takes, the 101 response, the topics
/// asked for in the request, and what the token grants (with auth on).
pub(crate) struct Upgrade {
    pub(crate) session: Session,
    pub(crate) frames: FrameChoice,
    pub(crate) response: Vec<u8>,
    pub(crate) topics: Vec<String>,
    pub(crate) grant: Option<Grant>,
}

/// A refused upgrade: the HTTP status, the response and why (for the log).
pub(crate) type Refusal = (u16, Vec<u8>, String);

/// The refusal for a request the handshake parser rejected.
pub(crate) fn refusal(err: &HandshakeError) -> Refusal {
    (err.status(), err.response(), err.to_string())
}

/// Accepts or refuses `request`.
pub(crate) fn upgrade(
    request: &UpgradeRequest,
    config: &Config,
    draining: bool,
) -> Result<Upgrade, Refusal> {
    if draining {
        let response = http_error(503, "Retry-After: 5\r\n", "server is shutting down");
        return Err((503, response, "draining".into()));
    }
    if let Some(origin) = &request.origin
        && !config.allowed_origins.is_empty()
        && !config
            .allowed_origins
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(origin))
    {
        let why = format!("origin {origin} is not allowed");
        return Err((403, http_error(403, "", &why), why));
    }
    let (path, query) = request
        .target
        .split_once('?')
        .unwrap_or((&request.target, ""));
    let grant = match &config.auth {
        None => None,
        Some(verifier) => {
            let token =
                auth::find_token(request.authorization.as_deref(), query, &request.protocols);
            let verified = token
                .ok_or_else(|| "no token".to_owned())
                .and_then(|(token, _)| verifier.verify(&token));
            match verified {
                Ok(grant) => Some(grant),
                Err(why) => {
                    let challenge = "WWW-Authenticate: Bearer realm=\"stratus\"\r\n";
                    return Err((401, http_error(401, challenge, &why), why));
                }
            }
        }
    };
    let topics = subscriptions(path, query, config.app, config.max_topics_per_connection)
        .map_err(|(status, why)| (status, http_error(status, "", &why), why))?;
    if let Some(grant) = &grant
        && let Some(denied) = topics.iter().find(|t| !grant.allows(t))
    {
        let why = format!("the token does not allow topic {denied:?}");
        return Err((403, http_error(403, "", &why), why));
    }
    let mut session = Session::server(config.limits);
    let mut extra_headers = String::new();
    if let Some(protocol) = auth::chosen_protocol(&request.protocols) {
        extra_headers = format!("Sec-WebSocket-Protocol: {protocol}\r\n");
    }
    let mut frames = FrameChoice::Plain;
    if let Some(deflate) = &config.deflate
        && let Some(agreed) = stratus_deflate::negotiate(&request.extensions, deflate)
    {
        extra_headers.push_str(&format!(
            "Sec-WebSocket-Extensions: {}\r\n",
            agreed.response()
        ));
        session.set_compression(Box::new(agreed.compression(deflate.threshold)));
        frames = if agreed.shares_frames() {
            FrameChoice::Shared {
                threshold: deflate.threshold,
            }
        } else {
            FrameChoice::PerConnection
        };
    }
    Ok(Upgrade {
        session,
        frames,
        response: request.accept(&extra_headers),
        topics,
        grant,
    })
}

/// The topics a push client asks for at the upgrade (`/ws?topic=a&topic=b`), or the
/// HTTP status and reason to refuse it with.
fn subscriptions(
    path: &str,
    query: &str,
    app: App,
    max: usize,
) -> Result<Vec<String>, (u16, String)> {
    if app == App::Echo {
        return Ok(Vec::new());
    }
    if path != "/ws" {
        return Err((404, format!("no WebSocket endpoint at {path}; use /ws")));
    }
    let mut topics: Vec<String> = Vec::new();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if key == "topic" {
            topic::validate(&value).map_err(|e| (400, format!("invalid topic {value:?}: {e}")))?;
            if !topics.iter().any(|t| *t == value) {
                topics.push(value.into_owned());
            }
        }
    }
    if topics.len() > max {
        return Err((400, format!("at most {max} topics per connection")));
    }
    Ok(topics)
}
