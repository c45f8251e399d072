//! The status page: a plain `GET /` on the pub/sub listener gets one self-contained HTML
//! page (`status.html`: no build step, nothing loaded from elsewhere) that opens a
//! WebSocket to the same server speaking protocol v1 (`stratus.v1`), subscribes to topics
//! typed in and publishes to them with v1 commands (each answer shown, errors with their
//! code), and lists what arrives with its topic and offset, with the connection state, the
//! subprotocol and the negotiated extensions. A person with only a browser can see the
//! server work, and the browser end-to-end test drives it.
//!
//! The response is built once and shared. Its Content-Security-Policy allows nothing but
//! the page's own inline script and style (by their SHA-256 hashes) and connections to its
//! own origin; the page puts messages in with `textContent`, and even markup that got in
//! some other way could not run.

use std::sync::LazyLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use stratus_proto::handshake::PlainRequest;

use crate::config::App;
use crate::connection::upgrade::Refusal;

/// The page, as served.
const PAGE: &str = include_str!("status.html");

/// Paths the page answers at.
const PATHS: [&str; 2] = ["/", "/index.html"];

/// The whole response to a GET, and the head alone for a HEAD.
struct Responses {
    get: Bytes,
    head: Bytes,
}

static RESPONSES: LazyLock<Responses> = LazyLock::new(|| {
    let head = response_head();
    Responses {
        get: Bytes::from([head.as_bytes(), PAGE.as_bytes()].concat()),
        head: Bytes::from(head),
    }
});

/// The page, for a plain request for it to the pub/sub app; any other plain request gets
/// the refusal it always got.
pub(crate) fn answer(request: &PlainRequest, app: App) -> Result<Bytes, Refusal> {
    let path = request
        .target
        .split_once('?')
        .map_or(request.target.as_str(), |(path, _)| path);
    if app != App::PubSub || !PATHS.contains(&path) {
        return Err(Refusal::from(&request.refusal()));
    }
    let responses = &*RESPONSES;
    Ok(if request.head {
        responses.head.clone()
    } else {
        responses.get.clone()
    })
}

fn response_head() -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\
         Cache-Control: no-cache\r\nContent-Security-Policy: {}\r\n\
         X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\n\
         Connection: close\r\n\r\n",
        PAGE.len(),
        content_security_policy(PAGE),
    )
}

/// Nothing but `page`'s own inline script and style, and WebSocket (or any) connections
/// to its own origin (CSP 3 `'self'` covers ws: and wss: on the same host and port).
/// The admin page (`admin::page`) is served with the same policy.
pub(crate) fn content_security_policy(page: &str) -> String {
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src data:; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        inline_hashes(page, "<script>", "</script>"),
        inline_hashes(page, "<style>", "</style>"),
    )
}

/// A CSP hash source for each block of `page` between `open` and `close`.
fn inline_hashes(page: &str, open: &str, close: &str) -> String {
    let mut sources = Vec::new();
    let mut rest = page;
    while let Some((_, after)) = rest.split_once(open)
        && let Some((inline, tail)) = after.split_once(close)
    {
        sources.push(format!(
            "'sha256-{}'",
            BASE64.encode(Sha256::digest(inline))
        ));
        rest = tail;
    }
    if sources.is_empty() {
        "'none'".to_owned()
    } else {
        sources.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page has exactly one inline script and one inline style, and the policy allows
    /// each by its hash: an edit that adds another block, or an attribute to the tag (which
    /// the hash search would miss), fails here rather than in the browser.
    #[test]
    fn policy_allows_the_one_inline_script_and_style_by_hash() {
        assert_eq!(PAGE.matches("<script").count(), 1);
        assert_eq!(PAGE.matches("<style").count(), 1);
        let policy = content_security_policy(PAGE);
        assert!(policy.starts_with("default-src 'none'; script-src 'sha256-"));
        assert!(policy.contains("; style-src 'sha256-"));
        assert_eq!(policy.matches("'sha256-").count(), 2, "{policy}");
        assert!(!policy.contains("unsafe"), "{policy}");
    }

    #[test]
    fn page_is_only_for_the_pubsub_app_at_its_paths() {
        let get = |target: &str, app| {
            answer(
                &PlainRequest {
                    target: target.into(),
                    head: false,
                    ..PlainRequest::default()
                },
                app,
            )
        };
        for target in ["/", "/index.html", "/?topic=a"] {
            assert!(get(target, App::PubSub).is_ok(), "{target}");
        }
        assert_eq!(get("/other", App::PubSub).unwrap_err().status, 426);
        assert_eq!(get("/", App::Echo).unwrap_err().status, 426);
    }
}
