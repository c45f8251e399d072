//! Posting an event to the application's webhook: JSON, signed with the shared secret,
//! retried with exponential backoff up to [`MAX_ATTEMPTS`], each attempt bounded by
//! [`ATTEMPT_TIMEOUT`]. Runs on the events thread, never on a worker's ring.
//!
//! The signature: `X-Stratus-Signature: sha256=<hex HMAC-SHA256(secret, "<ts>.<body>")>`
//! with `X-Stratus-Timestamp: <ts>` (Unix seconds of the attempt). The timestamp is in
//! the signed string, so a receiver that refuses old timestamps (say, over five minutes)
//! cannot be fed a recorded post again later.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::model::occupancy_events::OccupancyEvent;
use crate::node::occupancy_events::EventsStats;
use crate::stats;

/// Attempts per event before it is given up (and counted as dropped).
pub(crate) const MAX_ATTEMPTS: u32 = 8;
/// How long one attempt may take, connection included.
pub(crate) const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// The wait before the first retry; doubled after each, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The wait before attempt `attempt` (2 for the first retry).
pub(crate) fn backoff(attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(2).min(16);
    (FIRST_BACKOFF * (1 << doublings)).min(MAX_BACKOFF)
}

/// `sha256=<hex>` of `"<timestamp>.<body>"` under `secret`.
pub(crate) fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    // HMAC takes a key of any length: `new_from_slice` cannot fail for it.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 2 * digest.len());
    out.push_str("sha256=");
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// How a delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A 2xx answer.
    Delivered,
    /// Every attempt failed.
    GaveUp,
}

/// The application's webhook.
pub(crate) struct Webhook {
    client: reqwest::Client,
    url: String,
    secret: Option<String>,
}

impl Webhook {
    pub(crate) fn new(url: String, secret: Option<String>) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            .connect_timeout(ATTEMPT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("occupancy webhook client: {e}"))?;
        if secret.is_none() {
            // Valid, but the receiver cannot tell these posts from anyone else's.
            tracing::warn!(
                "occupancy webhook: no --webhook-secret, posts go unsigned \
                 (no X-Stratus-Signature)"
            );
        }
        Ok(Self {
            client,
            url,
            secret,
        })
    }

    /// Posts `event` until it is answered with a 2xx or [`MAX_ATTEMPTS`] have failed,
    /// counting every attempt in `stats`.
    pub(crate) async fn deliver(&self, event: &OccupancyEvent, stats: &EventsStats) -> Outcome {
        let body = event.to_json().to_string();
        for attempt in 1..=MAX_ATTEMPTS {
            if attempt > 1 {
                stats::add(&stats.retried, 1);
                tokio::time::sleep(backoff(attempt)).await;
            }
            let started = Instant::now();
            if self.attempt(event, &body).await {
                stats::add(&stats.sent, 1);
                let us = started.elapsed().as_micros() as u64;
                stats.latency_us.fetch_add(us, Ordering::Relaxed);
                return Outcome::Delivered;
            }
            stats::add(&stats.failed, 1);
        }
        stats::add(&stats.dropped, 1);
        tracing::warn!(topic = %event.topic, offset = %event.offset, "occupancy webhook: gave up");
        Outcome::GaveUp
    }

    /// One post: whether it was answered with a 2xx.
    async fn attempt(&self, event: &OccupancyEvent, body: &str) -> bool {
        let timestamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut request = self
            .client
            .post(&self.url)
            .header("Content-Type", "application/json")
            .header("X-Stratus-Event", event.kind.as_str())
            .header("X-Stratus-Timestamp", timestamp.to_string())
            .body(body.to_owned());
        if let Some(secret) = &self.secret {
            request = request.header(
                "X-Stratus-Signature",
                sign(secret.as_bytes(), timestamp, body.as_bytes()),
            );
        }
        match request.send().await {
            Ok(response) if response.status().is_success() => true,
            Ok(response) => {
                tracing::debug!(status = %response.status(), "occupancy webhook refused a post");
                false
            }
            Err(err) => {
                // Without the URL: it may carry credentials (userinfo, query).
                let err = err.without_url();
                tracing::debug!(error = %err, "occupancy webhook unreachable");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_the_timestamp_a_dot_and_the_body() {
        // Python: hmac.new(b"secret", b'1700000000.{"event":"occupied"}', sha256).hexdigest()
        let signed = sign(b"secret", 1_700_000_000, br#"{"event":"occupied"}"#);
        assert_eq!(
            signed,
            "sha256=d200321e4bc55a61311972e97b8603722ccf59d9dc9821ab3bc98b6892f5d133"
        );
        assert_ne!(
            signed,
            sign(b"secret", 1_700_000_001, br#"{"event":"occupied"}"#)
        );
        assert_ne!(
            signed,
            sign(b"secret", 1_700_000_000, br#"{"event":"vacated"}"#)
        );
        assert_ne!(
            signed,
            sign(b"secreT", 1_700_000_000, br#"{"event":"occupied"}"#)
        );
    }

    #[test]
    fn retries_back_off_exponentially_up_to_a_cap() {
        assert_eq!(backoff(2), Duration::from_millis(250));
        assert_eq!(backoff(3), Duration::from_millis(500));
        assert_eq!(backoff(4), Duration::from_secs(1));
        assert_eq!(backoff(9), Duration::from_secs(30));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(30));
    }
}
