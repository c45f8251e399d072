//! Turning a parsed upgrade request into a WebSocket session, or the HTTP refusal to
//! answer it with: the drain, the origin, the token, the endpoint and its topics,
//! permessage-deflate.

use stratus_deflate::Mode;
use stratus_proto::Session;
use stratus_proto::handshake::{HandshakeError, UpgradeRequest, http_error};

use crate::config::{App, Config};
use crate::model::auth::{self, Grant};
use crate::model::broadcast::FrameChoice;
use crate::model::hook::Connected;
use crate::model::offset::Resume;
use crate::model::protocol::{Protocol, v1};
use crate::model::topic;

/// An accepted upgrade: the session, the frames it takes, the 101 response, the topics
/// asked for in the request, and what the token grants (with auth on).
pub(crate) struct Upgrade {
    pub(crate) session: Session,
    pub(crate) frames: FrameChoice,
    pub(crate) response: Vec<u8>,
    pub(crate) topics: Vec<String>,
    pub(crate) grant: Option<Grant>,
    /// The protocol it speaks: v1 if it asked for `stratus.v1`, else raw.
    pub(crate) protocol: Protocol,
    /// The topics the connect hook subscribed it to (besides `topics`, which the URL
    /// asked for).
    pub(crate) chosen: Vec<String>,
    /// Where an event stream's topics resume (`Last-Event-ID`, or `since`: one for all
    /// its topics, or one per topic), for those that keep history.
    pub(crate) resume: Option<Resume>,
}

/// A refused upgrade: the HTTP status, the response, and why (for the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) status: u16,
    pub(crate) response: Vec<u8>,
    pub(crate) why: String,
}

impl Refusal {
    /// A refusal with `status` and `why`, the response carrying `headers` (lines ending
    /// in CRLF).
    pub(crate) fn new(status: u16, headers: &str, why: String) -> Self {
        Self {
            status,
            response: http_error(status, headers, &why),
            why,
        }
    }
}

impl From<&HandshakeError> for Refusal {
    /// The refusal for a request the handshake parser rejected.
    fn from(err: &HandshakeError) -> Self {
        Self {
            status: err.status(),
            response: err.response(),
            why: err.to_string(),
        }
    }
}

/// Whether the connect hook decides `request`: a connect hook is set and the request
/// carries no token (with JWT auth on, a request with a token is judged by the token
/// alone, and an invalid one is 401 without asking the backend). What can be refused
/// without the backend (the drain, the origin, the endpoint, the topics) is refused here
/// first.
pub(crate) fn needs_connect_hook(
    request: &UpgradeRequest,
    config: &Config,
    draining: bool,
) -> Result<bool, Refusal> {
    if config.hooks.connect.is_none() {
        return Ok(false);
    }
    let (path, query) = request
        .target
        .split_once('?')
        .unwrap_or((&request.target, ""));
    if config.auth.is_some()
        && auth::find_token(request.authorization.as_deref(), query, &request.protocols).is_some()
    {
        return Ok(false);
    }
    admissible(request, config, draining)?;
    subscriptions(path, query, config.app, config.max_topics_per_connection)
        .map_err(|(status, why)| Refusal::new(status, "", why))?;
    Ok(true)
}

/// Refuses an upgrade while draining, or from an origin not allowed.
fn admissible(request: &UpgradeRequest, config: &Config, draining: bool) -> Result<(), Refusal> {
    if draining {
        let why = "server is shutting down".to_owned();
        return Err(Refusal::new(503, "Retry-After: 5\r\n", why));
    }
    if let Some(origin) = &request.origin
        && !origin_allowed(origin, &request.host, &config.allowed_origins)
    {
        let why = if config.allowed_origins.is_empty() {
            format!(
                "origin {origin} is not this server's ({}); allow other origins with \
                 --allowed-origins (or '*' for any)",
                request.host
            )
        } else {
            format!("origin {origin} is not in --allowed-origins")
        };
        return Err(Refusal::new(403, "", why));
    }
    Ok(())
}

