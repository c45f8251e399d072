//! Auth at the upgrade: a signed JWT (HS256, RS256 or ES256) says who the client is, until
//! when, and which topics it may subscribe to.
//!
//! Browsers cannot set headers on a WebSocket, so the token is taken from the first of:
//! `Authorization: Bearer <jwt>`, the `token` query parameter, or an offered subprotocol
//! `bearer.<jwt>` (the server then answers with the `stratus` subprotocol if it was
//! offered too, else with the protocol that carried the token, since a browser fails a
//! connection whose offered protocols get no answer).
//!
//! Claims: `sub` and `exp` are required, `nbf`, `iss` and `aud` are checked when present
//! or configured, and `topics` lists what the connection may subscribe to: exact names,
//! prefixes ending in `*` (`news.*`), or `*` for every topic. No `topics`: none.

use std::fmt;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// The subprotocol prefix that carries a token.
pub(crate) const BEARER_PROTOCOL_PREFIX: &str = "bearer.";
/// The subprotocol the server prefers to answer with when a token came in one.
pub(crate) const PROTOCOL: &str = "stratus";

/// The signature algorithm and its verification key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthAlgorithm {
    /// HMAC with SHA-256 and a shared secret.
    Hs256,
    /// RSA PKCS#1 v1.5 with SHA-256; the key is a PEM public key.
    Rs256,
    /// ECDSA on P-256 with SHA-256; the key is a PEM public key.
    Es256,
}

/// Checks tokens; shared by every worker.
#[derive(Clone)]
pub struct Auth {
    inner: Arc<Verifier>,
}

struct Verifier {
    algorithm: AuthAlgorithm,
    key: DecodingKey,
    validation: Validation,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("algorithm", &self.inner.algorithm)
            .finish_non_exhaustive()
    }
}

/// What a valid token grants a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grant {
    pub(crate) subject: String,
    /// Topic patterns the connection may subscribe to.
    topics: Box<[String]>,
    /// Topic patterns it may publish to (where a namespace asks for the claim).
    publish: Box<[String]>,
    /// When the token expires, in seconds since the Unix epoch (the connection is closed
    /// then). Kept as the claim's number: `exp` near `u64::MAX` is far past what a
    /// `SystemTime` holds, and must not overflow anything.
    pub(crate) expires: u64,
    /// The token's `info` claim as JSON text: what presence lists beside the subject.
    pub(crate) info: Option<std::sync::Arc<str>>,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    topics: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
    /// What presence shows about the connection (any JSON), as given.
    #[serde(default)]
    info: Option<Box<serde_json::value::RawValue>>,
}

impl Auth {
    /// A verifier for `algorithm` with `key`: the secret for HS256, a PEM public key
    /// (SubjectPublicKeyInfo, or PKCS#1 for RSA) otherwise. `issuer` and `audience`, when
    /// given, must match the token's `iss` and `aud`.
    pub fn new(
        algorithm: AuthAlgorithm,
        key: &[u8],
        issuer: Option<&str>,
        audience: Option<&str>,
    ) -> Result<Self, String> {
        let (alg, key) = match algorithm {
            AuthAlgorithm::Hs256 if key.len() < 32 => {
                return Err("an HS256 secret needs at least 32 bytes".into());
            }
            AuthAlgorithm::Hs256 => (Algorithm::HS256, Ok(DecodingKey::from_secret(key))),
            AuthAlgorithm::Rs256 => (Algorithm::RS256, DecodingKey::from_rsa_pem(key)),
            AuthAlgorithm::Es256 => (Algorithm::ES256, DecodingKey::from_ec_pem(key)),
        };
        let key = key.map_err(|e| format!("{alg:?} public key: {e}"))?;
        let mut validation = Validation::new(alg);
        let mut required = vec!["exp", "sub"];
        validation.validate_nbf = true;
        validation.leeway = 30;
        match audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        Ok(Self {
            inner: Arc::new(Verifier {
                algorithm,
                key,
                validation,
            }),
        })
    }

    /// The algorithm tokens must be signed with.
    pub fn algorithm(&self) -> AuthAlgorithm {
        self.inner.algorithm
    }

    /// Verifies `token`: what it grants, or why it is refused.
    pub(crate) fn verify(&self, token: &str) -> Result<Grant, String> {
        let Verifier {
            key, validation, ..
        } = &*self.inner;
        let claims = jsonwebtoken::decode::<Claims>(token, key, validation)
            .map_err(|e| format!("invalid token: {e}"))?
            .claims;
        Ok(Grant {
            subject: claims.sub,
            topics: claims.topics.into_boxed_slice(),
            publish: claims.publish.into_boxed_slice(),
            expires: claims.exp,
            info: claims.info.map(|raw| std::sync::Arc::from(raw.get())),
        })
    }
}

