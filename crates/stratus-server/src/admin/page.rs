//! The admin page: `GET /` on the admin listener answers one self-contained HTML page
//! (`page.html`: no build step, nothing loaded from elsewhere) that shows the node live
//! from the admin API itself: it polls `GET /metrics` every second (the counters the
//! Prometheus scrape reads; rates are the deltas between polls) and `GET /topics`, and
//! offers a publish form (`POST /publish/{topic}`) and a user lookup (`GET /users/{user}`)
//! with a disconnect (`POST /users/{user}/disconnect`).
//!
//! The page itself is served without the admin token, because a browser cannot send a
//! bearer header when it navigates to a URL; it holds no data, only the same bytes for
//! everyone (as the binary does), so serving it leaks nothing. Every call the page makes
//! carries the token as `Authorization: Bearer`, from a form, kept in the tab's
//! `sessionStorage` (gone when the tab closes; never in a URL, where it would reach the
//! history, logs and `Referer`s), and each call is refused with 401 without it, as any
//! other client's would be. With no admin token configured the listener is loopback
//! only, and the page works without one.
//!
//! The response is built once. Its Content-Security-Policy (the status page's) allows
//! nothing but the page's own inline script and style (by their SHA-256 hashes) and
//! fetches to its own origin; no frame may embed it. Data goes in with `textContent`.

use std::sync::LazyLock;

use super::{Response, respond};
use crate::connection::status_page::content_security_policy;

/// The page, as served.
const PAGE: &str = include_str!("page.html");

/// The response's header lines beyond the type and length.
static HEADERS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "Cache-Control: no-store\r\nContent-Security-Policy: {}\r\n\
         X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\n",
        content_security_policy(PAGE)
    )
});

/// `GET /`: the page.
pub(super) fn answer() -> Response {
    Response {
        body: PAGE.to_owned(),
        content_type: "text/html; charset=utf-8",
        extra: HEADERS.as_str(),
        ..respond(200, serde_json::Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exactly one inline script and one inline style, each allowed by its hash, and
    /// nothing loaded from elsewhere: an edit that adds a block, an attribute to the tag
    /// (which the hash search would miss) or an external resource fails here rather than
    /// in the browser.
    #[test]
    fn page_is_self_contained_and_its_policy_allows_its_own_code_by_hash() {
        assert_eq!(PAGE.matches("<script").count(), 1);
        assert_eq!(PAGE.matches("<style").count(), 1);
        for external in [" src=", "http:", "https:", "@import", "url("] {
            assert!(!PAGE.contains(external), "page loads {external}");
        }
        let response = answer();
        assert_eq!(response.status, 200);
        assert_eq!(response.content_type, "text/html; charset=utf-8");
        let policy = content_security_policy(PAGE);
        assert!(
            response
                .extra
                .contains(&format!("Content-Security-Policy: {policy}\r\n"))
        );
        assert!(policy.starts_with("default-src 'none'; script-src 'sha256-"));
        assert_eq!(policy.matches("'sha256-").count(), 2, "{policy}");
        assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
        assert!(!policy.contains("unsafe"), "{policy}");
    }
}