/// Accepts or refuses `request`: with `hooked`, as the connect hook answered (its grant,
/// and the topics it subscribes the connection to besides those of the URL), else by its
/// token (with auth on).
pub(crate) fn upgrade(
    request: &UpgradeRequest,
    config: &Config,
    draining: bool,
    hooked: Option<Connected>,
) -> Result<Upgrade, Refusal> {
    admissible(request, config, draining)?;
    let (path, query) = request
        .target
        .split_once('?')
        .unwrap_or((&request.target, ""));
    let (hooked, hook_topics) = match hooked {
        Some(connected) => (Some(connected.grant), connected.subscribe),
        None => (None, Vec::new()),
    };
    let grant = match &config.auth {
        _ if hooked.is_some() => hooked,
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
                    return Err(Refusal::new(401, challenge, why));
                }
            }
        }
    };
    let topics = subscriptions(path, query, config.app, config.max_topics_per_connection)
        .map_err(|(status, why)| Refusal::new(status, "", why))?;
    if let Some(grant) = &grant
        && let Some(denied) = topics.iter().find(|t| !grant.allows(t))
    {
        let why = format!("the token does not allow topic {denied:?}");
        return Err(Refusal::new(403, "", why));
    }
    // The connect hook's own subscriptions: the backend chose them, no grant check.
    let chosen: Vec<String> = hook_topics
        .into_iter()
        .filter(|t| !topics.contains(t))
        .collect();
    if topics.len() + chosen.len() > config.max_topics_per_connection && config.app != App::Echo {
        let why = format!(
            "the connect hook's subscriptions pass {} topics per connection",
            config.max_topics_per_connection
        );
        return Err(Refusal::new(502, "", why));
    }
    let mut session = Session::server(config.limits);
    let mut extra_headers = String::new();
    let mut protocol = Protocol::Raw;
    if let Some(chosen) = auth::chosen_protocol(&request.protocols) {
        extra_headers = format!("Sec-WebSocket-Protocol: {chosen}\r\n");
        if chosen == v1::SUBPROTOCOL {
            protocol = Protocol::V1;
        }
    }
    let mut frames = FrameChoice::Plain;
    if let Some(deflate) = &config.deflate
        && let Some(agreed) = stratus_deflate::negotiate(&request.extensions, deflate)
    {
        extra_headers.push_str(&format!(
            "Sec-WebSocket-Extensions: {}\r\n",
            agreed.response()
        ));
        // Shared mode: a connection takes the broadcast's one compressed frame, or goes
        // uncompressed; it never gets a compressor of its own. The boxed forms are compact
        // where both directions are stateless (the shared mode's usual case): 4 bytes of
        // heap per connection, or none, instead of a `PerMessageDeflate`'s 40.
        frames = if agreed.shares_frames() {
            session.set_compression(agreed.boxed_compression(deflate.threshold));
            FrameChoice::Shared {
                threshold: u32::try_from(deflate.threshold).unwrap_or(u32::MAX),
            }
        } else if deflate.mode == Mode::Shared {
            session.set_compression(agreed.boxed_inflate_only());
            FrameChoice::Plain
        } else {
            session.set_compression(agreed.boxed_compression(deflate.threshold));
            FrameChoice::PerConnection
        };
    }
    Ok(Upgrade {
        session,
        frames,
        response: request.accept(&extra_headers),
        topics,
        grant,
        protocol,
        chosen,
        resume: None,
    })
}

/// Whether a browser on `origin` may open a WebSocket to this server, reached as `host`:
/// with no allow-list only from the server's own origin (so a page elsewhere cannot
/// use a visitor's browser to reach a server on localhost or an intranet), with `*` from
/// anywhere, else from the listed origins (ASCII case ignored).
pub(crate) fn origin_allowed(origin: &str, host: &str, allowed: &[String]) -> bool {
    if allowed.is_empty() {
        return origin.split_once("://").is_some_and(|(scheme, authority)| {
            authority_without_default_port(scheme, authority)
                .eq_ignore_ascii_case(authority_without_default_port(scheme, host))
        });
    }
    allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
}

/// `authority` without the port its scheme implies (`:80` for http and ws, `:443` for
/// https and wss): a browser leaves the default port out of one header and may keep it
/// in the other.
fn authority_without_default_port<'a>(scheme: &str, authority: &'a str) -> &'a str {
    let default = match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => ":80",
        "https" | "wss" => ":443",
        _ => return authority,
    };
    authority.strip_suffix(default).unwrap_or(authority)
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

#[cfg(test)]
mod tests {
    use super::origin_allowed;

    #[test]
    fn without_an_allow_list_only_the_servers_own_origin_may_connect() {
        let none: &[String] = &[];
        assert!(origin_allowed(
            "http://127.0.0.1:8080",
            "127.0.0.1:8080",
            none
        ));
        assert!(origin_allowed(
            "https://Push.Example",
            "push.example:443",
            none
        ));
        assert!(origin_allowed(
            "http://push.example:80",
            "push.example",
            none
        ));
        assert!(!origin_allowed(
            "http://evil.example",
            "127.0.0.1:8080",
            none
        ));
        assert!(!origin_allowed(
            "http://127.0.0.1:9999",
            "127.0.0.1:8080",
            none
        ));
        assert!(!origin_allowed("null", "127.0.0.1:8080", none));
        assert!(!origin_allowed(
            "https://push.example:80",
            "push.example",
            none
        ));
    }

    #[test]
    fn a_star_allows_any_origin_and_a_list_only_its_own() {
        let any = ["*".to_owned()];
        assert!(origin_allowed(
            "http://evil.example",
            "127.0.0.1:8080",
            &any
        ));
        let list = ["https://app.example".to_owned()];
        assert!(origin_allowed("https://APP.example", "push.example", &list));
        assert!(!origin_allowed(
            "https://push.example",
            "push.example",
            &list
        ));
    }
}