impl Grant {
    /// A grant to `subject` for `topics` until `expires` (seconds since the Unix epoch),
    /// as a verified token gives.
    #[cfg(test)]
    pub(crate) fn new(subject: &str, topics: &[&str], expires: u64) -> Self {
        Self {
            subject: subject.to_owned(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            publish: Box::default(),
            expires,
            info: None,
        }
    }

    /// The same grant, which may also publish to `patterns` (for tests).
    #[cfg(test)]
    pub(crate) fn publishing(mut self, patterns: &[&str]) -> Self {
        self.publish = patterns.iter().map(|t| (*t).to_owned()).collect();
        self
    }

    /// Whether the token has expired at `now` (seconds since the Unix epoch).
    pub(crate) fn is_expired(&self, now: u64) -> bool {
        self.expires <= now
    }

    /// Whether the token lets its connection subscribe to `topic` (and read its history).
    pub(crate) fn allows(&self, topic: &str) -> bool {
        matches_any(&self.topics, topic)
    }

    /// Whether the token's `publish` claim lets its connection publish to `topic`.
    pub(crate) fn may_publish(&self, topic: &str) -> bool {
        matches_any(&self.publish, topic)
    }

    /// What a connect hook's answer grants (see `model::hook`): `subject` may subscribe
    /// to `topics` and publish to `publish` (patterns as in the token's claims) until
    /// `expires` (`u64::MAX`: never), with `info` (JSON text) for presence.
    pub(crate) fn from_hook(
        subject: String,
        topics: Vec<String>,
        publish: Vec<String>,
        expires: u64,
        info: Option<std::sync::Arc<str>>,
    ) -> Self {
        Self {
            subject,
            topics: topics.into_boxed_slice(),
            publish: publish.into_boxed_slice(),
            expires,
            info,
        }
    }
}

/// Whether `topic` matches one of `patterns`: a name, or a prefix ending in `*`.
fn matches_any(patterns: &[String], topic: &str) -> bool {
    patterns
        .iter()
        .any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => topic.starts_with(prefix),
            None => pattern == topic,
        })
}

/// Where a request's token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Carrier {
    Header,
    Query,
    Protocol,
}

/// The token a request carries, and where: the Authorization header, else the `token`
/// query parameter, else an offered `bearer.` subprotocol.
pub(crate) fn find_token(
    authorization: Option<&str>,
    query: &str,
    protocols: &[String],
) -> Option<(String, Carrier)> {
    if let Some(value) = authorization
        && let Some((scheme, token)) = value.split_once(' ')
        && scheme.eq_ignore_ascii_case("bearer")
    {
        return Some((token.trim().to_owned(), Carrier::Header));
    }
    if let Some((_, token)) = form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "token") {
        return Some((token.into_owned(), Carrier::Query));
    }
    protocols.iter().find_map(|p| {
        p.strip_prefix(BEARER_PROTOCOL_PREFIX)
            .map(|token| (token.to_owned(), Carrier::Protocol))
    })
}

/// The subprotocol to answer with: `stratus.v1` (protocol v1) if the client offered it,
/// else `stratus` (raw mode), else the `bearer.` protocol that carried the token, if any.
pub(crate) fn chosen_protocol(protocols: &[String]) -> Option<&str> {
    protocols
        .iter()
        .find(|p| *p == crate::model::protocol::v1::SUBPROTOCOL)
        .or_else(|| protocols.iter().find(|p| *p == PROTOCOL))
        .or_else(|| {
            protocols
                .iter()
                .find(|p| p.starts_with(BEARER_PROTOCOL_PREFIX))
        })
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(topics: &[&str]) -> Grant {
        Grant::new("u", topics, 0)
    }

    #[test]
    fn topic_patterns_match_exactly_by_prefix_or_everything() {
        let g = grant(&["chat", "news.*"]);
        assert!(g.allows("chat"));
        assert!(!g.allows("chat2"));
        assert!(g.allows("news.sport"));
        assert!(!g.allows("news"));
        assert!(grant(&["*"]).allows("anything"));
        assert!(!grant(&[]).allows("chat"));
    }

    #[test]
    fn the_header_wins_over_the_query_and_the_query_over_the_protocol() {
        let protocols = vec!["stratus".to_owned(), "bearer.p".to_owned()];
        assert_eq!(
            find_token(Some("Bearer h"), "token=q", &protocols),
            Some(("h".into(), Carrier::Header))
        );
        assert_eq!(
            find_token(Some("Basic x"), "a=1&token=q", &protocols),
            Some(("q".into(), Carrier::Query))
        );
        assert_eq!(
            find_token(None, "", &protocols),
            Some(("p".into(), Carrier::Protocol))
        );
        assert_eq!(find_token(None, "", &[]), None);
    }

    #[test]
    fn the_answered_protocol_is_stratus_if_offered_else_the_bearer_one() {
        let both = vec!["bearer.t".to_owned(), "stratus".to_owned()];
        assert_eq!(chosen_protocol(&both), Some("stratus"));
        let v1 = vec![
            "bearer.t".to_owned(),
            "stratus".to_owned(),
            "stratus.v1".to_owned(),
        ];
        assert_eq!(chosen_protocol(&v1), Some("stratus.v1"));
        let bearer_only = vec!["chat".to_owned(), "bearer.t".to_owned()];
        assert_eq!(chosen_protocol(&bearer_only), Some("bearer.t"));
        assert_eq!(chosen_protocol(&["chat".to_owned()]), None);
    }

    #[test]
    fn short_hs256_secrets_and_bad_pem_keys_are_refused() {
        assert!(Auth::new(AuthAlgorithm::Hs256, b"short", None, None).is_err());
        assert!(Auth::new(AuthAlgorithm::Rs256, b"not a pem", None, None).is_err());
        assert!(Auth::new(AuthAlgorithm::Es256, b"not a pem", None, None).is_err());
    }
}
